"""Quality measures and `waveflow evaluate` end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO
from test_vocoder import tiny_setup, tiny_vocoder, write_tiny_checkpoint

from waveflow.cli import main
from waveflow.config import MelConfig
from waveflow.dsp.audio import load_wav
from waveflow.infer.vocoder import load_vocoder
from waveflow.nn.loss import flow_nll
from waveflow.train.evaluate import griffin_lim, mel_l1, nll, quality


@pytest.fixture
def speech(clip) -> np.ndarray:
    return load_wav(clip)[22050 : 22050 + 22050]  # one second of speech


def test_quality_of_identical_and_degraded_audio(speech):
    voc = tiny_vocoder()
    same = quality(speech, speech, 22050, voc.mel)
    assert same["mel_l1"] == 0.0 and same["stoi"] > 0.99 and same["pesq_wb"] > 4.5
    noisy = speech + np.random.default_rng(0).normal(0, 0.05, speech.shape).astype(np.float32)
    worse = quality(speech, noisy, 22050, voc.mel)
    assert worse["mel_l1"] > 0.1 and worse["stoi"] < same["stoi"] and worse["pesq_wb"] < 2.5


def test_mel_l1_is_the_mean_absolute_log_mel_difference(speech):
    voc = tiny_vocoder()
    louder = speech * 2.0
    # doubling the amplitude adds log(2) to every mel bin above the clamp floor
    a, b = voc.mel(speech), voc.mel(louder)
    assert mel_l1(speech, louder, voc.mel) == pytest.approx(float(np.abs(a - b).mean()), rel=1e-6)
    assert mel_l1(speech, louder, voc.mel) == pytest.approx(np.log(2), rel=0.05)


def test_griffin_lim_beats_noise_on_mel_l1(speech):
    voc = tiny_vocoder()
    mel = voc.mel(speech)
    gl = griffin_lim(mel, MelConfig(), len(speech), n_iter=10)
    assert gl.shape == speech.shape and np.isfinite(gl).all()
    noise = np.random.default_rng(0).normal(0, 0.1, speech.shape).astype(np.float32)
    assert mel_l1(speech, gl, voc.mel) < 0.5 * mel_l1(speech, noise, voc.mel)


def test_nll_is_the_flow_likelihood_of_the_original(speech):
    voc = tiny_vocoder()
    audio = speech[:4096]
    mel = voc.mel(audio)
    nats, bits = nll(voc, audio, mel)
    model, _ = tiny_setup()
    with torch.no_grad():
        z, logdet = model.eval()(torch.from_numpy(audio)[None], torch.from_numpy(mel)[None])
    expected = flow_nll(z, logdet, sigma=1.0)
    assert nats == pytest.approx(float(expected.nats), abs=1e-4)
    assert bits == pytest.approx(nats / np.log(2), rel=1e-6)


def test_evaluate_cli_writes_table_and_json(tmp_path, speech):
    (tmp_path / "data" / "wavs").mkdir(parents=True)
    for name in ("b_clip", "a_clip"):
        sf.write(tmp_path / "data" / "wavs" / f"{name}.wav", speech[:11025], 22050, subtype="PCM_16")
    write_tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "scores.json"
    args = ["evaluate", "--checkpoint", str(tmp_path / "tiny.pt"), "--data", str(tmp_path / "data")]
    result = subprocess.run(
        [sys.executable, "-m", "waveflow", *args, "--limit", "1", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "| waveflow |" in result.stdout and "| Griffin-Lim (60 it.) |" in result.stdout
    data = json.loads(out.read_text())
    assert data["n_clips"] == 1 and data["clips"][0]["clip"] == "a_clip"
    for system in ("waveflow", "griffin_lim"):
        assert set(data["summary"][system]) >= {"mel_l1", "pesq_wb", "stoi"}
    assert np.isfinite(data["summary"]["waveflow"]["nll_nats"])
    # the untrained tiny model must not beat Griffin-Lim on mel-L1: the figures mean something
    assert data["summary"]["waveflow"]["mel_l1"] > data["summary"]["griffin_lim"]["mel_l1"]
    # the peak column: the output's peak over the clip's, as the clip's wav and the output give it
    clip = load_wav(tmp_path / "data" / "wavs" / "a_clip.wav")
    for system in ("waveflow", "griffin_lim"):
        peak = data["summary"][system]["peak_over_ref_db_max"]
        assert peak == data["clips"][0][system]["peak_over_ref_db"]  # one clip: its own figure
        assert f"| {peak:+.2f} |" in result.stdout
    voc = load_vocoder(str(tmp_path / "tiny.pt"))
    out = voc(voc.mel(clip), seed=0)  # evaluate's default seed and the checkpoint's settings
    want = 20 * np.log10(np.abs(out[: len(clip)]).max() / np.abs(clip).max())
    assert data["summary"]["waveflow"]["peak_over_ref_db_max"] == pytest.approx(want, abs=1e-3)
    # the level above the mel's top, from the written output's spectrum against the clip's
    written = np.clip(out[: len(clip)], -1, 32767 / 32768)
    above = np.fft.rfftfreq(len(clip), 1 / 22050) > 8000
    energy = lambda x: np.sum(np.abs(np.fft.rfft(x.astype(np.float64))[above]) ** 2)
    level = data["summary"]["waveflow"]["level_above_fmax_db"]
    assert level == pytest.approx(10 * np.log10(energy(written) / energy(clip)), abs=1e-3)
    assert f"| {level:+.2f} |" in result.stdout and "level above 8 kHz (dB)" in result.stdout
    if importlib.util.find_spec("pyworld") is not None:  # the eval extra's pitch measures
        for row in ("waveflow output (harvest)", "Griffin-Lim (60 it.) output (harvest)", "mel-derived track, comb"):
            assert f"| {row}" in result.stdout, result.stdout
        # the model's tracker, and the floor of any mel-derived track
        assert set(data["pitch"]) == {"waveflow", "griffin_lim", "mel_comb", "harvest_window"}
        clip_figures = data["clips"][0]["pitch"]
        for system, means in data["pitch"].items():  # one clip: the means are its figures
            assert set(means) >= {"f0_median_cents", "f0_p90_cents", "f0_rmse_cents", "vuv_f1", "voiced_recall"}
            assert means == pytest.approx(clip_figures[system], nan_ok=True)
        # Griffin-Lim keeps the mel's harmonics below 1 kHz: most of the speech stays voiced at its pitch
        assert (
            data["pitch"]["griffin_lim"]["voiced_recall"] > 0.5 and data["pitch"]["griffin_lim"]["f0_median_cents"] < 50
        )


def test_evaluate_without_pyworld_skips_the_pitch_measures_in_one_line(tmp_path, speech):
    (tmp_path / "data").mkdir()
    sf.write(tmp_path / "data" / "clip.wav", speech[:8192], 22050, subtype="PCM_16")
    write_tiny_checkpoint(tmp_path / "tiny.pt")
    argv = ["evaluate", "--checkpoint", str(tmp_path / "tiny.pt"), "--data", str(tmp_path / "data"), "--no-griffin-lim"]
    argv += ["--json", str(tmp_path / "scores.json")]
    code = f"import sys; sys.modules['pyworld'] = None; from waveflow.cli import main; sys.exit(main({argv!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if "pitch measures skipped" in line]
    assert len(skipped) == 1 and "pyworld" in skipped[0] and "waveflow[eval]" in skipped[0], result.stderr
    assert "| waveflow |" in result.stdout and "harvest" not in result.stdout
    assert "pitch" not in json.loads((tmp_path / "scores.json").read_text())


def test_evaluate_bad_data_folder_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "--data", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "no such data folder" in err[0]


def test_prepared_folder_scores_its_held_out_splits(tmp_path, mini_corpus):
    from waveflow.train.data import prepare
    from waveflow.train.evaluate import find_clips

    prepared = prepare(mini_corpus, tmp_path / "prep", progress=False)
    held_out = find_clips(tmp_path / "prep")
    assert [p.stem for p in held_out] == ["LJ001-0031", "LJ001-0032"]  # dev, then test
    assert len(find_clips(tmp_path / "prep", "train")) == prepared["split"]["train"]
    with pytest.raises(ValueError, match="--split"):
        find_clips(tmp_path / "prep", "validation")


def test_silence_rms_measures_the_output_of_an_all_silence_mel():
    from waveflow.train.evaluate import silence_rms

    voc = tiny_vocoder()
    frames = round(2.0 * voc.sample_rate / voc.hop_length)
    expected = voc(np.full((80, frames), voc.silence, dtype=np.float32), sigma=0.6, seed=0)
    assert silence_rms(voc, 0.6, 0) == pytest.approx(float(np.sqrt(np.mean(expected.astype(np.float64) ** 2))))
    assert silence_rms(voc, 0.0, 0) < silence_rms(voc, 0.6, 0)  # the hiss scales with sigma


# ------------------------------------------------------------------ pitch
def test_pitch_agreement_counts_known_offsets_and_voicing_flips():
    from waveflow.train.evaluate import pitch_agreement

    ref = np.array([200.0] * 10 + [0.0] * 2)
    cents = np.array([-50, 10, 20, 30, 40, 0, 0, 100, 0, 0, 0, 0], dtype=np.float64)
    est = ref * 2 ** (cents / 1200)
    est[8:10] = 0.0  # two voiced frames called unvoiced (FN = 2)
    est[10] = 123.0  # one unvoiced frame called voiced (FP = 1)
    got = pitch_agreement(ref, est)
    # |errors| over the 8 frames voiced in both: 0 0 10 20 30 40 50 100
    assert got["f0_median_cents"] == pytest.approx(25.0)
    assert got["f0_p90_cents"] == pytest.approx(50 + 0.3 * 50)  # rank 0.9 * 7 = 6.3
    assert got["f0_rmse_cents"] == pytest.approx(np.sqrt((50**2 + 10**2 + 20**2 + 30**2 + 40**2 + 100**2) / 8))
    assert got["vuv_f1"] == pytest.approx(2 * 8 / (2 * 8 + 1 + 2))
    assert got["voiced_recall"] == pytest.approx(8 / 10) and got["voiced_precision"] == pytest.approx(8 / 9)
    assert got["voiced_both"] == 8
    # an octave is 1200 cents whichever way it goes
    octave = pitch_agreement(ref[:2], np.array([400.0, 100.0]))
    assert octave["f0_median_cents"] == pytest.approx(1200.0) and octave["vuv_f1"] == 1.0


def test_pitch_agreement_without_common_voiced_frames_and_bad_tracks():
    from waveflow.train.evaluate import pitch_agreement

    got = pitch_agreement(np.array([100.0, 0.0]), np.array([0.0, 100.0]))
    assert np.isnan(got["f0_median_cents"]) and got["vuv_f1"] == 0.0 and got["voiced_recall"] == 0.0
    with pytest.raises(ValueError, match="one length"):
        pitch_agreement(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=">= 0"):
        pitch_agreement(np.array([100.0, -1.0]), np.zeros(2))


def sawtooth(f0: np.ndarray, sample_rate: int = 22050) -> np.ndarray:
    """A sawtooth of per-sample F0 ``f0`` (Hz), amplitude 0.5."""
    phase = np.cumsum(f0 / sample_rate) % 1.0
    return (0.5 * (2 * phase - 1)).astype(np.float32)


def test_harvest_finds_a_sawtooths_f0_on_the_mels_frame_centres():
    from waveflow.train.evaluate import harvest_f0

    pytest.importorskip("pyworld")
    sr, hop = 22050, 256
    # 150 Hz, then 220 Hz from sample 16000 on
    f0 = np.where(np.arange(32000) < 16000, 150.0, 220.0)
    track = harvest_f0(sawtooth(f0), sr, hop)
    assert track.shape == (1 + 32000 // hop,)
    centres = np.arange(len(track)) * hop
    low = (centres > 2000) & (centres < 16000 - 1000)
    high = (centres > 16000 + 1000) & (centres < 32000 - 2000)
    assert np.abs(1200 * np.log2(track[low] / 150.0)).max() < 5
    assert np.abs(1200 * np.log2(track[high] / 220.0)).max() < 5
    # frame i is at sample start + i * hop: shifting the start by 8000 samples moves the step
    shifted = harvest_f0(sawtooth(f0), sr, hop, frames=100, start=8000)
    assert shifted.shape == (100,) and (shifted[-3:] == 0).all()  # past the audio's end: unvoiced
    switch = lambda t: int(np.argmax(t > np.sqrt(150.0 * 220.0)))
    assert abs(switch(track) - 16000 / hop) <= 1 and abs(switch(shifted) - 8000 / hop) <= 1


def test_window_f0_averages_log_f0_over_the_mels_window_within_voiced_runs():
    from waveflow.train.evaluate import window_f0

    cfg = MelConfig()  # win 1024, hop 256: neighbours at +-256 samples weigh hann(256 / 1024) = 0.5
    rng = np.random.default_rng(0)
    f0 = 100.0 * 2.0 ** rng.uniform(0, 2, 40)
    f0[[5, 6, 20, 30, 31, 32]] = 0.0  # unvoiced frames: a gap, a lone voiced frame at 21..29's edge
    got = window_f0(f0, cfg)
    # brute force: weights 1/2 for the frame, 1/4 for each voiced neighbour, renormalised
    logs = np.log(np.where(f0 > 0, f0, 1.0))
    for i in range(len(f0)):
        if f0[i] == 0:
            assert got[i] == 0.0
            continue
        pairs = [(w, logs[j]) for j, w in ((i - 1, 0.25), (i, 0.5), (i + 1, 0.25)) if 0 <= j < len(f0) and f0[j] > 0]
        want = np.exp(sum(w * x for w, x in pairs) / sum(w for w, _ in pairs))
        assert got[i] == pytest.approx(want, rel=1e-12), i
    # a glide at a constant rate (in cents) is its own average inside a voiced run; a zig-zag shrinks
    glide = 150.0 * 2.0 ** (np.arange(20) * 20 / 1200)
    assert window_f0(glide, cfg)[1:-1] == pytest.approx(glide[1:-1], rel=1e-12)
    zigzag = 200.0 * 2.0 ** (np.where(np.arange(20) % 2, 40, -40) / 1200)
    assert np.abs(1200 * np.log2(window_f0(zigzag, cfg)[1:-1] / 200.0)).max() == pytest.approx(0.0, abs=1e-9)
    # a longer window reaches further: win 2048 at hop 256 averages over 7 frames
    wide = window_f0(zigzag, MelConfig(n_fft=2048, win_length=2048))
    assert np.abs(1200 * np.log2(wide[3:-3] / 200.0)).max() == pytest.approx(0.0, abs=1e-9)
    assert not np.allclose(wide[1:3], window_f0(zigzag, cfg)[1:3])
    with pytest.raises(ValueError, match="1-D track of F0"):
        window_f0(np.array([100.0, -1.0]), cfg)


def test_harmonic_valley_ratio_tells_harmonics_from_noise_band_by_band():
    from waveflow.train.evaluate import HVR_BANDS, harmonic_valley_db

    sr, hop = 22050, 256
    saw = sawtooth(np.full(2 * sr, 150.0)).astype(np.float64)
    f0 = np.full(1 + len(saw) // hop, 150.0)
    clean = harmonic_valley_db(saw, f0, sr, hop)
    assert clean.shape == (len(HVR_BANDS),) and (clean > 40).all(), clean
    noise = np.random.default_rng(0).standard_normal(len(saw))
    flat = harmonic_valley_db(noise, f0, sr, hop)
    assert (np.abs(flat - 3) < 1.5).all(), flat  # the peak is the largest of three bins: about 3 dB
    # harmonics below 2.5 kHz only, noise everywhere: the upper bands read as noise
    spectrum = np.fft.rfft(saw)
    spectrum[np.fft.rfftfreq(len(saw), 1 / sr) > 2500] = 0
    mixed = harmonic_valley_db(np.fft.irfft(spectrum, len(saw)) + 0.003 * noise, f0, sr, hop)
    assert (mixed[:2] > 20).all() and (np.abs(mixed[3:] - 3) < 1.5).all(), mixed
    # unvoiced frames are skipped; none voiced: NaN in every band
    assert np.isnan(harmonic_valley_db(saw, np.zeros_like(f0), sr, hop)).all()
    half = f0.copy()
    half[: len(f0) // 2] = 0
    np.testing.assert_allclose(harmonic_valley_db(saw, half, sr, hop), clean, atol=3)


@pytest.mark.parametrize("tracker", ["comb", "template"])
def test_mel_track_of_a_sawtooth_agrees_with_harvest(tracker):
    from waveflow.train.evaluate import harvest_f0, mel_f0, pitch_agreement

    pytest.importorskip("pyworld")
    voc = tiny_vocoder()
    saw = sawtooth(np.full(22050, 22050 / 147))  # 150 Hz: a whole period of 147 samples
    mel = voc.mel(saw)
    got = pitch_agreement(harvest_f0(saw, 22050, 256), mel_f0(mel, MelConfig(), tracker))
    assert got["voiced_recall"] > 0.9 and got["f0_median_cents"] < 5, got


def test_level_above_the_mels_top_against_closed_forms():
    from waveflow.train.evaluate import level_above_db

    n = np.arange(22050)
    low, high = np.sin(2 * np.pi * 1000 * n / 22050), np.sin(2 * np.pi * 9000 * n / 22050)
    ref = low + 0.1 * high
    # twice the amplitude above 8 kHz: +6.02 dB, whatever happens below
    assert level_above_db(ref, 3 * low + 0.2 * high, 22050, 8000.0) == pytest.approx(20 * np.log10(2), abs=1e-6)
    assert level_above_db(ref, low + 0.05 * high, 22050, 8000.0) == pytest.approx(-20 * np.log10(2), abs=1e-6)
    # over the reference's length: what the output has past its end does not count
    longer = np.concatenate([ref, 5 * high[:1000]])
    assert level_above_db(ref, longer, 22050, 8000.0) == pytest.approx(0.0, abs=1e-6)
    # the cut is f_max: at 10 kHz the 9 kHz tone lies below it, and nothing is left above
    assert np.isnan(level_above_db(ref, ref, 22050, 10000.0))
    assert level_above_db(ref, low, 22050, 8000.0) < -200  # an output with nothing up there but rounding
    assert level_above_db(ref, np.zeros_like(ref), 22050, 8000.0) == -np.inf
    assert np.isnan(level_above_db(low, ref, 22050, 8000.0))  # a reference with nothing up there
    # nor with only a 16-bit wav's rounding up there (a clip upsampled from 16 kHz, as written)
    rounded = np.round(low * 0.5 * 32768) / 32768
    assert np.isnan(level_above_db(rounded, ref, 22050, 8000.0))
    assert np.isfinite(level_above_db(low + 0.01 * high, ref, 22050, 8000.0))  # -40 dB: a level to compare
    # a clip without a level up there is left out of the mean; with none, the table's cell is blank
    from waveflow.train.evaluate import _nanmean, format_table

    assert _nanmean([1.0, np.nan, 3.0]) == 2.0 and _nanmean([1.0, -np.inf]) == -np.inf
    assert np.isnan(_nanmean([np.nan, np.nan]))
    figures = {"mel_l1": 0.1, "pesq_wb": 3.0, "stoi": 0.9, "peak_over_ref_db_max": 0.5, "level_above_fmax_db": np.nan}
    table = format_table({"n_clips": 1, "audio_seconds": 1.0, "f_max": 8000.0, "summary": {"waveflow": figures}})
    assert table.splitlines()[-1].endswith("| +0.50 | - |") and "level above 8 kHz (dB)" in table


def test_crest_factor_and_peak_figures_against_closed_forms():
    from waveflow.train.evaluate import CREST_FRAME, crest_db, peak_figures, peak_over_ref_db

    n = np.arange(8 * CREST_FRAME)
    sine = np.sin(2 * np.pi * n / 64)  # whole periods per frame: peak 1, rms 1/sqrt(2)
    np.testing.assert_allclose(crest_db(sine), 10 * np.log10(2), atol=1e-9)
    square = np.sign(np.sin(2 * np.pi * (n + 0.5) / 64))
    np.testing.assert_allclose(crest_db(square), 0.0, atol=1e-9)
    # one frame per run; a click in frame 3 raises that frame's crest only, by a known amount
    clicked = square.copy()
    clicked[3 * CREST_FRAME + 10] = 4.0
    crest = crest_db(clicked)
    rms = np.sqrt((CREST_FRAME - 1 + 16) / CREST_FRAME)
    assert crest[3] == pytest.approx(20 * np.log10(4 / rms)) and np.allclose(np.delete(crest, 3), 0.0)
    # frames far below the loudest are left out; a last partial frame is too
    quiet = np.concatenate([sine, 0.01 * sine[: 2 * CREST_FRAME], sine[:100]])
    assert len(crest_db(quiet)) == 8 and len(crest_db(quiet, floor_db=-60)) == 10
    assert len(crest_db(sine[:100])) == 0 and len(crest_db(np.zeros(4 * CREST_FRAME))) == 0
    # the output's peak against the reference's, in dB, over the reference's length
    figures = peak_figures(sine, np.concatenate([2 * sine, [100.0]]))
    assert figures["peak_over_ref_db"] == pytest.approx(20 * np.log10(2))
    assert peak_over_ref_db(sine, np.concatenate([2 * sine, [100.0]])) == pytest.approx(20 * np.log10(2))
    assert figures["crest_p50_ref_db"] == pytest.approx(10 * np.log10(2))
    assert figures["crest_p99_out_db"] == pytest.approx(10 * np.log10(2))
    assert peak_figures(sine, clicked)["crest_p99_out_db"] > 6
    silent = peak_figures(sine, np.zeros_like(sine))
    assert silent["peak_over_ref_db"] == -np.inf and np.isnan(silent["crest_p50_out_db"])
    with pytest.raises(ValueError, match="reference that is not silent"):
        peak_figures(np.zeros_like(sine), sine)
    assert peak_over_ref_db(sine, np.zeros_like(sine)) == -np.inf

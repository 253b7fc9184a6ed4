"""The input guards: a mel's scale (linear, power, dB, log10, out-of-range frames) is named in
Python (a warning) and on the command line (a refusal unless --force); real mels pass; the
Vocoder's small contracts (default seed, .to, mel() with rates, PCM and stereo)."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from test_vocoder import random_mel, tiny_vocoder, write_tiny_checkpoint

from waveflow.config import MelConfig
from waveflow.dsp.audio import MelSpectrogram, load_wav
from waveflow.dsp.melcheck import MelScaleWarning, diagnose, frame_count_problem
from waveflow.infer.streaming import StreamingVocoder
from waveflow.infer.vocoder import Vocoder

FLOOR = math.log(1e-5)


def corpus_mels(corpus) -> list[torch.Tensor]:
    mel = MelSpectrogram()
    return [mel(torch.from_numpy(load_wav(p))[None])[0] for p in sorted((corpus / "wavs").glob("*.wav"))]


def wrong_scales(mel: torch.Tensor) -> dict[str, tuple[torch.Tensor, str]]:
    """One real log-mel written as other tools write mels, each with what the message must name."""
    librosa = pytest.importorskip("librosa")
    linear = mel.exp().numpy()
    broken = mel.clone()
    broken[:, 50:53] = 1e30
    return {
        "linear": (torch.from_numpy(linear), "linear mel"),
        "power": (torch.from_numpy(linear**2), "power mel"),
        "power_to_db": (torch.from_numpy(librosa.power_to_db(linear**2)), "dB mel"),
        "power_to_db ref max": (torch.from_numpy(librosa.power_to_db(linear**2, ref=np.max)), "dB mel"),
        "amplitude_to_db": (torch.from_numpy(librosa.amplitude_to_db(linear)), "dB mel"),
        "log10": (mel / math.log(10), "log10 mel"),
        "log of power": (2 * mel, "log of a power mel"),
        "zeros": (torch.zeros_like(mel), "all zeros"),
        "1e30 frames": (broken, "3 of"),
    }


def test_every_real_mel_of_the_corpus_passes_whole_and_in_chunks(mini_corpus):
    for mel in corpus_mels(mini_corpus):
        assert diagnose(mel) is None
        for size in (1, 2, 4, 8, 16):  # a stream's chunks: the rules must hold on a few frames
            for start in range(0, mel.shape[1] - size, 5):
                assert diagnose(mel[:, start : start + size]) is None, (size, start)


def test_each_wrong_scale_is_named_with_its_conversion(mini_corpus):
    mel = corpus_mels(mini_corpus)[31]
    for name, (wrong, expected) in wrong_scales(mel).items():
        message = diagnose(wrong)
        assert message is not None and expected in message, (name, message)
        assert "convert" in message or "repair" in message or "lengths=" in message, message
    # The conversions the messages give bring the mel back.
    librosa = pytest.importorskip("librosa")
    db = librosa.power_to_db(mel.exp().numpy() ** 2, top_db=None)
    torch.testing.assert_close(torch.from_numpy(np.maximum(db * 0.11513, FLOOR)), mel, atol=2e-3, rtol=0)
    torch.testing.assert_close(mel / math.log(10) * 2.3026, mel, atol=2e-3, rtol=0)


def test_the_bundled_models_own_output_passes(mini_corpus):
    voc = Vocoder.default()
    wav = load_wav(mini_corpus / "wavs" / "LJ001-0032.wav")[: 3 * 22050]
    mel = voc.mel(wav)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MelScaleWarning)
        audio = voc(mel)
        assert diagnose(torch.from_numpy(voc.mel(audio, frames=mel.shape[-1]))) is None


def test_frame_counts_of_the_other_convention():
    samples = 10 * 256 + 17
    assert frame_count_problem(11, samples, 256) is None
    assert "HiFi-GAN" in frame_count_problem(10, samples, 256)
    assert frame_count_problem(10, samples, 256, center=False) is None
    assert frame_count_problem(11, samples, 256, center=False) is not None
    assert frame_count_problem(30, samples, 256) is None  # not a convention question: another check's
    hifigan = MelSpectrogram(MelConfig(preset="hifigan"))(torch.zeros(1, samples))
    assert frame_count_problem(hifigan.shape[-1], samples, 256) is not None


# ------------------------------------------------------------------ Python API
def test_the_vocoder_warns_once_per_call_and_can_be_told_not_to():
    voc = tiny_vocoder()
    good = random_mel(12)
    db = good * 20 / math.log(10)
    with pytest.warns(MelScaleWarning, match="dB mel.*convert"):
        voc(db)
    with pytest.warns(MelScaleWarning, match="mel 1: looks like a log10"):
        voc([good, good / math.log(10)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        voc(db, check_input=False)
        voc(good)
        with warnings.catch_warnings():  # the documented program-wide switch
            warnings.filterwarnings("ignore", category=MelScaleWarning)
            voc(db)
    padded = torch.zeros(2, 80, 12)
    padded[0], padded[1, :, :5] = good, good[:, :5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        voc(padded, lengths=[12, 5])  # the zero padding is replaced by silence before the check


def test_a_stream_warns_once_per_utterance():
    voc = tiny_vocoder()
    linear = random_mel(12).exp()
    stream = StreamingVocoder(voc, lookahead=1, postfilter=0, mel_correction=0)
    with pytest.warns(MelScaleWarning) as record:
        for i in range(0, 12, 3):
            stream.push(linear[:, i : i + 3])
        stream.flush()
    assert len(record) == 1 and "linear mel" in str(record[0].message)
    quiet = StreamingVocoder(voc, lookahead=1, postfilter=0, mel_correction=0, check_input=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.push(linear)
        quiet.flush()


def test_the_default_seed_is_fixed():
    voc = tiny_vocoder()
    mel = random_mel(8)
    assert torch.equal(voc(mel), voc(mel)) and torch.equal(voc(mel), voc(mel, seed=0))
    assert torch.equal(StreamingVocoder(voc).push(mel), StreamingVocoder(voc, seed=0).push(mel))


def test_to_moves_the_vocoder_and_returns_it():
    voc = tiny_vocoder()
    mel = random_mel(6)
    before = voc(mel)
    _ = voc.postfilter  # a cache built on the old device is dropped
    assert voc.to("cpu") is voc and voc._postfilter is None
    assert all(p.device.type == "cpu" for p in voc.model.parameters())
    torch.testing.assert_close(voc(mel), before, rtol=0, atol=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            voc.to("cuda")


def test_mel_scales_pcm_resamples_and_names_stereo(mini_corpus):
    import soxr

    voc = tiny_vocoder()
    wav = load_wav(mini_corpus / "wavs" / "LJ001-0001.wav")[:22050]
    reference = voc.mel(wav)
    pcm = np.round(wav * 32767).astype(np.int16)
    np.testing.assert_allclose(voc.mel(pcm), reference, atol=2e-3)  # int16 scaled, not taken as is
    np.testing.assert_allclose(voc.mel(torch.from_numpy(pcm)).numpy(), reference, atol=2e-3)
    with pytest.raises(ValueError, match="int64 has no known full scale"):
        voc.mel(pcm.astype(np.int64))
    at_16k = soxr.resample(wav, 22050, 16000, quality="HQ")
    resampled = voc.mel(at_16k, sample_rate=16000)
    assert abs(resampled.shape[-1] - reference.shape[-1]) <= 1
    frames = min(resampled.shape[-1], reference.shape[-1])
    inner = slice(2, frames - 2)
    assert np.abs(resampled[:, inner] - reference[:, inner]).mean() < 0.2  # the same speech
    unresampled = voc.mel(at_16k)  # read as 22050 Hz: fewer frames, every band shifted
    assert unresampled.shape[-1] < frames - 10
    assert np.abs(unresampled[:, 2:-2] - reference[:, 2 : unresampled.shape[-1] - 2]).mean() > 1.0
    with pytest.raises(ValueError, match=r"looks like \(samples, channels\).*mix it down"):
        voc.mel(np.stack([wav, wav], axis=1))
    assert voc.mel(wav, frames=10).shape == (80, 10)
    with pytest.raises(ValueError, match="frames=999"):
        voc.mel(wav, frames=999)


def test_reanalysing_the_output_gives_the_input_frame_count():
    voc = tiny_vocoder()
    mel = random_mel(9)
    audio = voc(mel)
    assert voc.mel(audio).shape[-1] == 10  # F * hop samples re-analyse to F + 1 centred frames
    assert voc.mel(audio, frames=mel.shape[-1]).shape == mel.shape


# ------------------------------------------------------------------ command line
def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "waveflow", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_the_cli_refuses_a_wrong_scale_unless_forced(tmp_path):
    ckpt = tmp_path / "tiny.pt"
    write_tiny_checkpoint(ckpt)
    np.save(tmp_path / "db.npy", (random_mel(10) * 20 / math.log(10)).numpy())
    out = tmp_path / "db.wav"
    result = run_cli("synthesize", tmp_path / "db.npy", "-o", out, "--checkpoint", ckpt)
    assert result.returncode == 1 and not out.exists(), result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "db.npy: looks like a dB mel" in lines[0] and "--force" in lines[0], result.stderr
    result = run_cli("synthesize", tmp_path / "db.npy", "-o", out, "--checkpoint", ckpt, "--force")
    assert result.returncode == 0 and out.exists() and "dB mel" in result.stderr, result


def test_the_cli_hint_for_a_time_major_mel_is_a_flag_it_has(tmp_path):
    ckpt = tmp_path / "tiny.pt"
    write_tiny_checkpoint(ckpt)
    np.save(tmp_path / "tm.npy", random_mel(10).T.contiguous().numpy())
    result = run_cli("synthesize", tmp_path / "tm.npy", "-o", tmp_path / "tm.wav", "--checkpoint", ckpt)
    assert result.returncode == 1 and "pass --time-major" in result.stderr and "time_major=True" not in result.stderr
    result = run_cli("synthesize", tmp_path / "tm.npy", "-o", tmp_path / "tm.wav", "--checkpoint", ckpt, "--time-major")
    assert result.returncode == 0 and (tmp_path / "tm.wav").exists(), result.stderr


def test_the_cli_names_a_hifigan_mel_given_its_reference(tmp_path, clip):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    ckpt = tmp_path / "tiny.pt"
    write_tiny_checkpoint(ckpt)
    audio = torch.from_numpy(load_wav(clip)[: 22050 // 2])
    import soundfile as sf

    sf.write(tmp_path / "ref.wav", audio.numpy(), 22050)
    np.save(tmp_path / "hifigan.npy", MelSpectrogram(MelConfig(preset="hifigan"))(audio[None])[0].numpy())
    args = ("synthesize", tmp_path / "hifigan.npy", "-o", tmp_path / "h.wav", "--checkpoint", ckpt)
    result = run_cli(*args, "--reference", tmp_path / "ref.wav")
    assert result.returncode == 1 and "HiFi-GAN convention" in result.stderr, result.stderr
    assert not (tmp_path / "h.wav").exists()

"""The pulse source: pulses found where they are, phase locked to them in training and free at
synthesis, carried across stream chunks, and a model with it exact (inverse, log-det) and
trainable through the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import brute_force_logdet, perturb_
from test_lpc import speechlike
from test_pitch import harmonic
from test_streaming import stream_all
from test_vocoder import random_mel

from waveflow.config import ConfigError, make_config, model_preset
from waveflow.dsp.audio import MelSpectrogram
from waveflow.infer.streaming import StreamingVocoder, snr_db
from waveflow.infer.vocoder import Vocoder
from waveflow.nn.checkpoint import CheckpointError, warm_start
from waveflow.nn.model import WaveGlow
from waveflow.nn.source import CHANNELS, PulseSource, _phase_from_pulses, pick_pulses


def pulse_residual(period: float, length: int, seed: int = 0, jitter: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Unit pulses every ``period`` samples (optionally jittered) over noise 10x smaller."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(period * (1 + jitter * rng.uniform(-1, 1, int(length / period) + 2)))
    times = times[times < length - 1].astype(np.int64)
    e = 0.1 * rng.standard_normal(length)
    e[times] += rng.choice([-1.0, 1.0], len(times)) * 2.0
    return e, times


# ------------------------------------------------------------------ pulses and phase
@pytest.mark.parametrize("period,jitter", [(80.0, 0.0), (123.4, 0.1), (190.0, 0.2)])
def test_pulses_are_found_where_they_are(period, jitter):
    e, truth = pulse_residual(period, 8000, seed=int(period), jitter=jitter)
    # the mel's period is only an estimate: 5% off must still find every pulse
    found = pick_pulses(np.abs(e), np.full(8000, period * 1.05), np.ones(8000, bool))
    assert found[0] <= truth[0] + period  # the first is in the first period
    # every pulse after it, and nothing else (past the last pulse the search goes on to the run's end)
    np.testing.assert_array_equal(found[found <= truth[-1]], truth[truth >= found[0]])


def test_no_pulses_outside_voiced_runs():
    e, _ = pulse_residual(100.0, 4000)
    voiced = np.zeros(4000, bool)
    voiced[1000:2000] = True
    found = pick_pulses(np.abs(e), np.full(4000, 100.0), voiced)
    assert found.min() >= 1000 and found.max() < 2000 and len(found) in (9, 10, 11)


def test_locked_phase_is_zero_at_pulses_and_linear_between():
    pulses = np.array([50, 150, 260, 400, 490])
    period = np.full(1000, 100.0)
    phase = _phase_from_pulses(pulses, period)
    np.testing.assert_allclose(phase[pulses], 0.0, atol=1e-12)
    np.testing.assert_allclose(phase[150:260], 2 * np.pi * np.arange(110) / 110)
    assert np.all((phase >= 0) & (phase < 2 * np.pi))
    # 400 -> 490 is 0.9 periods: a pulse; after the last one, marks every period
    np.testing.assert_allclose(phase[590], 0.0, atol=1e-12)
    np.testing.assert_allclose(phase[690], 0.0, atol=1e-12)


def test_free_phase_runs_at_the_mel_period_and_resumes_from_a_carried_phase():
    source = PulseSource()
    mel = MelSpectrogram()(harmonic(150.0, 0.5))[None]
    frames = mel.shape[2]
    phase = source.free_phase(mel, frames * 256)
    period = source.frame_tracks(mel)[0][0, 10]
    assert abs(period - 22050 / 150) < 0.03 * 22050 / 150
    dphi = torch.diff(torch.unwrap(phase[0]) if hasattr(torch, "unwrap") else torch.from_numpy(np.unwrap(phase[0])))
    torch.testing.assert_close(dphi[2560:2600], torch.full((40,), 2 * math.pi / float(period), dtype=torch.float64))
    # a window that starts at frame 7 with the phase carried over frames 0..6 continues exactly
    carried = source.advance(mel, frames=7)  # frame 7's period too: frame 6's last samples glide towards it
    rest = source.free_phase(mel[:, :, 7:], (frames - 7) * 256, carried)
    torch.testing.assert_close(torch.cos(rest), torch.cos(phase[:, 7 * 256 :]), atol=1e-9, rtol=0)


def _glide(period: np.ndarray, n: int, centre0: int, hop: int = 256) -> float:
    """Sample n's frequency (cycles per sample), written out: linear between the two frame
    centres around it (frame f centred on centre0 + f * hop), held outside the first and last."""
    pos = (n - centre0) / hop
    if pos <= 0:
        return 1.0 / period[0]
    if pos >= len(period) - 1:
        return 1.0 / period[-1]
    f = math.floor(pos)
    w = pos - f
    return (1 - w) / period[f] + w / period[f + 1]


@pytest.mark.parametrize("frame_offset", [128, 0])  # centred frames (default), hifigan's
def test_free_phase_is_the_carried_phase_plus_the_gliding_steps_before_each_sample(frame_offset):
    """phi(n) = phase0 + sum_{m < n} 2 pi f(m), f = 1 / P gliding from frame centre to frame centre,
    written out sample by sample: sample 0 is at phase0 itself (a window starts where the last
    one left off, not one step later)."""
    source = PulseSource(frame_offset=frame_offset)
    mel = MelSpectrogram()(torch.cat([harmonic(140.0, 0.1), harmonic(190.0, 0.1)]))[None, :, :12]
    period = source.frame_tracks(mel)[0][0].numpy()
    assert period.max() / period.min() > 1.2  # the pitch moves: a held period would differ
    length = 12 * 256
    centre0 = 128 - frame_offset
    for phase0 in (0.0, 1.0):
        phase = source.free_phase(mel, length, phase0)[0].numpy()
        expected, acc = np.empty(length), phase0
        for n in range(length):
            expected[n] = acc % (2 * np.pi)
            acc += 2 * np.pi * _glide(period, n, centre0)
        assert phase[0] == pytest.approx(phase0, abs=1e-12)
        np.testing.assert_allclose(np.cos(phase), np.cos(expected), atol=1e-9)
        # a stream's carried phase: advancing over k frames, then running free over the frames
        # from k on, goes on as the whole track's phase from frame k's centre on (before it,
        # hifigan's window holds the frame's period: it cannot glide from a frame it lacks)
        tracks = torch.from_numpy(period)[None]
        for k in range(12):
            carried = source.advance_periods(tracks, phase0, k)
            rest = source.free_phase(mel[:, :, k:], length - k * 256, carried)[0].numpy()
            np.testing.assert_allclose(np.cos(rest[centre0:]), np.cos(phase[k * 256 + centre0 :]), atol=1e-9)
    with pytest.raises(ValueError, match="13 frames of a track of 12"):
        source.advance_periods(torch.from_numpy(period)[None], 0.0, 13)


def test_sample_frequencies_are_the_frame_frequencies_at_the_centres_and_glide_between():
    source = PulseSource()
    period = torch.tensor([[100.0, 200.0, 200.0]], dtype=torch.float64)
    f = source.sample_frequencies(period, 3 * 256)[0]
    expected = [0.01, 0.005, 0.005, 0.005, 0.0075]  # samples 0, 256, 512, 700 (held after the last), 128
    assert [float(f[n]) for n in (0, 256, 512, 700, 128)] == pytest.approx(expected, rel=1e-12)
    assert bool((torch.diff(f[:257]) < 0).all())


def test_channels_are_silent_where_unvoiced_and_peak_at_the_pulses():
    source = PulseSource()
    silence = torch.full((1, 80, 10), math.log(1e-5))
    phase = source.free_phase(silence, 2560)
    assert torch.count_nonzero(source.channels(silence, phase)) == 0
    voiced = MelSpectrogram()(harmonic(150.0, 0.5))[None]
    ch = source.channels(voiced, torch.zeros(1, 2560, dtype=torch.float64))
    assert ch.shape == (1, CHANNELS, 2560) and float(ch[0, 0, 1000]) > 0.9  # voiced, at a pulse: bump near 1
    assert torch.isfinite(source.channels(torch.full((1, 80, 4), 1e4), torch.zeros(1, 1024))).all()


# ------------------------------------------------------------------ in the model
def source_model(seed: int = 0, **overrides) -> WaveGlow:
    torch.manual_seed(seed)
    cfg = model_preset("tiny", **{"lpc_order": 8, "pulse_source": True, **overrides})
    return perturb_(WaveGlow(cfg), std=0.05, seed=seed)


def test_config_needs_linear_prediction_and_counts_the_channels():
    with pytest.raises(ConfigError, match="lpc_order"):
        model_preset("tiny", pulse_source=True)
    sample = model_preset("tiny", lpc_order=8, pulse_source=True)
    assert sample.source_channels == CHANNELS and sample.cond_channels == (80 + CHANNELS) * sample.n_group
    group = model_preset("realtime", lpc_order=8, pulse_source=True)
    assert group.cond_channels == 80 + CHANNELS * group.n_group


@pytest.mark.parametrize("cond_rate", ["sample", "group"])
def test_model_with_source_inverts_given_the_phase_and_picks_it_from_the_audio(cond_rate):
    overrides = {} if cond_rate == "sample" else {"cond_rate": "group", "upsample_kernel": 128}
    model = source_model(**overrides).double().eval()
    audio = (harmonic(140.0, 0.4).double() + 0.01 * speechlike(8820, seed=1))[None, :8192]
    mel = MelSpectrogram()(audio.float()).double()
    z, logdet = model(audio, mel)  # the phase is picked from the residual
    e, _ = model.lpc(audio, mel)
    phase = model.source.locked_phase(e, mel)
    z2, logdet2 = model(audio, mel, phase=phase)
    torch.testing.assert_close(z, z2, rtol=0, atol=0)
    torch.testing.assert_close(logdet, logdet2, rtol=0, atol=0)
    with torch.no_grad():
        back = model.inverse(z, mel, phase=phase)
    torch.testing.assert_close(back, audio, rtol=0, atol=1e-8)
    # the source reaches the flow: another phase gives another z
    z3, _ = model(audio, mel, phase=torch.remainder(phase + 1.0, 2 * math.pi))
    assert not torch.allclose(z, z3)


def test_model_with_source_log_det_equals_the_brute_force_jacobian():
    cfg = dict(n_flows=2, n_group=4, n_early_every=0, n_layers=1, n_channels=4, lpc_order=3)
    model = source_model(**cfg).double()
    audio = speechlike(256, seed=3)[None]
    mel = random_mel(2, batch=1, seed=3).double() + 3.0  # loud enough to be voiced somewhere
    phase = torch.linspace(0, 40, 256, dtype=torch.float64)[None].remainder(2 * math.pi)
    _, logdet = model(audio, mel, phase=phase)
    brute = brute_force_logdet(lambda x: model(x, mel, phase=phase)[0], audio)
    assert abs(float(logdet[0].detach()) - float(brute)) < 1e-4 * abs(float(brute))


@pytest.mark.parametrize("chunk", [1, 6, 17])
def test_streaming_with_source_equals_offline(chunk):
    cfg = make_config("tiny", {"model": {"lpc_order": 24, "pulse_source": True}})
    voc = Vocoder(source_model(lpc_order=24), cfg)
    mel = MelSpectrogram()(harmonic(160.0, 0.6))  # voiced: the source is on
    offline = voc(mel, seed=3)
    streamed, _ = stream_all(StreamingVocoder(voc, seed=3, lookahead=2, lookback=4), mel, chunk)
    assert streamed.shape == offline.shape
    assert snr_db(offline, streamed) > 80


def test_streaming_with_source_at_the_default_context_is_exact():
    """Default look-ahead and look-back: 127 dB measured (float rounding of the LP filter and the
    phase), one frame less of look-back 92 dB."""
    cfg = make_config("tiny", {"model": {"lpc_order": 24, "pulse_source": True}})
    voc = Vocoder(source_model(lpc_order=24), cfg)
    mel = MelSpectrogram()(harmonic(160.0, 0.6))
    streamed, _ = stream_all(StreamingVocoder(voc, seed=3), mel, 5)
    assert snr_db(voc(mel, seed=3), streamed) > 110


@pytest.mark.parametrize("preset", ["default", "hifigan"])
def test_a_gliding_voice_streams_as_offline_with_the_harmonic_excitation_in_both_conventions(preset):
    """The harmonic step reads the free phase sample by sample, so a phase carried wrong from
    window to window shows at once (a window that cannot glide from the frame before its own
    first centre, under hifigan's frames, measured -2 dB before the carried phase allowed for it)."""
    model = {"lpc_order": 24, "pulse_source": True}
    cfg = make_config("tiny", {"mel": {"preset": preset}, "model": model, "train": {"eval_harmonic": 1.0}})
    torch.manual_seed(0)
    voc = Vocoder(perturb_(WaveGlow(cfg.model, cfg.mel), std=0.05, seed=0), cfg)
    assert voc.model.source.frame_offset == cfg.mel.frame_offset and voc.harmonic_strength == 1.0
    mel = MelSpectrogram()(torch.cat([harmonic(f0, 0.12) for f0 in (140.0, 190.0, 120.0, 170.0)]))
    offline = voc(mel, seed=3)
    assert (offline - voc(mel, seed=3, harmonic=0.0)).abs().max() > 0.05  # the step is on
    for chunk in (1, 5):
        streamed, _ = stream_all(StreamingVocoder(voc, seed=3), mel, chunk)
        assert snr_db(offline, streamed) > 100


def test_padded_batch_with_source_equals_one_by_one():
    cfg = make_config("tiny", {"model": {"lpc_order": 24, "pulse_source": True}})
    voc = Vocoder(source_model(lpc_order=24), cfg)
    long, short = MelSpectrogram()(harmonic(160.0, 0.5)), MelSpectrogram()(harmonic(120.0, 0.3))
    batched = voc([long, short], seed=1)
    torch.testing.assert_close(batched[1], voc(short, seed=1), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ warm start
def test_warm_start_grows_the_conditioning_and_starts_where_the_old_model_ended():
    old = perturb_(WaveGlow(model_preset("tiny", lpc_order=8)), std=0.05)
    new = WaveGlow(model_preset("tiny", lpc_order=8, pulse_source=True))
    grown = warm_start(new, old.state_dict())
    assert len(grown) == old.cfg.n_flows
    audio = speechlike(4096, seed=2)[None].float()
    mel = MelSpectrogram()(audio)
    with torch.no_grad():
        torch.testing.assert_close(new(audio, mel)[0], old(audio, mel)[0], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="only conditioning inputs"):
        warm_start(WaveGlow(model_preset("tiny", lpc_order=8, n_channels=16)), old.state_dict())


@pytest.mark.parametrize("frame_offset", [128, 0])
def test_sample_frequencies_traced_for_export_equal_the_span_form(monkeypatch, frame_offset):
    """Export traces a per-sample form (its sizes stay variables); it is the same function."""
    import waveflow.nn.source as source_module

    source = PulseSource(frame_offset=frame_offset)
    period = torch.tensor([[100.0, 180.0, 120.0, 150.0]], dtype=torch.float64)
    for length in (1, 100, 3 * 256, 3 * 256 + 50, 6 * 256):
        spans = source.sample_frequencies(period, length)
        with monkeypatch.context() as m:
            m.setattr(source_module, "exporting", lambda: True)
            traced = source.sample_frequencies(period, length)
        assert spans.shape == traced.shape == (1, length)
        torch.testing.assert_close(spans, traced, rtol=1e-12, atol=1e-15)

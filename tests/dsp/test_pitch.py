"""Pitch features from the mel: the period of a harmonic signal, periodicity above noise's,
and a model conditioned on them that inverts, streams and exports; both trackers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import perturb_
from test_streaming import stream_all
from test_vocoder import random_mel

from waveflow.config import make_config, model_preset
from waveflow.dsp.audio import MelSpectrogram
from waveflow.dsp.pitch import REFERENCE_HZ, TRACKERS, MelPitch, period_voicing, template_ripples
from waveflow.infer.streaming import StreamingVocoder, snr_db
from waveflow.infer.vocoder import Vocoder
from waveflow.nn.model import WaveGlow


def harmonic(f0: float, seconds: float = 1.0, sr: int = 22050) -> torch.Tensor:
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.cos(2 * np.pi * h * f0 * t) / h for h in range(1, 30) if h * f0 < 8000)
    return torch.from_numpy(0.1 * x / np.abs(x).max()).float()


@pytest.mark.parametrize("tracker", TRACKERS)
@pytest.mark.parametrize("f0", [110.0, 180.0, 260.0])
def test_f0_of_a_harmonic_signal(f0, tracker):
    feats = MelPitch(tracker=tracker)(MelSpectrogram()(harmonic(f0))[None])[0, :, 5:-5]
    estimate = REFERENCE_HZ * torch.exp(feats[0])
    assert torch.all((estimate / f0 - 1).abs() < 0.03), estimate
    assert float(feats[1].min()) > 0.4


@pytest.mark.parametrize("period", [100, 147, 200])
def test_a_whole_period_is_found_exactly(period):
    """A harmonic voice whose period is a whole number of samples: that number, in every frame."""
    feats = MelPitch()(MelSpectrogram()(harmonic(22050 / period, 0.5))[None])
    found, _ = period_voicing(feats, 22050)
    assert (found[0, 3:-3].round() == period).all(), found[0, 3:-3]


# F0s between the grid's points and between whole periods (at 22050 Hz, 97.3 Hz is a period of
# 226.6 samples), over the voice's range.
@pytest.mark.parametrize("f0", [72.1, 97.3, 143.7, 211.1, 318.9, 507.5])
def test_template_tracker_finds_f0_within_a_few_cents_and_calls_it_voiced(f0):
    feats = MelPitch(tracker="template")(MelSpectrogram()(harmonic(f0))[None])
    period, voicing = period_voicing(feats, 22050)
    cents = 1200 * torch.log2(22050 / period[0, 5:-5] / f0).abs()
    assert float(cents.max()) < 3.0, cents.max()  # a whole-period grid is off by up to 9 cents at 300 Hz
    assert float(voicing[0, 5:-5].min()) == 1.0


def test_template_tracker_follows_a_glide_without_octave_jumps():
    sr, seconds = 22050, 1.0
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120.0 * 2 ** (t / seconds)  # one octave up in a second
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.cos(h * phase) / h for h in range(1, 25))
    mel = MelSpectrogram()(torch.from_numpy(0.1 * x / np.abs(x).max()).float())[None]
    period, voicing = period_voicing(MelPitch(tracker="template")(mel), sr)
    frames = torch.arange(period.shape[1]) * 256 / sr
    truth = 120.0 * 2**frames
    cents = 1200 * torch.log2(sr / period[0] / truth).abs()[5:-5]
    assert float(cents.max()) < 25.0, cents.max()
    assert float(voicing[0, 5:-5].min()) > 0.5


@pytest.mark.parametrize("tracker", TRACKERS)
def test_noise_is_less_periodic_than_a_voice(tracker):
    noise = torch.randn(22050, generator=torch.Generator().manual_seed(0)) * 0.05
    voiced = MelPitch(tracker=tracker)(MelSpectrogram()(harmonic(180.0))[None])[0, 1, 5:-5]
    unvoiced = MelPitch(tracker=tracker)(MelSpectrogram()(noise)[None])[0, 1, 5:-5]
    assert float(unvoiced.mean()) < float(voiced.mean()) - 0.2


def test_template_tracker_leaves_noise_and_silence_unvoiced():
    # without the depth weighting the best of 900 templates voices half of white noise's frames
    noise = torch.randn(3 * 22050, generator=torch.Generator().manual_seed(0)) * 0.05
    _, voicing = period_voicing(MelPitch(tracker="template")(MelSpectrogram()(noise)[None]), 22050)
    assert float((voicing[0] > 0.5).float().mean()) < 0.15
    _, voicing = period_voicing(MelPitch(tracker="template")(MelSpectrogram()(torch.zeros(22050))[None]), 22050)
    assert float(voicing.max()) == 0.0


def test_template_ripples_are_normalised_and_tell_octaves_apart():
    _, f0, ripple, depth = template_ripples(22050, 1024, 80, 0.0, 8000.0)
    assert depth[int(np.argmin(np.abs(f0 - 200.0)))] > 4 * depth[0]  # low F0: shallow ripple in the mel
    np.testing.assert_allclose(np.linalg.norm(ripple, axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(ripple.mean(0), 0.0, atol=1e-12)
    i = int(np.argmin(np.abs(f0 - 150.0)))
    j = int(np.argmin(np.abs(f0 - 300.0)))
    # the octave above shares half the peaks and puts a peak where the other has a valley
    assert float(ripple[:, i] @ ripple[:, j]) < 0.5


def test_an_unknown_tracker_is_refused():
    with pytest.raises(ValueError, match="pitch tracker must be one of"):
        MelPitch(tracker="crepe")
    with pytest.raises(ValueError, match=r"model\.pitch_tracker"):
        model_preset("tiny", pitch_tracker="crepe").validate()


@pytest.mark.parametrize("tracker", TRACKERS)
def test_features_are_frame_local_and_finite_for_any_finite_mel(tracker):
    mel = random_mel(30, batch=2, seed=1)
    whole = MelPitch(tracker=tracker)(mel)
    torch.testing.assert_close(MelPitch(tracker=tracker)(mel[:, :, 10:20]), whole[:, :, 10:20])
    for extreme in (-1e4, 1e4, math.log(1e-5)):
        assert torch.isfinite(MelPitch(tracker=tracker)(torch.full((1, 80, 5), extreme))).all()


def pitch_model(seed: int = 0, **overrides) -> WaveGlow:
    torch.manual_seed(seed)
    cfg = model_preset("tiny", **{"lpc_order": 8, "pitch_features": True, **overrides})
    return perturb_(WaveGlow(cfg), std=0.05, seed=seed)


def test_model_with_pitch_features_inverts_and_sees_two_more_channels():
    model = pitch_model().double().eval()
    assert model.cfg.cond_channels == (80 + 2) * model.cfg.n_group
    audio = harmonic(180.0, 0.4).double()[None, :8192]
    mel = MelSpectrogram()(audio.float()).double()
    z, _ = model(audio, mel)
    with torch.no_grad():
        back = model.infer(mel, z=z, length=audio.shape[1])
    torch.testing.assert_close(back, audio, rtol=0, atol=1e-8)


@pytest.mark.parametrize("tracker", TRACKERS)
def test_streaming_with_pitch_features_equals_offline(tracker):
    cfg = make_config("tiny", {"model": {"lpc_order": 24, "pitch_features": True, "pitch_tracker": tracker}})
    voc = Vocoder(pitch_model(lpc_order=24, pitch_tracker=tracker), cfg)
    mel = random_mel(30, seed=3)
    offline = voc(mel, seed=2)
    streamed, _ = stream_all(StreamingVocoder(voc, seed=2, lookahead=2, lookback=4), mel, 7)
    assert snr_db(offline, streamed) > 80


def test_voicing_rises_from_score_half_to_one_over_the_documented_span():
    """period_voicing's contract (pitch.py, source.py, postfilter.py): voicing 0 up to a periodicity
    score of 0.5, rising linearly to 1 at 0.8; the period is the sample rate over the decoded F0.
    Noise scores 0.30-0.65 (mean 0.45) on these features, so where voicing starts decides how much
    of a noisy stretch the post-filter and the pulse source treat as voiced."""
    scores = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    log_f0 = torch.linspace(-1.0, 1.0, 101, dtype=torch.float64)
    period, voicing = period_voicing(torch.stack([log_f0, scores])[None], 22050)
    expected = torch.clamp((scores - 0.5) / 0.3, 0.0, 1.0)
    torch.testing.assert_close(voicing[0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(period[0], 22050 / (REFERENCE_HZ * torch.exp(log_f0)), rtol=1e-12, atol=0)

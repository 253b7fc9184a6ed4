"""Pitch features from the mel: the period of a harmonic signal, periodicity above noise's,
and a model conditioned on them that inverts, streams and exports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import perturb_
from test_streaming import stream_all
from test_vocoder import random_mel

from waveflow.audio import MelSpectrogram
from waveflow.config import make_config, model_preset
from waveflow.model import WaveGlow
from waveflow.pitch import REFERENCE_HZ, MelPitch, period_voicing
from waveflow.streaming import StreamingVocoder, snr_db
from waveflow.vocoder import Vocoder


def harmonic(f0: float, seconds: float = 1.0, sr: int = 22050) -> torch.Tensor:
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.cos(2 * np.pi * h * f0 * t) / h for h in range(1, 30) if h * f0 < 8000)
    return torch.from_numpy(0.1 * x / np.abs(x).max()).float()


@pytest.mark.parametrize("f0", [110.0, 180.0, 260.0])
def test_f0_of_a_harmonic_signal(f0):
    feats = MelPitch()(MelSpectrogram()(harmonic(f0))[None])[0, :, 5:-5]
    estimate = REFERENCE_HZ * torch.exp(feats[0])
    assert torch.all((estimate / f0 - 1).abs() < 0.03), estimate
    assert float(feats[1].min()) > 0.4


@pytest.mark.parametrize("period", [100, 147, 200])
def test_a_whole_period_is_found_exactly(period):
    """A harmonic voice whose period is a whole number of samples: that number, in every frame."""
    feats = MelPitch()(MelSpectrogram()(harmonic(22050 / period, 0.5))[None])
    found, _ = period_voicing(feats, 22050)
    assert (found[0, 3:-3].round() == period).all(), found[0, 3:-3]


def test_noise_is_less_periodic_than_a_voice():
    noise = torch.randn(22050, generator=torch.Generator().manual_seed(0)) * 0.05
    voiced = MelPitch()(MelSpectrogram()(harmonic(180.0))[None])[0, 1, 5:-5]
    unvoiced = MelPitch()(MelSpectrogram()(noise)[None])[0, 1, 5:-5]
    assert float(unvoiced.mean()) < float(voiced.mean()) - 0.2


def test_features_are_frame_local_and_finite_for_any_finite_mel():
    mel = random_mel(30, batch=2, seed=1)
    whole = MelPitch()(mel)
    torch.testing.assert_close(MelPitch()(mel[:, :, 10:20]), whole[:, :, 10:20])
    for extreme in (-1e4, 1e4, math.log(1e-5)):
        assert torch.isfinite(MelPitch()(torch.full((1, 80, 5), extreme))).all()


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


def test_streaming_with_pitch_features_equals_offline():
    cfg = make_config("tiny", {"model": {"lpc_order": 24, "pitch_features": True}})
    voc = Vocoder(pitch_model(lpc_order=24), cfg)
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

"""Denoiser: bias spectrum of silence, removed from the magnitude with the phase kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_vocoder import random_mel, tiny_vocoder

from waveflow.denoiser import BIAS_FRAMES, Denoiser


def test_bias_is_the_mean_magnitude_of_synthesized_silence():
    voc = tiny_vocoder()
    silence = voc(torch.full((80, BIAS_FRAMES), voc.silence), sigma=0.0, seed=0)[0].double().numpy()
    # brute force: Hann-windowed frames of the reflect-padded signal, FFT, magnitude
    padded = np.pad(silence, 512, mode="reflect")
    window = np.hanning(1025)[:-1]
    frames = [padded[i * 256 : i * 256 + 1024] * window for i in range(1 + len(silence) // 256)]
    mags = np.abs(np.fft.rfft(np.stack(frames), axis=1)).T
    expected = mags[:, 2:-2].mean(axis=1)
    np.testing.assert_allclose(voc.denoiser.bias.numpy(), expected, rtol=1e-3, atol=1e-5)


def test_bias_is_computed_once_per_model(monkeypatch):
    voc = tiny_vocoder()
    first = voc.denoiser
    calls = []
    monkeypatch.setattr(Denoiser, "__init__", lambda *a: calls.append(1))
    assert voc.denoiser is first and not calls


def test_strength_zero_keeps_the_audio_and_silence_is_reduced():
    voc = tiny_vocoder()
    audio = voc(random_mel(20), seed=0)
    torch.testing.assert_close(voc.denoiser(audio, 0.0), audio, atol=1e-5, rtol=1e-4)
    silence = voc(torch.full((80, 40), voc.silence), seed=0, sigma=0.0)
    cleaned = voc.denoiser(silence, 1.0)
    assert cleaned.shape == silence.shape
    assert cleaned.square().sum() < 0.5 * silence.square().sum()
    with pytest.raises(ValueError, match="strength"):
        voc.denoiser(audio, -1.0)

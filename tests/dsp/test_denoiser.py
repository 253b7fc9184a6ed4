"""Denoiser: bias spectrum of silence, removed from the magnitude with the phase kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_vocoder import random_mel, tiny_vocoder

from waveflow.dsp.denoiser import BIAS_FRAMES, Denoiser


def test_bias_is_the_mean_magnitude_of_synthesized_silence():
    voc = tiny_vocoder()
    silence = voc(torch.full((80, BIAS_FRAMES), voc.silence), sigma=0.0, seed=0).double().numpy()
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


def nvidia_bias(model, n_mels: int = 80) -> np.ndarray:
    """NVIDIA's rule computed independently: infer an all-zero mel of 88 frames at sigma 0 with
    the flow itself, reflect-pad by n_fft / 2, Hann-window the first 1024 samples, |DFT|."""
    with torch.no_grad():
        audio = model.infer(torch.zeros(1, n_mels, 88), sigma=0.0)[0].double().numpy()
    padded = np.pad(audio, 512, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)  # periodic Hann
    return np.abs(np.fft.rfft(padded[:1024] * window))


def test_nvidia_mode_reproduces_nvidias_bias_rule():
    voc = tiny_vocoder()
    nvidia = Denoiser(voc, mode="nvidia")
    expected = nvidia_bias(voc.model)
    np.testing.assert_allclose(nvidia.bias.double().numpy(), expected, rtol=1e-4, atol=1e-6)
    ours = Denoiser(voc)
    assert not np.allclose(ours.bias.numpy(), expected, rtol=0.05)  # the two rules differ
    with pytest.raises(ValueError, match="denoise mode"):
        Denoiser(voc, mode="other")


def test_nvidia_mode_is_the_default_for_converted_checkpoints(tmp_path):
    from test_vocoder import tiny_setup

    from waveflow.infer.vocoder import Vocoder
    from waveflow.nn.checkpoint import save_checkpoint

    model, cfg = tiny_setup()
    save_checkpoint(tmp_path / "converted.pt", model, cfg, source="nvidia:waveglow_256channels.pt")
    save_checkpoint(tmp_path / "own.pt", model, cfg)
    converted = Vocoder.from_checkpoint(tmp_path / "converted.pt")
    assert converted.denoise_mode == "nvidia" and converted.denoiser.mode == "nvidia"
    own = Vocoder.from_checkpoint(tmp_path / "own.pt")
    assert own.denoise_mode == "waveflow"
    own.denoise_mode = "nvidia"  # switching rebuilds the bias
    np.testing.assert_allclose(own.denoiser.bias.numpy(), converted.denoiser.bias.numpy(), rtol=1e-6)

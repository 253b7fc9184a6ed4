"""Mels from the two front-end families people pair with vocoders feed waveflow correctly.

* Tacotron 2 (NVIDIA; the default convention): reflect-pad n_fft/2, |STFT|, Slaney mel,
  log(clamp(., 1e-5)); F = 1 + N // hop frames for N samples.
* HiFi-GAN (also VITS and many recent acoustic models; preset ``hifigan``): reflect-pad
  (n_fft - hop)/2, no centring, sqrt(re^2 + im^2 + 1e-9); F = N // hop frames.

The references below compute the STFT with an explicit numpy DFT (no torch.stft, no
librosa.stft), as those projects' front ends define it; only the mel filters come from librosa.
A vocoder turns F frames into F * hop samples.
"""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from conftest import perturb_

from waveflow.config import make_config
from waveflow.dsp.audio import MelSpectrogram, load_wav
from waveflow.nn.model import WaveGlow

N_FFT, HOP, SR = 1024, 256, 22050


def _frames(signal: np.ndarray) -> np.ndarray:
    count = 1 + (len(signal) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(count)[:, None]
    return signal[idx]


def _front_end(audio: np.ndarray, style: str) -> np.ndarray:
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    pad = N_FFT // 2 if style == "tacotron2" else (N_FFT - HOP) // 2
    spec = np.fft.rfft(_frames(np.pad(audio, (pad, pad), mode="reflect")) * window, axis=1).T
    if style == "tacotron2":
        mag = np.abs(spec)
    else:
        mag = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    basis = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=80, fmin=0.0, fmax=8000.0)
    return np.log(np.maximum(basis @ mag, 1e-5)).astype(np.float32)


@pytest.mark.parametrize("style, preset", [("tacotron2", "default"), ("hifigan", "hifigan")])
def test_front_end_mels_feed_the_vocoder(clip, style, preset):
    audio = load_wav(clip)[: int(1.3 * SR)]
    n = len(audio)
    reference = _front_end(audio.astype(np.float64), style)
    cfg = make_config("tiny", {"mel": {"preset": preset}})
    ours = MelSpectrogram(cfg.mel)(torch.from_numpy(audio)).numpy()
    expected_frames = 1 + n // HOP if preset == "default" else n // HOP
    assert reference.shape == ours.shape == (80, expected_frames)
    # float64 DFT vs float64 torch.stft: agreement far below any audible difference.
    print("maxdiff", np.abs(ours - reference).max(), np.abs(ours - reference).mean())
    np.testing.assert_allclose(ours, reference, atol=2e-3, rtol=0)
    assert np.abs(ours - reference).mean() < 1e-4

    torch.manual_seed(0)
    model = perturb_(WaveGlow(cfg.model)).eval()
    mel = torch.from_numpy(reference)[None]
    with torch.no_grad():
        out = model.infer(mel, generator=torch.Generator().manual_seed(0))
        # The training pair (audio, its mel) is accepted for either convention.
        z, _ = model(torch.from_numpy(audio)[None], mel)
    assert out.shape == (1, expected_frames * HOP)
    assert torch.isfinite(out).all() and torch.isfinite(z).all()
    if preset == "default":
        assert n <= out.shape[1] < n + HOP  # one extra frame covers the tail
    else:
        assert n - HOP < out.shape[1] <= n  # the tail shorter than a hop has no frame

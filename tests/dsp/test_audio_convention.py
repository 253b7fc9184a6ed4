"""The mel convention of CONVENTIONS.md, checked without the shared corpus and without librosa:
a synthetic signal against a reference written out from the convention's table in numpy.

(test_audio.py compares a real clip with librosa; it needs the corpus and the eval extra. This
file guards the same facts for anyone running the tests from a source distribution.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from waveflow.config import MelConfig
from waveflow.dsp.audio import MelSpectrogram

SR, N_FFT, HOP, N_MELS, F_MAX = 22050, 1024, 256, 80, 8000.0


def slaney_mel(hz: float) -> float:
    """Slaney's mel scale: 3 mels per 200 Hz up to 1 kHz (15 mels), then 27 mels per factor 6.4."""
    return 3 * hz / 200 if hz < 1000 else 15 + 27 * math.log(hz / 1000) / math.log(6.4)


def slaney_hz(mel: float) -> float:
    return 200 * mel / 3 if mel < 15 else 1000 * 6.4 ** ((mel - 15) / 27)


def reference_filterbank() -> np.ndarray:
    """Triangles between consecutive points equally spaced in Slaney mels over 0-8000 Hz, each
    scaled to unit area (height 2 / width in Hz): one band and one bin at a time."""
    points = [slaney_hz(slaney_mel(0.0) + i * (slaney_mel(F_MAX) - slaney_mel(0.0)) / (N_MELS + 1))
              for i in range(N_MELS + 2)]  # fmt: skip
    basis = np.zeros((N_MELS, N_FFT // 2 + 1))
    for m in range(N_MELS):
        lo, centre, hi = points[m], points[m + 1], points[m + 2]
        for k in range(N_FFT // 2 + 1):
            f = k * SR / N_FFT
            if lo < f <= centre:
                basis[m, k] = (f - lo) / (centre - lo)
            elif centre < f < hi:
                basis[m, k] = (hi - f) / (hi - centre)
        basis[m] *= 2 / (hi - lo)
    return basis


def reference_log_mel(audio: np.ndarray, preset: str) -> np.ndarray:
    """The table of CONVENTIONS.md: periodic Hann window, reflect padding, |STFT| (hifigan:
    sqrt(re^2 + im^2 + 1e-9)), Slaney filters, natural log of the mel clamped at 1e-5."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    pad = N_FFT // 2 if preset == "default" else (N_FFT - HOP) // 2
    padded = np.concatenate([audio[pad:0:-1], audio, audio[-2 : -pad - 2 : -1]])  # reflect, edge not repeated
    frames = 1 + (len(padded) - N_FFT) // HOP
    spec = np.stack([np.fft.rfft(padded[f * HOP : f * HOP + N_FFT] * window) for f in range(frames)], axis=1)
    mag = np.abs(spec) if preset == "default" else np.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    return np.log(np.maximum(reference_filterbank() @ mag, 1e-5))


def synthetic_signal() -> np.ndarray:
    """Loud from the first sample (so that the padding shows), a chirp and a tone over noise,
    then a fade into digital silence long enough for whole frames of it (so that the clamp shows)."""
    gen = np.random.default_rng(0)
    n = np.arange(9000)
    voiced = 0.4 * np.sin(2 * np.pi * (150 + 0.05 * n) * n / SR) + 0.2 * np.cos(2 * np.pi * 3000 * n / SR + 0.5)
    audio = voiced + 0.02 * gen.standard_normal(n.size)
    audio[5000:6000] *= np.linspace(1, 1e-4, 1000)
    audio[6000:] = 0.0
    return audio[:8999]  # not a whole number of hops


@pytest.mark.parametrize("preset", ["default", "hifigan"])
def test_log_mel_of_a_synthetic_signal_follows_the_convention(preset):
    audio = synthetic_signal()
    ref = reference_log_mel(audio, preset)
    mel = MelSpectrogram(MelConfig(preset=preset))(torch.from_numpy(audio).float())
    assert mel.dtype == torch.float32
    assert mel.shape == ref.shape == (N_MELS, (1 if preset == "default" else 0) + len(audio) // HOP)
    assert ref.min() == pytest.approx(math.log(1e-5)) and (ref == ref.min()).sum() > 100  # the clamp is exercised
    np.testing.assert_allclose(mel.numpy(), ref, atol=2e-4, rtol=0)


def test_reference_filterbank_is_what_waveflow_uses():
    from waveflow.dsp.audio import mel_filterbank

    np.testing.assert_allclose(
        mel_filterbank(SR, N_FFT, N_MELS, 0.0, F_MAX), reference_filterbank(), atol=1e-9, rtol=1e-6
    )

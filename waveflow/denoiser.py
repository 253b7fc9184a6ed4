"""Bias removal: subtract the model's own noise floor from the magnitude spectrum.

A flow vocoder given a silent mel still produces a faint hiss with a characteristic
spectrum (the "bias"). ``Denoiser`` synthesizes a second of silence once per model with
z = 0, takes the mean magnitude spectrum of that audio, and removes ``strength`` times it
from the magnitude of any audio, keeping the phase.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from waveflow.vocoder import Vocoder

N_FFT = 1024
HOP = 256
BIAS_FRAMES = 88  # about one second of silent mel


class Denoiser:
    """``denoiser(audio (B, T), strength) -> (B, T)``; the bias spectrum ``(n_fft // 2 + 1,)``
    is computed from ``vocoder`` in the constructor and kept."""

    def __init__(self, vocoder: Vocoder, n_fft: int = N_FFT, hop_length: int = HOP) -> None:
        self.n_fft, self.hop_length = n_fft, hop_length
        self.window = torch.hann_window(n_fft, device=vocoder.device)
        mel = torch.full((1, vocoder.n_mels, BIAS_FRAMES + vocoder.tail_frames), vocoder.silence)
        with torch.no_grad():
            # sigma = 0: z = 0, the model's deterministic output for silence
            audio = vocoder.synthesize_window(mel.to(vocoder.device), 0, seed=0, sigma=0.0)
            audio = audio[:, : BIAS_FRAMES * vocoder.hop_length]
            mag = self._stft(audio).abs()
        # The frames at either end see reflect padding: average the interior only.
        self.bias = mag[0, :, 2:-2].mean(dim=1).clone()

    def _stft(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.stft(
            audio.float(), self.n_fft, self.hop_length, self.n_fft, self.window, center=True, return_complex=True
        )

    def __call__(self, audio: torch.Tensor, strength: float = 0.1) -> torch.Tensor:
        """Remove ``strength`` x the bias magnitude from audio ``(B, T)``; same shape and device."""
        if strength < 0:
            raise ValueError(f"denoise strength must be >= 0, got {strength}")
        if audio.shape[-1] <= self.n_fft // 2:
            return audio  # too short for the reflect-padded STFT; nothing meaningful to remove
        with torch.no_grad():
            spec = self._stft(audio)
            mag = (spec.abs() - strength * self.bias.to(spec.device)[:, None]).clamp(min=0.0)
            spec = torch.polar(mag, spec.angle())
            out = torch.istft(spec, self.n_fft, self.hop_length, self.n_fft, self.window, length=audio.shape[-1])
        return out.to(audio.dtype)

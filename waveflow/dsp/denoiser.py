"""Bias removal: subtract the model's own noise floor from the magnitude spectrum.

A flow vocoder given a silent mel still produces a faint hiss with a characteristic
spectrum (the "bias"). ``Denoiser`` synthesizes it once per model with z = 0 (two rules,
``mode``, below) and removes ``strength`` times it from the magnitude of any audio, keeping
the phase.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Synthesizer(Protocol):
    """What the denoiser needs of a vocoder (``waveflow.infer.vocoder.Vocoder`` is one); a protocol,
    so that this module sits below the vocoder instead of importing it back."""

    device: torch.device
    tail_frames: int

    @property
    def n_mels(self) -> int: ...

    @property
    def hop_length(self) -> int: ...

    @property
    def silence(self) -> float: ...

    def synthesize_window(self, mel: torch.Tensor, start_frame: int, seed: int, sigma: float) -> torch.Tensor: ...


N_FFT = 1024
HOP = 256
BIAS_FRAMES = 88  # about one second of silent mel


MODES = ("waveflow", "nvidia")


class Denoiser:
    """``denoiser(audio (B, T), strength) -> (B, T)``; the bias spectrum ``(n_fft // 2 + 1,)``
    is computed from ``vocoder`` in the constructor and kept.

    ``mode`` says how the bias is taken, both with z = 0 (sigma 0):

    - ``"waveflow"``: from a second of the silence mel (every band at the log floor), the mean
      magnitude of the interior frames (the edge frames see reflect padding): the model's hiss
      when told "silence".
    - ``"nvidia"``: NVIDIA's ``denoiser.py`` rule: from 88 frames of an all-zero log-mel (a
      mid-level, not a silent, mel), the magnitude of frame 0 alone. Use it to reproduce
      NVIDIA's outputs and strengths with their checkpoints; it is louder than the silence
      bias, so the same strength removes more.
    """

    def __init__(self, vocoder: Synthesizer, n_fft: int = N_FFT, hop_length: int = HOP, mode: str = "waveflow") -> None:
        if mode not in MODES:
            raise ValueError(f"denoise mode {mode!r}: expected one of {list(MODES)}")
        self.n_fft, self.hop_length, self.mode = n_fft, hop_length, mode
        self.window = torch.hann_window(n_fft, device=vocoder.device)
        if mode == "nvidia":
            mel = torch.zeros(1, vocoder.n_mels, BIAS_FRAMES)
        else:
            mel = torch.full((1, vocoder.n_mels, BIAS_FRAMES + vocoder.tail_frames), vocoder.silence)
        with torch.no_grad():
            audio = vocoder.synthesize_window(mel.to(vocoder.device), 0, seed=0, sigma=0.0)
            audio = audio[:, : BIAS_FRAMES * vocoder.hop_length]
            mag = self._stft(audio).abs()
        self.bias = (mag[0, :, 0] if mode == "nvidia" else mag[0, :, 2:-2].mean(dim=1)).clone()

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

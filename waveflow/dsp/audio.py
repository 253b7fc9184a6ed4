"""Log-mel front end and wav I/O.

The mel convention (the vocoder's input), by default that of Tacotron 2 and WaveGlow:
22050 Hz mono audio in [-1, 1]; STFT with n_fft 1024, a 1024-sample periodic Hann window and
hop 256, reflect-padded by n_fft/2 on each side (frames = 1 + samples // 256); magnitude
(power 1); 80 Slaney-scale mel bands over 0-8000 Hz with Slaney area normalisation (librosa's
``filters.mel`` defaults); natural log of ``clamp(mel, min=1e-5)``; layout ``(n_mels, frames)``
or ``(batch, n_mels, frames)``, float32. ``preset="hifigan"`` (HiFi-GAN, VITS) pads
(n_fft - hop)/2 on each side with ``center=False`` (frames = samples // 256) and takes
``sqrt(re^2 + im^2 + 1e-9)``. ``MelConfig`` holds these numbers.
"""

from __future__ import annotations

import io
import logging
import math
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from waveflow.atomic import atomic_open
from waveflow.config import MelConfig

log = logging.getLogger("waveflow")

_HIFIGAN_MAG_EPS = 1e-9
# The values a log-mel of the convention takes: its floor log(1e-5), and a ceiling no real mel
# reaches (a full-scale square wave reaches 2.5). Pitch and linear prediction clamp to it.
LOG_MEL_RANGE = (math.log(1e-5), 6.0)


def hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    linear = freq / f_sp
    with np.errstate(divide="ignore"):
        logpart = min_log_mel + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep
    return np.where(freq >= min_log_hz, logpart, linear)


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular Slaney-scale filters with Slaney area normalisation, shape (n_mels, n_fft // 2 + 1)."""
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights


def sample_frames(
    start: int, length: int, frames: int, hop: int, offset: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The mel frame of each sample ``start .. start + length - 1``, ``(length,)``: sample n
    belongs to frame ``(n + offset) // hop`` (``offset`` hop / 2 for centred frames, 0 when
    frame f starts at sample f * hop), clamped to the mel's ``frames``."""
    n = torch.arange(start, start + length, device=device)
    return torch.div(n + offset, hop, rounding_mode="floor").clamp(0, frames - 1)


class DeviceConstants:
    """Named constant tensors kept off a module's buffers, so that ``.half()`` or ``.to(dtype)``
    on an enclosing model never degrades them; ``get`` copies them once per device."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        self._cpu = tensors
        self._on_device: dict[torch.device, dict[str, torch.Tensor]] = {}

    def get(self, name: str, device: torch.device) -> torch.Tensor:
        if device not in self._on_device:
            self._on_device[device] = {k: v.to(device) for k, v in self._cpu.items()}
        return self._on_device[device][name]


class MelSpectrogram(nn.Module):
    """Waveform ``(B, T)`` or ``(T,)`` in [-1, 1] -> log-mel ``(B, n_mels, frames)``, float32.

    Runs on whatever device the module is on; frames = 1 + T // hop (default preset) or
    T // hop (hifigan preset).
    """

    def __init__(self, cfg: MelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or MelConfig()
        cfg.validate()
        # Window and filterbank are float64 constants kept off the module's buffers, so that
        # .half() or .to(dtype) on an enclosing model never degrades them; a copy per device is
        # made on first use.
        self._consts = DeviceConstants(
            window=torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64),
            basis=torch.from_numpy(mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)),
        )

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    def min_samples(self) -> int:
        """Shortest input the reflect padding accepts (and that gives at least one frame)."""
        if self.cfg.preset == "hifigan":
            return max(self.cfg.hop_length, (self.cfg.n_fft - self.cfg.hop_length) // 2 + 1)
        return self.cfg.n_fft // 2 + 1

    def magnitude(self, audio: torch.Tensor) -> torch.Tensor:
        """Linear magnitude spectrogram ``(B, n_fft // 2 + 1, frames)``."""
        cfg = self.cfg
        window = self._consts.get("window", audio.device)
        if cfg.preset == "hifigan":
            pad = (cfg.n_fft - cfg.hop_length) // 2
            audio = F.pad(audio.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
            spec = torch.stft(
                audio, cfg.n_fft, cfg.hop_length, cfg.win_length, window, center=False, return_complex=True
            )
            return torch.sqrt(spec.real.square() + spec.imag.square() + _HIFIGAN_MAG_EPS)
        spec = torch.stft(
            audio,
            cfg.n_fft,
            cfg.hop_length,
            cfg.win_length,
            window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        return spec.abs()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(audio):
            raise TypeError(f"audio must be a torch.Tensor, got {type(audio).__name__}")
        squeeze = audio.dim() == 1
        if squeeze:
            audio = audio.unsqueeze(0)
        if audio.dim() != 2:
            raise ValueError(f"audio has shape {tuple(audio.shape)}; expected (batch, samples) or (samples,)")
        if audio.shape[-1] < self.min_samples():
            raise ValueError(
                f"audio has {audio.shape[-1]} samples; the mel needs at least {self.min_samples()} "
                f"(n_fft={self.cfg.n_fft}, preset {self.cfg.preset!r})"
            )
        # STFT, filterbank and log run in float64 whatever the input dtype or autocast: in float32
        # the quietest bands (mel near the 1e-5 clamp) drift by up to 1e-3 in log, and the cost
        # is negligible next to the vocoder.
        with torch.autocast(device_type=audio.device.type, enabled=False):
            mag = self.magnitude(audio.double())
            mel = torch.matmul(self._consts.get("basis", audio.device), mag)
            mel = torch.log(torch.clamp(mel, min=self.cfg.clamp_min)).float()
        return mel.squeeze(0) if squeeze else mel


def load_wav(path: str | Path, sample_rate: int = 22050) -> np.ndarray:
    """Read a wav as float32 mono in [-1, 1] at ``sample_rate``.

    Stereo is averaged to mono and another rate is resampled with soxr (quality HQ, the same
    resampler as librosa's ``soxr_hq``); both are logged so the user knows the file was not
    used as is.
    """
    import soundfile as sf

    path = Path(path)
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        raise ValueError(f"{path}: cannot read audio ({exc})") from None
    if audio.shape[1] > 1:
        log.warning("%s: %d channels mixed down to mono", path, audio.shape[1])
        audio = audio.mean(axis=1)
    else:
        audio = audio[:, 0]
    if sr != sample_rate:
        import soxr

        log.warning("%s: resampled from %d Hz to %d Hz", path, sr, sample_rate)
        audio = soxr.resample(audio, sr, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(audio, dtype=np.float32)


def save_wav(path: str | Path, audio: np.ndarray | torch.Tensor, sample_rate: int = 22050) -> None:
    """Write 16-bit PCM mono atomically: a temp file beside ``path``, then a rename.

    Nothing is left at ``path`` if writing fails.
    """
    save_wav_pieces(path, [audio], sample_rate)


# A RIFF chunk size is 32 bits: 16-bit mono holds 2**31 - 23 samples (27 h at 22050 Hz).
WAV_MAX_SAMPLES = (2**32 - 1 - 36) // 2


def save_wav_pieces(path: str | Path, pieces: Iterable[np.ndarray | torch.Tensor], sample_rate: int = 22050) -> int:
    """Write consecutive pieces of audio as one 16-bit PCM mono wav, atomically, holding one
    piece at a time in memory (an hour of audio streams to disk as it is synthesized).

    The bytes equal ``soundfile``'s 16-bit WAV of the whole audio: samples clipped to
    [-1, 32767/32768], a 44-byte header whose sizes are filled in at the end. A piece with NaN
    or Inf, an error from the iterator or a full disk leaves nothing at ``path`` (the previous
    file, if any, is intact). Returns the number of samples written.
    """
    import soundfile as sf

    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ValueError(f"{path}: output folder {directory} does not exist")
    samples = 0
    with atomic_open(path) as handle:
        handle.write(_wav_header(0, sample_rate))
        for piece in pieces:
            if torch.is_tensor(piece):
                piece = piece.detach().float().cpu().numpy()
            piece = np.asarray(piece, dtype=np.float32).reshape(-1)
            if not np.all(np.isfinite(piece)):
                raise ValueError(f"{path}: refusing to write audio that contains NaN or Inf")
            samples += piece.size
            if samples > WAV_MAX_SAMPLES:
                raise ValueError(f"{path}: {samples} samples do not fit a wav file (at most {WAV_MAX_SAMPLES})")
            # libsndfile's own float -> int16 conversion, so the bytes equal sf.write's; encoded
            # in memory and written in one call, so that an out-of-space error reaches
            # atomic_open as such instead of surfacing inside soundfile's I/O callbacks
            raw = io.BytesIO()
            sf.write(raw, np.clip(piece, -1.0, 32767.0 / 32768.0), sample_rate, subtype="PCM_16", format="RAW")
            handle.write(raw.getbuffer())
        handle.seek(0)
        handle.write(_wav_header(samples, sample_rate))
    return samples


def _wav_header(samples: int, sample_rate: int) -> bytes:
    """The 44-byte RIFF/WAVE header of ``samples`` 16-bit mono samples."""
    data = 2 * samples
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, 2 * sample_rate, 2, 16)  # PCM, mono, 16-bit
    return struct.pack("<4sI4s4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16) + fmt + struct.pack("<4sI", b"data", data)

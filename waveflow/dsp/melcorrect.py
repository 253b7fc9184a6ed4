"""Mel correction: pull the vocoder's output toward the mel it was asked to render.

A sample of the flow matches its conditioning mel only on average. On the bundled model its
re-analysed mel is 0.53 (log units, about 4.6 dB) from the target per band and frame, where
Griffin-Lim's is 0.11, and PESQ hears it: the band energies wander around the target from
frame to frame. The mel is known at synthesis, so the output can be moved onto it.

One iteration, in the mel's own framing (``MelConfig``: window, hop, centred or hifigan
padding), in float32 unless the audio comes as float64 (float64 doubles the cost and
changes a clip's output by about 1e-6 of its peak):

1. the short-time spectrum ``X`` of the output and its log-mel ``m = log(max(B |X|, clamp))``;
2. per band and frame the log-gain ``d = clamp(target - m, +-max_gain_db)``;
3. per STFT bin the mean of the log-gains of the bands it belongs to, weighted by the
   filterbank (bins outside every band, as those above f_max, about which the mel says
   nothing, take the gain of the nearest bin inside one; frames past the target's end keep
   gain 1);
4. ``X * exp(d_bin)`` back to audio by weighted overlap-add.

The gains are smooth across each band, so the fine structure within a band (the flow's
harmonics and its phase) is kept and only the envelope moves; unit gains give the input back
to float rounding. A re-analysed mel moves part of the way to the target (overlap-add of a
modified spectrum is not consistent), so iterations repeat the step; with the model's output
as the start a few are enough (see the README's measurements; from LP noise or random phase,
as Griffin-Lim starts, it takes many more).

A sample depends on the input within ``n_fft`` samples (rounded up to whole hops:
``step_reach``) per iteration either side: ``margin``. ``StreamingVocoder`` holds its output
back by that much to stay equal to offline synthesis, and trims its window's edges as it goes.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from waveflow.config import MelConfig
from waveflow.dsp.audio import DeviceConstants, mel_filterbank

MAX_GAIN_DB = 12.0  # per band, frame and iteration
_HIFIGAN_MAG_EPS = 1e-9  # as waveflow.dsp.audio's hifigan magnitude


def check_iterations(iterations: int) -> int:
    """An iteration count as an int, or a ValueError saying what was expected."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"mel correction iterations must be an integer >= 0 (0: off), got {iterations!r}")
    return iterations


class MelCorrection(nn.Module):
    """``forward(audio (B, T), mel (B, n_mels, F), iterations)`` -> corrected audio ``(B, T)``."""

    def __init__(self, cfg: MelConfig, max_gain_db: float = MAX_GAIN_DB) -> None:
        super().__init__()
        cfg.validate()
        if not max_gain_db > 0:
            raise ValueError(f"max_gain_db must be > 0, got {max_gain_db}")
        self.cfg = cfg
        self.max_log_gain = max_gain_db * math.log(10) / 20
        self.pad = cfg.n_fft // 2 if cfg.preset == "default" else (cfg.n_fft - cfg.hop_length) // 2
        basis = torch.from_numpy(mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max))
        weight = basis.T.sum(dim=1)
        spread = basis.T / weight.clamp(min=1e-12)[:, None]  # (bins, n_mels): each row sums to 1 or 0
        # Bins outside every band (DC below f_min's first slope, the bins above f_max) take the
        # gain of the nearest bin inside one: a uniform gain then scales every bin alike.
        inside = torch.nonzero(weight > 0).squeeze(1)
        nearest = inside[(torch.arange(len(weight))[:, None] - inside[None, :]).abs().argmin(dim=1)]
        spread = spread[nearest]
        lead = (cfg.n_fft - cfg.win_length) // 2  # torch.stft centres a shorter window in the frame
        window = F.pad(torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64), (lead, lead))
        self._consts = DeviceConstants(basis=basis, spread=spread, window=window)

    @classmethod
    def for_mel(cls, cfg: MelConfig) -> MelCorrection:
        return cls(cfg)

    @property
    def step_reach(self) -> int:
        """How far one iteration reaches: ``n_fft`` rounded up to whole hops."""
        return -(-self.cfg.n_fft // self.cfg.hop_length) * self.cfg.hop_length

    def margin(self, iterations: int) -> int:
        """Samples either side of a sample that its output depends on."""
        return iterations * self.step_reach

    def forward(
        self, audio: torch.Tensor, mel: torch.Tensor, iterations: int, trim_start: bool = False, trim_end: bool = False
    ) -> torch.Tensor:
        """``audio (B, T)`` whose sample 0 is the start of ``mel``'s frame 0's hop; ``mel (B, n_mels, F)``
        the target log-mel. Returns the corrected audio, same shape and dtype.

        ``trim_start`` / ``trim_end`` (for a window cut from a longer signal, as streaming
        takes): after each iteration but the last, drop ``step_reach`` samples from that end,
        where the window's own edge has made the output differ from the longer signal's; the
        result is shorter by ``(iterations - 1) * step_reach`` per trimmed end, and what is
        left more than ``step_reach`` from a trimmed end is what the whole signal gives.
        """
        check_iterations(iterations)
        if audio.dim() != 2 or mel.dim() != 3 or mel.shape[0] != audio.shape[0] or mel.shape[1] != self.cfg.n_mels:
            raise ValueError(
                f"mel correction takes audio (B, T) and mel (B, {self.cfg.n_mels}, frames); "
                f"got {tuple(audio.shape)} and {tuple(mel.shape)}"
            )
        if iterations == 0 or audio.shape[1] == 0:
            return audio
        device = audio.device
        dtype = torch.promote_types(audio.dtype, torch.float32)  # float64 input stays float64
        basis, spread, window = (self._consts.get(k, device).to(dtype) for k in ("basis", "spread", "window"))
        cfg = self.cfg
        target = mel.to(device, dtype)
        x = audio.to(dtype)
        cut = self.step_reach
        with torch.autocast(device_type=device.type, enabled=False):
            for step in range(iterations):
                if step and trim_start:
                    x, target = x[:, cut:], target[:, :, cut // cfg.hop_length :]
                if step and trim_end:
                    x = x[:, : x.shape[1] - cut]
                spec = self._stft(x, window)  # (B, frames, bins)
                power = spec.real.square() + spec.imag.square()  # |X|^2 without complex abs's slow hypot
                mag = (power if cfg.preset == "default" else power + _HIFIGAN_MAG_EPS).sqrt()
                current = torch.log(torch.matmul(mag, basis.T).clamp(min=cfg.clamp_min))  # (B, frames, n_mels)
                n = min(current.shape[1], target.shape[2])
                d = (target[:, :, :n].transpose(1, 2) - current[:, :n]).clamp(-self.max_log_gain, self.max_log_gain)
                d = F.pad(d, (0, 0, 0, current.shape[1] - n))  # frames past the target's end: gain 1
                x = self._istft(spec * torch.exp(torch.matmul(d, spread.T)), window, x.shape[1])
        return x.to(audio.dtype)

    def _stft(self, x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        # Reflect padding as the mel's analysis does; a clip shorter than the padding takes zeros.
        mode = "reflect" if x.shape[1] > self.pad else "constant"
        padded = F.pad(x.unsqueeze(1), (self.pad, self.pad), mode=mode).squeeze(1)
        frames = padded.unfold(-1, self.cfg.n_fft, self.cfg.hop_length)  # (B, frames, n_fft)
        return torch.fft.rfft(frames * window, dim=-1)

    def _istft(self, spec: torch.Tensor, window: torch.Tensor, length: int) -> torch.Tensor:
        frames = torch.fft.irfft(spec, n=self.cfg.n_fft, dim=-1) * window  # (B, frames, n_fft)
        out = _overlap_add(frames, self.cfg.hop_length)
        envelope = _overlap_add(window.square().expand(1, frames.shape[1], -1), self.cfg.hop_length)
        return (out / envelope.clamp(min=1e-10))[:, self.pad : self.pad + length]


def _overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """``(B, F, n)`` frames ``hop`` apart -> ``(B, (F - 1) hop + n)``, summed where they overlap."""
    batch, count, n = frames.shape
    if n % hop:  # the general case; F.fold is several times slower than the sums below
        total = (count - 1) * hop + n
        return F.fold(frames.transpose(1, 2), (1, total), (1, n), stride=(1, hop)).reshape(batch, total)
    r = n // hop  # every hop-long piece of the output is the sum of r pieces of consecutive frames
    pieces = frames.reshape(batch, count, r, hop)
    out = frames.new_zeros(batch, count + r - 1, hop)
    for j in range(r):
        out[:, j : j + count] += pieces[:, :, j]
    return out.reshape(batch, -1)

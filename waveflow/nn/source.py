"""A pulse source phase-locked to the voice: sample-rate conditioning that tells the flow
where the glottal pulses are.

A flow trained by maximum likelihood on the LP residual learns the envelope and timing of
speech quickly, but hardly any harmonics: the periodic part of the residual is a small share
of its variance (a long-term predictor removes about 1 dB), so the likelihood has little to
gain from it, and a source at the right period but a free-running phase gains nothing at all.
This module gives the flow the phase of the real pulses, so that the likelihood can use it.

Per sample n, from the mel alone (``MelPitch``: period P and periodicity score per frame,
sample n in frame ``(n + frame_offset) // hop``):

- voicing ``v = clip((score - VOICED) / VOICED_SPAN, 0, 1)`` (``pitch.period_voicing``);
- three channels ``v * exp(BUMP * (cos(phi) - 1))`` (a narrow peak at each pulse),
  ``v * cos(phi)`` and ``v * sin(phi)``, squeezed like the audio and appended to the
  conditioning of every coupling.

The phase ``phi`` is where the two uses differ:

- training (``locked_phase``): pulses are picked in the real LP residual (in voiced runs, the
  largest ``|e|`` within 0.7..1.3 periods of the previous pulse) and ``phi`` rises linearly
  from 0 to 2 pi between consecutive pulses (at the mel's period outside voiced runs). The
  likelihood is exact, and conditional on those pulse times;
- synthesis (``free_phase``): ``phi`` runs free at the mel's period, ``phi(n) = phase0 +
  sum_{m < n} 2 pi f(m)``, the frequency ``f = 1 / P`` gliding from frame centre to frame
  centre (``sample_frequencies``); a stream carries ``phase0`` from chunk to chunk.

A frame's period is the pitch at the frame's centre, so between two centres the frequency
glides linearly; before the first centre and after the last it holds. Holding each frame's
period over the hop that starts at its centre (the first version) lags the pitch by half a
hop and steps it at every frame boundary, which smears the harmonics wherever the voice
glides. With the bundled model's defaults the glide raised DistillMOS / DNSMOS OVRL / PESQ-wb
from 4.18 / 3.06 / 3.40 to 4.28 / 3.27 / 3.62 on the two clips it never trained on, from
4.21 / 3.00 / 3.60 to 4.26 / 3.19 / 3.80 on 8 of its training clips, and from 4.20 / 2.83 /
3.50 to 4.22 / 3.07 / 3.69 on clips resampled to a lower and a higher voice
(docs/naturalness.md). Training's locked phase is unchanged.

Pulse picking runs in numpy on the CPU (a few ms per training batch); synthesis is tensor
code on any device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from waveflow.config import MelConfig
from waveflow.dsp.audio import sample_frames
from waveflow.dsp.harmonic import harmonic_excitation
from waveflow.dsp.pitch import MelPitch, period_voicing
from waveflow.nn.lpc import exporting

CHANNELS = 3  # bump, cos, sin
BUMP = 30.0  # sharpness of the pulse channel
SEARCH = (0.7, 1.3)  # where the next pulse is looked for, in periods after the last one


class PulseSource(nn.Module):
    """Source channels ``(B, CHANNELS, L)`` for ``L`` samples of a mel ``(B, n_mels, F)``."""

    def __init__(
        self,
        n_mels: int = 80,
        sample_rate: int = 22050,
        n_fft: int = 1024,
        hop_length: int = 256,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        frame_offset: int = 128,
        tracker: str = "comb",
    ) -> None:
        super().__init__()
        self.pitch = MelPitch(n_mels, sample_rate, n_fft, f_min, f_max, tracker)
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.frame_offset = frame_offset

    @classmethod
    def for_mel(cls, mel: MelConfig, tracker: str = "comb") -> PulseSource:
        """The pulse source for a mel convention, reading the pitch with ``tracker`` (the model's)."""
        return cls(
            mel.n_mels,
            mel.sample_rate,
            mel.n_fft,
            mel.hop_length,
            mel.f_min,
            mel.f_max,
            mel.frame_offset,
            tracker=tracker,
        )

    def forward(
        self,
        mel: torch.Tensor,
        length: int,
        phase: torch.Tensor | None = None,
        phase0: torch.Tensor | float = 0.0,
        residual: torch.Tensor | None = None,
        tracks: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Source channels ``(B, CHANNELS, length)`` in the mel's dtype, at ``phase`` ``(B, length)``
        when given, else locked to pulses picked in the LP ``residual`` (training), else running
        free from ``phase0`` (synthesis). The mel's pitch tracks are computed once (or given:
        ``frame_tracks(mel)``)."""
        period, voicing = self.frame_tracks(mel) if tracks is None else tracks
        if phase is None and residual is not None:
            phase = self._locked(residual, period, voicing)
        elif phase is None:
            phase = self._free(period, length, phase0)
        return self._channels(voicing, phase, mel.dtype)

    # ------------------------------------------------------------------ tracks
    def frame_tracks(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Period in samples and voicing in [0, 1] per frame, ``(B, F)`` float64 each."""
        return period_voicing(self.pitch(mel), self.sample_rate)

    def _frames(self, length: int, frames: int, device: torch.device) -> torch.Tensor:
        """The frame of each of the window's samples 0..length (sample 0 at frame 0's offset)."""
        return sample_frames(0, length, frames, self.hop_length, self.frame_offset, device)

    # ------------------------------------------------------------------ phase
    def free_phase(
        self,
        mel: torch.Tensor,
        length: int,
        phase0: torch.Tensor | float = 0.0,
        tracks: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Synthesis phase ``(B, length)`` float64 in [0, 2 pi) of the window's samples 0..length,
        starting at ``phase0`` (a float or ``(B,)``): ``phase0 + sum_{m < n} 2 pi f(m)``, the
        frequency gliding between frame centres (``sample_frequencies``). ``tracks``:
        ``frame_tracks(mel)`` when the caller has them already."""
        return self._free((self.frame_tracks(mel) if tracks is None else tracks)[0], length, phase0)

    def sample_frequencies(self, period: torch.Tensor, length: int) -> torch.Tensor:
        """Per-frame periods ``(B, F)`` -> the frequency in cycles per sample ``(B, length)``
        float64 of each of the window's samples 0..length: ``1 / P_f`` at frame f's centre,
        sample ``frame0_centre + f * hop`` (0 for centred frames), linear between two centres,
        held before the first and after the last."""
        frames, hop, device = period.shape[1], self.hop_length, period.device
        freq = 1.0 / period.double()
        if exporting():  # per sample, in ops that trace with the window's length as a variable
            pos = (torch.arange(length, dtype=torch.float64, device=device) - self.frame0_centre) / hop
            left = torch.floor(pos).clamp(0, frames - 1)
            weight = (pos - left).clamp(0.0, 1.0)
            left = left.long()
            right = (left + 1).clamp(max=frames - 1)
            return torch.lerp(freq[:, left], freq[:, right], weight)
        # per span from one centre to the next (the same weights in every span): a third of the cost
        head = self._head(length)
        spans = -(-(length - head) // hop)  # from each centre to the next: hop samples
        left = torch.arange(spans, device=device).clamp(max=frames - 1)
        right = (left + 1).clamp(max=frames - 1)
        weight = torch.arange(hop, dtype=torch.float64, device=device) / hop  # the same in every span
        a, b = freq[:, left, None], freq[:, right, None]
        glide = (a + (b - a) * weight).reshape(freq.shape[0], -1)[:, : length - head]
        return torch.cat([freq[:, :1].expand(-1, head), glide], dim=1)

    @property
    def frame0_centre(self) -> int:
        """The sample of a window on which its first frame is centred (``MelConfig.frame0_centre``):
        0 for centred frames, ``hop / 2`` for frames that start at their first sample (hifigan's)."""
        return self.hop_length // 2 - self.frame_offset

    def _head(self, length: int) -> int:
        """The samples of a window of ``length`` before its first frame's centre."""
        return min(length, max(0, self.frame0_centre))

    def _free(self, period: torch.Tensor, length: int, phase0: torch.Tensor | float) -> torch.Tensor:
        step = 2 * math.pi * self.sample_frequencies(period, length)
        phase = torch.cumsum(step, dim=1) - step
        start = torch.as_tensor(phase0, dtype=torch.float64, device=period.device).reshape(-1, 1)
        return torch.remainder(phase + start, 2 * math.pi)

    def advance(self, mel: torch.Tensor, phase0: torch.Tensor | float = 0.0, frames: int | None = None) -> torch.Tensor:
        """The free phase ``(B,)`` after ``frames`` of ``mel``'s frames (``hop`` samples each;
        default all), starting at ``phase0``."""
        return self.advance_periods(self.frame_tracks(mel)[0], phase0, frames)

    def advance_periods(
        self, period: torch.Tensor, phase0: torch.Tensor | float = 0.0, frames: int | None = None
    ) -> torch.Tensor:
        """``advance`` from the frames' periods ``(B, F)`` (``frame_tracks``' first track): the
        phase at which ``free_phase`` of the frames from ``frames`` on starts, so that it goes on
        exactly as the phase of the whole track from that frame's centre on (the samples of a
        window before its first centre, where it cannot glide from the frame before, hold).
        The last of the ``frames`` glides towards the period of the frame after it, so a caller
        that goes on past them (a stream) passes that frame too."""
        frames = period.shape[1] if frames is None else frames
        if not 0 <= frames <= period.shape[1]:
            raise ValueError(f"cannot advance over {frames} frames of a track of {period.shape[1]}")
        start = torch.as_tensor(phase0, dtype=torch.float64, device=period.device).reshape(-1)
        if frames == 0:
            return start.expand(period.shape[0]).clone()
        # the whole track's cycles up to frame `frames`' centre, less the held ones a window
        # that starts at that frame counts before its centre
        head = self._head(frames * self.hop_length)
        cycles = self.sample_frequencies(period[:, : frames + 1], frames * self.hop_length + head).sum(dim=1)
        cycles = cycles - head / period[:, min(frames, period.shape[1] - 1)].double()
        return torch.remainder(2 * math.pi * cycles + start, 2 * math.pi)

    def locked_phase(self, residual: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """Training phase ``(B, L)`` float64 from pulses picked in the LP residual ``(B, L)``."""
        return self._locked(residual, *self.frame_tracks(mel))

    def _locked(self, residual: torch.Tensor, period: torch.Tensor, voicing: torch.Tensor) -> torch.Tensor:
        idx = self._frames(residual.shape[1], period.shape[1], period.device)
        per = period[:, idx].detach().cpu().numpy()
        voiced = (voicing[:, idx] > 0).cpu().numpy()
        mag = residual.detach().abs().double().cpu().numpy()
        out = np.stack([_phase_from_pulses(pick_pulses(mag[b], per[b], voiced[b]), per[b]) for b in range(len(mag))])
        return torch.from_numpy(out).to(residual.device)

    # ------------------------------------------------------------------ harmonic excitation
    def harmonic(
        self,
        residual: torch.Tensor,
        mel: torch.Tensor,
        strength: float,
        phase0: torch.Tensor | float = 0.0,
        phase: torch.Tensor | None = None,
        tracks: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The flow's residual ``(B, L)`` with its voiced share made periodic
        (``waveflow.dsp.harmonic``): a pulse train at the free phase from ``phase0`` (or at
        ``phase``), the phase the flow's conditioning was given, and at the period that drives it.
        ``tracks``: ``frame_tracks(mel)`` when the caller has them already."""
        period, voicing = self.frame_tracks(mel) if tracks is None else tracks
        length = residual.shape[1]
        if phase is None:
            phase = self._free(period, length, phase0)
        # block n // hop takes frame n // hop's period for its count of harmonics (clamped to the frames given)
        runs = -(-length // self.hop_length)
        idx = torch.arange(runs, device=period.device).clamp(max=period.shape[1] - 1)
        v = voicing[:, self._frames(length, voicing.shape[1], voicing.device)]  # as the channels
        f0 = self.sample_rate / period[:, idx]
        phase = phase.float()  # in [0, 2 pi): float32 is exact enough for the pulses, and twice as fast
        return harmonic_excitation(residual, phase, f0, v.float(), strength, self.hop_length, self.sample_rate)

    # ------------------------------------------------------------------ channels
    def channels(self, mel: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """``(B, CHANNELS, L)`` in the mel's dtype for a phase ``(B, L)``."""
        return self._channels(self.frame_tracks(mel)[1], phase, mel.dtype)

    def _channels(self, voicing: torch.Tensor, phase: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        v = voicing[:, self._frames(phase.shape[1], voicing.shape[1], voicing.device)]
        c, s = torch.cos(phase), torch.sin(phase)
        return torch.stack([v * torch.exp(BUMP * (c - 1.0)), v * c, v * s], dim=1).to(dtype)


def pick_pulses(mag: np.ndarray, period: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """Pulse times in the voiced runs of ``mag = |residual|`` (per-sample period and voicing):
    the largest magnitude in the run's first period, then in each 0.7..1.3 periods after the last."""
    pulses: list[int] = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]])))
    for lo, hi in zip(edges[0::2], edges[1::2], strict=True):
        t = lo + int(np.argmax(mag[lo : min(lo + int(period[lo]), hi)]))
        pulses.append(t)
        while True:
            p = period[t]
            a, b = t + int(SEARCH[0] * p), min(t + int(SEARCH[1] * p) + 1, hi)
            if a >= b:
                break
            t = a + int(np.argmax(mag[a:b]))
            pulses.append(t)
    return np.asarray(pulses, dtype=np.int64)


def _phase_from_pulses(pulses: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Phase per sample: 0 at each pulse, linear in between; between pulses further apart than
    1.3 periods (and before the first, after the last) marks are added at the local period."""
    length = len(period)
    marks: list[float] = []
    t, i = 0.0, 0
    while t < length:
        p = period[min(int(t), length - 1)]
        while i < len(pulses) and pulses[i] <= t:
            i += 1
        if i < len(pulses) and pulses[i] <= t + SEARCH[1] * p:
            t = float(pulses[i])
            i += 1
        else:
            t += p
        marks.append(t)
    edges = np.asarray([-period[0], *marks])
    n = np.arange(length)
    k = np.searchsorted(edges, n, side="right") - 1
    return 2 * np.pi * (n - edges[k]) / (edges[k + 1] - edges[k])

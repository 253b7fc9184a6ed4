"""Harmonic post-filter: less noise between the harmonics of voiced speech.

Below 2 kHz real voiced speech is a clean series of harmonics: the magnitude spectrum has
deep valleys between them. A flow sampled from its noise fills those valleys. Measured on the
bundled model: replacing the model's output below 2 kHz by the real audio's raises PESQ-wb
from 1.8 to 4.0, and keeping the model's phase but the real magnitude (at 23 ms resolution)
gives 2.5, while the model's F0 is right (a real-pulse phase changes nothing). The valleys
are what is missing.

Speech codecs meet the same problem with pitch post-filters on the decoded speech; this one
is two-sided and confined below a cut-off, as the "bass post-filter" of the wideband codecs
is confined to the low band. Per sample n, with the period ``T(n)``
in whole samples and the voicing ``v(n)`` of its mel frame (``waveflow.dsp.pitch``, from the mel
alone):

    d[n] = (x[n - T] + x[n + T]) / 2 - x[n]      (a tap off the signal's ends: x[n] itself)
    a[n] = strength * v(n)
    y[n] = g(a[n]) x[n] + (h * (a d + (1 - g(a)) x))[n]   (the FIR's input held at the ends)

which, where a is constant, is ``x + a (h * d) + (g(a) - 1)(x - h * x)``: the comb below the
cut-off and the gain ``g`` above it.

``h`` a linear-phase low-pass FIR (windowed sinc) at the cut-off: by default the mel's top
frequency ``f_max`` (the band the mel describes), at most ``MAX_CUTOFF_SHARE`` of the Nyquist
frequency (``default_cutoff``). Below the cut-off the comb's
gain at frequency f is ``1 + strength (cos(2 pi f T) - 1)``: 1 at every harmonic of 1/T,
``1 - 2 strength`` half-way between two. ``strength`` 0.5 (the bundled model's) is the
raised-cosine comb ``(x[n - T] + 2 x[n] + x[n + T]) / 4``, ``cos^2(pi f T)``: harmonics pass,
the midpoints between them are nulled, and nothing is inverted. Unvoiced frames (v = 0) are
untouched.

Above the cut-off the comb does not act, but the band is scaled by ``g(a) = sqrt(1 - 2a +
1.5 a^2)``, the comb's rms gain on white noise (the mean over f of ``(1 - a + a cos(2 pi f T))^2``;
0.61, -4.3 dB, at a = 0.5), so that a noise-like frame keeps its balance across the cut-off. The
mel correction that follows lifts each band back to the mel, and the bins above the mel's top
(about which the mel says nothing) take the top band's gain: with the band above the cut-off
left as it was, that gain lifted it by what the comb had taken below. On the bundled model the
energy above 8 kHz came out 1.73 dB over the recordings' on the two held-out clips and 2.42 dB
on the first 8 training clips (``waveflow evaluate``'s "level above 8 kHz"), with every band
below 8 kHz within 0.2 dB (a prototype's per-frame medians); with the scaling, 0.43 and 0.20
dB (with no post-filter, -0.33 on the training clips). None of the other measures hears it:
PESQ, STOI, DistillMOS and DNSMOS all resample to 16 kHz or lower. Folding the band split into
the comb's one FIR keeps the cost: 0.87 against 0.69 ms for 1 s of audio, 4.5 against 3.8 ms
for 10 s (the filter alone, 2 threads).

The cut-off was 2 kHz first. Raised to the mel's top (8 kHz for the LJSpeech convention), on
the bundled model with its defaults, DistillMOS went from 4.07 to 4.18 on the two clips it
never trained on and from 4.13 to 4.21 on 8 of its training clips (in a sweep it rose
steadily through 3, 4, 5 and 6 kHz and no further at 10 kHz); on clips resampled to a lower
and a higher voice it stayed at 4.21 / 4.20, and DNSMOS OVRL, PESQ and STOI moved by 0.02 at
most (docs/naturalness.md). The flow's excitation is still partly noise up there, and the comb
takes the noise between the harmonics out wherever the mel says the frame is voiced.

The filter reads ``margin = max period + FIR half-length`` samples on either side of a sample,
so ``StreamingVocoder`` holds its output back by that much (16 ms at 22050 Hz) to stay equal
to offline synthesis.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from waveflow.config import MelConfig
from waveflow.dsp.audio import sample_frames
from waveflow.dsp.pitch import PERIODS, MelPitch, period_voicing

MAX_CUTOFF_SHARE = 0.9  # of the Nyquist frequency: room for the FIR's transition band
FIR_HALF = 32  # taps each side of the low-pass FIR (65 taps, 1.5 ms at 22050 Hz)


def check_strength(strength: float) -> float:
    """A post-filter strength as a float, or a ValueError saying what was expected."""
    if not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"postfilter strength must be a number in [0, 1], got {strength!r}")
    return float(strength)


def default_cutoff(sample_rate: int, f_max: float) -> float:
    """The post-filter's default cut-off in Hz: the mel's ``f_max``, at most ``MAX_CUTOFF_SHARE``
    of the Nyquist frequency."""
    return min(float(f_max), MAX_CUTOFF_SHARE * sample_rate / 2)


def lowpass_taps(cutoff_hz: float, sample_rate: int, half: int = FIR_HALF) -> torch.Tensor:
    """A linear-phase low-pass FIR ``(2 half + 1,)`` float64: Hann-windowed sinc, unit DC gain."""
    n = np.arange(-half, half + 1)
    h = np.sinc(2 * cutoff_hz / sample_rate * n) * np.hanning(2 * half + 3)[1:-1]
    return torch.from_numpy(h / h.sum())


def fir(x: torch.Tensor, taps: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """``x (B, T)`` convolved with centred ``taps`` (odd length), zeros outside ``x``. One long
    single-channel conv1d is slow on CPU (27 ms for 10 s of audio); the same sums over blocks of
    ``block`` samples stacked along the batch take 2 ms."""
    batch, length = x.shape
    half = taps.numel() // 2
    padded = F.pad(x, (half, half + (-length) % block))
    blocks = padded.unfold(1, block + 2 * half, block)  # (B, blocks, block + 2 half), overlapping by 2 half
    out = F.conv1d(blocks.reshape(-1, 1, block + 2 * half), taps.view(1, 1, -1))
    return out.reshape(batch, -1)[:, :length]


class HarmonicPostfilter(nn.Module):
    """``postfilter(audio (B, T), mel (B, n_mels, F), strength) -> (B, T)`` for audio whose
    sample 0 is the mel's frame 0 (``start`` shifts it: sample 0 is sample ``start`` of the
    mel's time line). ``frame_tracks``, ``sample_tracks`` and ``apply`` split the steps for
    streaming. ``cutoff_hz``: where the comb stops (default: ``default_cutoff``)."""

    def __init__(
        self,
        n_mels: int = 80,
        sample_rate: int = 22050,
        n_fft: int = 1024,
        hop_length: int = 256,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        frame_offset: int = 128,
        cutoff_hz: float | None = None,
        tracker: str = "comb",
    ) -> None:
        super().__init__()
        cutoff_hz = default_cutoff(sample_rate, f_max) if cutoff_hz is None else cutoff_hz
        if not 0 < cutoff_hz < sample_rate / 2:
            raise ValueError(f"post-filter cut-off {cutoff_hz} Hz must be in (0, {sample_rate / 2}) Hz")
        self.pitch = MelPitch(n_mels, sample_rate, n_fft, f_min, f_max, tracker)
        self.sample_rate, self.hop_length, self.frame_offset = sample_rate, hop_length, frame_offset
        self.cutoff_hz = float(cutoff_hz)
        self._taps = lowpass_taps(cutoff_hz, sample_rate).float()
        self.margin = PERIODS[1] + FIR_HALF  # samples either side that an output sample depends on

    @classmethod
    def for_mel(cls, mel: MelConfig, tracker: str = "comb") -> HarmonicPostfilter:
        """The post-filter for a mel convention, reading the pitch with ``tracker`` (the model's)."""
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

    def frame_tracks(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Period in whole samples (long) and voicing (float32) per frame, ``(B, F)`` each."""
        period, voicing = period_voicing(self.pitch(mel), self.sample_rate)
        return period.round().long(), voicing.float()

    def sample_tracks(
        self, period: torch.Tensor, voicing: torch.Tensor, start: int, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame tracks ``(B, F)`` -> per-sample ``(B, length)`` for samples ``start ..``
        (each sample takes the frame whose centre is nearest, clamped to the frames given)."""
        idx = sample_frames(start, length, period.shape[1], self.hop_length, self.frame_offset, period.device)
        return period[:, idx], voicing[:, idx]

    def apply(self, audio: torch.Tensor, period: torch.Tensor, voicing: torch.Tensor, strength: float) -> torch.Tensor:
        """Filter ``audio (B, T)`` given per-sample ``period`` (long) and ``voicing`` ``(B, T)``."""
        if strength == 0:
            return audio
        length = audio.shape[1]
        x = audio.float()
        n = torch.arange(length, device=audio.device)
        back, ahead = n - period, n + period
        x_back = torch.where(back >= 0, torch.gather(x, 1, back.clamp(min=0)), x)
        x_ahead = torch.where(ahead < length, torch.gather(x, 1, ahead.clamp(max=length - 1)), x)
        d = 0.5 * (x_back + x_ahead) - x
        a = strength * voicing.to(x.device)
        high_gain = torch.sqrt(1 - 2 * a + 1.5 * a * a)  # the comb's rms gain on noise, for the band above
        # g x + h * (a d + (1 - g) x): one FIR for the comb and the band split; its input is held
        # at the ends, so that a constant passes unchanged
        h = FIR_HALF
        inner = F.pad((a * d + (1 - high_gain) * x)[:, None], (h, h), mode="replicate")[:, 0]
        low = fir(inner, self._taps.to(audio.device))[:, h : h + length]
        return (high_gain * x + low).to(audio.dtype)

    def forward(self, audio: torch.Tensor, mel: torch.Tensor, strength: float, start: int = 0) -> torch.Tensor:
        if not math.isfinite(strength) or not 0 <= strength <= 1:
            raise ValueError(f"post-filter strength must be in [0, 1], got {strength}")
        if audio.dim() != 2 or mel.dim() != 3 or audio.shape[0] != mel.shape[0]:
            raise ValueError(
                f"post-filter needs audio (B, T) and mel (B, n_mels, F); got {tuple(audio.shape)} and "
                f"{tuple(mel.shape)}"
            )
        if strength == 0 or audio.shape[1] == 0:
            return audio
        period, voicing = self.sample_tracks(*self.frame_tracks(mel), start, audio.shape[1])
        return self.apply(audio, period, voicing, strength)

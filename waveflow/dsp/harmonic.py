"""Harmonic excitation: the voiced share of the flow's residual made periodic, after the flow.

Issue 19's ablation: a pulse train plus noise through the same LP filter and post-processing
scored above the flow's own residual (a flow trained by likelihood on the LP residual puts
clean harmonics only below about 500 Hz; above 2 kHz its voiced excitation is noise, which a
listener hears as breathiness). This weightless step sits between the flow and the LP
synthesis filter. Per sample n, with the pulse source's phase ``phi`` (the phase that the
flow's conditioning was given, so the pulses fall where the flow put its own), the voicing
``v`` of the sample's mel frame and a strength ``s`` in [0, 1]:

    e'[n] = sqrt(1 - s v) l[n] + sqrt(s v) r[n] p[n] + h[n]

- ``e`` the flow's residual, split at ``CUTOFF_HZ`` by a linear-phase low-pass FIR (the
  post-filter's design, ``SPLIT_HALF`` taps either side) into ``l`` and ``h = e - l``: above the
  cut-off the flow's residual stays as it is (natural voiced speech is mostly aperiodic up
  there, and pulses to 10 kHz sound buzzy, most of all at low F0);
- ``r`` the rms of ``l`` over the hop-long block of samples that holds n (blocks on the
  utterance's hop grid, so a stream that synthesizes whole frames computes the same ``r`` as
  offline synthesis);
- ``p`` a band-limited pulse train of unit power with every harmonic of the frame's F0 up to
  the cut-off at equal amplitude, in closed form (a Dirichlet kernel: a few transcendental
  functions per sample, whatever the number of harmonics). The last harmonic is weighted by
  how far past it the cut-off lies, so no harmonic switches on or off abruptly as F0 moves.

``e'`` keeps ``e``'s power per block (the parts are uncorrelated on average); the LP filter
gives the envelope and the level, and the post-processing runs on the result as before. A
sample reads ``SPLIT_HALF`` samples of ``e`` either side, well inside a stream's look-back and
look-ahead of whole frames.
``s = 0`` (or ``v = 0``: unvoiced frames) gives the flow's residual back unchanged. The flow
and its likelihood are untouched: training never runs this step.
"""

from __future__ import annotations

import math

import torch

from waveflow.dsp.postfilter import fir, lowpass_taps

TOP = 0.95  # share of the Nyquist frequency that a pulse train reaches by default
# Where the pulses stop and the flow's residual takes over. Measured against pulses up to TOP
# (DistillMOS): +0.07 on the held-out clips, +0.16 and +0.08 on them resampled to a lower and a
# higher voice, -0.03 on 8 training clips; 3 and 5 kHz did worse on those clips.
CUTOFF_HZ = 4000.0
SPLIT_HALF = 16  # taps either side of the split's low-pass FIR (33 taps: about 1.3 kHz of transition)


def check_harmonic(strength: float) -> float:
    """A harmonic-excitation strength as a float, or a ValueError saying what was expected."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"harmonic excitation strength must be a number in [0, 1] (0: off), got {strength!r}")
    return float(strength)


def pulse_train(phase: torch.Tensor, f0: torch.Tensor, sample_rate: int, top: float = TOP) -> torch.Tensor:
    """Unit-power pulse train ``(B, L)`` at ``phase`` (radians) for a per-sample ``f0`` (Hz, both
    ``(B, L)`` or broadcastable; float32 in, float32 out, else float64):
    ``sqrt(2 / (K + a^2)) (sum_{k=1..K} cos(k phi) + a cos((K + 1) phi))``
    with ``K + a = top * sample_rate / 2 / f0`` (K whole, a in [0, 1))."""
    dtype = phase.dtype if phase.dtype in (torch.float32, torch.float64) else torch.float64
    phase, f0 = phase.to(dtype), f0.to(dtype)
    count = (top * sample_rate / 2 / f0).clamp(min=1.0)
    whole = torch.floor(count)
    part = count - whole
    half = torch.sin(0.5 * phase)
    near = half.abs() < 1e-9  # at a pulse: every cosine is 1
    safe = torch.where(near, torch.ones_like(half), half)
    dirichlet = torch.where(near, whole, torch.sin((whole + 0.5) * phase) / (2 * safe) - 0.5)
    raw = dirichlet + part * torch.cos((whole + 1.0) * phase)
    return raw * torch.sqrt(2.0 / (whole + part * part))


def run_rms(x: torch.Tensor, block: int) -> torch.Tensor:
    """The rms ``(B, ceil(L / block))`` float64 of ``x`` ``(B, L)`` over its ``block``-long runs of
    samples 0.. (the last run may be shorter)."""
    length = x.shape[1]
    runs = math.ceil(length / block)
    padded = torch.nn.functional.pad(x.double().square(), (0, runs * block - length))
    counts = torch.full((runs,), float(block), dtype=torch.float64, device=x.device)
    counts[-1] = length - (runs - 1) * block
    return (padded.reshape(x.shape[0], runs, block).sum(-1) / counts).sqrt()


def split(residual: torch.Tensor, sample_rate: int, cutoff_hz: float = CUTOFF_HZ) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual`` ``(B, L)`` -> the parts below and above ``cutoff_hz`` (they sum to it),
    by the post-filter's linear-phase low-pass FIR; zeros outside the signal."""
    low = fir(residual, lowpass_taps(cutoff_hz, sample_rate, SPLIT_HALF).to(residual.device, residual.dtype))
    return low, residual - low


def pulse_top(sample_rate: int, cutoff_hz: float = CUTOFF_HZ) -> float:
    """The share of the Nyquist frequency the step's pulse train reaches: the cut-off's."""
    return min(TOP, cutoff_hz / (sample_rate / 2))


def harmonic_excitation(
    residual: torch.Tensor,
    phase: torch.Tensor,
    f0: torch.Tensor,
    voicing: torch.Tensor,
    strength: float,
    block: int,
    sample_rate: int,
) -> torch.Tensor:
    """``sqrt(1 - s v) l + sqrt(s v) rms(l) p + h`` (the module docstring) with ``p`` =
    ``pulse_train(phase, f0[n // block], sample_rate, pulse_top(sample_rate))``, for an F0 per
    block ``f0`` ``(B, ceil(L / block))``, the other tensors ``(B, L)``. Every per-block factor is
    computed once per block and broadcast over its samples (no per-sample gathers), in
    ``phase``'s dtype (float32 halves the cost; float64 gives the definition to rounding; the
    tests hold it against a per-sample reference). Where ``strength * voicing`` is 0
    everywhere, ``residual`` itself."""
    mix = (strength * voicing).clamp(0.0, 1.0)
    if not bool((mix > 0).any()):
        return residual
    batch, length = residual.shape
    runs = math.ceil(length / block)
    dtype = phase.dtype

    def blocks(x: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, runs, block), zeros past the end
        return torch.nn.functional.pad(x.to(dtype), (0, runs * block - length)).reshape(batch, runs, block)

    low, high = split(residual.to(dtype), sample_rate)
    rms = run_rms(low, block).to(dtype).unsqueeze(-1)  # (B, runs, 1)
    f0 = f0[:, :runs].to(dtype).unsqueeze(-1)
    pulses = pulse_train(blocks(phase), f0, sample_rate, pulse_top(sample_rate))
    m = blocks(mix)
    out = torch.sqrt(1.0 - m) * blocks(low) + torch.sqrt(m) * rms * pulses + blocks(high)
    return out.reshape(batch, -1)[:, :length].to(residual.dtype)

"""Harmonic excitation: the voiced share of the flow's residual made periodic, after the flow.

Issue 19's ablation: a pulse train plus noise through the same LP filter and post-processing
scored above the flow's own residual (a flow trained by likelihood on the LP residual puts
clean harmonics only below about 500 Hz; above 2 kHz its voiced excitation is noise, which a
listener hears as breathiness). This weightless step sits between the flow and the LP
synthesis filter. Per sample n, with the pulse source's phase ``phi`` (the phase that the
flow's conditioning was given, so the pulses fall where the flow put its own), the voicing
``v`` of the sample's mel frame and a strength ``s`` in [0, 1]:

    e'[n] = sqrt(1 - s v) e[n] + sqrt(s v) r[n] p[n]

- ``e`` the flow's residual, ``r`` its rms over the hop-long block of samples that holds n
  (blocks on the utterance's hop grid, so a stream that synthesizes whole frames computes the
  same ``r`` as offline synthesis, with no look-ahead);
- ``p`` a band-limited pulse train of unit power with every harmonic of the frame's F0 up to
  ``TOP`` of the Nyquist frequency at equal amplitude, in closed form (a Dirichlet kernel:
  a few transcendental functions per sample, whatever the number of harmonics). The last
  harmonic is weighted by how far past it ``TOP`` lies, so no harmonic switches on or off
  abruptly as F0 moves.

``e'`` keeps ``e``'s power per block (the two parts are uncorrelated on average); the LP filter
gives the envelope and the level, and the post-processing runs on the result as before.
``s = 0`` (or ``v = 0``: unvoiced frames) gives the flow's residual back unchanged. The flow
and its likelihood are untouched: training never runs this step.
"""

from __future__ import annotations

import math

import torch

TOP = 0.95  # share of the Nyquist frequency that the pulse train reaches


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


def block_rms(x: torch.Tensor, block: int) -> torch.Tensor:
    """The rms ``(B, L)`` of ``x`` ``(B, L)`` over the ``block``-long runs of samples 0.., each
    sample taking its own run's (the last run may be shorter)."""
    length = x.shape[1]
    runs = math.ceil(length / block)
    padded = torch.nn.functional.pad(x.double().square(), (0, runs * block - length))
    counts = torch.full((runs,), float(block), dtype=torch.float64, device=x.device)
    counts[-1] = length - (runs - 1) * block
    rms = (padded.reshape(x.shape[0], runs, block).sum(-1) / counts).sqrt()
    return rms.repeat_interleave(block, dim=1)[:, :length]


def harmonic_mix(
    residual: torch.Tensor, pulses: torch.Tensor, voicing: torch.Tensor, strength: float, block: int
) -> torch.Tensor:
    """``sqrt(1 - s v) e + sqrt(s v) rms(e) p`` (see the module docstring) in ``residual``'s dtype;
    every argument but ``strength`` and ``block`` ``(B, L)``."""
    mix = (strength * voicing.double()).clamp(0.0, 1.0)
    e = residual.double()
    out = torch.sqrt(1.0 - mix) * e + torch.sqrt(mix) * block_rms(e, block) * pulses
    return out.to(residual.dtype)


def harmonic_excitation(
    residual: torch.Tensor,
    phase: torch.Tensor,
    f0: torch.Tensor,
    voicing: torch.Tensor,
    strength: float,
    block: int,
    sample_rate: int,
) -> torch.Tensor:
    """``harmonic_mix(residual, pulse_train(phase, f0[n // block]), voicing, strength, block)``
    for an F0 per block ``f0`` ``(B, ceil(L / block))``, the other tensors ``(B, L)``: the same
    sums with every per-block factor computed once per block and broadcast over its samples
    (no per-sample gathers), in ``phase``'s dtype (float32 halves the cost; float64 gives the
    definition to rounding). Where ``strength * voicing`` is 0 everywhere, ``residual`` itself."""
    mix = (strength * voicing).clamp(0.0, 1.0)
    if not bool((mix > 0).any()):
        return residual
    batch, length = residual.shape
    runs = math.ceil(length / block)
    dtype = phase.dtype

    def blocks(x: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, runs, block), zeros past the end
        return torch.nn.functional.pad(x.to(dtype), (0, runs * block - length)).reshape(batch, runs, block)

    e = blocks(residual)
    rms = block_rms(residual, block)[:, ::block].to(dtype).unsqueeze(-1)  # (B, runs, 1)
    pulses = pulse_train(blocks(phase), f0[:, :runs].to(dtype).unsqueeze(-1), sample_rate)
    m = blocks(mix)
    out = torch.sqrt(1.0 - m) * e + torch.sqrt(m) * rms * pulses
    return out.reshape(batch, -1)[:, :length].to(residual.dtype)

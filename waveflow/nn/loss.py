"""Negative log-likelihood of audio under the flow."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class NLL:
    """Per-sample negative log-likelihood, averaged over the batch.

    ``nats``: the true NLL of the (continuous) audio density under z ~ N(0, sigma^2 I),
    Gaussian normalising constant included; ``bits`` the same in bits. ``waveglow``: the
    value in the published WaveGlow convention, which drops the constant
    ``0.5 * log(2 pi sigma^2)``, so it can be compared with published training curves.
    All are 0-dim float32 tensors; ``nats`` carries the gradient.
    """

    nats: torch.Tensor
    bits: torch.Tensor
    waveglow: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {
            "nll_nats": float(self.nats.detach()),
            "nll_bits": float(self.bits.detach()),
            "loss_waveglow": float(self.waveglow.detach()),
        }


def gaussian_constant(sigma: float) -> float:
    """0.5 * log(2 pi sigma^2): the per-dimension normaliser of N(0, sigma^2)."""
    return 0.5 * math.log(2 * math.pi * sigma * sigma)


def nll_per_example(z: torch.Tensor, logdet: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """True NLL in nats per sample for each batch element, ``(B,)``.

    z ``(B, ...)``, logdet ``(B,)`` = log|det dz/dx|.
    """
    z = z.float().flatten(1)
    n = z.shape[1]
    energy = z.square().sum(dim=1) / (2 * sigma * sigma)
    return (energy - logdet.float()) / n + gaussian_constant(sigma)


def flow_nll(z: torch.Tensor, logdet: torch.Tensor, sigma: float = 1.0) -> NLL:
    """Batch-mean NLL of ``z`` (any shape ``(B, ...)``) with log-determinant ``(B,)``."""
    nats = nll_per_example(z, logdet, sigma).mean()
    return NLL(nats=nats, bits=nats / math.log(2), waveglow=nats - gaussian_constant(sigma))

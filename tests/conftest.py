"""Shared helpers: tiny configs built through one function, and the checks every layer shares."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from waveflow.config import ModelConfig, model_preset
from waveflow.model import WaveGlow

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WAVEFLOW_SHARED", REPO.parent / "shared"))
MINI_CORPUS = SHARED / "data" / "LJSpeech-1.1-mini"


def tiny_config(**overrides) -> ModelConfig:
    """The ``tiny`` preset with field overrides; the one way tests build a model config."""
    return model_preset("tiny", **overrides)


def perturb_(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised end convs (and ActNorm) random values so every coupling is a
    non-trivial map; a test of the identity would prove nothing."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".end." in name or name.endswith(("loc", "log_scale")):
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def tiny_model(seed: int = 0, perturbed: bool = True, **overrides) -> WaveGlow:
    torch.manual_seed(seed)
    model = WaveGlow(tiny_config(**overrides))
    return perturb_(model, seed=seed) if perturbed else model


def brute_force_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of ``fn`` at ``x`` (a single example), from the full autograd Jacobian."""
    jac = torch.autograd.functional.jacobian(lambda v: fn(v).reshape(-1), x)
    n = x.numel()
    return torch.linalg.slogdet(jac.reshape(n, n).double())[1]


def assert_finite(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert torch.isfinite(t).all(), "non-finite values"


@pytest.fixture(scope="session")
def mini_corpus() -> Path:
    if not (MINI_CORPUS / "metadata.csv").is_file():
        message = f"shared mini corpus not found at {MINI_CORPUS} (set WAVEFLOW_SHARED)"
        # CI sets WAVEFLOW_REQUIRE_DATA so that a missing corpus fails instead of skipping.
        if os.environ.get("WAVEFLOW_REQUIRE_DATA"):
            pytest.fail(message)
        pytest.skip(message)
    return MINI_CORPUS


@pytest.fixture
def clip(mini_corpus) -> Path:
    return mini_corpus / "wavs" / "LJ001-0001.wav"

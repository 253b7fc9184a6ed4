"""Shared helpers: tiny configs built through one function, and the checks every layer shares."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import pytest
import torch

from waveflow.config import ModelConfig, model_preset
from waveflow.nn.model import WaveGlow

REPO = Path(__file__).resolve().parents[1]
# The tests mirror the package's sub-packages (tests/dsp, tests/nn, ...) and import each other's
# helpers by module name (`from test_vocoder import tiny_vocoder`) from any folder, whatever runs.
for _folder in sorted(p for p in Path(__file__).parent.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))
SHARED = Path(os.environ.get("WAVEFLOW_SHARED", REPO.parent / "shared"))
MINI_CORPUS = SHARED / "data" / "LJSpeech-1.1-mini"


# Model overrides of the tiny preset with two and three early outputs (the tiny preset has one;
# the default, paper and realtime presets have two or more, and the order in which early
# outputs re-join the flow only shows with two or more).
EARLY_OUTPUTS = {
    2: dict(n_group=8, n_flows=6, n_early_every=2, n_early_size=2),  # leave before flows 2 and 4
    3: dict(n_group=8, n_flows=4, n_early_every=1, n_early_size=2),  # leave before flows 1, 2 and 3
}


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


@pytest.fixture(autouse=True)
def _restore_waveflow_logger():
    """The CLI's ``configure_logging`` adds a handler to the ``waveflow`` logger and stops its
    propagation, which hides every later message from ``caplog``. Put the logger back after each
    test, so that no test depends on whether an earlier one ran ``main()`` in this process."""
    logger = logging.getLogger("waveflow")
    saved = logger.handlers[:], logger.propagate, logger.level
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


# ------------------------------------------------------------------ random order
# WAVEFLOW_TEST_SEED=N runs the tests in a shuffled order (modules shuffled, and the tests
# within each module, so that module-scoped fixtures are still built once); "random" draws a
# seed. The seed is printed in the header so that a failing order can be replayed.
def _order_seed() -> int | None:
    value = os.environ.get("WAVEFLOW_TEST_SEED", "").strip()
    if not value:
        return None
    if value == "random":
        return random.SystemRandom().randrange(10**6)
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"WAVEFLOW_TEST_SEED must be an integer or 'random', got {value!r}") from None


def pytest_configure(config):
    config._waveflow_order_seed = _order_seed()


def pytest_report_header(config):
    seed = config._waveflow_order_seed
    if seed is None:
        return "test order: as written (WAVEFLOW_TEST_SEED=N shuffles it)"
    return f"test order: shuffled with seed {seed} (replay: WAVEFLOW_TEST_SEED={seed})"


def pytest_terminal_summary(terminalreporter, config):
    # also under -q, which hides the header: a failing order must be replayable from the log
    seed = config._waveflow_order_seed
    if seed is not None:
        terminalreporter.write_line(f"test order: shuffled with seed {seed} (replay: WAVEFLOW_TEST_SEED={seed})")


def pytest_collection_modifyitems(config, items):
    seed = config._waveflow_order_seed
    if seed is None:
        return
    rng = random.Random(seed)
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(str(item.path), []).append(item)
    order = list(modules)
    rng.shuffle(order)
    shuffled = []
    for name in order:
        group = modules[name]
        rng.shuffle(group)
        shuffled.extend(group)
    items[:] = shuffled

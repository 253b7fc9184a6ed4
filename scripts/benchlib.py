"""What every benchmark script here needs: calls timed in turns, the machine's load, a table.

Timed one after another, two calls on a shared machine see different slow spells (the LP
share of inference moved between 9% and 14% from run to run that way). Here every round runs
each call once, and a call's figure is its median over the rounds; a round before them warms
up (first-call allocations, graph optimisation). A figure is only as good as the machine was
idle: ``wait_for_idle`` waits for the load to fall and says what it saw, and every script
prints that beside its table.

    from benchlib import print_table, time_interleaved, wait_for_idle

Speed is timed on a real clip's mel (``CLIP``, cut or repeated to length by ``repeat_to``):
the post-processing's pitch tracking and voicing decisions cost what they cost on speech.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "LJSpeech-1.1-mini" / "wavs" / "LJ001-0001.wav"


def repeat_to(mel: np.ndarray, frames: int) -> np.ndarray:
    """``mel`` ``(n_mels, T)`` cut, or repeated end to end, to ``(n_mels, frames)``."""
    return np.tile(mel, (1, -(-frames // mel.shape[1])))[:, :frames].copy()


def sync_device(device: torch.device | None) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Wall seconds of one call (CUDA work finished before and after)."""
    sync_device(device)
    start = time.perf_counter()
    fn()
    sync_device(device)
    return time.perf_counter() - start


def time_interleaved(
    fns: dict[str, Callable[[], object]], runs: int, warmup: int = 1, device: torch.device | None = None
) -> dict[str, float]:
    """``{name: fn}`` -> ``{name: median seconds}`` over ``runs`` rounds in which every function
    runs once, after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            time_call(fn, device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            times[name].append(time_call(fn, device))
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine_load() -> float:
    """The 1-minute load average (NaN where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def wait_for_idle(max_load: float = 0.5, timeout_s: float = 120.0, poll_s: float = 5.0) -> float:
    """Wait until the 1-minute load is at most ``max_load`` (at most ``timeout_s``); return the
    load last seen, and say on stderr when the machine never became idle."""
    deadline = time.monotonic() + timeout_s
    load = machine_load()
    while not load <= max_load and time.monotonic() < deadline:
        time.sleep(poll_s)
        load = machine_load()
    if not load <= max_load:
        print(
            f"load {load:.2f} after {timeout_s:.0f} s (wanted <= {max_load}): figures taken on a busy machine",
            file=sys.stderr,
        )
    return load


def print_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> None:
    """Right-aligned columns ``[(key, format)]``; a missing value prints as ``-``."""
    header = [name for name, _ in columns]
    cells = [[fmt.format(row[name]) if row.get(name) is not None else "-" for name, fmt in columns] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))

"""Faults a long training run meets: SIGKILL at any moment, including mid-checkpoint."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from conftest import REPO
from test_train import TINY, _config, prepared  # noqa: F401  (prepared is a fixture)

from waveflow.checkpoint import read_checkpoint

KILLS = 20


def _newest(folder):
    steps = sorted(folder.glob("step_*.pt"))
    return steps[-1] if steps else None


def test_kill_9_at_random_moments_never_loses_the_last_checkpoint(tmp_path, prepared):  # noqa: F811
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    base = [sys.executable, "-m", "waveflow.cli", "train", "--config", _config(tmp_path), "--data", str(prepared)]
    base += ["--out", str(out), "--device", "cpu", "--no-progress", *TINY]
    base += ["--set", "train.checkpoint_every=1", "--set", "train.eval_every=100000"]
    base += ["--set", "train.keep_last=2"]
    endless = ["--set", "train.max_steps=100000"]
    rng = random.Random(0)
    inside_a_write = 0
    for kill in range(KILLS):
        before = _newest(checkpoints) if checkpoints.is_dir() else None
        proc = subprocess.Popen(
            [*base, *endless, *(["--resume"] if kill else [])],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while (newest := _newest(checkpoints) if checkpoints.is_dir() else None) in (None, before):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no new checkpoint within 120 s"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere in the next steps and their checkpoint writes
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        inside_a_write += bool(list(checkpoints.glob(".*.tmp")))
        newest = _newest(checkpoints)
        data = read_checkpoint(newest)  # intact: loads and validates
        assert data["step"] == int(newest.stem.split("_")[1])
    # the run resumes from the newest checkpoint, cleans up the cut-short writes and carries on
    last = read_checkpoint(_newest(checkpoints))["step"]
    done = subprocess.run(
        [*base, "--set", f"train.max_steps={last + 2}", "--resume"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert read_checkpoint(_newest(checkpoints))["step"] == last + 2
    assert not list(checkpoints.glob(".*.tmp"))
    print(f"{KILLS} kills, {inside_a_write} inside a checkpoint write, every one recovered")

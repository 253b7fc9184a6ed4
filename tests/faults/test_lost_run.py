"""Fault class 'lost run': a run folder stays resumable, is owned by one process at a time, and a
scheduler can tell a finished run from one stopped by a signal."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

from conftest import REPO
from test_train import TINY, _config, _train, prepared  # noqa: F401  (prepared is a fixture)

from waveflow.nn.checkpoint import read_checkpoint
from waveflow.train.runlock import LOCK_FILE

ENDLESS = ("--set", "train.max_steps=100000", "--set", "train.eval_every=100000", "--set", "train.checkpoint_every=1")


def _args(tmp_path, prepared, out, *extra):  # noqa: F811
    args = [sys.executable, "-m", "waveflow", "train", "--config", _config(tmp_path), "--data", str(prepared)]
    return [*args, "--out", str(out), "--device", "cpu", "--no-progress", *TINY, *extra]


def _start_and_wait_for_a_step(args):
    """Start a run; return it once it has written a checkpoint past those already there."""
    folder = os.path.join(args[args.index("--out") + 1], "checkpoints")
    before = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (os.path.isdir(folder) and {f for f in os.listdir(folder) if f.startswith("step_")} - before):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.05)
    return proc


@contextmanager
def _file_size_limit(limit: int):
    """Writes past ``limit`` bytes fail with EFBIG, as on a full disk (for this process only)."""
    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_failed_config_write_on_resume_keeps_the_run_resumable(tmp_path, prepared, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert _train(tmp_path, prepared, out, "--set", "train.max_steps=1") == 0
    config = (out / "config.yaml").read_bytes()
    capsys.readouterr()
    with _file_size_limit(256):  # config.yaml is over 1 kB
        code = _train(tmp_path, prepared, out, "--set", "train.max_steps=2", "--resume")
    assert code == 1
    assert "config.yaml" in capsys.readouterr().err
    assert (out / "config.yaml").read_bytes() == config
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert _train(tmp_path, prepared, out, "--set", "train.max_steps=2", "--resume") == 0
    assert read_checkpoint(out / "checkpoints" / "step_0000002.pt")["step"] == 2


def test_a_stale_lock_of_a_dead_run_is_taken_over(tmp_path, prepared, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert _train(tmp_path, prepared, out, "--set", "train.max_steps=1") == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / LOCK_FILE).write_text(f"{dead.pid}\n")  # what a run killed with -9 leaves behind
    capsys.readouterr()
    assert _train(tmp_path, prepared, out, "--set", "train.max_steps=2", "--resume") == 0
    assert f"stale lock of process {dead.pid}" in capsys.readouterr().err
    assert not (out / LOCK_FILE).exists()


def test_one_run_per_folder_and_exit_code_128_plus_signal(tmp_path, prepared, capsys):  # noqa: F811
    """A run stopped by SIGTERM / SIGINT exits 143 / 130 after its checkpoint (0 means done); while
    a run is going, a second one on its folder (--resume, --force or fresh) is refused in one line."""
    out = tmp_path / "run"
    for signum, extra in ((signal.SIGTERM, ()), (signal.SIGINT, ("--resume",))):
        proc = _start_and_wait_for_a_step(_args(tmp_path, prepared, out, *ENDLESS, *extra))
        try:
            if signum == signal.SIGINT:
                assert (out / LOCK_FILE).read_text().strip() == str(proc.pid)
                for second in (["--resume"], ["--force"], []):
                    capsys.readouterr()
                    assert _train(tmp_path, prepared, out, *ENDLESS, *second) == 1
                    err = capsys.readouterr().err.strip().splitlines()
                    assert len(err) == 1 and f"in use by process {proc.pid}" in err[0], err
                assert proc.poll() is None  # the first run goes on
        finally:
            proc.send_signal(signum)
            _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 128 + signum, stderr
        last = sorted((out / "checkpoints").glob("step_*.pt"))[-1]
        assert f"checkpoint {last} written" in stderr and f"exit code {128 + signum}" in stderr
        assert read_checkpoint(last)["step"] == int(last.stem.split("_")[1])
        assert not (out / LOCK_FILE).exists()

"""Fault class 'hang': a run that cannot go on must stop, promptly, and leave nothing running."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import REPO
from test_train import TINY, _config, _train

from waveflow.nn.checkpoint import read_checkpoint
from waveflow.train.data import prepare, read_filelist


def _small_corpus(src: Path, dst: Path, n: int = 8) -> Path:
    (dst / "wavs").mkdir(parents=True)
    lines = (src / "metadata.csv").read_text().splitlines()[:n]
    (dst / "metadata.csv").write_text("\n".join(lines) + "\n")
    for line in lines:
        clip_id = line.split("|", 1)[0]
        shutil.copy(src / "wavs" / f"{clip_id}.wav", dst / "wavs" / f"{clip_id}.wav")
    return dst


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_a_clip_corrupted_after_prepare_stops_training_in_seconds_naming_it(tmp_path, mini_corpus):
    corpus = _small_corpus(mini_corpus, tmp_path / "corpus")
    prepared = tmp_path / "prepared"
    prepare(corpus, prepared, progress=False)
    rng = np.random.default_rng(0)
    for clip in read_filelist(prepared / "train.txt"):  # bytes rot after prepare checked them
        size = Path(clip.path).stat().st_size
        Path(clip.path).write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    out = tmp_path / "run-corrupt"
    args = [sys.executable, "-m", "waveflow", "train", "--config", _config(tmp_path), "--data", str(prepared)]
    args += ["--out", str(out), "--device", "cpu", "--no-progress", *TINY, "--set", "train.num_workers=2"]
    args += ["--set", "train.eval_every=100000", "--set", "train.max_steps=1000"]
    start = time.monotonic()
    try:
        done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=180)
    finally:
        leftovers = _processes_mentioning(str(out))
        for pid in leftovers:
            os.kill(pid, 9)
    took = time.monotonic() - start
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "cannot be read" in last and "LJ00" in last and "checkpoint" in last, done.stderr
    assert "Traceback" not in done.stderr
    assert not leftovers, f"processes left running: {leftovers}"
    steps = sorted((out / "checkpoints").glob("step_*.pt"))
    assert steps and read_checkpoint(steps[-1])["step"] == 0
    print(f"corrupt clip: failed in {took:.1f} s (including interpreter start and the step-0 evaluation)")


def test_a_clip_that_turned_to_nan_is_named_when_training_reads_it(tmp_path, mini_corpus, capsys):
    import soundfile as sf

    corpus = _small_corpus(mini_corpus, tmp_path / "corpus")
    prepared = tmp_path / "prepared"
    prepare(corpus, prepared, progress=False)
    for clip in read_filelist(prepared / "train.txt"):
        sf.write(clip.path, np.full(clip.samples, np.nan, dtype=np.float32), 22050, subtype="FLOAT")
    capsys.readouterr()
    assert _train(tmp_path, prepared, tmp_path / "run", "--set", "train.eval_every=100000") == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "NaN or Inf" in last and "LJ00" in last and "stopped at step 0" in last, last

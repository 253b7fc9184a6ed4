"""Concurrency: processes writing one output folder, threads sharing one Vocoder, and memory
that stays flat over repeated calls."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import soundfile as sf
import torch
from conftest import REPO
from test_vocoder import random_mel, tiny_vocoder, write_tiny_checkpoint


def test_four_processes_into_one_folder_leave_every_wav_whole(tmp_path):
    write_tiny_checkpoint(tmp_path / "tiny.pt")
    mels = tmp_path / "mels"
    mels.mkdir()
    for i in range(3):
        np.save(mels / f"clip{i}.npy", random_mel(6 + 4 * i, seed=i).numpy())
    out = tmp_path / "out"
    out.mkdir()
    args = ["synthesize", str(mels), "-o", str(out), "--checkpoint", str(tmp_path / "tiny.pt"), "--seed", "7"]
    procs = [
        subprocess.Popen([sys.executable, "-m", "waveflow", *args], cwd=REPO, stderr=subprocess.PIPE) for _ in range(4)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    voc = tiny_vocoder()
    for i in range(3):
        audio, sr = sf.read(out / f"clip{i}.wav", dtype="float32")  # whole: a complete, readable wav
        expected = voc(random_mel(6 + 4 * i, seed=i).numpy(), seed=7)
        assert sr == 22050 and audio.shape == expected.shape
        np.testing.assert_allclose(audio, np.clip(expected, -1, 1), atol=1 / 32768 + 1e-6)  # 16-bit PCM
    assert sorted(p.name for p in out.iterdir()) == ["clip0.wav", "clip1.wav", "clip2.wav"]  # no temp files left


def test_one_vocoder_from_four_threads_equals_one_thread():
    voc = tiny_vocoder()
    mels = [random_mel(5 + i, seed=10 + i) for i in range(8)]
    expected = [voc(m, seed=i) for i, m in enumerate(mels)]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(indices: range) -> None:
        try:
            for i in indices:
                results[i] = voc(mels[i], seed=i)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(range(k, 8, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i in range(8):
        torch.testing.assert_close(results[i], expected[i], rtol=0, atol=0)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_memory_stays_flat_over_repeated_calls():
    voc = tiny_vocoder()
    mel = random_mel(20, seed=3)
    for _ in range(20):  # warm-up: allocator pools, lazy caches
        voc(mel, seed=0)
    before = _rss_mb()
    for i in range(200):
        voc(mel, seed=i)
    growth = _rss_mb() - before
    assert growth < 20, f"RSS grew by {growth:.1f} MB over 200 calls"

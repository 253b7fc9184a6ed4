"""The console entry point, run as a user would: in a subprocess."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "waveflow.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_check_round_trips_a_shared_clip(clip):
    result = run_cli("check", str(clip), "--seconds", "1.5")
    assert result.returncode == 0, result.stderr
    assert "mel (80, 130)" in result.stdout
    error = float(result.stdout.split("max |error| = ")[1].split()[0])
    assert error < 1e-4


def test_check_on_a_missing_file_is_one_line_without_traceback(tmp_path):
    result = run_cli("check", str(tmp_path / "nope.wav"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.wav" in lines[0] and "cannot read audio" in lines[0]


def test_presets_lists_parameter_counts():
    result = run_cli("presets")
    assert result.returncode == 0
    assert "| `default` | 12 | 8 | 8 x 256 | 1024 | 87.9 M |" in result.stdout

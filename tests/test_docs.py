"""The documentation site's build, as scripts/test.sh runs it, fails on a broken link."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _build_command() -> list[str]:
    """scripts/test.sh's mkdocs line, as words (its site folder aside)."""
    lines = [line for line in (REPO / "scripts" / "test.sh").read_text().splitlines() if "mkdocs build" in line]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0].split("--site-dir")[0])
    assert words[0].endswith("mkdocs") and "--strict" in words
    return [sys.executable, "-m", "mkdocs", *words[1:]]


def test_the_strict_build_passes_on_the_docs_and_fails_on_a_broken_link(tmp_path):
    pytest.importorskip("mkdocs")
    site = tmp_path / "src"
    shutil.copytree(REPO / "docs", site / "docs")
    shutil.copy(REPO / "mkdocs.yml", site / "mkdocs.yml")
    build = [*_build_command(), "--site-dir", str(tmp_path / "site")]
    done = subprocess.run(build, cwd=site, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with (site / "docs" / "index.md").open("a") as page:
        page.write("\nSee [nowhere](no-such-page.md#nothing).\n")
    done = subprocess.run(build, cwd=site, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no-such-page.md" in done.stderr, done.stderr

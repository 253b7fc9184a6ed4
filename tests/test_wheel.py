"""What a user installs: the built wheel in a fresh virtual environment outside the repository
loads both named models (NVIDIA's from a loopback server) and finds the shipped recipes; the
sdist carries what its own tests need; the metadata is what an index shows.

The fresh environment reuses this one's installed dependencies (torch and the rest) through a
``.pth`` file, so that nothing is downloaded and the test takes about a minute; waveflow itself
comes from the wheel, never from the source tree (checked)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import REPO
from test_registry import Server, nvidia_release


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([*map(str, args)], capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, REPO, cwd=out)
    (found,) = out.glob("waveflow-*.whl")
    return found


def test_the_wheel_in_a_fresh_venv_loads_both_named_models(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    # this environment's dependencies, as plain paths: its .pth files (the editable install's) are not run
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "deps.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    server = Server()
    try:
        body, _ = nvidia_release(tmp_path)
        server.files["waveglow.pt"] = body
        script = f"""
import numpy as np, waveflow
from waveflow import Vocoder
from waveflow.interop import registry
from waveflow.train.trainer import find_recipe
assert waveflow.__file__.startswith({str(venv)!r}), waveflow.__file__
url, digest = {server.url("waveglow.pt")!r}, {hashlib.sha256(body).hexdigest()!r}
registry.register("nvidia-waveglow-ljspeech", url, sha256=digest)
mel = np.random.default_rng(0).normal(-6, 2, (80, 10)).astype(np.float32)
bundled = Vocoder.from_pretrained("ljspeech-mini")
nvidia = Vocoder.from_pretrained("nvidia-waveglow-ljspeech", progress=False)
print("bundled", bundled(mel).shape, "nvidia", nvidia(mel).shape, nvidia.denoise_mode)
print("recipe", find_recipe("realtime_lpc_source").relative_to({str(venv)!r}))
"""
        result = run(
            python, "-c", script, cwd=tmp_path, env={"WAVEFLOW_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)}
        )
    finally:
        server.close()
    assert "bundled (2560,) nvidia (2560,) nvidia" in result.stdout, result.stdout
    assert "waveflow/recipes/ljspeech/conf/realtime_lpc_source.yaml" in result.stdout, result.stdout
    listed = run(venv / "bin" / "waveflow", "pretrained", cwd=tmp_path, env={"WAVEFLOW_CACHE": str(tmp_path / "cache")})
    assert "nvidia-waveglow-ljspeech" in listed.stdout and "cached in" in listed.stdout, listed.stdout


def test_the_metadata_has_an_spdx_license_classifiers_and_urls(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        meta = zf.read(name).decode()
        names = zf.namelist()
    assert "License-Expression: BSD-3-Clause" in meta and "\nLicense: " not in meta
    assert meta.count("Classifier: ") >= 5 and "Project-URL: " in meta
    assert "waveflow/recipes/ljspeech/conf/realtime_lpc_source.yaml" in names
    assert "waveflow/assets/ljspeech_mini.pt" in names


def test_the_sdist_carries_its_tests_recipes_and_docs(tmp_path):
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"
    name = run(sys.executable, "-c", code, cwd=REPO).stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("tests/conftest.py", "tests/nvidia_ref/glow.py", "tests/infer/test_vocoder.py", "mkdocs.yml",
                   "docs/index.md", "recipes/ljspeech/conf/mini.yaml", "waveflow/assets/ljspeech_mini.pt"):  # fmt: skip
        assert needed in names, needed
    assert not [n for n in names if "__pycache__" in n]

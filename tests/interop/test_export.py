"""Exported inference graphs (TorchScript, ONNX via onnxruntime) give eager PyTorch's audio."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_model

from waveflow.config import make_config
from waveflow.interop.export import example_inputs, export_onnx, export_torchscript
from waveflow.nn.checkpoint import save_checkpoint

# TorchScript is deprecated in torch 2.13 but still shipped and still what C++/mobile users load.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

# Traced at 8 frames; checked at other lengths and batch sizes (the axes must be dynamic).
CASES = [(1, 3), (2, 11)]


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:  # a missing extra must fail, not skip: CI installs it
        pytest.fail("onnxruntime is not installed: pip install -e '.[export]' (scripts/setup.sh does by default)")
    return onnxruntime


def _eager(model, mel, z):
    with torch.no_grad():
        return model.infer(mel, z=z)


@pytest.mark.parametrize(
    "overrides", [{}, {"lu": True, "actnorm": True}, {"lpc_order": 24, "pitch_features": True, "pulse_source": True}]
)
def test_torchscript_matches_eager(tmp_path, overrides):
    model = tiny_model(seed=1, **overrides).eval()
    path = tmp_path / "vocoder.ts"
    export_torchscript(model, path)
    loaded = torch.jit.load(str(path))
    for batch, frames in CASES:
        mel, z = example_inputs(model, frames, batch=batch, seed=frames)
        with torch.no_grad():
            audio = loaded(mel, z)
        assert audio.shape == (batch, frames * model.cfg.hop_length)
        torch.testing.assert_close(audio, _eager(model, mel, z), rtol=0, atol=1e-4)


@pytest.mark.parametrize("overrides", [{}, {"lpc_order": 24, "pitch_features": True, "pulse_source": True}])
def test_onnx_matches_eager(tmp_path, overrides):
    ort = _onnxruntime()
    model = tiny_model(seed=2, **overrides).eval()
    path = tmp_path / "vocoder.onnx"
    export_onnx(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["mel", "z"]
    for batch, frames in CASES:
        mel, z = example_inputs(model, frames, batch=batch, seed=frames)
        (audio,) = session.run(None, {"mel": mel.numpy(), "z": z.numpy()})
        expected = _eager(model, mel, z).numpy()
        assert audio.shape == expected.shape == (batch, frames * model.cfg.hop_length)
        np.testing.assert_allclose(audio, expected, rtol=0, atol=1e-4)
        assert np.abs(expected).max() > 0.01  # a non-trivial signal was compared (LP output is quieter)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "waveflow", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_cli_exports_both_formats(tmp_path):
    ort = _onnxruntime()
    model = tiny_model(seed=3).eval()
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, model, make_config("tiny"))
    mel, z = example_inputs(model, 5, seed=5)
    expected = _eager(model, mel, z)
    for fmt, name in (("torchscript", "v.ts"), ("onnx", "v.onnx")):
        out = tmp_path / name
        result = _cli("export", "--format", fmt, "--checkpoint", str(ckpt), "-o", str(out))
        assert result.returncode == 0, result.stderr
        if fmt == "onnx":
            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            audio = torch.from_numpy(session.run(None, {"mel": mel.numpy(), "z": z.numpy()})[0])
        else:
            audio = torch.jit.load(str(out))(mel, z)
        torch.testing.assert_close(audio, expected, rtol=0, atol=1e-4)

    result = _cli("export", "--format", "onnx", "--checkpoint", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.pt" in lines[0] and "no such checkpoint" in lines[0]
    assert not (tmp_path / "x").exists()

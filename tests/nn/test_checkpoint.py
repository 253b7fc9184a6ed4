"""Checkpoints are plain data, load without executing code, and fail with one clear error."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import tiny_model

from waveflow.config import make_config
from waveflow.nn.checkpoint import VERSION, CheckpointError, load_model, read_checkpoint, save_checkpoint


def _saved(tmp_path, **overrides):
    cfg = make_config("tiny", {"model": overrides} if overrides else None)
    model = tiny_model(**overrides)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, cfg, step=7)
    return path, model, cfg


def test_round_trip_gives_the_same_model(tmp_path):
    path, model, cfg = _saved(tmp_path, lu=True, actnorm=True)
    loaded, loaded_cfg = load_model(path)
    assert loaded_cfg == cfg and not loaded.training
    audio, mel = torch.randn(1, 1024) * 0.1, torch.randn(1, 80, 5)
    model.eval()
    torch.testing.assert_close(loaded(audio, mel)[0], model(audio, mel)[0], rtol=0, atol=0)
    data = read_checkpoint(path)
    assert data["step"] == 7 and data["format"] == "waveflow"
    assert all(torch.is_tensor(v) for v in data["model"].values())


def test_missing_folder_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)


def test_truncated_checkpoint(tmp_path):
    path, _, _ = _saved(tmp_path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(path)


def test_not_a_waveflow_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a waveflow checkpoint"):
        read_checkpoint(path)
    path.write_text("just text")
    with pytest.raises(CheckpointError, match=r"other\.pt"):
        read_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "waveflow", "x": _Evil()}, f)
    torch.save({"format": "waveflow", "version": 1, "config": {}, "model": {}, "x": _Evil()}, tmp_path / "evil2.pt")
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError):
            read_checkpoint(p)
    assert not (tmp_path / "PWNED").exists()


def test_checkpoint_of_another_config(tmp_path):
    path, _, _ = _saved(tmp_path)
    data = read_checkpoint(path)
    data["config"]["model"]["n_channels"] = 16
    torch.save(data, path)
    with pytest.raises(CheckpointError, match=r"weights do not fit the model config: .* of another shape"):
        load_model(path)
    data["config"]["model"]["n_flowz"] = 3
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="invalid config in checkpoint"):
        load_model(path)


def test_failed_save_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    path, model, cfg = _saved(tmp_path)
    before = path.read_bytes()

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, cfg)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_a_newer_format_version_is_refused_and_the_current_one_reads(tmp_path):
    path, _, _ = _saved(tmp_path)
    data = read_checkpoint(path)
    assert data["version"] == VERSION
    for version, refused in ((VERSION + 1, True), ("1", True), (VERSION, False)):
        torch.save({**data, "version": version}, path)
        if refused:
            message = f"format version {version!r}; this waveflow reads up to {VERSION}"
            with pytest.raises(CheckpointError, match=message):
                read_checkpoint(path)
        else:
            assert read_checkpoint(path)["step"] == 7

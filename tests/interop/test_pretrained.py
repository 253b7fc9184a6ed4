"""Pretrained folders (config.yaml + model.safetensors + card.json): written by
`waveflow export --format pretrained`, loaded by Vocoder.from_pretrained, offline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from test_vocoder import random_mel, write_tiny_checkpoint

from waveflow.infer.vocoder import DEFAULT_CHECKPOINT, Vocoder
from waveflow.interop.pretrained import save_pretrained


def test_export_then_from_pretrained_gives_the_checkpoints_audio(tmp_path):
    write_tiny_checkpoint(tmp_path / "tiny.pt", seed=2)
    folder = tmp_path / "tiny-vocoder"
    args = ["export", "--format", "pretrained", "--checkpoint", str(tmp_path / "tiny.pt"), "-o", str(folder)]
    result = subprocess.run(
        [sys.executable, "-m", "waveflow", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "config.yaml", "model.safetensors"]
    mel = random_mel(8, seed=1)
    expected = Vocoder.from_checkpoint(tmp_path / "tiny.pt")(mel, seed=0)
    torch.testing.assert_close(Vocoder.from_pretrained(folder)(mel, seed=0), expected, rtol=0, atol=0)
    assert not list(tmp_path.glob(".tiny-vocoder.*"))  # no temp folder left behind


def test_the_bundled_model_round_trips_with_its_card(tmp_path):
    folder = save_pretrained(DEFAULT_CHECKPOINT, tmp_path / "bundled")
    card = json.loads((folder / "card.json").read_text())
    assert card["step"] > 0 and "note" in card
    voc = Vocoder.from_pretrained(str(folder))
    assert voc.sigma == Vocoder.default().sigma and voc.sample_rate == 22050


def test_bad_folders_and_ids_are_one_clear_error(tmp_path):
    write_tiny_checkpoint(tmp_path / "tiny.pt")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        save_pretrained(tmp_path / "tiny.pt", tmp_path / "busy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no config\.yaml"):
        Vocoder.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a pretrained folder"):
        Vocoder.from_pretrained(tmp_path / "tiny.pt")
    folder = save_pretrained(tmp_path / "tiny.pt", tmp_path / "ok")
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="safetensors"):
        Vocoder.from_pretrained(folder)
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="huggingface_hub"):
            Vocoder.from_pretrained("someone/some-vocoder")

"""Pretrained-model folders, the layout TTS toolkits load vocoders from (Vocos, SpeechBrain):

    FOLDER/config.yaml         the full config (mel convention, model, training)
    FOLDER/model.safetensors   the weights (float32), loadable without executing any code
    FOLDER/card.json           the model card: data, steps, measured quality, provenance

``save_pretrained`` writes one from a checkpoint; ``load_pretrained`` reads a local folder or,
when ``huggingface_hub`` is installed, a hub repository id (``owner/name``), downloading it
into the hub's cache first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from waveflow.config import Config, ConfigError, config_from_dict, safe_yaml
from waveflow.nn.checkpoint import (
    CHECKSUM_KEY,
    CheckpointError,
    load_state,
    read_checkpoint,
    verify_weights,
    weights_digest,
)
from waveflow.nn.model import WaveGlow

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_KEYS = ("step", "dev_nll", "note", "source", "card")


def save_pretrained(checkpoint: str | Path, folder: str | Path) -> Path:
    """Write the pretrained folder for a waveflow checkpoint; the folder appears whole or not at all."""
    import yaml
    from safetensors.torch import save_file

    data = read_checkpoint(checkpoint)
    cfg = config_from_dict(data["config"])
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder}: exists and is not empty; choose a new folder")
    if not folder.resolve().parent.is_dir():
        raise ValueError(f"{folder}: its parent folder does not exist")
    weights = {k: v.float().contiguous() if v.is_floating_point() else v.contiguous() for k, v in data["model"].items()}
    card = {k: data[k] for k in CARD_KEYS if k in data}
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.resolve().parent))
    try:
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        metadata = {"format": "waveflow", CHECKSUM_KEY: weights_digest(weights)}
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata=metadata)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
        for path in tmp.iterdir():
            os.chmod(path, 0o644)
        os.chmod(tmp, 0o755)
        if folder.exists():
            folder.rmdir()
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def resolve(path_or_repo_id: str | Path) -> Path:
    """A local pretrained folder for a path or a hub repo id."""
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise ValueError(f"{text}: not a pretrained folder (expected {CONFIG_FILE} and {WEIGHTS_FILE} in a folder)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"{text}: no such folder; to fetch it as a hub repo id, install huggingface_hub") from None
    return Path(snapshot_download(text, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE]))


def load_pretrained(path_or_repo_id: str | Path) -> tuple[WaveGlow, Config, dict[str, Any]]:
    """``(model in eval mode on CPU, its Config, its model card)`` from a pretrained folder or repo id."""
    import yaml
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = resolve(path_or_repo_id)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"{folder}: no {name}; a pretrained folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config_path = folder / CONFIG_FILE
        cfg = config_from_dict(safe_yaml(config_path.read_text(), str(config_path)))
    except (ConfigError, yaml.YAMLError) as exc:
        raise ValueError(f"{folder / CONFIG_FILE}: not a waveflow config ({exc})") from None
    card = read_card(folder / CARD_FILE)
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: unreadable safetensors file ({exc})") from None
    if CHECKSUM_KEY in metadata:  # folders written before checksums load as they did
        verify_weights(state, metadata[CHECKSUM_KEY], folder / WEIGHTS_FILE)
    model = WaveGlow(cfg.model, cfg.mel)
    load_state(model, state, folder / WEIGHTS_FILE)
    return model.eval(), cfg, card


def read_card(path: Path) -> dict[str, Any]:
    """The model card (a JSON object), {} when there is none; one line naming the file when it
    is not valid JSON or not an object."""
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(card, dict):
        raise ValueError(f"{path}: holds a JSON {type(card).__name__}, expected an object (the model card)")
    return card

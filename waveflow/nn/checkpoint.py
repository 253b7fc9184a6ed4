"""Checkpoints as plain data.

A checkpoint is a dict of tensors, numbers and strings: ``format``, ``version``,
``config`` (``Config.to_dict()``), ``model`` (the state dict) and, for training,
``optimizer``, ``scaler``, ``step``, ``rng`` and whatever else the trainer adds. It is
never a pickled module: it loads with ``torch.load(weights_only=True)``, which executes
no code, and needs nothing of the training code to be used.

Writes are atomic: a temp file in the same folder, fsynced, then renamed over the target,
so an interrupted save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from waveflow.atomic import atomic_open
from waveflow.config import Config, ConfigError, config_from_dict, short
from waveflow.nn.model import WaveGlow

FORMAT = "waveflow"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, not waveflow's, or does not fit the model."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename; nothing partial is left."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise CheckpointError(f"{path}: folder {directory} does not exist")
    with atomic_open(path) as handle:
        torch.save(obj, handle)


def make_checkpoint(model: WaveGlow, cfg: Config, **extra: Any) -> dict[str, Any]:
    """The plain-data checkpoint of ``model`` with its config, the weights' checksum and any
    extra entries."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.to_dict(),
        "model": state,
        CHECKSUM_KEY: weights_digest(state),
        **extra,
    }


CHECKSUM_KEY = "weights_sha256"


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the weights: every tensor's name, dtype, shape and bytes, in name order.
    Stored in every checkpoint (and pretrained folder) and checked at load, so that a damaged
    file fails loudly instead of synthesizing slightly wrong audio."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def verify_weights(state: dict[str, Any], expected: Any, path: str | Path) -> None:
    """Raise CheckpointError unless ``state`` is all tensors with the digest ``expected``."""
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: weight {short(bad[0])} is a {type(state[bad[0]]).__name__}, expected a tensor")
    if not isinstance(expected, str) or weights_digest(state) != expected:
        raise CheckpointError(
            f"{path}: the weights do not match the checksum stored with them: the file is damaged "
            "(a flipped byte, a bad copy); download or copy it again"
        )


def save_checkpoint(path: str | Path, model: WaveGlow, cfg: Config, **extra: Any) -> None:
    atomic_save(make_checkpoint(model, cfg, **extra), path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a waveflow checkpoint without executing code; tensors on CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on foreign pickle protocols
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        hint = ""
        if "weights_only" in str(exc) or "global" in str(exc).lower():
            hint = " (it holds pickled Python objects; an NVIDIA WaveGlow checkpoint? see `waveflow convert-nvidia`)"
        raise CheckpointError(f"{path}: not a waveflow checkpoint{hint}") from None
    except Exception as exc:  # any file at all can be handed in; all failures mean "unreadable"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint, truncated or corrupt ({reason})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a waveflow checkpoint (no format={FORMAT!r} entry)")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {short(version)}; this waveflow reads up to {VERSION}"
        )
    for key in ("config", "model"):
        if not isinstance(data.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    if CHECKSUM_KEY in data:  # checkpoints written before checksums load as they did
        verify_weights(data["model"], data[CHECKSUM_KEY], path)
    return data


def checkpoint_config(data: dict[str, Any], path: str | Path = "checkpoint") -> Config:
    try:
        return config_from_dict(data["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: invalid config in checkpoint ({exc})") from None


def load_state(model: WaveGlow, state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> None:
    """Load a state dict into ``model``, turning any mismatch into one readable error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
        raise CheckpointError(f"{path}: weights do not fit the model config: " + "; ".join(parts))
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def warm_start(model: WaveGlow, state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> list[str]:
    """Load another model's weights as the start of a new run: every tensor of the same name
    and shape is copied; a conditioning layer (``cond_layer``) whose input grew because
    conditioning channels were appended (pitch features at the sample rate, a pulse source)
    gets the old weights for its leading inputs and zeros for the new ones, so the model
    starts as the old one did. Returns the names that grew; anything else raises."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise CheckpointError(f"{path}: cannot start from these weights: {len(missing)} missing (e.g. {missing[0]})")
    grown, merged = [], {}
    for key, mine in own.items():
        old = state[key]
        if tuple(old.shape) == tuple(mine.shape):
            merged[key] = old.to(mine.dtype)
        elif (
            ".cond_layer.weight" in key
            and old.dim() == mine.dim() == 3
            and old.shape[0] == mine.shape[0]
            and old.shape[2] == mine.shape[2]
            and old.shape[1] < mine.shape[1]
        ):
            new = torch.zeros_like(mine)
            new[:, : old.shape[1]] = old.to(mine.dtype)
            merged[key] = new
            grown.append(key)
        else:
            raise CheckpointError(
                f"{path}: cannot start from these weights: {key} {tuple(old.shape)} vs {tuple(mine.shape)} "
                "(only conditioning inputs appended at the end can grow)"
            )
    with torch.no_grad():
        model.load_state_dict(merged)
    return grown


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[WaveGlow, Config]:
    """A ``WaveGlow`` in eval mode on ``device`` and its ``Config``, from a checkpoint file."""
    model, cfg, _ = load_checkpoint(path, device)
    return model, cfg


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[WaveGlow, Config, dict[str, Any]]:
    """As ``load_model``, plus the checkpoint's other entries (step, source, note; no weights)."""
    data = read_checkpoint(path)
    cfg = checkpoint_config(data, path)
    model = WaveGlow(cfg.model, cfg.mel)
    load_state(model, data["model"], path)
    extra = {k: v for k, v in data.items() if k not in ("model", "optimizer", "scaler", "rng")}
    return model.to(device).eval(), cfg, extra

"""Import NVIDIA's published WaveGlow checkpoints, without executing code from them.

Two kinds of file exist:

* the original releases (``waveglow_256channels_universal_v5.pt`` ...): a dict whose
  ``model`` is a pickled ``glow.WaveGlow`` module (``glow.WN``, ``glow.Invertible1x1Conv``
  and torch layers with ``torch.nn.utils.weight_norm`` inside);
* the later state-dict releases (DeepLearningExamples, torch hub): a dict with
  ``state_dict`` (keys possibly ``module.``-prefixed) and ``config``.

Both are read through a restricted unpickler that admits only the classes such files need;
modules become inert stand-ins that only collect their state. The conditioner ("WN") comes
in three layouts, all mapped exactly onto waveflow's (which is NVIDIA's latest):

* first:  ``res_layers`` (n_layers-1, C->C), ``skip_layers`` (n_layers, C->C), ``cond_layers``;
* middle: ``res_skip_layers`` (C->2C, the last C->C) and per-layer ``cond_layers`` (-> 2C);
* latest: ``res_skip_layers`` and one ``cond_layer`` (-> 2C * n_layers, layer i rows i*2C...).

Weight norm in both libraries is w = g * v / ||v|| with the norm over all dims but the
output one, so ``weight_g``/``weight_v`` rows can be stacked and split freely.
"""

from __future__ import annotations

import argparse
import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from waveflow.config import Config, ConfigError, make_config
from waveflow.nn.checkpoint import CheckpointError, atomic_save, make_checkpoint
from waveflow.nn.model import WaveGlow


class NvidiaCheckpointError(CheckpointError):
    """An NVIDIA checkpoint is unreadable, unsafe, or not a WaveGlow this module understands."""


# ----------------------------------------------------------------- unpickling
class _Refused(pickle.UnpicklingError):
    """The file asks for something the restricted unpickler does not admit."""


class _StandIn:
    """An inert object in place of a pickled class: it keeps the pickled state, nothing else."""

    qualname = "?"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and state[0] is None:
            state = state[1]  # (None, slotstate) form
        if not isinstance(state, dict):
            raise _Refused(f"{self.qualname}: unexpected pickled state of type {type(state).__name__}")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualname}>"


_MODULE_CLASSES = (
    "torch.nn.modules.conv.Conv1d",
    "torch.nn.modules.conv.ConvTranspose1d",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.utils.weight_norm.WeightNorm",
    "glow.WaveGlow",
    "glow.WN",
    "glow.Invertible1x1Conv",
)
_STAND_INS = {name: type(name.rsplit(".", 1)[1], (_StandIn,), {"qualname": name}) for name in _MODULE_CLASSES}


def _check_view(storage: Any, offset: Any, size: Any, stride: Any) -> None:
    """Refuse a tensor view that reaches past its storage or holds more elements than it (an
    expanded, stride-0 or overlapping view): a few bytes of storage could then stand for a
    tensor that any copy (a dtype cast, a concatenation) materialises at gigabytes."""
    try:
        elements = len(storage)
        size, stride = tuple(size), tuple(stride)
    except TypeError:
        raise _Refused("a tensor without a proper storage, size or stride") from None
    ints = (offset, *size, *stride)
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in ints):
        raise _Refused(f"a tensor view with size {size[:8]} and stride {stride[:8]}: expected non-negative integers")
    numel = 1
    for n in size:
        numel *= n
    if numel == 0:
        return
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= elements:
        raise _Refused(f"a tensor of shape {size[:8]} reaches past its storage of {elements} elements")
    if numel > elements:
        raise _Refused(
            f"a tensor of shape {size[:8]} ({numel} elements) over a storage of {elements}: an expanded "
            "(stride 0) or overlapping view, refused before it is materialised"
        )


def _rebuild_tensor_checked(storage: Any, storage_offset: Any, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    _check_view(storage, storage_offset, size, stride)
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, *rest)


def _rebuild_tensor_checked_v1(storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor:
    _check_view(storage, storage_offset, size, stride)
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


# Real objects that rebuild containers and tensors; none of them runs code chosen by the file.
_REAL = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "torch._utils._rebuild_tensor": _rebuild_tensor_checked_v1,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_checked,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch.nn.parameter.Parameter": torch.nn.Parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits the classes above and nothing else. (torch.load's own wrapper resolves the
    ``torch.*Storage`` types before this is asked.)"""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # Python 2 names, used by pickle protocol 2
            module = "builtins"
        qualname = f"{module}.{name}"
        if qualname in _STAND_INS:
            return _STAND_INS[qualname]
        if qualname in _REAL:
            return _REAL[qualname]
        if module == "glow_old":
            raise _Refused(
                "it holds glow_old.WaveGlow (NVIDIA's waveglow_old.pt), whose couplings transform the first "
                "half on odd flows; that model has no exact waveflow equivalent and is not supported - use "
                "waveglow_256channels_universal_v5.pt or a later release"
            )
        raise _Refused(f"refusing to unpickle {qualname}: not a class a WaveGlow checkpoint holds")


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load``."""

    Unpickler = _RestrictedUnpickler
    __name__ = "waveflow_restricted_pickle"

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def safe_load(path: str | Path) -> Any:
    """``torch.load`` a foreign checkpoint on CPU through the restricted unpickler."""
    path = Path(path)
    if not path.exists():
        raise NvidiaCheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise NvidiaCheckpointError(f"{path}: is a folder, expected a checkpoint file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", pickle_module=_RestrictedPickleModule, weights_only=False)
    except _Refused as exc:
        raise NvidiaCheckpointError(f"{path}: {exc}") from None
    except Exception as exc:  # any file can be handed in; every other failure means "unreadable"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NvidiaCheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None


# ------------------------------------------------------------ state extraction
MAX_MODULE_DEPTH = 16  # glow.WaveGlow -> WN -> ModuleList -> Conv1d is 4 deep


def _module_state(
    obj: Any, prefix: str, out: dict[str, torch.Tensor], where: str, seen: frozenset[int] = frozenset()
) -> None:
    """Flatten a stand-in module tree into ``name -> tensor`` like ``Module.state_dict``."""
    at = prefix.rstrip(".") or "the top"
    if not isinstance(obj, _StandIn):
        raise NvidiaCheckpointError(f"{where}: expected a module at {at}, found {type(obj).__name__}")
    if id(obj) in seen or len(seen) >= MAX_MODULE_DEPTH:
        raise NvidiaCheckpointError(f"{where}: the module tree loops back on itself (or nests too deep) at {at}")
    seen = seen | {id(obj)}
    for key in ("_parameters", "_buffers", "_modules"):
        if not isinstance(getattr(obj, key, None) or {}, dict):
            raise NvidiaCheckpointError(
                f"{where}: {at} has {key} of type {type(getattr(obj, key)).__name__}, expected a dict"
            )
    for key in ("_parameters", "_buffers"):
        for name, tensor in (getattr(obj, key, None) or {}).items():
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise NvidiaCheckpointError(f"{where}: {prefix}{name} is a {type(tensor).__name__}, expected a tensor")
            out[prefix + str(name)] = tensor.detach()
    for hook in (getattr(obj, "_forward_pre_hooks", None) or {}).values():
        if isinstance(hook, _StandIn) and hook.qualname.endswith("WeightNorm"):
            if getattr(hook, "name", "weight") != "weight" or getattr(hook, "dim", 0) != 0:
                raise NvidiaCheckpointError(
                    f"{where}: {prefix or 'a module'} uses weight norm over dim {getattr(hook, 'dim', None)} of "
                    f"{getattr(hook, 'name', None)!r}; expected dim 0 of 'weight'"
                )
    for name, child in (getattr(obj, "_modules", None) or {}).items():
        if child is not None:
            _module_state(child, f"{prefix}{name}.", out, where, seen)


def _raw_nvidia_state(data: Any, where: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The NVIDIA-named state dict and whatever hyper-parameters the file records."""
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], _StandIn):
        data = data["model"]
    if isinstance(data, _StandIn):
        if data.qualname != "glow.WaveGlow":
            raise NvidiaCheckpointError(f"{where}: holds a pickled {data.qualname}, expected glow.WaveGlow")
        state: dict[str, torch.Tensor] = {}
        _module_state(data, "", state, where)
        hparams = {
            k: getattr(data, k) for k in ("n_flows", "n_group", "n_early_every", "n_early_size") if hasattr(data, k)
        }
        stride = getattr(getattr(data, "_modules", {}).get("upsample"), "stride", None)
        if isinstance(stride, (tuple, list)) and stride:
            hparams["hop_length"] = int(stride[0])
        return state, hparams
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        config = data.get("config")
        hparams = dict(config) if isinstance(config, dict) else {}
        return dict(data["state_dict"]), hparams
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return dict(data), {}
    keys = sorted(data)[:6] if isinstance(data, dict) else type(data).__name__
    raise NvidiaCheckpointError(
        f"{where}: not an NVIDIA WaveGlow checkpoint (expected a dict with 'model' or 'state_dict', found {keys})"
    )


_PARAM_RE = re.compile(r"parametrizations\.weight\.original([01])$")


def _normalise_keys(state: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """Drop ``module.`` prefixes and map ``parametrizations.weight.original0/1`` to weight_g/v."""
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise NvidiaCheckpointError(f"{where}: state entry {key!r} is a {type(value).__name__}, expected a tensor")
        while key.startswith("module."):
            key = key[len("module.") :]
        key = _PARAM_RE.sub(lambda m: "weight_g" if m.group(1) == "0" else "weight_v", key)
        out[key] = value.detach().to(torch.float32)
    if not any(k.startswith("WN.") for k in out) or "upsample.weight" not in out:
        raise NvidiaCheckpointError(
            f"{where}: not a WaveGlow checkpoint (no 'upsample.weight' / 'WN.*' weights; found e.g. {sorted(out)[:3]})"
        )
    return out


def _weight_gv(state: dict[str, torch.Tensor], prefix: str, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, v) of a conv, from weight_g/weight_v, or from a plain weight (weight norm removed)."""
    if f"{prefix}weight_v" in state and f"{prefix}weight_g" in state:
        v, g = state[f"{prefix}weight_v"], state[f"{prefix}weight_g"]
        return g.reshape(-1, 1, 1), v
    if f"{prefix}weight" in state:
        w = state[f"{prefix}weight"]
        return w.flatten(1).norm(dim=1).view(-1, 1, 1), w
    raise NvidiaCheckpointError(f"{where}: missing {prefix}weight_g/weight_v")


def _get(state: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in state:
        raise NvidiaCheckpointError(f"{where}: missing {key}")
    return state[key]


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def _infer_model_overrides(state: dict[str, torch.Tensor], hparams: dict[str, Any], where: str) -> dict[str, Any]:
    """waveflow ``ModelConfig`` fields from tensor shapes, cross-checked with recorded values."""
    up = _get(state, "upsample.weight", where)
    n_flows, n_wn = _count(state, r"convinv\.(\d+)\."), _count(state, r"WN\.(\d+)\.")
    if n_flows == 0 or n_wn != n_flows:
        raise NvidiaCheckpointError(f"{where}: {n_flows} convinv layers but {n_wn} WN layers")
    channels = [_get(state, f"convinv.{k}.conv.weight", where).shape[0] for k in range(n_flows)]
    drops = [(k, channels[k - 1] - channels[k]) for k in range(1, n_flows) if channels[k] != channels[k - 1]]
    n_early_every = drops[0][0] if drops else 0
    n_early_size = drops[0][1] if drops else 0
    in_w = _weight_gv(state, "WN.0.in_layers.0.", where)[1]
    overrides = dict(
        n_mels=up.shape[0],
        n_flows=n_flows,
        n_group=channels[0],
        n_early_every=n_early_every,
        n_early_size=n_early_size,
        n_layers=_count(state, r"WN\.0\.in_layers\.(\d+)\."),
        n_channels=in_w.shape[0] // 2,
        kernel_size=in_w.shape[2],
        upsample_kernel=up.shape[2],
        hop_length=int(hparams.get("hop_length", 256)),  # NVIDIA's code fixes the stride at 256
        weight_norm=True,
        lu=False,
        actnorm=False,
    )
    recorded = {
        "n_mels": hparams.get("n_mel_channels"),
        **{k: hparams.get(k) for k in ("n_flows", "n_group", "n_early_every", "n_early_size")},
        **{k: (hparams.get("WN_config") or {}).get(k) for k in ("n_layers", "n_channels", "kernel_size")},
    }
    for key, value in recorded.items():
        # An early-output setting that never fires (e.g. n_early_every >= n_flows) is not visible in shapes.
        if value is not None and value != overrides[key] and not (key.startswith("n_early") and not drops):
            raise NvidiaCheckpointError(f"{where}: the file says {key}={value} but its weights have {overrides[key]}")
    return overrides


def convert_state(
    state: dict[str, torch.Tensor], hparams: dict[str, Any], where: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], Config]:
    """NVIDIA-named weights (any WN layout) -> (waveflow state dict, ``Config``)."""
    state = _normalise_keys(state, where)
    overrides = _infer_model_overrides(state, hparams, where)
    try:
        cfg = make_config(
            "default",
            {"model": overrides, "mel": {"n_mels": overrides["n_mels"], "hop_length": overrides["hop_length"]}},
        )
    except ConfigError as exc:
        raise NvidiaCheckpointError(f"{where}: unsupported WaveGlow shape ({exc})") from None
    m = cfg.model
    out: dict[str, torch.Tensor] = {
        "upsample.weight": state["upsample.weight"],
        "upsample.bias": _get(state, "upsample.bias", where),
    }
    used = {"upsample.weight", "upsample.bias"}

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return _get(state, key, where)

    def take_gv(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        used.update(prefix + s for s in ("weight_g", "weight_v", "weight"))
        return _weight_gv(state, prefix, where)

    for k in range(m.n_flows):
        src, dst = f"WN.{k}.", f"flows.{k}.coupling.wn."
        out[f"flows.{k}.invconv.weight"] = take(f"convinv.{k}.conv.weight").squeeze(-1)
        out[f"{dst}start.weight_g"], out[f"{dst}start.weight_v"] = take_gv(f"{src}start.")
        out[f"{dst}start.bias"] = take(f"{src}start.bias")
        out[f"{dst}end.weight"], out[f"{dst}end.bias"] = take(f"{src}end.weight"), take(f"{src}end.bias")
        # Conditioning: one stacked conv (latest) or one per layer, stacked here in layer order.
        if f"{src}cond_layer.bias" in state:
            g, v = take_gv(f"{src}cond_layer.")
            bias = take(f"{src}cond_layer.bias")
        else:
            parts = [
                (*take_gv(f"{src}cond_layers.{i}."), take(f"{src}cond_layers.{i}.bias")) for i in range(m.n_layers)
            ]
            g, v, bias = (torch.cat(t) for t in zip(*parts, strict=False))
        out[f"{dst}cond_layer.weight_g"], out[f"{dst}cond_layer.weight_v"], out[f"{dst}cond_layer.bias"] = g, v, bias
        for i in range(m.n_layers):
            p, q = f"{src}in_layers.{i}.", f"{dst}in_layers.{i}."
            out[f"{q}weight_g"], out[f"{q}weight_v"] = take_gv(p)
            out[f"{q}bias"] = take(f"{p}bias")
            q = f"{dst}res_skip_layers.{i}."
            if f"{src}res_skip_layers.{i}.bias" in state:
                p = f"{src}res_skip_layers.{i}."
                out[f"{q}weight_g"], out[f"{q}weight_v"] = take_gv(p)
                out[f"{q}bias"] = take(f"{p}bias")
            else:
                # First layout: rows [residual; skip] are what a fused res_skip conv computes.
                parts = [(*take_gv(f"{src}skip_layers.{i}."), take(f"{src}skip_layers.{i}.bias"))]
                if i < m.n_layers - 1:
                    parts.insert(0, (*take_gv(f"{src}res_layers.{i}."), take(f"{src}res_layers.{i}.bias")))
                out[f"{q}weight_g"], out[f"{q}weight_v"], out[f"{q}bias"] = (
                    torch.cat(t) for t in zip(*parts, strict=False)
                )
    left = sorted(k for k in state if k not in used and not k.endswith("W_inverse"))
    if left:
        raise NvidiaCheckpointError(f"{where}: {len(left)} weights not understood (e.g. {left[0]})")
    _check_fits(out, cfg, where)
    return out, cfg


def _check_fits(state: dict[str, torch.Tensor], cfg: Config, where: str) -> None:
    own = WaveGlow(cfg.model).state_dict()
    missing = sorted(set(own) - set(state))
    bad = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or bad:
        detail = f"missing {missing[0]}" if missing else f"shape {bad[0]}"
        raise NvidiaCheckpointError(f"{where}: weights do not form a consistent WaveGlow ({detail})")


def read_nvidia(path: str | Path) -> tuple[dict[str, torch.Tensor], Config]:
    """An NVIDIA WaveGlow file -> (waveflow state dict, ``Config``); nothing executed, nothing written."""
    state, hparams = _raw_nvidia_state(safe_load(path), str(path))
    return convert_state(state, hparams, str(path))


def load_nvidia(path: str | Path, device: str | torch.device = "cpu") -> tuple[WaveGlow, Config]:
    """A waveflow ``WaveGlow`` (eval mode, on ``device``) computing the same function as
    NVIDIA's model in ``path``, and its ``Config``."""
    state, cfg = read_nvidia(path)
    model = WaveGlow(cfg.model)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


def convert_nvidia(path: str | Path, out: str | Path) -> Config:
    """Write a waveflow checkpoint (atomically) for the NVIDIA checkpoint ``path``."""
    model, cfg = load_nvidia(path)
    atomic_save(make_checkpoint(model, cfg, source=f"nvidia:{Path(path).name}"), out)
    return cfg


# -------------------------------------------------------------- reverse mapping
def nvidia_config(cfg: Config) -> dict[str, Any]:
    """NVIDIA's ``WaveGlow(**config)`` arguments for a waveflow config."""
    m = cfg.model
    return {
        "n_mel_channels": m.n_mels,
        "n_flows": m.n_flows,
        "n_group": m.n_group,
        "n_early_every": m.n_early_every,
        "n_early_size": m.n_early_size,
        "WN_config": {"n_layers": m.n_layers, "n_channels": m.n_channels, "kernel_size": m.kernel_size},
    }


def to_nvidia_state_dict(model: WaveGlow) -> dict[str, torch.Tensor]:
    """waveflow weights under NVIDIA's latest ``glow.py`` names (``res_skip_layers``,
    one ``cond_layer``), ready for ``glow.WaveGlow.load_state_dict``."""
    m = model.cfg
    if m.lu or m.actnorm:
        raise ValueError("a model with lu=True or actnorm=True has no NVIDIA WaveGlow equivalent")
    out = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().clone()
        if key.startswith("flows."):
            _, k, rest = key.split(".", 2)
            if rest == "invconv.weight":
                out[f"convinv.{k}.conv.weight"] = value.unsqueeze(-1)
                continue
            key = f"WN.{k}." + rest.removeprefix("coupling.wn.")
        out[key] = value
    return out


# ----------------------------------------------------------------------- CLI
def run(args: argparse.Namespace) -> None:
    out = Path(args.output)
    if out.resolve() == Path(args.input).resolve():
        raise ValueError(f"{out}: output would overwrite the input")
    cfg = convert_nvidia(args.input, out)
    m = cfg.model
    print(
        f"{args.input} -> {out}: {m.n_flows} flows, n_group {m.n_group}, WN {m.n_layers} x {m.n_channels}, "
        f"{m.n_mels} mels, hop {m.hop_length}"
    )

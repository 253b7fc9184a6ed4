"""Export the inference path (mel and z in, audio out) to TorchScript or ONNX.

The exported graph computes ``model.inverse(z, mel)``: mel ``(B, n_mels, F)`` and
z ``(B, n_group, F * hop / n_group)`` -> audio ``(B, F * hop)``, with batch and frame
count dynamic. z is an input so that the caller owns the noise (sigma, seed); draw it as
``sigma * N(0, 1)``. Weight norm is folded and the 1x1-conv inverses are baked in as
constants first (exporters cannot differentiate through, or export, a matrix inverse).
A model with linear prediction exports its synthesis filter too, for inputs of up to 2**16
frames.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from waveflow.atomic import atomic_open
from waveflow.nn.checkpoint import load_model
from waveflow.nn.flows import Invertible1x1Conv
from waveflow.nn.model import WaveGlow

ONNX_OPSET = 17
EXPORT_SCAN_LEVELS = 16


class _FixedInverse1x1(nn.Module):
    """A 1x1 conv reduced to its precomputed inverse ``(C, C)``; only ``inverse`` is defined."""

    def __init__(self, conv: Invertible1x1Conv) -> None:
        super().__init__()
        with torch.no_grad():
            self.register_buffer("w_inv", conv.inverse_matrix().float().clone())

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return torch.matmul(self.w_inv.to(y.dtype), y)


class InferenceGraph(nn.Module):
    """``forward(mel (B, n_mels, F), z (B, n_group, F * hop / n_group)) -> audio (B, F * hop)``."""

    def __init__(self, model: WaveGlow) -> None:
        super().__init__()
        model = copy.deepcopy(model).eval()
        if hasattr(model, "optimize_for_inference"):
            model.optimize_for_inference()
        for flow in model.flows:
            flow.invconv = _FixedInverse1x1(flow.invconv)
        if model.lpc is not None:
            # A traced graph cannot choose its scan depth from the length: fix one that covers
            # 2**16 frames (12 minutes at hop 256); extra rounds leave the result unchanged.
            model.lpc.scan_levels = EXPORT_SCAN_LEVELS
        model.requires_grad_(False)
        self.model = model

    def forward(self, mel: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.model.inverse(z, mel)


def example_inputs(model: WaveGlow, frames: int, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random mel ``(batch, n_mels, frames)`` and z ``(batch, n_group, frames * hop / n_group)``."""
    cfg = model.cfg
    if (cfg.hop_length * frames) % cfg.n_group:
        raise ValueError(f"hop_length {cfg.hop_length} x {frames} frames is not a multiple of n_group {cfg.n_group}")
    gen = torch.Generator().manual_seed(seed)
    mel = torch.randn(batch, cfg.n_mels, frames, generator=gen) - 5.0
    z = torch.randn(model.latent_shape(batch, frames * cfg.hop_length), generator=gen) * 0.6
    return mel, z


@torch.no_grad()
def export_torchscript(model: WaveGlow, out: str | Path, frames: int = 8) -> None:
    """Trace the inference path and save it with ``torch.jit.save`` (atomically)."""
    graph = InferenceGraph(model)
    with warnings.catch_warnings():
        # The input checks in WaveGlow are Python branches; the tracer notes that it freezes them.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, example_inputs(model, frames), check_trace=False)
    with atomic_open(out) as handle:
        torch.jit.save(traced, handle)


@torch.no_grad()
def export_onnx(model: WaveGlow, out: str | Path, frames: int = 8, opset: int = ONNX_OPSET) -> None:
    """Export the inference path to ONNX (TorchScript-based exporter), batch and length dynamic."""
    graph = InferenceGraph(model)

    def write(handle) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                example_inputs(model, frames),
                handle,
                dynamo=False,
                opset_version=opset,
                input_names=["mel", "z"],
                output_names=["audio"],
                dynamic_axes={
                    "mel": {0: "batch", 2: "frames"},
                    "z": {0: "batch", 2: "steps"},
                    "audio": {0: "batch", 1: "samples"},
                },
            )

    with atomic_open(out) as handle:
        write(handle)


# ----------------------------------------------------------------------- CLI
def run(args: argparse.Namespace) -> None:
    if args.format == "pretrained":
        from waveflow.interop.pretrained import save_pretrained

        folder = save_pretrained(args.checkpoint, args.output)
        print(f"{args.checkpoint} -> {folder}/ (config.yaml, model.safetensors, card.json): Vocoder.from_pretrained")
        return
    model, cfg = load_model(args.checkpoint)
    if args.format == "onnx":
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
        except ImportError:
            raise ValueError("ONNX export needs the onnx package: pip install 'waveflow[export]'") from None
        export_onnx(model, args.output)
    else:
        export_torchscript(model, args.output)
    m = cfg.model
    print(
        f"{args.checkpoint} -> {args.output} ({args.format}): inputs mel (B, {m.n_mels}, F) and "
        f"z (B, {m.n_group}, F*{m.hop_length}/{m.n_group}); output audio (B, F*{m.hop_length})"
    )

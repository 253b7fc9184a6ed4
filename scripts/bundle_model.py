#!/usr/bin/env python3
"""Turn a training checkpoint into the model shipped inside the package.

    python scripts/bundle_model.py exp/bundled/checkpoints/best.pt -o waveflow/assets/ljspeech_mini.pt

Keeps the weights (as float16, which halves the file; loading casts them back to float32)
and the config, drops the optimizer and RNG states, and records the source run's step and
dev NLL. The result loads with ``torch.load(weights_only=True)`` like any checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from waveflow.config import with_overrides
from waveflow.nn.checkpoint import (
    CHECKSUM_KEY,
    FORMAT,
    VERSION,
    atomic_save,
    checkpoint_config,
    read_checkpoint,
    weights_digest,
)


def card(args, data: dict) -> dict:
    """The model card stored with the weights (``waveflow info`` prints it)."""
    out = {"data": args.data, "steps": int(data.get("step", 0))}
    if args.evaluation:
        scores = json.loads(Path(args.evaluation).read_text())
        out["quality"] = {
            "clips": [c["clip"] for c in scores["clips"]],
            "sigma": scores.get("sigma"),
            "harmonic": scores.get("harmonic", 0.0),
            "postfilter": scores.get("postfilter", 0.0),
            "mel_correction": scores.get("mel_correction", 0),
            **{system: {k: float(f"{v:.4g}") for k, v in means.items()} for system, means in scores["summary"].items()},
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a checkpoint written by `waveflow train`")
    p.add_argument("-o", "--out", required=True, help="where to write the bundled model")
    p.add_argument("--note", default="", help="free text stored with it (e.g. the training command)")
    p.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="inference sigma to ship (stored as train.eval_sigma; default: the run's own)",
    )
    p.add_argument(
        "--postfilter",
        type=float,
        default=None,
        help="harmonic post-filter strength to ship (stored as train.eval_postfilter; default: the run's own)",
    )
    p.add_argument(
        "--harmonic",
        type=float,
        default=None,
        help="harmonic excitation strength to ship (stored as train.eval_harmonic; default: the run's own)",
    )
    p.add_argument(
        "--pitch-tracker",
        default=None,
        help="the mel pitch tracker the pulse source and post-filter read (model.pitch_tracker; weightless, "
        "so it can change after training; default: the run's own)",
    )
    p.add_argument(
        "--mel-correction",
        type=int,
        default=None,
        help="mel correction iterations to ship (stored as train.eval_mel_correction; default: the run's own)",
    )
    p.add_argument("--data", default="", help="model card: what it was trained on")
    p.add_argument(
        "--evaluation", default=None, help="model card: a `waveflow evaluate --json` file whose means are stored"
    )
    args = p.parse_args()
    data = read_checkpoint(args.checkpoint)
    cfg = checkpoint_config(data, args.checkpoint)
    if args.sigma is not None:
        cfg = with_overrides(cfg, "train", eval_sigma=args.sigma)
    if args.postfilter is not None:
        cfg = with_overrides(cfg, "train", eval_postfilter=args.postfilter)
    if args.mel_correction is not None:
        cfg = with_overrides(cfg, "train", eval_mel_correction=args.mel_correction)
    if args.harmonic is not None:
        cfg = with_overrides(cfg, "train", eval_harmonic=args.harmonic)
    if args.pitch_tracker is not None:
        cfg = with_overrides(cfg, "model", pitch_tracker=args.pitch_tracker)
    weights = {k: v.half() if v.is_floating_point() else v for k, v in data["model"].items()}
    bundled = {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.to_dict(),
        "model": weights,
        CHECKSUM_KEY: weights_digest(weights),
        "step": int(data.get("step", 0)),
        "dev_nll": float(data.get("dev_nll", data.get("best_dev_nll", float("nan")))),
        "note": args.note,
        "card": card(args, data),
    }
    if data.get("init_from"):  # a fine-tuning run: where it started (waveflow info prints it)
        bundled["init_from"] = data["init_from"]
    atomic_save(bundled, args.out)
    n = sum(v.numel() for v in weights.values())
    print(f"wrote {args.out}: {cfg.preset} preset, {n / 1e6:.2f} M parameters (float16), step {bundled['step']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

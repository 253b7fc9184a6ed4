#!/usr/bin/env python3
"""What linear prediction costs at synthesis: the LP layer (coefficients from the mel and the
synthesis filter) against the whole model's inference, batch 1, per preset and length; and
what the pulse source (model.pulse_source: the source channels and the wider conditioning)
adds on top, as in the bundled model.

    python scripts/benchmark_lpc.py                      # realtime preset, 1 s and 10 s, 2 threads
    python scripts/benchmark_lpc.py --presets realtime,small --seconds 1,10 --order 24

Every figure is the median of ``--runs`` timed rounds after one untimed round; a round runs
every measured call once, so that a slow spell of a shared machine hits them all alike
(timed one after another, the LP share moved between 9% and 14% from run to run).
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from benchlib import time_interleaved, wait_for_idle

from waveflow.config import model_preset
from waveflow.nn.model import WaveGlow

SAMPLE_RATE = 22050
HOP = 256


def source_channels(source, mel: torch.Tensor) -> torch.Tensor:
    """The pulse source's share of synthesis: free phase and channels for the whole mel, as
    the model computes them."""
    return source(mel, mel.shape[2] * HOP)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="realtime")
    p.add_argument("--seconds", default="1,10")
    p.add_argument("--order", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = wait_for_idle()
    print(f"torch {torch.__version__}, {args.threads} threads, LP order {args.order}, batch 1, load {load:.2f}")
    print(
        "| preset | seconds | model ms (no LP) | model ms (with LP) | LP ms | LP share | x real time (with LP) "
        "| model ms (LP + source) | source channels ms | x real time (LP + source) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        plain = WaveGlow(model_preset(preset)).optimize_for_inference()
        torch.manual_seed(0)
        lp_model = WaveGlow(model_preset(preset, lpc_order=args.order)).optimize_for_inference()
        src_model = WaveGlow(model_preset(preset, lpc_order=args.order, pulse_source=True)).optimize_for_inference()
        for seconds in (float(s) for s in args.seconds.split(",")):
            frames = round(seconds * SAMPLE_RATE / HOP)
            mel = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(0)) - 5
            e = torch.randn(1, frames * HOP)
            calls = {
                "plain": partial(plain.infer, mel),
                "lp_model": partial(lp_model.infer, mel),
                "lp": partial(lp_model.lpc.inverse, e, mel),
                "src_model": partial(src_model.infer, mel),
                "src": partial(source_channels, src_model.source, mel),
            }
            with torch.inference_mode():
                ms = {k: 1000 * t for k, t in time_interleaved(calls, args.runs).items()}
            t_plain, t_lp_model, t_lp, t_src_model, t_src = (ms[k] for k in calls)
            audio_ms = 1000 * frames * HOP / SAMPLE_RATE
            print(
                f"| {preset} | {seconds:g} | {t_plain:.1f} | {t_lp_model:.1f} | {t_lp:.1f} | "
                f"{100 * t_lp / t_lp_model:.1f}% | {audio_ms / t_lp_model:.1f} | {t_src_model:.1f} | {t_src:.1f} | "
                f"{audio_ms / t_src_model:.1f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Training throughput: samples/s and peak memory of a full training step, per preset.

    python scripts/benchmark_train.py                       # CPU; presets realtime, small, default
    python scripts/benchmark_train.py --devices cpu,cuda --precisions fp32,bf16,fp16 --batch 12

A step is forward, exact NLL, backward and Adam, on random audio segments of
``--segment`` samples, timed as in scripts/benchmark.py (median of ``--runs`` after one
warm-up step); that script holds the measuring code, this one only picks its training rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    renamed = {"--presets": "--train-presets", "--batch": "--train-batch", "--runs": "--train-runs"}
    argv = [renamed.get(arg, arg) for arg in argv]
    if "--train-presets" not in argv:
        argv += ["--train-presets", "realtime,small,default"]
    return benchmark.main(["--train", "--no-inference", *argv])


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""What the post-processing costs at synthesis, next to the model and to Griffin-Lim: the
bundled vocoder (or ``--checkpoint``) at batch 1 on a real clip's mel, with no post-processing,
with the harmonic post-filter, with the post-filter and each count of mel correction
iterations, the mel correction alone on the model's output, and librosa's Griffin-Lim
(60 iterations, as ``waveflow evaluate`` scores it) from the same mel.

    python scripts/benchmark_postprocess.py                       # 1 s and 10 s, iterations 0,2,4,6
    python scripts/benchmark_postprocess.py --iterations 0,3 --seconds 10 --runs 9
    python scripts/benchmark_postprocess.py --also prev.pt --iterations 8 --no-griffin-lim  # beside another checkpoint

Each checkpoint's default call (its own settings: harmonic excitation, post-filter, mel
correction, limiter) is timed too; ``--also`` (repeatable) adds other checkpoints' default
calls to the same rounds, e.g. one written by ``scripts/bundle_model.py`` with other settings.

Every figure is the median of ``--runs`` rounds after one untimed round; a round runs every
measured call once, so that a slow spell of a shared machine hits them all alike. The mel is
the shared corpus's LJ001-0001 cut or repeated to length (``--wav`` for another clip).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from benchlib import CLIP, repeat_to, time_interleaved, wait_for_idle

from waveflow.dsp.audio import load_wav
from waveflow.infer.vocoder import load_vocoder
from waveflow.train.evaluate import griffin_lim


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="default: the bundled model")
    p.add_argument("--wav", type=Path, default=CLIP)
    p.add_argument("--seconds", default="1,10")
    p.add_argument("--iterations", default="0,2,4,6", help="mel correction iterations to time")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--no-griffin-lim", action="store_true")
    p.add_argument("--also", action="append", default=[], help="another checkpoint whose default call to time")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    voc = load_vocoder(args.checkpoint)
    others = {path: load_vocoder(path) for path in args.also}
    audio = load_wav(args.wav, voc.sample_rate)
    full = voc.mel(audio)
    load = wait_for_idle()
    print(f"torch {torch.__version__}, {args.threads} threads, batch 1, mel of {args.wav.name}, load {load:.2f}")
    print("| seconds | system | ms | x real time |")
    print("|---|---|---|---|")
    for seconds in (float(s) for s in args.seconds.split(",")):
        frames = round(seconds * voc.sample_rate / voc.hop_length)
        mel = repeat_to(full, frames)
        calls = {"default call": partial(voc, mel=mel, seed=0)}
        calls.update({f"default call of {Path(path).name}": partial(o, mel=mel, seed=0) for path, o in others.items()})
        calls["model alone"] = partial(voc, mel=mel, seed=0, postfilter=0.0, mel_correction=0)
        for k in (int(i) for i in args.iterations.split(",")):
            setting = {"mel": mel, "seed": 0, "postfilter": 0.5, "mel_correction": k}
            calls[f"post-filter 0.5, mel correction {k}"] = partial(voc, **setting)
        out = torch.from_numpy(voc(mel, seed=0, mel_correction=0))[None]
        target = torch.from_numpy(mel)[None]
        for k in (int(i) for i in args.iterations.split(",") if int(i)):
            setting = {"audio": out, "mel": target, "iterations": k}
            calls[f"mel correction {k} alone (on the model's output)"] = partial(voc.mel_correction, **setting)
        if not args.no_griffin_lim:  # mel frames = 1 + samples // hop
            setting = {"mel": mel, "mel_cfg": voc.config.mel, "length": (frames - 1) * voc.hop_length}
            calls["Griffin-Lim (60 it.)"] = partial(griffin_lim, **setting)
        with torch.inference_mode():
            ms = {k: 1000 * t for k, t in time_interleaved(calls, args.runs).items()}
        for name, t in ms.items():
            print(f"| {seconds:g} | {name} | {t:.1f} | {1000 * seconds / t:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

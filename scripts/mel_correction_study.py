#!/usr/bin/env python3
"""What the mel correction owes to the flow: the same correction from three starts, scored as
``waveflow evaluate`` scores (PESQ-wb, STOI, mel-L1 on the audio as a 16-bit wav holds it).

- the bundled vocoder (or ``--checkpoint``) with its post-filter, then K correction steps;
- white noise through the mel's linear-prediction filter (no network), then K steps;
- Griffin-Lim (librosa, from random phase, as ``evaluate`` runs it) with K iterations.

It also counts the clips whose corrected output peaks above 1.0 (clipped when written) and
the PESQ that clipping costs.

    python scripts/mel_correction_study.py                        # the two held-out clips, K = 2, 8
    python scripts/mel_correction_study.py --steps 0,2,3,8 ../shared/data/LJSpeech-1.1-mini/wavs/*.wav
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from waveflow.dsp.audio import load_wav
from waveflow.infer.vocoder import load_vocoder
from waveflow.train.evaluate import griffin_lim, pesq_wb, quality

WAVS = Path(__file__).resolve().parents[1] / "../shared/data/LJSpeech-1.1-mini/wavs"
HELD_OUT = [WAVS / "LJ001-0031.wav", WAVS / "LJ001-0032.wav"]
MEASURES = ("mel_l1", "pesq_wb", "stoi")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wavs", nargs="*", type=Path, help="default: the two clips the bundled model never trained on")
    p.add_argument("--checkpoint", default=None, help="default: the bundled model")
    p.add_argument("--steps", default="2,8", help="correction steps (Griffin-Lim iterations) to score")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    voc = load_vocoder(args.checkpoint)
    steps = [int(k) for k in args.steps.split(",")]
    flow_name = f"the flow (post-filter {voc.postfilter_strength:g}), {{}} steps"
    scores: dict[str, list[dict]] = {}
    peaks = {k: [] for k in steps}
    unclipped = {k: [] for k in steps}
    for path in args.wavs or HELD_OUT:
        audio = load_wav(path, voc.sample_rate)
        mel = voc.mel(audio)
        target = torch.from_numpy(mel)[None]
        noise = torch.randn(1, mel.shape[1] * voc.hop_length, generator=torch.Generator().manual_seed(args.seed))
        with torch.no_grad():
            lp_noise = voc.model.lpc.inverse(noise, target)
        for k in steps:
            flow = voc(mel, seed=args.seed, mel_correction=k)
            peaks[k].append(float(np.abs(flow).max()))
            unclipped[k].append(pesq_wb(audio, flow[: len(audio)], voc.sample_rate))
            scores.setdefault(flow_name.format(k), []).append(quality(audio, flow, voc.sample_rate, voc.mel))
            noisy = voc.mel_correction(lp_noise, target, k)[0].numpy()
            scores.setdefault(f"LP noise (no network), {k} steps", []).append(
                quality(audio, noisy, voc.sample_rate, voc.mel)
            )
            if k:
                gl = griffin_lim(mel, voc.config.mel, len(audio), n_iter=k)
                scores.setdefault(f"Griffin-Lim, {k} iterations", []).append(
                    quality(audio, gl, voc.sample_rate, voc.mel)
                )
        print(f"{path.name}: done", flush=True)
    n = len(args.wavs or HELD_OUT)
    print(f"\n{n} clips, seed {args.seed}, scored as written (clipped to [-1, 1))")
    print("| start | " + " | ".join(MEASURES) + " |")
    print("|---|" + "---|" * len(MEASURES))
    for name, rows in scores.items():
        print(f"| {name} | " + " | ".join(f"{np.nanmean([r[m] for r in rows]):.3f}" for m in MEASURES) + " |")
    print("\n| flow steps | clips peaking above 1.0 | PESQ before clipping | PESQ as written |")
    print("|---|---|---|---|")
    for k in steps:
        written = np.nanmean([r["pesq_wb"] for r in scores[flow_name.format(k)]])
        print(f"| {k} | {sum(v > 1.0 for v in peaks[k])} of {n} | {np.nanmean(unclipped[k]):.3f} | {written:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the output limiter does to the bundled model's output on the shared corpus: how many
clips reach the knee, the share of samples it touches, and PESQ-wb/STOI of the held-out clips
with and without it (without it, scored as a 16-bit wav holds it: clipped).

usage: python scripts/limiter_study.py [--corpus DIR] [--checkpoint CKPT]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from waveflow.dsp.audio import load_wav
from waveflow.dsp.limiter import KNEE
from waveflow.infer.vocoder import load_vocoder
from waveflow.train.evaluate import quality

HELD_OUT = ("LJ001-0031", "LJ001-0032")  # the clips the bundled model never trained on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="../shared/data/LJSpeech-1.1-mini", help="a folder with wavs/")
    parser.add_argument("--checkpoint", default=None, help="default: the bundled model")
    args = parser.parse_args()
    voc = load_vocoder(args.checkpoint)
    wavs = sorted(Path(args.corpus, "wavs").glob("*.wav"))
    if not wavs:
        raise SystemExit(f"no wavs under {args.corpus}/wavs")
    peaks, ratios, touched = [], [], []
    for path in wavs:
        audio = load_wav(path, voc.sample_rate)
        mel = voc.mel(audio)
        raw, limited = voc(mel, seed=0, limit=False), voc(mel, seed=0)
        peaks.append(float(np.abs(raw).max()))
        ratios.append(peaks[-1] / float(np.abs(audio).max()))
        touched.append(float(np.mean(np.abs(raw) > KNEE)))
        if path.stem in HELD_OUT:
            before, after = (
                quality(audio, raw, voc.sample_rate, voc.mel),
                quality(audio, limited, voc.sample_rate, voc.mel),
            )
            print(
                f"{path.stem}: peak {peaks[-1]:.2f} -> {np.abs(limited).max():.3f} "
                f"(recording {np.abs(audio).max():.2f}); PESQ-wb {before['pesq_wb']:.3f} -> {after['pesq_wb']:.3f}, "
                f"STOI {before['stoi']:.3f} -> {after['stoi']:.3f}"
            )
    touched_pct = 100 * np.asarray(touched)
    print(
        f"{len(wavs)} clips: {sum(p > KNEE for p in peaks)} peak above the knee {KNEE} (highest {max(peaks):.2f}); "
        f"samples touched: mean {touched_pct.mean():.3f}%, max {touched_pct.max():.3f}%; "
        f"output peak / recording peak: median {np.median(ratios):.2f}"
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How far a clip's end really hears the silence after it: the bundled vocoder (or
``--checkpoint``) with tails of ``--tails`` frames, each against a tail of the whole receptive
field (the bound, ``receptive_field_frames``), as the SNR of the clip's audio and of its last
second. 120-130 dB is float rounding (the same call with another batch length moves that much).

    python scripts/tail_reach.py                         # the held-out clips LJ001-0031/0032 and LJ001-0001
    python scripts/tail_reach.py --wav a.wav b.wav --tails 32,16,8,4 --default-call

The flow alone by default (no harmonic excitation, post-filter, correction or limiter, whose
steps do not see the tail); ``--default-call`` measures the checkpoint's default call.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from benchlib import CLIP

from waveflow.dsp.audio import load_wav
from waveflow.infer.streaming import snr_db
from waveflow.infer.vocoder import load_vocoder, receptive_field_frames

CLIPS = [CLIP.parent / f"{name}.wav" for name in ("LJ001-0031", "LJ001-0032", "LJ001-0001")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="default: the bundled model")
    p.add_argument("--wav", type=Path, nargs="+", default=CLIPS)
    p.add_argument("--tails", default="48,32,24,16,12,8,4,2,0", help="tail lengths in frames")
    p.add_argument("--default-call", action="store_true", help="the checkpoint's default call, not the flow alone")
    args = p.parse_args(argv)
    voc = load_vocoder(args.checkpoint)
    bound = receptive_field_frames(voc.model)
    tails = [int(t) for t in args.tails.split(",")]
    options = {"seed": 0}
    if not args.default_call:
        options.update(postfilter=0.0, mel_correction=0, limit=False)
        if voc.model.source is not None:
            options["harmonic"] = 0.0
    print(f"receptive field {bound} frames, default tail {voc.tail_frames}; SNR (dB) against a tail of {bound}")
    print("| clip | " + " | ".join(f"tail {t}: clip / last 1 s" for t in tails) + " |")
    print("|---|" + "---|" * len(tails))
    default_tail = voc.tail_frames
    for wav in args.wav:
        mel = voc.mel(load_wav(wav, voc.sample_rate))
        with torch.inference_mode():
            voc.tail_frames = bound
            reference = voc(mel, **options)
            cells = []
            for t in tails:
                voc.tail_frames = t
                out = voc(mel, **options)
                last = slice(-voc.sample_rate, None)
                cells.append(f"{snr_db(reference, out):.0f} / {snr_db(reference[last], out[last]):.0f}")
        voc.tail_frames = default_tail
        print(f"| {wav.stem} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

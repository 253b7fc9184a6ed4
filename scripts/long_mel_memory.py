"""Peak memory of `waveflow synthesize` against the mel's length (issue 23: it grew with length).

Each length runs in a fresh process that builds a mel of that many minutes (LJ001-0001's mel,
repeated), synthesizes it with the CLI's path and reports its own peak RSS; the output array
itself (4 bytes a sample) is printed beside it, since that part must grow.

    python scripts/long_mel_memory.py --minutes 10 60
    python scripts/long_mel_memory.py --minutes 10 --one-pass    # the single pass, for comparison
    python scripts/long_mel_memory.py --minutes 10 60 --mel-correction 0 --postfilter 0  # options of synthesize
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO.parent / "shared" / "data" / "LJSpeech-1.1-mini" / "wavs" / "LJ001-0001.wav"


def child(minutes: float, one_pass: bool, device: str, extra: list[str]) -> None:
    import numpy as np

    import waveflow.streaming as streaming
    from waveflow.audio import load_wav
    from waveflow.cli import main
    from waveflow.vocoder import Vocoder

    voc = Vocoder.default()
    mel = voc.mel(load_wav(CLIP))
    frames = int(minutes * 60 * voc.sample_rate / voc.hop_length)
    mel = np.tile(mel, (1, -(-frames // mel.shape[1])))[:, :frames].astype(np.float32)
    hop = voc.hop_length
    del voc
    if one_pass:
        streaming.LONG_MEL_FRAMES = 10**12
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "mel.npy", mel)
        start = time.perf_counter()
        args = ["synthesize", str(Path(tmp) / "mel.npy"), "-o", str(Path(tmp) / "out.wav"), "--device", device]
        code = main([*args, *extra])
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "minutes": minutes,
                "path": "one pass" if one_pass else "default (chunked above the threshold)",
                "options": " ".join(extra) or "the checkpoint's",
                "exit": code,
                "peak_rss_mb": round(peak_mb),
                "output_mb": round(frames * hop * 4 / 2**20),
                "mel_mb": round(mel.nbytes / 2**20),
                "seconds": round(seconds, 1),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    p.add_argument("--one-pass", action="store_true", help="force the single offline pass (the old path)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args, extra = p.parse_known_args()  # the rest goes to waveflow synthesize, e.g. --mel-correction 0
    if args.child is not None:
        child(args.child, args.one_pass, args.device, extra)
        return
    for minutes in args.minutes:
        cmd = [sys.executable, __file__, "--child", str(minutes), "--device", args.device, *extra]
        subprocess.run(cmd + (["--one-pass"] if args.one_pass else []), check=False)


if __name__ == "__main__":
    main()

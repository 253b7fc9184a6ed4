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


def make_mel(minutes: float, path: Path) -> None:
    """LJ001-0001's mel repeated to ``minutes``, written to ``path`` (in its own process, so that
    building it weighs nothing in the measured one)."""
    import numpy as np

    from waveflow.dsp.audio import load_wav
    from waveflow.infer.vocoder import Vocoder

    voc = Vocoder.default()
    clip = voc.mel(load_wav(CLIP))
    frames = int(minutes * 60 * voc.sample_rate / voc.hop_length)
    mel = np.empty((clip.shape[0], frames), np.float32)
    for k in range(0, frames, clip.shape[1]):
        mel[:, k : k + clip.shape[1]] = clip[:, : frames - k]
    np.save(path, mel)


def child(mel_path: Path, one_pass: bool, device: str, extra: list[str]) -> None:
    import numpy as np

    import waveflow.infer.vocoder as vocoder_module
    from waveflow.cli import main
    from waveflow.config import MelConfig

    if one_pass:
        vocoder_module.LONG_MEL_FRAMES = 10**12
    n_mels, frames = np.load(mel_path, mmap_mode="r").shape  # the header only
    cfg = MelConfig()  # the bundled model's convention
    hop = cfg.hop_length
    minutes = frames * hop / cfg.sample_rate / 60
    out = mel_path.with_suffix(".wav")
    start = time.perf_counter()
    code = main(["synthesize", str(mel_path), "-o", str(out), "--device", device, *extra])
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "minutes": round(minutes, 2),
                "path": "one pass" if one_pass else "default (chunked above the threshold)",
                "options": " ".join(extra) or "the checkpoint's",
                "exit": code,
                "peak_rss_mb": round(peak_mb),
                "output_mb": round(frames * hop * 4 / 2**20),
                "mel_mb": round(n_mels * frames * 4 / 2**20),
                "seconds": round(seconds, 1),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    p.add_argument("--one-pass", action="store_true", help="force the single offline pass (the old path)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args, extra = p.parse_known_args()  # the rest goes to waveflow synthesize, e.g. --mel-correction 0
    if args.child is not None:
        child(args.child, args.one_pass, args.device, extra)
        return
    for minutes in args.minutes:
        with tempfile.TemporaryDirectory() as tmp:
            mel = Path(tmp) / "mel.npy"
            make_mel(minutes, mel)
            cmd = [sys.executable, __file__, "--child", str(mel), "--device", args.device, *extra]
            subprocess.run(cmd + (["--one-pass"] if args.one_pass else []), check=False)


if __name__ == "__main__":
    main()

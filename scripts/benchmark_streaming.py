"""Print streaming latency, real-time factor and streamed-vs-offline SNR on a real clip.

    .venv/bin/python scripts/benchmark_streaming.py [--checkpoint CKPT] [--clip WAV]
        [--seconds 4] [--chunk-frames 8 16 32] [--lookahead N] [--mel-correction K] [--device cpu|cuda]
        [--low-latency]      # StreamingVocoder.low_latency (its settings overridden by those given)

First-audio delay at chunk size N, for a mel arriving in real time: the stream can emit once
it holds the look-ahead's frames and the post-processing margins' samples (``latency_ms``);
the delay is the audio duration of the chunks pushed until then plus the compute time of the
first push that emits.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from benchlib import CLIP

from waveflow.dsp.audio import load_wav
from waveflow.infer.streaming import StreamingVocoder, snr_db
from waveflow.infer.vocoder import load_vocoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the bundled model")
    parser.add_argument("--clip", default=str(CLIP))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--chunk-frames", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--lookahead", type=int, default=None, help="default: the StreamingVocoder default")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mel-correction", type=int, default=None, help="iterations (default: the checkpoint's); each adds n_fft"
    )
    parser.add_argument("--low-latency", action="store_true", help="the low-latency preset")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    voc = load_vocoder(args.checkpoint, args.device)
    audio = load_wav(args.clip, voc.sample_rate)[: int(args.seconds * voc.sample_rate)]
    mel = torch.from_numpy(voc.mel(audio))
    seconds = mel.shape[1] * voc.hop_length / voc.sample_rate
    voc(mel[:, :20], seed=args.seed, mel_correction=args.mel_correction)  # warm-up
    t0 = time.perf_counter()
    offline = voc(mel, seed=args.seed, mel_correction=args.mel_correction)
    offline_s = time.perf_counter() - t0
    print(f"clip {args.clip}: {mel.shape[1]} frames ({seconds:.2f} s), device {args.device}")
    print(f"offline: real-time factor {offline_s / seconds:.3f}")
    print("| chunk frames | latency (ms) | first audio after (ms) | streaming RTF | SNR vs offline (dB) |")
    print("|---|---|---|---|---|")
    for chunk in args.chunk_frames:
        options = {"seed": args.seed, "lookahead": args.lookahead, "mel_correction": args.mel_correction}
        if args.low_latency:
            options = {k: v for k, v in options.items() if v is not None}
            stream = StreamingVocoder.low_latency(voc, **options)
        else:
            stream = StreamingVocoder(voc, **options)
        pieces, first_ms = [], None
        for i in range(0, mel.shape[1], chunk):
            t = time.perf_counter()
            piece = stream.push(mel[:, i : i + chunk])
            if piece.numel() and first_ms is None:
                arrived = min(i + chunk, mel.shape[1]) * voc.hop_length / voc.sample_rate
                first_ms = 1000 * (arrived + time.perf_counter() - t)
            pieces.append(piece)
        pieces.append(stream.flush())
        streamed = torch.cat(pieces)
        first = f"{first_ms:.0f}" if first_ms is not None else "end of clip"
        snr = snr_db(offline, streamed)
        snr_text = "exact" if math.isinf(snr) else f"{snr:.1f}"
        print(f"| {chunk} | {stream.latency_ms:.0f} | {first} | {stream.rtf:.3f} | {snr_text} |")


if __name__ == "__main__":
    main()

"""Print streaming latency, real-time factor and streamed-vs-offline SNR on a real clip.

    .venv/bin/python scripts/benchmark_streaming.py [--checkpoint CKPT] [--clip WAV]
        [--seconds 4] [--chunk-frames 8 16 32] [--lookahead N] [--mel-correction K] [--device cpu|cuda]
        [--low-latency]      # StreamingVocoder.low_latency (its settings overridden by those given)
        [--runs 5]           # each chunk size streamed this many times: medians, and the RTF's range

First-audio delay at chunk size N, for a mel arriving in real time: the stream can emit once
it holds the look-ahead's frames and the post-processing margins' samples (``latency_ms``);
the delay is the audio duration of the chunks pushed until then plus the compute time of the
first push that emits.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
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
    parser.add_argument("--runs", type=int, default=5, help="streams per chunk size (medians reported)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
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
    print(f"load average before the runs: {os.getloadavg()[0]:.2f}; {args.runs} runs per chunk size, medians")
    print("| chunk frames | latency (ms) | first audio after (ms) | streaming RTF | RTF range | SNR vs offline (dB) |")
    print("|---|---|---|---|---|---|")
    for chunk in args.chunk_frames:
        options = {"seed": args.seed, "lookahead": args.lookahead, "mel_correction": args.mel_correction}
        if args.low_latency:
            options = {k: v for k, v in options.items() if v is not None}
        rtfs, firsts = [], []
        for _ in range(args.runs):
            stream = (
                StreamingVocoder.low_latency(voc, **options) if args.low_latency else StreamingVocoder(voc, **options)
            )
            streamed, first_ms = stream_once(stream, mel, chunk, voc.hop_length / voc.sample_rate)
            rtfs.append(stream.rtf)
            firsts.append(first_ms)
        first = f"{statistics.median(firsts):.0f}" if None not in firsts else "end of clip"
        snr = snr_db(offline, streamed)  # the same audio every run
        snr_text = "exact" if math.isinf(snr) else f"{snr:.1f}"
        spread = f"{min(rtfs):.3f}-{max(rtfs):.3f}"
        print(
            f"| {chunk} | {stream.latency_ms:.0f} | {first} | {statistics.median(rtfs):.3f} | {spread} | {snr_text} |"
        )


def stream_once(
    stream: StreamingVocoder, mel: torch.Tensor, chunk: int, frame_s: float
) -> tuple[torch.Tensor, float | None]:
    """Push ``mel`` in chunks of ``chunk`` frames and flush: the audio, and when the first audio
    came (ms after the first frame, for frames arriving in real time; None if only at the end)."""
    pieces, first_ms = [], None
    for i in range(0, mel.shape[1], chunk):
        t = time.perf_counter()
        piece = stream.push(mel[:, i : i + chunk])
        if piece.numel() and first_ms is None:
            first_ms = 1000 * (min(i + chunk, mel.shape[1]) * frame_s + time.perf_counter() - t)
        pieces.append(piece)
    pieces.append(stream.flush())
    return torch.cat(pieces), first_ms


if __name__ == "__main__":
    main()

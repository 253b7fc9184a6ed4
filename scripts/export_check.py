"""Export a checkpoint to TorchScript and ONNX in a temp folder and print, for two mel
lengths, the largest difference from eager PyTorch and each runtime's speed.

    .venv/bin/python scripts/export_check.py CKPT [--frames 40 87] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from waveflow.interop.export import example_inputs, export_onnx, export_torchscript
from waveflow.nn.checkpoint import load_model


def _timed(fn, *args):
    fn(*args)  # warm-up (first-call allocations, graph optimisation)
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--frames", type=int, nargs="+", default=[40, 87])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    import onnxruntime as ort

    model, cfg = load_model(args.checkpoint)
    sr = cfg.mel.sample_rate
    with tempfile.TemporaryDirectory() as tmp:
        ts_path, onnx_path = Path(tmp) / "v.ts", Path(tmp) / "v.onnx"
        t0 = time.perf_counter()
        export_torchscript(model, ts_path)
        t1 = time.perf_counter()
        export_onnx(model, onnx_path)
        t2 = time.perf_counter()
        print(
            f"export: torchscript {t1 - t0:.1f} s ({ts_path.stat().st_size / 1e6:.1f} MB), "
            f"onnx {t2 - t1:.1f} s ({onnx_path.stat().st_size / 1e6:.1f} MB)"
        )
        scripted = torch.jit.load(str(ts_path))
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        for frames in args.frames:
            mel, z = example_inputs(model, frames, seed=frames)
            seconds = frames * cfg.model.hop_length / sr
            with torch.inference_mode():
                eager, t_eager = _timed(lambda m, n: model.infer(m, z=n), mel, z)
                ts_out, t_ts = _timed(scripted, mel, z)
            onnx_out, t_onnx = _timed(lambda m, n: session.run(None, {"mel": m.numpy(), "z": n.numpy()})[0], mel, z)
            d_ts = (ts_out - eager).abs().max().item()
            d_onnx = (torch.from_numpy(onnx_out) - eager).abs().max().item()
            print(
                f"{frames} frames ({seconds:.2f} s audio): max |diff| torchscript {d_ts:.2e}, onnx {d_onnx:.2e}; "
                f"x real time eager {seconds / t_eager:.2f}, torchscript {seconds / t_ts:.2f}, "
                f"onnxruntime {seconds / t_onnx:.2f} ({args.threads} thread(s))"
            )


if __name__ == "__main__":
    main()

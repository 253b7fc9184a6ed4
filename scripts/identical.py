"""Outputs before and after a refactor, bit for bit (issue 22: moving modules must change nothing).

``record DIR`` runs a fixed set of calls through the public surface only (the ``waveflow``
command and the names exported by ``waveflow``, which stay put whatever moves inside) and
writes the SHA-256 of each output to ``DIR/outputs.json``; ``compare DIR`` runs them again on
the current tree and says, per output, whether it is identical (exit 1 if any is not).

    python scripts/identical.py record /tmp/before     # on the old tree
    python scripts/identical.py compare /tmp/before    # on the new tree

The calls: the bundled model's default call (CLI and Python), with and without the limiter,
without post-processing, and a batch of two lengths; a stream at 8-frame and 1-frame pushes;
the mel front end; a long mel through the chunked path; pretrained, TorchScript and ONNX exports
(files, and the exported graphs' outputs under TorchScript and onnxruntime).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO.parent / "shared" / "data" / "LJSpeech-1.1-mini" / "wavs" / "LJ001-0032.wav"


def _sha(data: bytes | np.ndarray) -> str:
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).tobytes()
    return hashlib.sha256(data).hexdigest()


def _cli(*args: str) -> None:
    # Every CPU for the child: once torch has run a parallel region here, this thread may be
    # pinned to one core, a child would inherit that, and some kernels choose their blocking by
    # the cores they see (the pretrained export's weights differ in the last bit on one core).
    def all_cores() -> None:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))

    subprocess.run(
        [sys.executable, "-m", "waveflow", *args], check=True, stdout=subprocess.DEVNULL, preexec_fn=all_cores
    )


def outputs(work: Path, only: str | None = None) -> dict[str, str]:
    import torch

    torch.set_num_threads(2)
    _cli("mel", str(CLIP), "-o", str(work / "mel.npy"))
    mel = np.load(work / "mel.npy")
    if only == "exports":
        return _exports(work, mel)
    return {**_synthesis(work, mel), **_exports(work, mel)}


def _synthesis(work: Path, mel: np.ndarray) -> dict[str, str]:
    import waveflow

    out: dict[str, str] = {"cli mel (front end)": _sha(mel)}
    _cli("synthesize", str(work / "mel.npy"), "-o", str(work / "default.wav"))
    out["cli synthesize, defaults"] = _sha((work / "default.wav").read_bytes())
    _cli("synthesize", str(work / "mel.npy"), "-o", str(work / "stream.wav"), "--stream", "--chunk-frames", "8")
    out["cli synthesize --stream --chunk-frames 8"] = _sha((work / "stream.wav").read_bytes())
    _cli("synthesize", str(work / "mel.npy"), "-o", str(work / "denoised.wav"), "--denoise", "0.01")
    out["cli synthesize --denoise 0.01"] = _sha((work / "denoised.wav").read_bytes())

    voc = waveflow.Vocoder.default()
    out["python default call"] = _sha(voc(mel))
    out["python, no limiter"] = _sha(voc(mel, limit=False))
    out["python, flow only"] = _sha(voc(mel, postfilter=0, mel_correction=0, limit=False))
    out["python, seed 7 sigma 0.5"] = _sha(voc(mel, seed=7, sigma=0.5))
    short = mel[:, :100]
    out["python, batch of two lengths"] = _sha(np.concatenate(voc([mel, short])))
    for chunk in (8, 1):
        stream = waveflow.StreamingVocoder(voc)
        pieces = [stream.push(mel[:, k : k + chunk]) for k in range(0, mel.shape[1], chunk)]
        out[f"python stream, {chunk}-frame pushes"] = _sha(np.concatenate([*pieces, stream.flush()]))
    out["python synthesize_long, 64-frame chunks"] = _sha(waveflow.synthesize_long(voc, mel, chunk_frames=64))
    return out


def _safetensors_sha(folder: Path) -> str:
    """The tensors and the metadata of a safetensors file: its bytes are not reproducible, since
    the writer orders the metadata keys differently from one process to the next."""
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(folder / "model.safetensors"), "np") as handle:
        digest.update(json.dumps(handle.metadata(), sort_keys=True).encode())
        for key in sorted(handle.keys()):
            digest.update(key.encode() + _sha(handle.get_tensor(key)).encode())
    return digest.hexdigest()


def _exports(work: Path, mel: np.ndarray) -> dict[str, str]:
    """The exported files, and what the exported graphs compute on the clip's mel with a fixed z
    (a TorchScript file names the Python modules its classes came from, so its bytes follow a
    move; what it computes must not)."""
    import onnxruntime
    import torch
    import yaml

    out: dict[str, str] = {}
    ckpt = REPO / "waveflow" / "assets" / "ljspeech_mini.pt"
    _cli("export", "--format", "pretrained", "--checkpoint", str(ckpt), "-o", str(work / "pretrained"))
    for name in ("config.yaml", "card.json"):
        out[f"export pretrained: {name}"] = _sha((work / "pretrained" / name).read_bytes())
    out["export pretrained: model.safetensors (tensors, metadata)"] = _safetensors_sha(work / "pretrained")
    for fmt, suffix in (("torchscript", "pt"), ("onnx", "onnx")):
        path = work / f"model.{suffix}"
        _cli("export", "--format", fmt, "--checkpoint", str(ckpt), "-o", str(path))
        if fmt == "onnx":
            out["export onnx (file)"] = _sha(path.read_bytes())
    config = yaml.safe_load((work / "pretrained" / "config.yaml").read_text())
    group, hop = config["model"]["n_group"], config["mel"]["hop_length"]
    x = torch.from_numpy(mel[:, : mel.shape[1] // group * group])[None]  # whole groups
    z = torch.randn(1, group, x.shape[2] * hop // group, generator=torch.Generator().manual_seed(1)) * 0.6
    with torch.no_grad():
        out["export torchscript (output)"] = _sha(torch.jit.load(str(work / "model.pt"))(x, z).numpy())
    session = onnxruntime.InferenceSession(str(work / "model.onnx"), providers=["CPUExecutionProvider"])
    out["export onnx (onnxruntime output)"] = _sha(session.run(None, {"mel": x.numpy(), "z": z.numpy()})[0])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["record", "compare"])
    p.add_argument("dir", type=Path)
    p.add_argument("--only", choices=["exports"], help="record or compare only these outputs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        now = outputs(Path(tmp), args.only)
    if args.action == "record":
        args.dir.mkdir(parents=True, exist_ok=True)
        old = json.loads((args.dir / "outputs.json").read_text()) if args.only else {}
        now = {**{k: v for k, v in old.items() if not k.startswith("export")}, **now}
        (args.dir / "outputs.json").write_text(json.dumps(now, indent=1) + "\n")
        print(f"recorded {len(now)} outputs in {args.dir / 'outputs.json'}")
        return
    before = json.loads((args.dir / "outputs.json").read_text())
    if args.only:
        before = {k: v for k, v in before.items() if k.startswith("export")}
    differ = 0
    for name in sorted(set(before) | set(now)):
        same = before.get(name) == now.get(name)
        differ += not same
        print(f"{'identical' if same else 'DIFFERENT'}  {name}")
    print(f"{len(before) - differ} of {len(before)} identical")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()

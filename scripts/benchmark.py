#!/usr/bin/env python3
"""Speed of waveflow: inference and training samples/s, achieved GFLOP/s and peak memory.

    python scripts/benchmark.py                          # CPU grid, waveflow alone
    python scripts/benchmark.py --reference ~/waveglow   # side by side with NVIDIA's glow.py
    python scripts/benchmark.py --devices cuda --precisions fp32,fp16,bf16 --reference ~/waveglow
    python scripts/benchmark.py --peer hifigan=~/hifi-gan --peer vocos=~/vocos --threads 2   # beside other vocoders

Every figure is the median of ``--runs`` timed runs after ``--warmup`` untimed ones.
GFLOP/s counts the model's nominal FLOPs (the network as defined, ``waveflow.nn.cost``), so
it compares directly with the measured fp32 matmul rate printed beside it; waveflow
executes fewer FLOPs than that (its fused weights), which is why it can exceed what a
layer-by-layer implementation reaches at the same matmul rate.

With ``--reference DIR`` (a checkout of github.com/NVIDIA/waveglow, never part of this
repository) the reference ``glow.py`` is imported from a patched copy in a temporary
folder (its ``infer`` allocates noise with ``torch.cuda.*Tensor``; the copy allocates on
the mel's device instead), loaded with waveflow's weights converted to NVIDIA's layout,
and timed in the same process, interleaved run by run with waveflow. Both models get the
same noise (NVIDIA's draw order, replayed into waveflow's z layout) and the largest
difference of their outputs is printed.

Peak memory (``peak_mb``) is measured in a fresh process that builds the one model and
runs one call (weights included, the Python/torch baseline not): on CUDA
``torch.cuda.max_memory_allocated``, on CPU the peak resident set (VmHWM) minus the
resident set before the model was built. ``--compose`` adds waveflow with the upsampler composed into every flow's
conditioning (``optimize_for_inference(compose=True)``; its composed weights, 168 MB per
flow of the default model, count in its ``composed_peak_mb``).

``--peer NAME=DIR`` (repeatable) prints, instead of the grid, one markdown table of the bundled
model (or ``--checkpoint``) beside other vocoders, from checkouts the user fetched (never part of
this repository): ``hifigan`` (github.com/jik876/hifi-gan: its Generator from config_v1/v2/v3.json)
and ``vocos`` (github.com/gemelo-ai/vocos: VocosBackbone, 80 mels, dim 512, intermediate 1536, 8
layers, with ISTFTHead n_fft 1024, hop 256). Peers get random weights (their speed does not
depend on them) without weight norm, as their inference runs. Every system synthesizes the
same real clip's mel (``--wav``, cut or repeated to each of ``--seconds``) at batch 1, fp32, on
the CPU, all in the same interleaved rounds. waveflow is timed twice: its default call
(``Vocoder.__call__`` with the checkpoint's harmonic excitation, post-filter, mel correction and
limiter) and the flow with its LP synthesis filter alone (those four off). Parameters are those
of the inference networks (weight norm folded). ``--threads`` defaults to all cores here too.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import importlib.util
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import types
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from benchlib import CLIP, print_table, repeat_to, time_interleaved, wait_for_idle
from benchlib import sync_device as sync

from waveflow.config import make_config, model_preset
from waveflow.dsp.audio import load_wav
from waveflow.infer.vocoder import load_vocoder
from waveflow.nn.compose import can_compose
from waveflow.nn.cost import flops_per_sample
from waveflow.nn.loss import flow_nll
from waveflow.nn.model import WaveGlow
from waveflow.train.trainer import make_optimizer

SAMPLE_RATE = 22050
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ------------------------------------------------------------------ measuring
def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # "5" resets the peak resident set size (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def _memory_mb(device: torch.device, peak: bool) -> float | None:
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)) / 2**20
    field = "VmHWM:" if peak else "VmRSS:"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_memory(args, **case) -> float | None:
    """Peak memory (MB) of a fresh process that builds one model and runs one call of
    ``case``, above what the process held before building it (Python and torch)."""
    command = [sys.executable, __file__, "--probe", json.dumps(case), "--threads", str(args.threads)]
    if args.reference:
        command += ["--reference", str(args.reference)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"memory probe {case} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def probe(args, case: dict) -> None:
    """The child side of ``peak_memory``: prints {"peak_mb": ...}."""
    device = torch.device(case["device"])
    glow = load_reference(args.reference.expanduser()) if args.reference else None
    sync(device)
    before = _memory_mb(device, peak=False) if device.type == "cpu" else 0.0
    _reset_peak(device)
    impl, preset, dtype = case["impl"], case["preset"], DTYPES[case["precision"]]
    model = make_model(preset, device)
    if impl in ("reference", "train_reference"):
        ref = reference_model(glow, model, device, training=impl == "train_reference")
        del model
    if impl == "train":
        audio = torch.randn(case["batch"], case["segment"], device=device) * 0.1
        mel = torch.randn(case["batch"], 80, 1 + case["segment"] // 256, device=device)
        opt = make_optimizer(model, make_config(preset))
        flow_nll(*model(audio, mel)).nats.backward()
        opt.step()
    elif impl == "train_reference":
        audio = torch.randn(case["batch"], case["segment"], device=device) * 0.1
        mel = torch.randn(case["batch"], 80, 1 + case["segment"] // 256, device=device)
        opt = torch.optim.Adam(ref.parameters(), lr=1e-4)
        glow.WaveGlowLoss(1.0)(ref((mel, audio))).backward()
        opt.step()
    else:
        frames = max(1, round(case["seconds"] * SAMPLE_RATE / 256))
        mel = (torch.randn(case["batch"], 80, frames, device=device) - 5.0).to(dtype)
        with torch.inference_mode():
            if impl == "reference":
                (ref.half() if dtype == torch.float16 else ref).infer(mel, sigma=0.6)
            else:
                model.optimize_for_inference(dtype, compose=impl == "composed").infer(mel, sigma=0.6)
    sync(device)
    print(json.dumps({"peak_mb": _memory_mb(device, peak=True) - before}))


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, runs: int = 10) -> float:
    """The rate of one square matmul, the ceiling the model's GFLOP/s is compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_interleaved({"mm": lambda: a @ b}, runs, warmup=2, device=device)["mm"]
    return 2 * n**3 / seconds / 1e9


# ------------------------------------------------------------------ models
def make_model(preset: str, device: torch.device, seed: int = 0) -> WaveGlow:
    """A model with every coupling non-trivial (the end convs start at zero)."""
    torch.manual_seed(seed)
    model = WaveGlow(model_preset(preset))
    with torch.no_grad():
        for flow in model.flows:
            flow.coupling.wn.end.weight.normal_(0.0, 0.02)
    return model.to(device)


def load_reference(reference_dir: Path):
    """NVIDIA's glow module from a checkout, patched to allocate noise on the mel's device."""
    source_file = reference_dir / "glow.py"
    if not source_file.is_file():
        raise SystemExit(f"--reference {reference_dir}: no glow.py there; expected a checkout of NVIDIA/waveglow")
    source = source_file.read_text()
    for cuda_type in ("torch.cuda.HalfTensor(", "torch.cuda.FloatTensor("):
        source = source.replace(cuda_type, "spect.new_empty(")
    folder = Path(tempfile.mkdtemp(prefix="waveglow_reference_"))
    (folder / "glow.py").write_text(source)  # TorchScript in glow.py needs a real source file
    spec = importlib.util.spec_from_file_location("glow", folder / "glow.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["glow"] = module
    spec.loader.exec_module(module)
    return module


def reference_model(glow, model: WaveGlow, device: torch.device, training: bool = False):
    """NVIDIA's WaveGlow holding ``model``'s weights: with weight norm for training, without
    (as NVIDIA's inference does) otherwise."""
    from waveflow.interop.nvidia import to_nvidia_state_dict

    cfg = model.cfg
    ref = glow.WaveGlow(
        cfg.n_mels,
        cfg.n_flows,
        cfg.n_group,
        cfg.n_early_every,
        cfg.n_early_size,
        dict(n_layers=cfg.n_layers, n_channels=cfg.n_channels, kernel_size=cfg.kernel_size),
    )
    ref.load_state_dict(to_nvidia_state_dict(model))
    if not training:
        ref = glow.WaveGlow.remove_weightnorm(ref)
    return ref.to(device).train(training)


def nvidia_compatible(model: WaveGlow) -> bool:
    """NVIDIA's code fixes the upsampler (kernel 1024) and has no LU, ActNorm or group-rate mel."""
    cfg = model.cfg
    return cfg.upsample_kernel == 1024 and cfg.cond_rate == "sample" and not (cfg.lu or cfg.actnorm)


def nvidia_noise(model: WaveGlow, batch: int, steps: int, sigma: float, seed: int, device, dtype) -> torch.Tensor:
    """The z NVIDIA's ``infer`` draws after ``torch.manual_seed(seed)``, in waveflow's layout:
    it draws the channels that pass every flow first, then each early output from the last
    flow down; waveflow's z holds the early outputs first, in flow order."""
    cfg = model.cfg
    n_early = [k for k in range(cfg.n_flows) if cfg.early_output_at(k)]
    torch.manual_seed(seed)
    remaining = torch.empty(batch, cfg.n_group - len(n_early) * cfg.n_early_size, steps, device=device, dtype=dtype)
    remaining.normal_()
    early = {}
    for k in reversed(n_early):
        early[k] = torch.empty(batch, cfg.n_early_size, steps, device=device, dtype=dtype).normal_()
    return torch.cat([*(early[k] for k in n_early), remaining], dim=1) * sigma


# ------------------------------------------------------------------ cases
def bench_inference(args, preset: str, device: torch.device, precision: str, seconds: float, batch: int, glow) -> dict:
    dtype = DTYPES[precision]
    model = make_model(preset, device)
    ref = reference_model(glow, model, device) if glow is not None and nvidia_compatible(model) else None
    model = model.optimize_for_inference(dtype)
    frames = max(1, round(seconds * SAMPLE_RATE / model.cfg.hop_length))
    gen = torch.Generator(device=device).manual_seed(1)
    mel = (torch.randn(batch, model.cfg.n_mels, frames, generator=gen, device=device) - 5.0).to(dtype)
    samples = batch * frames * model.cfg.hop_length
    fns = {"waveflow": lambda: model.infer(mel, sigma=0.6)}
    if args.compose and can_compose(model.cfg):
        composed = make_model(preset, device).optimize_for_inference(dtype, compose=True)
        fns["composed"] = lambda: composed.infer(mel, sigma=0.6)
    if ref is not None:
        if precision == "fp16":
            ref = ref.half()
        elif precision == "bf16":
            ref = None  # NVIDIA's code tests for HalfTensor and has no bf16 path
    if ref is not None:
        fns["reference"] = lambda: ref.infer(mel, sigma=0.6)
    row: dict = dict(kind="inference", preset=preset, device=device.type, precision=precision)
    row.update(seconds=seconds, batch=batch, threads=torch.get_num_threads())
    with torch.inference_mode():
        medians = time_interleaved(fns, args.runs, args.warmup, device)
        case = dict(preset=preset, device=device.type, precision=precision, seconds=seconds, batch=batch)
        row["peak_mb"] = peak_memory(args, impl="waveflow", **case)
        if "composed" in fns:
            row["composed_peak_mb"] = peak_memory(args, impl="composed", **case)
        if ref is not None:
            row["reference_peak_mb"] = peak_memory(args, impl="reference", **case)
            z = nvidia_noise(model, batch, frames * model.cfg.hop_length // model.cfg.n_group, 0.6, 7, device, dtype)
            torch.manual_seed(7)
            expected = ref.infer(mel, sigma=0.6).float()
            got = model.infer(mel, z=z).float()
            row["max_abs_diff"] = (got - expected).abs().max().item()
    nominal = flops_per_sample(model.cfg)
    row["samples_per_s"] = samples / medians["waveflow"]
    row["x_realtime"] = row["samples_per_s"] / SAMPLE_RATE
    row["gflops"] = row["samples_per_s"] * nominal / 1e9
    if "reference" in medians:
        row["reference_samples_per_s"] = samples / medians["reference"]
        row["speedup"] = medians["reference"] / medians["waveflow"]
    if "composed" in medians:
        row["composed_samples_per_s"] = samples / medians["composed"]
        row["composed_gflops"] = row["composed_samples_per_s"] * nominal / 1e9
        if "reference" in medians:
            row["composed_speedup"] = medians["reference"] / medians["composed"]
    return row


def bench_training(args, preset: str, device: torch.device, precision: str, glow) -> dict:
    """Samples/s of a full training step (forward, NLL, backward, Adam) at ``--segment``."""
    model = make_model(preset, device).train()
    ref = None
    if glow is not None and nvidia_compatible(model) and precision == "fp32":
        ref = reference_model(glow, model, device, training=True)
    batch, segment = args.train_batch, args.segment
    gen = torch.Generator(device=device).manual_seed(2)
    audio = torch.randn(batch, segment, generator=gen, device=device) * 0.1
    mel = torch.randn(batch, model.cfg.n_mels, 1 + segment // model.cfg.hop_length, generator=gen, device=device)
    use_amp = precision != "fp32"
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    opt = make_optimizer(model, make_config(preset))  # the trainer's (fused) Adam

    def step() -> None:
        with torch.autocast(device.type, dtype=DTYPES[precision], enabled=use_amp):
            z, logdet = model(audio, mel)
        loss = flow_nll(z.float(), logdet.float(), sigma=1.0).nats
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    fns = {"waveflow": step}
    if ref is not None:
        ref_loss = glow.WaveGlowLoss(sigma=1.0)
        ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-4)

        def ref_step() -> None:
            loss = ref_loss(ref((mel, audio)))
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            ref_opt.step()

        fns["reference"] = ref_step
    row: dict = dict(kind="training", preset=preset, device=device.type, precision=precision)
    row.update(seconds=round(segment / SAMPLE_RATE, 3), batch=batch, threads=torch.get_num_threads())
    medians = time_interleaved(fns, args.train_runs, 1, device)
    case = dict(preset=preset, device=device.type, precision=precision, batch=batch, segment=segment)
    row["peak_mb"] = peak_memory(args, impl="train", **case)
    if ref is not None:
        row["reference_peak_mb"] = peak_memory(args, impl="train_reference", **case)
    row["samples_per_s"] = batch * segment / medians["waveflow"]
    # a training step costs about three passes: forward, and backward for inputs and weights
    row["gflops"] = row["samples_per_s"] * 3 * flops_per_sample(model.cfg) / 1e9
    if "reference" in medians:
        row["reference_samples_per_s"] = batch * segment / medians["reference"]
        row["speedup"] = medians["reference"] / medians["waveflow"]
    return row


# ------------------------------------------------------------------ peers
def _copy_checkout(name: str, folder: Path, files: list[str]) -> Path:
    """``files`` of a peer's checkout copied to a new temporary folder (patched there, and their
    bytecode written there, never in the user's checkout); a SystemExit when one is missing."""
    repo = PEERS[name][0]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise SystemExit(
            f"--peer {name}={folder}: no {', '.join(missing)} there; expected a checkout of github.com/{repo}"
        )
    copy = Path(tempfile.mkdtemp(prefix=f"waveflow_peer_{name}_"))
    atexit.register(shutil.rmtree, copy, ignore_errors=True)  # once imported, the copy serves tracebacks only
    for f in files:
        (copy / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / f, copy / f)
    return copy


@contextlib.contextmanager
def _peer_imports(name: str):
    """A peer's import that fails on a missing module -> a SystemExit naming the module."""
    try:
        yield
    except ModuleNotFoundError as e:
        raise SystemExit(f"--peer {name}: its code imports {e.name}, which is not installed here") from e


def _import_file(module: str, path: Path, package_dir: Path | None = None) -> types.ModuleType:
    """``path`` executed as module (or package, from ``package_dir``) ``module``, in sys.modules."""
    search = [str(package_dir)] if package_dir else None
    spec = importlib.util.spec_from_file_location(module, path, submodule_search_locations=search)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[module] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def load_hifigan(folder: Path) -> dict[str, torch.nn.Module]:
    """HiFi-GAN V1, V2 and V3 generators from a checkout of jik876/hifi-gan."""
    configs = ["config_v1.json", "config_v2.json", "config_v3.json"]
    copy = _copy_checkout("hifigan", folder, ["models.py", "utils.py", *configs])
    # utils.py imports matplotlib at the top for a plotting helper the generator never calls
    utils = copy / "utils.py"
    utils.write_text("".join(line for line in utils.read_text().splitlines(True) if "matplotlib" not in line))
    # models.py does `from utils import ...`: that name must resolve to the patched copy, and
    # only while models.py runs (another `utils` may be there, or come later)
    saved = sys.modules.get("utils")
    try:
        with _peer_imports("hifigan"):
            _import_file("utils", utils)
            models = _import_file("hifigan_models", copy / "models.py")
    finally:
        sys.modules.pop("utils", None)
        if saved is not None:
            sys.modules["utils"] = saved
    generators = {}
    for version, config in zip(("V1", "V2", "V3"), configs, strict=True):
        h = json.loads((copy / config).read_text(), object_hook=lambda d: types.SimpleNamespace(**d))
        with warnings.catch_warnings():  # its torch.nn.utils.weight_norm is deprecated, not wrong
            warnings.simplefilter("ignore", FutureWarning)
            generator = models.Generator(h).eval()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Removing weight norm..."
            generator.remove_weight_norm()
        generators[f"HiFi-GAN {version}"] = generator
    return generators


# heads.py imports two mel-scale helpers from torchaudio for the IMDCT heads only; the ISTFT head
# timed here does not need them, and torchaudio is no dependency of waveflow.
NO_TORCHAUDIO = """\
def _hz_to_mel(*args, **kwargs):
    raise NotImplementedError("torchaudio is not installed (waveflow's benchmark loads vocos without it)")


_mel_to_hz = _hz_to_mel
"""


def load_vocos(folder: Path) -> dict[str, torch.nn.Module]:
    """Vocos (the 80-mel backbone with the ISTFT head) from a checkout of gemelo-ai/vocos."""
    files = ["vocos/modules.py", "vocos/models.py", "vocos/spectral_ops.py", "vocos/heads.py"]
    copy = _copy_checkout("vocos", folder, files) / "vocos"
    # its __init__ imports the pretrained wrapper (huggingface_hub, encodec, torchaudio), not needed here
    (copy / "__init__.py").write_text("")
    if importlib.util.find_spec("torchaudio") is None:
        heads = copy / "heads.py"
        line = "from torchaudio.functional.functional import _hz_to_mel, _mel_to_hz\n"
        heads.write_text(heads.read_text().replace(line, NO_TORCHAUDIO))
    with _peer_imports("vocos"):  # the modules import each other as `vocos.*`: the package is this copy
        _import_file("vocos", copy / "__init__.py", package_dir=copy)
        models, heads = importlib.import_module("vocos.models"), importlib.import_module("vocos.heads")
    backbone = models.VocosBackbone(input_channels=80, dim=512, intermediate_dim=1536, num_layers=8)
    head = heads.ISTFTHead(dim=512, n_fft=1024, hop_length=256, padding="same")
    return {"Vocos (80 mels, ISTFT head)": torch.nn.Sequential(backbone, head).eval()}


# name: (repository the checkout comes from, loader)
PEERS: dict[str, tuple[str, Callable[[Path], dict[str, torch.nn.Module]]]] = {
    "hifigan": ("jik876/hifi-gan", load_hifigan),
    "vocos": ("gemelo-ai/vocos", load_vocos),
}


def load_peer(spec: str) -> dict[str, torch.nn.Module]:
    """``NAME=DIR`` -> {system: model taking a mel (1, n_mels, frames) to audio}, random weights."""
    name, _, folder = spec.partition("=")
    if name not in PEERS:
        known = ", ".join(f"{n}=DIR (a checkout of github.com/{repo})" for n, (repo, _) in PEERS.items())
        raise SystemExit(f"--peer {spec}: unknown peer {name!r}; known: {known}")
    if not folder:
        raise SystemExit(f"--peer {spec}: expected {name}=DIR, DIR a checkout of github.com/{PEERS[name][0]}")
    torch.manual_seed(0)
    return PEERS[name][1](Path(folder).expanduser())


def peer_table(args) -> list[dict]:
    """Time waveflow beside the ``--peer`` systems and print the markdown table; the rows."""
    peers = {system: model for spec in args.peer for system, model in load_peer(spec).items()}
    voc = load_vocoder(args.checkpoint)
    full = voc.mel(load_wav(args.wav, voc.sample_rate))
    default, flow = "waveflow, default call", "waveflow, flow + LP filter only"
    params = {system: sum(p.numel() for p in model.parameters()) for system, model in peers.items()}
    params[default] = params[flow] = sum(p.numel() for p in voc.model.parameters())

    def calls(frames: int) -> dict[str, Callable[[], object]]:
        mel = repeat_to(full, frames)
        fns = {
            default: partial(voc, mel, seed=0),
            flow: partial(voc, mel, seed=0, harmonic=0.0, postfilter=0.0, mel_correction=0, limit=False),
        }
        return fns | {system: partial(model, torch.from_numpy(mel)[None]) for system, model in peers.items()}

    with torch.inference_mode():  # every system makes the same audio from a mel: a fair count of samples
        for system, call in calls(20).items():
            if (samples := call().shape[-1]) != 20 * voc.hop_length:
                raise SystemExit(f"{system}: {samples} samples from 20 frames, not {20 * voc.hop_length}")
    load = wait_for_idle()
    print(
        f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, fp32, batch 1, "
        f"mel of {args.wav.name}, load {load:.2f} (1-minute average, before timing)",
        flush=True,
    )
    rows = []
    for seconds in sorted(float(s) for s in args.seconds.split(",")):
        frames = max(1, round(seconds * voc.sample_rate / voc.hop_length))
        with torch.inference_mode():
            medians = time_interleaved(calls(frames), args.runs, args.warmup)
        audio_s = frames * voc.hop_length / voc.sample_rate
        for system, t in medians.items():
            row = dict(system=system, params=params[system], seconds=seconds, frames=frames, ms=1000 * t)
            row.update(x_realtime=audio_s / t, waveflow_default_over_this=t / medians[default])
            rows.append(row)
    print_markdown(rows)
    print(
        f"\n{default}: the checkpoint's harmonic excitation {voc.harmonic_strength:g}, post-filter "
        f"{voc.postfilter_strength:g}, mel correction {voc.mel_correction_iterations} iterations, limiter; "
        f"{flow}: all four off. Peers: random weights, weight norm removed. Params in millions."
    )
    if args.json:
        info = dict(torch=torch.__version__, threads=torch.get_num_threads(), load=load, wav=str(args.wav))
        args.json.write_text(json.dumps(dict(**info, rows=rows), indent=2))
        print(f"wrote {args.json}")
    return rows


def print_markdown(rows: list[dict]) -> None:
    """One line per system, columns per length; the ratio is the default call's x real time over
    the system's (above 1: waveflow's default call is the faster)."""
    lengths = sorted({row["seconds"] for row in rows})
    header = ["system", "params (M)"]
    for s in lengths:
        header += [f"ms at {s:g} s", f"x real time at {s:g} s"]
    header += [f"waveflow default / this at {s:g} s" for s in lengths]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for system in dict.fromkeys(row["system"] for row in rows):
        by_length = {row["seconds"]: row for row in rows if row["system"] == system}
        cells = [system, f"{by_length[lengths[0]]['params'] / 1e6:.2f}"]
        for s in lengths:
            cells += [f"{by_length[s]['ms']:,.0f}", f"{by_length[s]['x_realtime']:.2f}"]
        cells += [f"{by_length[s]['waveflow_default_over_this']:.2f}" for s in lengths]
        print("| " + " | ".join(cells) + " |")


# ------------------------------------------------------------------ report
COLUMNS = [
    ("kind", "{}"),
    ("preset", "{}"),
    ("device", "{}"),
    ("precision", "{}"),
    ("seconds", "{:g}"),
    ("batch", "{}"),
    ("samples_per_s", "{:,.0f}"),
    ("x_realtime", "{:.2f}"),
    ("gflops", "{:.1f}"),
    ("of_matmul", "{:.0%}"),
    ("peak_mb", "{:,.0f}"),
    ("reference_peak_mb", "{:,.0f}"),
    ("reference_samples_per_s", "{:,.0f}"),
    ("speedup", "{:.2f}"),
    ("max_abs_diff", "{:.1e}"),
    ("composed_samples_per_s", "{:,.0f}"),
    ("composed_speedup", "{:.2f}"),
    ("composed_of_matmul", "{:.0%}"),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="realtime,small,default", help="comma-separated model presets")
    p.add_argument("--devices", default="cpu", help="comma-separated: cpu, cuda")
    p.add_argument("--precisions", default="fp32", help="comma-separated: fp32, fp16, bf16 (half on CUDA only)")
    p.add_argument("--seconds", default="1,10", help="mel lengths in seconds of audio")
    p.add_argument("--batch", default="1,8", help="batch sizes")
    p.add_argument("--runs", type=int, default=5, help="timed runs per case (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (default: all cores)")
    p.add_argument(
        "--max-case-seconds",
        type=float,
        default=240.0,
        help="skip an inference case whose estimated time (from the 1 s, batch 1 case) exceeds this",
    )
    p.add_argument("--train", action="store_true", help="also time training steps")
    p.add_argument("--no-inference", action="store_true", help="skip the inference rows")
    p.add_argument("--train-presets", default="default", help="presets for the training rows")
    p.add_argument("--segment", type=int, default=16000, help="training segment length in samples")
    p.add_argument("--train-batch", type=int, default=1, help="training batch size")
    p.add_argument("--train-runs", type=int, default=5, help="timed training steps per case")
    p.add_argument("--compose", action="store_true", help="also time waveflow with composed conditioning")
    p.add_argument("--reference", type=Path, help="a checkout of NVIDIA/waveglow to time side by side")
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="instead of the grid, time waveflow beside a peer vocoder from a checkout: "
        + ", ".join(f"{name}=DIR (github.com/{repo})" for name, (repo, _) in PEERS.items()),
    )
    p.add_argument("--checkpoint", help="with --peer: the waveflow checkpoint (default: the bundled model)")
    p.add_argument("--wav", type=Path, default=CLIP, help="with --peer: the clip whose mel is synthesized")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    p.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one memory measurement
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.probe:
        probe(args, json.loads(args.probe))
        return 0
    if args.peer:
        peer_table(args)
        return 0
    glow = load_reference(args.reference.expanduser()) if args.reference else None
    seconds = [float(s) for s in args.seconds.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    rows, machine = [], {}
    print(f"load {wait_for_idle():.2f} (1-minute average, before the first case)", flush=True)
    for device_name in args.devices.split(","):
        if device_name == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped", file=sys.stderr)
            continue
        device = torch.device(device_name)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        machine[device_name] = dict(name=name, matmul_fp32_gflops=matmul_gflops(device))
        print(
            f"{device_name}: {name}, {torch.get_num_threads()} threads, "
            f"fp32 matmul {machine[device_name]['matmul_fp32_gflops']:.1f} GFLOP/s",
            flush=True,
        )
        for precision in args.precisions.split(","):
            if precision != "fp32" and device.type == "cpu":
                continue  # no fast half path on these CPUs (see README)
            for preset in [] if args.no_inference else args.presets.split(","):
                base = None
                for sec in sorted(seconds):
                    for batch in sorted(batches):
                        if base is not None:
                            estimate = (args.runs + args.warmup) * batch * sec * SAMPLE_RATE / base
                            estimate *= 2 if glow is not None else 1
                            if estimate > args.max_case_seconds:
                                print(
                                    f"skip {preset} {device_name} {precision} {sec:g}s x{batch}: "
                                    f"~{estimate:.0f}s > --max-case-seconds",
                                    file=sys.stderr,
                                )
                                continue
                        row = bench_inference(args, preset, device, precision, sec, batch, glow)
                        base = base or row["samples_per_s"]
                        rows.append(row)
                        print_row_progress(row)
            if args.train:
                for preset in args.train_presets.split(","):
                    row = bench_training(args, preset, device, precision, glow)
                    rows.append(row)
                    print_row_progress(row)
        for row in rows:
            if row["device"] == device_name and row["precision"] == "fp32":
                row["of_matmul"] = row["gflops"] / machine[device_name]["matmul_fp32_gflops"]
                if "composed_gflops" in row:
                    row["composed_of_matmul"] = row["composed_gflops"] / machine[device_name]["matmul_fp32_gflops"]
    print()
    print_table(rows, COLUMNS)
    for device_name, info in machine.items():
        print(f"{device_name}: fp32 matmul {info['matmul_fp32_gflops']:.1f} GFLOP/s (2048x2048, median)")
    if args.json:
        args.json.write_text(json.dumps(dict(machine=machine, torch=torch.__version__, rows=rows), indent=2))
        print(f"wrote {args.json}")
    return 0


def print_row_progress(row: dict) -> None:
    extra = f"  x{row['speedup']:.2f} vs reference" if "speedup" in row else ""
    print(
        f"  {row['kind']:9s} {row['preset']:8s} {row['precision']} {row['seconds']:g}s x{row['batch']}: "
        f"{row['samples_per_s']:,.0f} samples/s, {row['gflops']:.1f} GFLOP/s{extra}",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())

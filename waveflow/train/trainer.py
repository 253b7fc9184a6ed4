"""``waveflow train``: exact maximum-likelihood training, on a CPU, a GPU or many (torchrun).

A run folder holds ``config.yaml``, ``checkpoints/step_NNNNNNN.pt`` (the last
``keep_last``), ``checkpoints/best.pt`` (lowest dev NLL), ``tb/`` (TensorBoard) and
``train.log``. Only rank 0 writes. Checkpoints hold the model, optimizer, scaler, step,
RNG states and the full config; batches are a function of (seed, step, rank) (see
``waveflow.train.data``), so ``--resume`` continues exactly where the run stopped.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist

from waveflow.atomic import atomic_open
from waveflow.config import Config, ConfigError, config_from_dict, load_config, make_config
from waveflow.dsp.audio import MelSpectrogram, load_wav, mel_filterbank
from waveflow.dsp.melcorrect import MelCorrection
from waveflow.dsp.postfilter import HarmonicPostfilter
from waveflow.dsp.stages import Chain, build_chain, checkpoint_settings
from waveflow.nn.checkpoint import (
    atomic_save,
    checkpoint_config,
    load_state,
    make_checkpoint,
    read_checkpoint,
    warm_start,
)
from waveflow.nn.loss import flow_nll, nll_per_example
from waveflow.nn.model import WaveGlow
from waveflow.train.data import DataError, SegmentBatches, batch_loader, checked_batches, load_prepared
from waveflow.train.runlock import LOCK_FILE, RunLock

log = logging.getLogger("waveflow")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainError(ValueError):
    """A run cannot start or must stop; the message says why and what is intact."""


# ------------------------------------------------------------------ config
def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["train.max_steps=200", "model.n_channels=64"]`` -> nested overrides (YAML values)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in ("mel", "model", "train") or not name:
            raise ConfigError(f"--set {item!r}: expected section.key=value with section mel, model or train")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def find_recipe(name: str) -> Path:
    """``--config``: a YAML file, or the name of a shipped recipe config (``realtime_lpc_source``,
    ``ljspeech/conf/mini.yaml``), found in the installed package or the source tree's ``recipes/``."""
    path = Path(name)
    if path.is_file():
        return path
    package = Path(__file__).resolve().parents[1]  # waveflow/
    stem = path.name.removesuffix(".yaml")
    for root in (package / "recipes", package.parent / "recipes"):
        if (root / path).is_file():
            return root / path
        found = sorted(root.glob(f"*/conf/{stem}.yaml"))
        if found:
            return found[0]
    raise ConfigError(f"--config {name}: no such file, nor a recipe config of that name (e.g. realtime_lpc_source)")


def build_config(config_path: str | None, overrides: list[str]) -> Config:
    base = load_config(find_recipe(config_path)) if config_path else make_config("small")
    data = base.to_dict()
    for section, values in parse_overrides(overrides).items():
        data[section] = {**data[section], **values}
    return config_from_dict(data)


INFERENCE_KEYS = ("eval_sigma", "eval_postfilter", "eval_mel_correction")  # how a checkpoint is played


def resolve_run_config(args: argparse.Namespace) -> Config:
    """The config a ``waveflow train`` call runs with.

    - ``--resume``: the run's own ``config.yaml`` (which holds every earlier ``--set``), with this
      call's ``--set`` on top; a ``--config`` given too must describe the same model.
    - ``--init-from CKPT`` without ``--config``: the checkpoint's own config, with ``--set`` on top.
    - ``--init-from CKPT`` with ``--config``: the recipe, but the checkpoint's inference settings
      (sigma, post-filter, mel correction) unless ``--set`` names them: a recipe's defaults must
      not silently change how the model is played (a line says so when they differ).
    - otherwise the recipe (default: the ``small`` preset) with ``--set``.
    """
    overrides = parse_overrides(args.overrides)
    saved = Path(args.out) / "config.yaml"
    if args.resume and saved.is_file():
        cfg = load_config(saved)
        if args.config:
            given = build_config(args.config, args.overrides)
            if architecture(given) != architecture(cfg):
                raise TrainError(
                    f"--resume: {args.out} holds a run of another config "
                    f"({describe_difference(architecture(given), architecture(cfg))})"
                )
        return _with_overrides(cfg, overrides)
    if not args.init_from:
        return build_config(args.config, args.overrides)
    path = Path(args.init_from)
    if not path.is_file():
        raise TrainError(f"--init-from {path}: no such checkpoint file")
    start = checkpoint_config(read_checkpoint(path), path)
    if not args.config:
        return _with_overrides(start, overrides)
    cfg = build_config(args.config, args.overrides)
    kept = {}
    for key in INFERENCE_KEYS:
        ours, theirs = getattr(start.train, key), getattr(cfg.train, key)
        if key not in overrides.get("train", {}) and ours != theirs:
            kept[key] = ours
            log.info(f"train.{key} {ours} from {path} (the config says {theirs}; --set train.{key}={theirs} to use it)")
    return _with_overrides(cfg, {"train": kept}) if kept else cfg


def _with_overrides(cfg: Config, overrides: dict[str, dict[str, Any]]) -> Config:
    data = cfg.to_dict()
    for section, values in overrides.items():
        data[section] = {**data[section], **values}
    return config_from_dict(data)


def architecture(cfg: Config) -> dict[str, Any]:
    """What a checkpoint must share with a config to be resumed under it."""
    return {"mel": asdict(cfg.mel), "model": asdict(cfg.model)}


def describe_difference(a: dict, b: dict) -> str:
    diffs = [
        f"{section}.{key} {a[section][key]!r} vs {b[section].get(key)!r}"
        for section in a
        for key in a[section]
        if a[section][key] != b[section].get(key)
    ]
    return ", ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else "")


# ------------------------------------------------------------------ distributed
class Dist:
    """rank / world size from torchrun's environment; one process without it."""

    def __init__(self, device_request: str | None) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = device_request == "cuda" or (device_request is None and torch.cuda.is_available())
        if want_cuda and not torch.cuda.is_available():
            raise TrainError("--device cuda: no CUDA device is available; use --device cpu")
        self.device = torch.device(f"cuda:{local_rank}") if want_cuda else torch.device("cpu")
        if want_cuda:
            torch.cuda.set_device(self.device)
        if self.world_size > 1:
            dist.init_process_group("nccl" if want_cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_true(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------ pieces
def learning_rate(cfg: Config, step: int) -> float:
    t = cfg.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "cosine":
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
        return t.lr_min + 0.5 * (t.lr - t.lr_min) * (1 + math.cos(math.pi * progress))
    if t.lr_schedule == "exponential":
        return max(t.lr_min, t.lr * t.lr_decay ** max(0, step - t.warmup_steps))
    return t.lr


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    kwargs = dict(lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    try:  # one fused kernel for all parameters: on CUDA, and on CPU since torch 2.4
        return torch.optim.Adam(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), **kwargs)


def resolve_precision(cfg: Config, device: torch.device) -> str:
    precision = cfg.train.precision
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise TrainError("train.precision 'fp16' (with loss scaling) needs a CUDA device; on the CPU use fp32 or bf16")
    return precision  # bf16 on the CPU runs the same autocast path (slowly): it tests the AMP logic without a GPU


def rng_state() -> dict[str, Any]:
    """The global generators' states (batches and noise use their own seeded generators;
    these cover anything else that draws, e.g. a user's model extension)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# A dark-to-bright colour ramp (black, purple, red, orange, pale yellow), as mel plots use.
_RAMP = torch.tensor(
    [
        [0.0, 0.0, 0.02],
        [0.23, 0.06, 0.44],
        [0.55, 0.16, 0.51],
        [0.87, 0.29, 0.39],
        [0.99, 0.64, 0.36],
        [0.99, 0.99, 0.75],
    ]
)


AXIS_PX = 6  # the width of the tick strips at the left (frequency) and bottom (time)


def mel_image(
    original: torch.Tensor,
    resynth: torch.Tensor,
    frames_per_second: float | None = None,
    band_ticks: Sequence[int] = (),
) -> torch.Tensor:
    """Two log-mels ``(n_mels, F)`` stacked (original on top, low bands at the bottom of each),
    one colour scale for both, as an RGB image in [0, 1] with a white rule between them.

    Axes: white ticks in a strip along the bottom every second (long) and half second (short)
    when ``frames_per_second`` is given, and in a strip on the left at the mel bands
    ``band_ticks`` (e.g. those of 1, 2 and 4 kHz) of both mels."""
    frames = min(original.shape[1], resynth.shape[1])
    n_mels = original.shape[0]
    a, b = original[:, :frames].flip(0).float().cpu(), resynth[:, :frames].flip(0).float().cpu()
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    rule = torch.full((2, frames), math.inf)  # drawn white
    level = (torch.cat([a, rule, b]) - lo) / max(float(hi - lo), 1e-8)
    pos = level.clamp(0, 1) * (len(_RAMP) - 1)
    i = pos.floor().long().clamp(max=len(_RAMP) - 2)
    t = (pos - i).unsqueeze(-1)
    rgb = _RAMP[i] * (1 - t) + _RAMP[i + 1] * t
    rgb[torch.isinf(level)] = 1.0
    if frames_per_second is None and not band_ticks:
        return rgb.permute(2, 0, 1)
    height = rgb.shape[0]
    image = torch.zeros(height + AXIS_PX, AXIS_PX + frames, 3)
    image[:height, AXIS_PX:] = rgb
    for band in band_ticks:  # band k is row n_mels - 1 - k of the top mel and 2 rows lower in the bottom one
        for row in (n_mels - 1 - band, 2 * n_mels + 1 - band):
            image[row, : AXIS_PX - 1] = 1.0
    if frames_per_second:
        half = frames_per_second / 2
        for k in range(1, int(frames / half) + 1):
            col = AXIS_PX + round(k * half)
            if col < image.shape[1]:
                image[height + 1 : height + (AXIS_PX if k % 2 == 0 else AXIS_PX // 2), col] = 1.0
    return image.permute(2, 0, 1)


def khz_bands(mel_cfg) -> list[int]:
    """The mel bands whose centres are nearest 1, 2 and 4 kHz (those below f_max)."""
    basis = mel_filterbank(mel_cfg.sample_rate, mel_cfg.n_fft, mel_cfg.n_mels, mel_cfg.f_min, mel_cfg.f_max)
    centres = basis.argmax(axis=1) * mel_cfg.sample_rate / mel_cfg.n_fft
    return [int(abs(centres - hz).argmin()) for hz in (1000.0, 2000.0, 4000.0) if hz < mel_cfg.f_max]


# ------------------------------------------------------------------ trainer
class Trainer:
    def __init__(self, cfg: Config, data: Path, out: Path, ctx: Dist, progress: bool = True) -> None:
        self.cfg, self.data, self.out, self.ctx, self.progress = cfg, Path(data), Path(out), ctx, progress
        self.device = ctx.device
        self.precision = resolve_precision(cfg, self.device)
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        self.train_clips = load_prepared(self.data, "train")
        self.dev_clips = load_prepared(self.data, "dev")
        if cfg.train.eval_max_clips:
            self.dev_clips = self.dev_clips[: cfg.train.eval_max_clips]
        self.model = WaveGlow(cfg.model, cfg.mel).to(self.device)
        self.mel_fn = MelSpectrogram(cfg.mel).to(self.device)
        self.opt = make_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step = 0
        self.best_dev = math.inf
        self.bad_in_a_row = 0
        self.stop_signal: str | None = None
        self.writer = None
        self.dev_audio: list[torch.Tensor] | None = None
        self.init_from: dict[str, Any] | None = None  # the checkpoint a fine-tuning run started from

    # -------------------------------------------------------------- state
    def checkpoint(self, **extra: Any) -> dict[str, Any]:
        return make_checkpoint(
            self.model,
            self.cfg,
            step=self.step,
            optimizer=self.opt.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=rng_state(),
            best_dev_nll=self.best_dev,
            **({"init_from": self.init_from} if self.init_from else {}),
            **extra,
        )

    def save(self) -> Path:
        folder = self.out / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{self.step:07d}.pt"
        atomic_save(self.checkpoint(), path)
        for old in sorted(folder.glob("step_*.pt"))[: -self.cfg.train.keep_last]:
            old.unlink()
        return path

    def restore(self, path: Path) -> None:
        data = read_checkpoint(path)
        saved = checkpoint_config(data, path)
        if architecture(saved) != architecture(self.cfg):
            raise TrainError(
                f"{path}: checkpoint of another config "
                f"({describe_difference(architecture(self.cfg), architecture(saved))}); "
                "resume with the run's own config.yaml"
            )
        load_state(self.model, data["model"], path)
        for key in ("optimizer", "scaler", "step", "rng"):
            if key not in data:
                raise TrainError(f"{path}: holds no {key!r}: a weights-only checkpoint cannot resume a run")
        self.opt.load_state_dict(data["optimizer"])
        self.scaler.load_state_dict(data["scaler"])
        self.step = int(data["step"])
        self.best_dev = float(data.get("best_dev_nll", math.inf))
        self.init_from = data.get("init_from")
        set_rng_state(data["rng"])

    # -------------------------------------------------------------- one step
    def train_step(self, audio: torch.Tensor) -> dict[str, float] | None:
        """One optimizer step; None when the loss or gradient was not finite (step skipped)."""
        model = self.ddp_model
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(self.cfg, self.step)
        audio = audio.to(self.device, non_blocking=True)
        p = self.cfg.model.lpc_order  # the batch starts with the audio before each segment
        context, audio = (audio[:, :p], audio[:, p:]) if p else (None, audio)
        with torch.no_grad():
            mel = self.mel_fn(audio)
        amp = (
            torch.autocast(self.device.type, dtype=AMP_DTYPES[self.precision])
            if self.precision in AMP_DTYPES
            else nullcontext()
        )
        with amp:
            z, logdet = model(audio, mel, context)
        nll = flow_nll(z.float(), logdet.float(), self.cfg.train.sigma)
        self.opt.zero_grad(set_to_none=True)
        if not self.ctx.all_true(bool(torch.isfinite(nll.nats))):
            return None
        self.scaler.scale(nll.nats).backward()
        self.scaler.unscale_(self.opt)
        clip = self.cfg.train.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if not torch.isfinite(grad_norm) and self.precision != "fp16":
            self.opt.zero_grad(set_to_none=True)
            return None
        self.scaler.step(self.opt)  # with fp16, skips the step itself on inf/NaN gradients
        self.scaler.update()
        return {**nll.as_floats(), "grad_norm": float(grad_norm)}

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def _post_chain(self) -> Chain:
        """The post-processing a Vocoder of this checkpoint plays by default (its stored settings,
        the limiter on), built from the config alone."""
        cfg = self.cfg
        parts = SimpleNamespace(
            postfilter=HarmonicPostfilter.for_mel(cfg.mel, cfg.model.pitch_tracker).to(self.device),
            mel_correction=MelCorrection.for_mel(cfg.mel),
            denoiser=None,  # not a checkpoint setting: off
        )
        return build_chain(parts, checkpoint_settings(cfg.train))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """NLL over the full dev clips (nats and bits per sample, weighted by length), without
        autograd: a whole clip's graph would hold every activation of the flow for nothing."""
        model, cfg = self.model, self.cfg
        model.eval()
        if self.dev_audio is None:
            self.dev_audio = [torch.from_numpy(load_wav(c.path)) for c in self.dev_clips]
        total, count = 0.0, 0
        for audio in self.dev_audio:
            audio = audio[None].to(self.device)
            length = audio.shape[1] - audio.shape[1] % cfg.model.n_group
            mel = self.mel_fn(audio)
            z, logdet = model(audio[:, :length], mel)
            total += float(nll_per_example(z, logdet, cfg.train.sigma)[0]) * length
            count += length
        nats = total / count
        result = {"nll_nats": nats, "nll_bits": nats / math.log(2)}
        if self.writer is not None:
            for i, audio in enumerate(self.dev_audio[: cfg.train.eval_audio_clips]):
                audio = audio[None].to(self.device)
                mel = self.mel_fn(audio)
                gen = torch.Generator(device=self.device).manual_seed(cfg.train.seed + i)
                synth = model.infer(mel, sigma=cfg.train.eval_sigma, generator=gen)
                synth = self._post_chain()(synth, mel).clamp(-1, 1)  # as the checkpoint will be heard
                rate = cfg.mel.sample_rate
                self.writer.add_audio(f"dev/audio_{i}", synth[0].cpu(), self.step, sample_rate=rate)
                self.writer.add_audio(f"dev/audio_{i}_ground_truth", audio[0].cpu(), self.step, sample_rate=rate)
                synth_mel = self.mel_fn(synth)
                frames = min(mel.shape[2], synth_mel.shape[2])
                mel_l1 = float((mel[..., :frames] - synth_mel[..., :frames]).abs().mean())
                self.writer.add_scalar(f"dev/mel_l1_{i}", mel_l1, self.step)
                result[f"mel_l1_{i}"] = mel_l1
                image = mel_image(mel[0], synth_mel[0], rate / cfg.mel.hop_length, khz_bands(cfg.mel))
                # ticks: every 0.5 s (long at whole seconds) below, 1, 2 and 4 kHz on the left
                self.writer.add_image(f"dev/mel_{i}_original_top", image, self.step)
        model.train()
        return result

    def after_eval(self, dev: dict[str, float]) -> None:
        quality = "".join(f", {k.replace('_', '-', 1)} {v:.3f}" for k, v in dev.items() if k.startswith("mel_l1"))
        log.info(f"step {self.step}: dev NLL {dev['nll_nats']:.4f} nats/sample ({dev['nll_bits']:.4f} bits){quality}")
        if self.writer is not None:
            self.writer.add_scalar("dev/nll_nats", dev["nll_nats"], self.step)
            self.writer.add_scalar("dev/nll_bits", dev["nll_bits"], self.step)
        with open(self.out / "dev_nll.tsv", "a") as f:
            f.write(f"{self.step}\t{dev['nll_nats']:.6f}\t{dev['nll_bits']:.6f}\n")
        if dev["nll_nats"] < self.best_dev:
            self.best_dev = dev["nll_nats"]
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
            atomic_save(self.checkpoint(dev_nll=dev["nll_nats"]), self.out / "checkpoints" / "best.pt")

    # -------------------------------------------------------------- loop
    def initialize_from(self, path: Path) -> str:
        """Start a new run from another checkpoint's weights (``warm_start``); the optimizer,
        step and RNG start afresh. The source is recorded in every checkpoint of the run.
        Returns the line to log."""
        data = read_checkpoint(path)
        grown = warm_start(self.model, data["model"], path)
        self.init_from = {"path": str(path), "step": int(data.get("step", 0))}
        return f"initialised from {path} (step {self.init_from['step']})" + (
            f"; {len(grown)} conditioning layers grew, their new inputs start at zero" if grown else ""
        )

    def run(self, resume_from: Path | None) -> int:
        cfg, ctx = self.cfg, self.ctx
        if resume_from is not None:
            self.restore(resume_from)
            log.info(f"resumed from {resume_from} at step {self.step}")
        self.ddp_model = self.model
        if ctx.world_size > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        dataset = SegmentBatches(
            self.train_clips,
            cfg.train.segment_length,
            cfg.train.batch_size,
            cfg.train.seed,
            ctx.rank,
            ctx.world_size,
            context=cfg.model.lpc_order,
        )
        if ctx.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))
            import yaml

            self.writer.add_text("config", "```\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False) + "```", self.step)
            log.info(
                f"training {cfg.preset} ({self.model.num_parameters() / 1e6:.1f} M parameters) on "
                f"{ctx.world_size} x {self.device.type}, {self.precision}; {len(self.train_clips)} train clips "
                f"({dataset.short_clips} shorter than a segment, zero-padded), {len(self.dev_clips)} dev clips"
            )
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._loop(dataset)
        except DataError as exc:
            raise self._data_failure(exc) from None
        finally:
            self._shutdown_loader()
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.writer is not None:
                self.writer.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = signal.Signals(signum).name

    @property
    def exit_code(self) -> int:
        """0 for a run that ended on its own; 128 + the signal's number (SIGTERM 143, SIGINT 130)
        for one stopped by a signal after its checkpoint, so that a scheduler can requeue it."""
        return 128 + signal.Signals[self.stop_signal].value if self.stop_signal else 0

    def _data_failure(self, exc: DataError) -> TrainError:
        """A batch could not be read: checkpoint the steps done (rank 0), stop the loader's
        workers, and say which clip and what is intact."""
        self._shutdown_loader()
        saved = "no checkpoint written (not the main process)"
        if self.ctx.main:
            saved = f"checkpoint {self.save()} written at step {self.step}"
        return TrainError(f"stopped at step {self.step}: {exc}; {saved}; fix or drop the clip, then --resume")

    def _shutdown_loader(self) -> None:
        batches, self._batches = getattr(self, "_batches", None), None
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def _loop(self, dataset: SegmentBatches) -> int:
        from tqdm import tqdm

        cfg, ctx = self.cfg, self.ctx
        if self.step == 0 and ctx.main:
            self.after_eval(self.evaluate())
        ctx.barrier()
        bar = tqdm(
            total=cfg.train.max_steps,
            initial=self.step,
            unit="step",
            disable=not (ctx.main and self.progress and sys.stderr.isatty()),
        )
        self._batches = iter(batch_loader(dataset, self.step, cfg.train.num_workers))
        loader = checked_batches(self._batches)
        samples_per_step = cfg.train.batch_size * cfg.train.segment_length * ctx.world_size
        busy = 0.0  # seconds spent in training steps since the last log line
        heartbeat = Heartbeat(self.step, cfg.train.max_steps, enabled=ctx.main and bar.disable)
        for audio in loader:
            if self.step >= cfg.train.max_steps:
                break
            start = time.perf_counter()
            stats = self.train_step(audio)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            busy += time.perf_counter() - start
            if stats is None:
                self.bad_in_a_row += 1
                log.warning(
                    f"step {self.step}: non-finite loss or gradient, step skipped ({self.bad_in_a_row} in a row)"
                )
                if self.bad_in_a_row >= cfg.train.max_bad_steps:
                    last = sorted((self.out / "checkpoints").glob("step_*.pt"))
                    raise TrainError(
                        f"stopped at step {self.step}: {self.bad_in_a_row} non-finite steps in a row "
                        f"(train.max_bad_steps); last good checkpoint: {last[-1] if last else 'none written yet'}"
                    )
                continue
            self.bad_in_a_row = 0
            self.step += 1
            bar.update(1)
            heartbeat.step(self.step, stats)
            if ctx.main and self.step % cfg.train.log_every == 0:
                stats["samples_per_s"] = samples_per_step * cfg.train.log_every / busy
                busy = 0.0
                stats["lr"] = self.opt.param_groups[0]["lr"]
                for key, value in stats.items():
                    self.writer.add_scalar(f"train/{key}", value, self.step)
                bar.set_postfix(nll=f"{stats['nll_nats']:.3f}", gnorm=f"{stats['grad_norm']:.2f}")
            finished = self.step >= cfg.train.max_steps
            if ctx.main and (self.step % cfg.train.eval_every == 0 or finished):
                self.after_eval(self.evaluate())
            if ctx.main and (self.step % cfg.train.checkpoint_every == 0 or finished or self.stop_signal):
                path = self.save()
                if self.stop_signal:
                    log.info(f"{self.stop_signal}: checkpoint {path} written at step {self.step}; resume with --resume")
            ctx.barrier()
            if self.stop_signal or finished:
                break
        bar.close()
        return self.step


class Heartbeat:
    """Off a terminal the progress bar is off, and evaluations can be half an hour apart: log a
    line (step, NLL, speed) at least every ``LOG_INTERVAL_S`` seconds, so a log file or a CI
    console shows that the run is alive and how fast it goes."""

    def __init__(self, step: int, max_steps: int, enabled: bool) -> None:
        self.enabled, self.max_steps = enabled, max_steps
        self.last_time, self.last_step = time.monotonic(), step

    def step(self, step: int, stats: dict[str, float]) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last_time < LOG_INTERVAL_S:
            return
        rate = (step - self.last_step) / (now - self.last_time)
        left = (self.max_steps - step) / rate if rate > 0 else math.inf
        log.info(
            f"step {step}/{self.max_steps}: train NLL {stats['nll_nats']:.4f} nats/sample, "
            f"{rate:.2f} steps/s, about {left / 60:.0f} min left"
        )
        self.last_time, self.last_step = now, step


LOG_INTERVAL_S = 60.0


# ------------------------------------------------------------------ CLI
def prepare_run_folder(out: Path, cfg: Config, resume: bool, force: bool) -> Path | None:
    """Check --out against --resume/--force; returns the checkpoint to resume from, if any."""
    existing = out / "config.yaml"
    if resume:
        if not existing.is_file():
            raise TrainError(f"--resume: {out} holds no run (no config.yaml)")
        saved = load_config(existing)
        if architecture(saved) != architecture(cfg):
            raise TrainError(
                f"--resume: {out} holds a run of another config "
                f"({describe_difference(architecture(cfg), architecture(saved))})"
            )
        for stale in (out / "checkpoints").glob(".*.tmp"):  # a write cut short by a kill: never renamed
            stale.unlink()
        last = sorted((out / "checkpoints").glob("step_*.pt"))
        return last[-1] if last else None
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        if not force:
            raise TrainError(f"{out} already holds files; pass --resume to continue that run or --force to replace it")
        if existing.is_file():
            for name in ("checkpoints", "tb"):
                shutil.rmtree(out / name, ignore_errors=True)
            for name in ("dev_nll.tsv", "config.yaml"):
                (out / name).unlink(missing_ok=True)
    return None


def run(args: argparse.Namespace) -> int:
    """``waveflow train``; returns the exit code (see ``Trainer.exit_code``)."""
    try:
        import tensorboard  # noqa: F401  (SummaryWriter needs it; checked before the run folder is touched)
    except ImportError:
        raise TrainError("waveflow train writes TensorBoard logs: pip install 'waveflow[train]'") from None
    out = Path(args.out)
    init_from = Path(args.init_from) if args.init_from else None
    if init_from is not None:
        if args.resume:
            raise TrainError("--init-from starts a new run; --resume continues one: pass one of them")
        if not init_from.is_file():
            raise TrainError(f"--init-from {init_from}: no such checkpoint file")
    cfg = resolve_run_config(args)
    ctx = Dist(args.device)
    lock = None
    try:
        # everything is checked (data, device, precision) before the run folder is touched
        trainer = Trainer(cfg, Path(args.data), out, ctx, progress=not args.no_progress)
        # a checkpoint that does not fit fails here, before --out is touched
        started = trainer.initialize_from(init_from) if init_from is not None else ""
        resume_from = None
        if ctx.main:
            lock = RunLock(out).acquire()  # before the folder is read or changed: one run per folder
            resume_from = prepare_run_folder(out, cfg, args.resume, args.force)
            out.mkdir(parents=True, exist_ok=True)
            write_run_config(cfg, out / "config.yaml")
        ctx.barrier()
        if args.resume and not ctx.main:
            last = sorted((out / "checkpoints").glob("step_*.pt"))
            resume_from = last[-1] if last else None
        with run_log(out / "train.log" if ctx.main else None):
            if started:
                log.info(started)
            step = trainer.run(resume_from)
            if ctx.main:
                print(f"stopped at step {step}; best dev NLL {trainer.best_dev:.4f} nats/sample; run folder {out}")
            if trainer.exit_code:
                log.info(f"exit code {trainer.exit_code} (128 + {trainer.stop_signal}): stopped, resumable")
            return trainer.exit_code
    finally:
        if lock is not None:
            lock.release()
        ctx.close()


def write_run_config(cfg: Config, path: Path) -> None:
    """The run's config.yaml, written atomically: a failed write (a full disk) leaves the old
    file whole, so the run can still be resumed."""
    import yaml

    with atomic_open(path, "w") as handle:
        handle.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


@contextmanager
def run_log(path: Path | None):
    """Append the run's log lines (with times) to ``path`` while the block runs; resumes add to it."""
    if path is None:
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()

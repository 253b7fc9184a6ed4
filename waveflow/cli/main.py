"""Console entry point: ``waveflow <verb>``.

Errors a user can cause (bad files, bad shapes, bad configs) are printed as one line
and exit with status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

from waveflow import __version__
from waveflow.atomic import WriteError
from waveflow.cli import arguments

log = logging.getLogger("waveflow")


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _cmd_check(args: argparse.Namespace) -> None:
    """Self-check: mel of a wav, an untrained model's forward pass, NLL and round-trip error."""
    import torch

    from waveflow.config import model_preset
    from waveflow.dsp.audio import MelSpectrogram, load_wav
    from waveflow.nn.loss import flow_nll
    from waveflow.nn.model import WaveGlow

    torch.manual_seed(args.seed)
    audio = torch.from_numpy(load_wav(args.wav))
    if args.seconds:
        audio = audio[: int(args.seconds * 22050)]
    mel = MelSpectrogram()(audio)
    print(f"{args.wav}: {audio.numel()} samples ({audio.numel() / 22050:.2f} s), mel {tuple(mel.shape)}")
    model = WaveGlow(model_preset(args.preset))
    # An untrained flow is the product of its 1x1 convs; perturb the zero-init end convs so
    # the round trip exercises the couplings too.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".end." in name:
                p.normal_(0.0, 0.02)
    t0 = time.perf_counter()
    with torch.no_grad():
        z, logdet = model(audio[None], mel[None])
        nll = flow_nll(z, logdet, sigma=1.0)
        t1 = time.perf_counter()
        model.eval()
        back = model.infer(mel[None], z=z, length=z.shape[-1] * model.cfg.n_group)
        t2 = time.perf_counter()
    n = back.shape[1]
    err = (back - audio[None, :n]).abs().max().item()
    print(f"model: preset {args.preset!r}, {model.num_parameters() / 1e6:.2f} M parameters (untrained, random)")
    print(
        f"NLL: {float(nll.nats):.4f} nats/sample, {float(nll.bits):.4f} bits/sample "
        f"(WaveGlow convention: {float(nll.waveglow):.4f})"
    )
    print(f"round trip audio -> z -> audio: max |error| = {err:.3e} over {n} samples")
    print(f"time: forward {t1 - t0:.2f} s, inverse {t2 - t1:.2f} s")
    if not err < 1e-4:
        raise CLIError(f"round-trip error {err:.3e} exceeds 1e-4: the flow is not inverting exactly")


def _cmd_info(args: argparse.Namespace) -> None:
    """Print what a checkpoint holds: architecture, mel convention, inference sigma, provenance."""
    from waveflow.dsp.stages import checkpoint_settings
    from waveflow.dsp.stages import describe as describe_stages
    from waveflow.infer.vocoder import DEFAULT_CHECKPOINT
    from waveflow.nn.checkpoint import checkpoint_config, read_checkpoint

    path = args.checkpoint or DEFAULT_CHECKPOINT
    data = read_checkpoint(path)
    cfg = checkpoint_config(data, path)
    m, mel = cfg.model, cfg.mel
    n = sum(v.numel() for v in data["model"].values() if hasattr(v, "numel"))
    print(f"{path}: waveflow checkpoint, format version {data.get('version')}")
    print(
        f"model: preset {cfg.preset!r}, {n / 1e6:.2f} M weights; {m.n_flows} flows, group {m.n_group}, "
        f"conditioner {m.n_layers} x {m.n_channels}, mel at the {m.cond_rate} rate"
    )
    extras = [f"linear prediction order {m.lpc_order}" if m.lpc_order else "no linear prediction"]
    extras.append("pitch features" if m.pitch_features else "no pitch features")
    extras.append("a pulse source" if m.pulse_source else "no pulse source")
    if m.pulse_source or m.pitch_features:
        extras.append(f"pitch tracker {m.pitch_tracker}")
    print("layers: " + ", ".join(extras))
    print(
        f"mel: {mel.n_mels} bands, {mel.sample_rate} Hz, n_fft {mel.n_fft}, hop {mel.hop_length}, "
        f"{mel.f_min:g}-{mel.f_max:g} Hz, preset {mel.preset!r}"
    )
    strength = cfg.train.eval_postfilter
    postfilter = f"harmonic post-filter {strength:g}" if strength else "no post-filter"
    iterations = cfg.train.eval_mel_correction
    correction = f"mel correction {iterations} iterations" if iterations else "no mel correction"
    harmonic = cfg.train.eval_harmonic
    excitation = f"harmonic excitation {harmonic:g}, " if harmonic else ""
    print(
        f"inference sigma {cfg.train.eval_sigma:g}, {excitation}{postfilter}, {correction} "
        f"(training sigma {cfg.train.sigma:g})"
    )
    print(f"post-processing: {describe_stages(checkpoint_settings(cfg.train))} (waveflow.dsp.stages)")
    facts = [f"step {data['step']}" if "step" in data else None]
    if data.get("init_from"):
        start = data["init_from"]
        facts.append(f"fine-tuned from {str(start['path']).rsplit('/', 1)[-1]} (step {start['step']})")
    nll = data.get("dev_nll", data.get("best_dev_nll"))
    if nll is not None:
        facts.append(f"dev NLL {float(nll):.4f} nats/sample")
    if "optimizer" in data:
        facts.append("resumable (optimizer state included)")
    print("training: " + (", ".join(f for f in facts if f) or "no record"))
    if data.get("note"):
        print(f"note: {data['note']}")
    card = data.get("card") or {}
    if card.get("data"):
        print(f"data: {card['data']}")
    quality = card.get("quality") or {}
    clips = len(quality.get("clips", []))
    settings = {
        "waveflow": f"sigma {quality.get('sigma')}, harmonic excitation {quality.get('harmonic', 0)}, "
        f"post-filter {quality.get('postfilter', 0)}, "
        f"mel correction {quality.get('mel_correction', 0)}",
        "griffin_lim": "60 iterations",
    }
    for system in ("waveflow", "griffin_lim"):
        if system in quality:
            q = quality[system]
            print(
                f"quality ({system}, {clips} clips, {settings[system]}): "
                + ", ".join(f"{k} {q[k]}" for k in ("mel_l1", "pesq_wb", "stoi", "nll_nats", "silence_rms") if k in q)
            )


def _cmd_presets(args: argparse.Namespace) -> None:
    """Print the model presets and their parameter counts."""
    from waveflow.config import MODEL_PRESETS, model_preset
    from waveflow.nn.model import WaveGlow

    print("| preset | flows | group | conditioner layers x channels | upsampler kernel | parameters |")
    print("|---|---|---|---|---|---|")
    for name in MODEL_PRESETS:
        cfg = model_preset(name)
        n = WaveGlow(cfg).num_parameters()
        print(
            f"| `{name}` | {cfg.n_flows} | {cfg.n_group} | {cfg.n_layers} x {cfg.n_channels} | "
            f"{cfg.upsample_kernel} | {n / 1e6:.1f} M |"
        )


def _holds_audio(folder) -> bool:
    return folder.is_dir() and any(
        p.suffix.lower() in (".wav", ".flac", ".ogg")
        for where in (folder, folder / "wavs")
        if where.is_dir()
        for p in where.iterdir()
    )


def _cmd_prepare(args: argparse.Namespace) -> None:
    """Check an LJSpeech-style corpus and write train/dev/test filelists."""
    from collections import Counter
    from pathlib import Path

    from waveflow.train.data import SAMPLE_RATE, prepare

    corpus = Path(args.data)
    if not (corpus / "metadata.csv").is_file() and _holds_audio(corpus):
        # a plain folder of audio, as a voice comes: resampled, mono, 16-bit, under OUT/corpus
        from waveflow.train.finetune import prepare_wav_folder

        count = prepare_wav_folder(corpus, Path(args.out) / "corpus", SAMPLE_RATE)
        print(f"{corpus}: no metadata.csv; {count} audio files written as a corpus in {Path(args.out) / 'corpus'}")
        corpus = Path(args.out) / "corpus"
    summary = prepare(corpus, Path(args.out), mel_cache=args.mel_cache, progress=not args.no_progress)
    split = summary["split"]
    print(
        f"{summary['usable']} of {summary['clips']} clips usable: {split['train']} train, {split['dev']} dev, "
        f"{split['test']} test"
    )
    print(f"split: {summary['rule']}")
    if summary["skipped"]:
        reasons = Counter(summary["skipped"].values())
        print(f"skipped {len(summary['skipped'])}: " + ", ".join(f"{n} {why}" for why, n in reasons.most_common()))
        for clip_id, why in list(summary["skipped"].items())[:10]:
            print(f"  {clip_id}: {why}")
    print(f"wrote {args.out}/train.txt, dev.txt, test.txt, prepared.json" + (", mels/" if args.mel_cache else ""))


def _run(module: str, function: str = "run"):
    """The subcommand's code, imported only when it runs (help needs no torch)."""

    def call(args: argparse.Namespace) -> int | None:
        import importlib

        return getattr(importlib.import_module(f"waveflow.{module}"), function)(args)

    call.target = (f"waveflow.{module}", function)  # for the test that every verb resolves
    return call


def command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose summary is both its line in ``waveflow --help`` and the description
    atop its own ``--help``."""
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="waveflow", description="WaveGlow-style flow vocoder.")
    parser.add_argument("--version", action="version", version=f"waveflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True

    p = command(sub, "check", "self-check the flow on a wav: mel, NLL, exact round trip")
    p.add_argument("wav", help="a 22050 Hz wav (other rates are resampled)")
    p.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    p.add_argument("--seconds", type=float, default=0.0, help="use only the first N seconds (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random model (default: 0)")
    p.set_defaults(func=_cmd_check)

    p = command(sub, "info", "what a checkpoint holds: model, mel convention, provenance")
    p.add_argument("checkpoint", nargs="?", default=None, help="waveflow checkpoint (default: the bundled model)")
    p.set_defaults(func=_cmd_info)

    p = command(sub, "presets", "list the model presets with their parameter counts")
    p.set_defaults(func=_cmd_presets)

    p = command(sub, "pretrained", "list the models known by name and those in the cache")
    p.set_defaults(func=_run("interop.registry"))

    p = command(sub, "prepare", "check an LJSpeech-style corpus and write train/dev/test filelists")
    p.add_argument(
        "--data", required=True, help="corpus folder holding metadata.csv and wavs/, or a plain folder of wavs"
    )
    p.add_argument("--out", required=True, help="folder for the filelists (created)")
    p.add_argument("--mel-cache", action="store_true", help="also save every clip's log-mel as mels/ID.npy")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)

    # The subcommands whose code needs torch: options from waveflow.cli.arguments, code imported on use.
    for name, summary, add, module, function in (
        (
            "train",
            "train by exact maximum likelihood (torchrun for several processes)",
            arguments.add_train,
            "train.trainer",
            "run",
        ),
        (
            "finetune",
            "fine-tune the bundled model (or --from MODEL) on a folder of wavs; writes a pretrained folder",
            arguments.add_finetune,
            "train.finetune",
            "run",
        ),
        ("synthesize", "mel (.npy/.pt) or folder of mels -> wav(s)", arguments.add_synthesize, "cli.synthesize", "run"),
        ("mel", "wav -> mel (.npy/.pt) of the vocoder's convention", arguments.add_mel, "cli.synthesize", "run_mel"),
        (
            "evaluate",
            "copy-synthesis quality (mel-L1, PESQ, STOI, NLL, F0 error, V/UV F1) vs Griffin-Lim",
            arguments.add_evaluate,
            "train.evaluate",
            "run",
        ),
        (
            "convert-nvidia",
            "convert an NVIDIA WaveGlow checkpoint to a waveflow checkpoint",
            arguments.add_convert_nvidia,
            "interop.nvidia",
            "run",
        ),
        (
            "export",
            "export the inference path to TorchScript or ONNX, or a pretrained folder",
            arguments.add_export,
            "interop.export",
            "run",
        ),
    ):
        p = command(sub, name, summary)
        add(p)
        p.set_defaults(func=_run(module, function))
    return parser


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a message comes, not the stream
    it was at the first ``main`` call: a host that calls ``main`` again with stderr redirected
    (or captured, then closed) gets the messages where it now points."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbose: bool) -> None:
    """Messages of the ``waveflow`` logger to stderr; the root logger (the host program's) is left alone."""
    logger = logging.getLogger("waveflow")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(h, "_waveflow_cli", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("waveflow: %(message)s"))
        handler._waveflow_cli = True
        logger.addHandler(handler)
        logger.propagate = False


MAX_ERROR_CHARS = 1000


def one_line(message: str) -> str:
    """An error message as one line of at most ``MAX_ERROR_CHARS``: a value quoted from a file
    can be long or hold newlines."""
    message = " ".join(message.split("\n"))
    if len(message) > MAX_ERROR_CHARS:
        message = f"{message[: MAX_ERROR_CHARS - 40]}... ({len(message)} characters, cut)"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
    except BrokenPipeError:
        # `waveflow prepare ... | head -1`: the reader went away; what was to be written is
        # written (files come before the summary), so end quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE
    except (CLIError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError, WriteError) as exc:
        print(f"waveflow {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"waveflow {args.command}: interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())

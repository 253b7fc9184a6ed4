"""The command line's options, apart from the code that runs them: ``waveflow --help`` and
every subcommand's help import neither torch nor the modules that need it."""

from __future__ import annotations

import argparse

EXPORT_FORMATS = ("torchscript", "onnx", "pretrained")
DEVICES = ("cpu", "cuda")


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="recipe YAML (preset, mel, model, train); default: the small preset")
    p.add_argument("--data", required=True, help="a folder written by `waveflow prepare`")
    p.add_argument("--out", required=True, help="run folder: checkpoints, TensorBoard logs, config.yaml")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="start afresh in a folder that holds another run (deletes it)")
    p.add_argument(
        "--init-from",
        metavar="CKPT",
        help="start a new run from this checkpoint's weights (fine-tuning; conditioning inputs appended by "
        "the config, e.g. model.pulse_source, start at zero); not with --resume",
    )
    _add_run_options(p, "override a config value, e.g. --set train.max_steps=200 (repeatable)")


def add_finetune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a folder of wavs (any rate, mono or stereo; no transcripts needed)")
    p.add_argument("--out", required=True, help="run folder: data/, train/ (checkpoints, logs), model/ (the result)")
    p.add_argument(
        "--from",
        dest="source",
        metavar="MODEL",
        help="the model to start from: a checkpoint, a pretrained folder or a model name (default: the bundled "
        "model); its config, inference sigma and post-processing are kept",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its own config")
    _add_run_options(p, "override a training value, e.g. --set train.max_steps=4000 (repeatable)")


def _add_run_options(p: argparse.ArgumentParser, set_help: str) -> None:
    """``--device``, ``--set`` and ``--no-progress``, shared by train and finetune."""
    p.add_argument("--device", choices=DEVICES, help="default: cuda when available")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=set_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_postfilter(parser: argparse.ArgumentParser) -> None:
    """``--harmonic``, ``--postfilter``, ``--mel-correction`` and ``--no-limiter``, shared by
    synthesize and evaluate."""
    parser.add_argument(
        "--harmonic",
        type=float,
        default=None,
        metavar="STRENGTH",
        help="harmonic excitation strength in [0, 1]: the voiced share of the flow's residual made "
        "periodic before the LP filter (models with a pulse source); 0 turns it off (default: the "
        "checkpoint's; 1 for the bundled model)",
    )
    parser.add_argument(
        "--postfilter",
        type=float,
        default=None,
        metavar="STRENGTH",
        help="harmonic post-filter strength in [0, 1], 0 turns it off (default: the checkpoint's; "
        "0.5 for the bundled model)",
    )
    parser.add_argument(
        "--mel-correction",
        type=int,
        default=None,
        metavar="ITERATIONS",
        help="iterations of the mel correction, which moves the output's mel onto the input mel; "
        "0 turns it off (default: the checkpoint's)",
    )
    parser.add_argument(
        "--no-limiter",
        action="store_true",
        help="skip the soft output limiter (by default audio above 0.9 is bent smoothly below 0.99, "
        "so that nothing clips; see waveflow.dsp.limiter)",
    )


def add_synthesize(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a mel (.npy or .pt, shape (n_mels, frames)) or a folder of them")
    parser.add_argument("-o", "--output", required=True, help="output .wav, or a folder for a folder of mels")
    parser.add_argument("--checkpoint", default=None, help="waveflow checkpoint (default: the bundled model)")
    parser.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="std of the latent noise (default: the checkpoint's inference sigma, 0.6 for WaveGlow)",
    )
    parser.add_argument("--denoise", type=float, default=0.0, help="bias-removal strength, e.g. 0.01 (default: off)")
    add_postfilter(parser)
    parser.add_argument(
        "--denoise-mode",
        choices=["auto", "waveflow", "nvidia"],
        default="auto",
        help="the bias to remove: waveflow (silence mel) or nvidia (NVIDIA's denoiser.py rule); "
        "auto: nvidia for checkpoints converted from NVIDIA, else waveflow (default: auto)",
    )
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="where the model runs (default: cpu)")
    parser.add_argument("--half", action="store_true", help="float16 conditioner (CUDA only)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    parser.add_argument("--batch-size", type=int, default=4, help="mels synthesized together (folders; default: 4)")
    parser.add_argument("--stream", action="store_true", help="synthesize with StreamingVocoder, chunk by chunk")
    parser.add_argument("--chunk-frames", type=int, default=16, help="mel frames per streamed chunk (default: 16)")
    parser.add_argument(
        "--low-latency",
        action="store_true",
        help="stream with the low-latency preset (StreamingVocoder.low_latency: look-ahead 2 frames, "
        "a mel correction that waits for 2 frames, one synthesis per 8 pushed frames); implies --stream",
    )
    parser.add_argument("--reference", default=None, help="a wav to compare the output with (prints quality)")
    parser.add_argument(
        "--time-major", action="store_true", help="the mels are (frames, n_mels), as some front ends save them"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="synthesize a mel whose values are not a log-mel of the convention (linear, dB, log10, ...) "
        "instead of refusing it",
    )


def add_mel(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("wav", help="a wav (other sample rates are resampled)")
    parser.add_argument("-o", "--output", required=True, help="output mel, .npy or .pt, shape (n_mels, frames)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="use this checkpoint's mel convention (default: Tacotron 2 / WaveGlow's, see waveflow.dsp.audio)",
    )


def add_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="waveflow checkpoint (default: the bundled model)")
    parser.add_argument(
        "--data",
        required=True,
        help="an LJSpeech-style folder (wavs/), a folder of wavs, or a folder written by `waveflow prepare`",
    )
    parser.add_argument(
        "--split",
        default="dev,test",
        help="with a prepared folder: the splits to score (default: dev,test, the held-out clips)",
    )
    parser.add_argument("--limit", type=int, default=0, help="score only the first N clips (0: all)")
    parser.add_argument(
        "--sigma", type=float, default=None, help="std of the latent noise (default: the checkpoint's inference sigma)"
    )
    add_postfilter(parser)
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="where the model runs (default: cpu)")
    parser.add_argument("--json", default=None, help="also write the per-clip scores and means here")
    parser.add_argument("--no-griffin-lim", action="store_true", help="skip the Griffin-Lim floor")
    parser.add_argument(
        "--no-pitch", action="store_true", help="skip the pitch measures (F0 error, V/UV F1 from pyworld's harvest)"
    )


def add_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        required=True,
        choices=EXPORT_FORMATS,
        help="torchscript (.pt), onnx (.onnx), or pretrained (a folder: config.yaml, model.safetensors, card.json)",
    )
    parser.add_argument("--checkpoint", required=True, help="waveflow checkpoint")
    parser.add_argument("-o", "--output", required=True, help="file (folder for pretrained) to write")


def add_convert_nvidia(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="NVIDIA WaveGlow checkpoint (.pt/.pth, pickled module or state dict)")
    parser.add_argument("-o", "--output", required=True, help="waveflow checkpoint to write")

"""``waveflow finetune``: a voice from a folder of wavs, in one command.

    waveflow finetune --data WAVS_DIR --out RUN [--from CKPT_OR_FOLDER_OR_NAME] [--set train.max_steps=N]

1. ``RUN/data``: every wav of ``WAVS_DIR`` (any rate, mono or stereo, no transcripts needed)
   mixed to mono, resampled to the model's rate and written as 16-bit PCM under
   ``RUN/data/corpus/wavs``; then the filelists as ``waveflow prepare`` writes them (in name
   order the last clip is test, the one before it dev, at least one each).
2. ``RUN/train``: ``waveflow train --init-from`` the starting model with its own config: the
   architecture, mel convention, inference sigma, post-filter and mel correction stay the
   model's; only the training schedule is a fine-tuning one (``FINETUNE_TRAIN``, ``--set`` to
   change it). Off a terminal a line is logged at least every minute.
3. ``RUN/model``: the pretrained folder of the best checkpoint (lowest dev NLL), which
   ``Vocoder.from_pretrained`` and ``waveflow synthesize --checkpoint`` load.

``--resume`` continues a stopped run from its own ``RUN/train/config.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np

log = logging.getLogger("waveflow")

# A gentle schedule for a model that already speaks: the bundled model's last runs used
# cosine 1e-4 -> 1e-5 (docs/bundled-model.md). Segment length and batch stay the model's.
# Values as --set spells them (YAML: "1e-05" would read as a string).
FINETUNE_TRAIN = {
    "lr": "0.0001",
    "lr_schedule": "cosine",
    "lr_min": "0.00001",
    "max_steps": "2000",
    "log_every": "20",
    "eval_every": "250",
    "checkpoint_every": "250",
    "keep_last": "2",
    "eval_audio_clips": "1",
}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class FinetuneError(ValueError):
    """A fine-tuning run cannot start; the message says why."""


def find_wavs(folder: Path) -> list[Path]:
    """The audio files of a folder (or of its ``wavs/`` subfolder, as an LJSpeech-style corpus has)."""
    if not folder.is_dir():
        raise FinetuneError(f"--data {folder}: no such folder")
    for where in (folder, folder / "wavs"):
        found = sorted(p for p in where.glob("*") if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith("."))
        if found:
            return found
    raise FinetuneError(f"--data {folder}: holds no audio files ({', '.join(AUDIO_SUFFIXES)})")


def prepare_wav_folder(source: Path, corpus: Path, sample_rate: int) -> int:
    """Write ``corpus/wavs/NAME.wav`` (mono, ``sample_rate``, 16-bit) and a ``metadata.csv`` without
    text for every audio file of ``source``; returns how many. Ids are the file names, so two files
    that differ only in extension are refused."""
    import soundfile as sf

    from waveflow.dsp.audio import load_wav

    paths = find_wavs(source)
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise FinetuneError(
            f"--data {source}: two files share a name ({sorted(s for s in stems if stems.count(s) > 1)[0]})"
        )
    bad = [s for s in stems if "|" in s]
    if bad:
        raise FinetuneError(f"--data {source}: file name {bad[0]!r} contains '|', which the filelists use")
    (corpus / "wavs").mkdir(parents=True, exist_ok=True)
    for path in paths:
        audio = load_wav(path, sample_rate)  # mixes to mono and resamples, saying so
        peak = float(np.abs(audio).max()) if audio.size else 0.0
        if peak > 1.0:
            audio = audio / peak
        sf.write(corpus / "wavs" / f"{path.stem}.wav", audio, sample_rate, subtype="PCM_16")
    (corpus / "metadata.csv").write_text("".join(f"{s}||\n" for s in stems), encoding="utf-8")
    return len(paths)


def starting_checkpoint(source: str | None, work: Path) -> Path:
    """A checkpoint file for ``--from``: a checkpoint as is; a pretrained folder or a model name
    written out as a weights-only checkpoint; the bundled model by default."""
    from waveflow.infer.vocoder import DEFAULT_CHECKPOINT
    from waveflow.interop import registry

    if source is None or (source == registry.BUNDLED and not Path(source).exists()):
        return DEFAULT_CHECKPOINT
    path = Path(source)
    if path.is_file():
        return path
    from waveflow.interop.pretrained import load_pretrained
    from waveflow.nn.checkpoint import save_checkpoint

    folder = registry.fetch(source) if registry.is_name(source) and not path.exists() else source
    model, cfg, card = load_pretrained(folder)
    target = work / "start.pt"
    save_checkpoint(target, model, cfg, step=int(card.get("step", 0)), source=str(source))
    return target


def run(args: argparse.Namespace) -> int:
    """``waveflow finetune``; returns the exit code (``waveflow train``'s: 128 + the signal when one
    stopped the run, after its checkpoint and this folder's model)."""
    from waveflow.interop.pretrained import save_pretrained
    from waveflow.nn.checkpoint import checkpoint_config, read_checkpoint
    from waveflow.train import trainer as train
    from waveflow.train.data import prepare

    out = Path(args.out)
    data, run_dir, model_dir = out / "data", out / "train", out / "model"
    source = Path(args.data)
    if args.resume:
        if not (run_dir / "config.yaml").is_file():
            raise FinetuneError(f"--resume: {out} holds no fine-tuning run (no train/config.yaml)")
        start = None
    else:
        if out.exists() and any(out.iterdir()):
            raise FinetuneError(f"{out} already holds files; pass --resume to continue that run, or choose a new --out")
        out.mkdir(parents=True, exist_ok=True)
        try:
            start = starting_checkpoint(args.source, out)
            cfg = checkpoint_config(read_checkpoint(start), start)
            count = prepare_wav_folder(source, data / "corpus", cfg.mel.sample_rate)
            summary = prepare(data / "corpus", data, progress=not args.no_progress)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)  # nothing half-made: the same command can be run again
            raise
        split = summary["split"]
        print(
            f"prepared {count} clips of {source} at {cfg.mel.sample_rate} Hz: {split['train']} train, "
            f"{split['dev']} dev, {split['test']} test ({data})"
        )
    overrides = [] if args.resume else [f"train.{k}={v}" for k, v in FINETUNE_TRAIN.items()]
    train_args = argparse.Namespace(
        config=None,
        data=str(data),
        out=str(run_dir),
        resume=args.resume,
        force=False,
        init_from=None if args.resume else str(start),
        device=args.device,
        overrides=[*overrides, *args.overrides],
        no_progress=args.no_progress,
    )
    try:
        code = train.run(train_args)
    except BaseException:
        if not args.resume and not (run_dir / "checkpoints").is_dir():
            shutil.rmtree(out, ignore_errors=True)  # nothing trained yet: leave no folder that blocks a retry
        raise
    best = run_dir / "checkpoints" / "best.pt"
    if model_dir.exists():
        shutil.rmtree(model_dir)  # a resumed run replaces the model it wrote before
    save_pretrained(best, model_dir)
    print(f"wrote {model_dir}: the best checkpoint (lowest dev NLL) as a pretrained folder; use it with")
    print(f"  waveflow synthesize MEL -o OUT.wav --checkpoint {model_dir}")
    print(f"  Vocoder.from_pretrained({str(model_dir)!r})")
    return code

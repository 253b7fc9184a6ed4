"""Corpus preparation and training data.

``prepare`` turns an LJSpeech-style folder (``metadata.csv`` + ``wavs/``) into a prepared
folder that training reads:

    PREPARED/prepared.json   corpus path, sample rate, split sizes, skipped clips and why
    PREPARED/train.txt       one clip per line: ``ID|path to the wav|samples``
    PREPARED/dev.txt         (paths absolute, so the prepared folder can live anywhere)
    PREPARED/test.txt
    PREPARED/mels/ID.npy     optional cache of full-clip log-mels (``--mel-cache``)

Training batches are a pure function of ``(seed, step, rank)``: step t of the run takes
the next ``batch_size * world_size`` clips of an endless stream of per-epoch shuffles of
the training list, rank r keeps every world_size-th of them (a distributed sampler), and
each clip's segment offset is drawn from a generator seeded by (seed, step, position).
So a resumed run sees exactly the batches an uninterrupted run would, without saving any
sampler state, and ranks never share a clip within an epoch.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

log = logging.getLogger("waveflow")

SAMPLE_RATE = 22050
# LJSpeech recipes (ESPnet, ParallelWaveGAN): the last 250 clips in ID order are the test
# set, the 250 before them the dev set.
TEST_SIZE = 250
DEV_SIZE = 250
FULL_CORPUS = 13100
SILENCE_PEAK = 1e-4  # a clip whose peak |amplitude| is below this is taken as silent
MAX_PEAK = 1.0  # float wavs can hold anything; the model's audio lives in [-1, 1]


class DataError(ValueError):
    """The corpus or a prepared folder is not usable; the message says why."""


@dataclass(frozen=True)
class Clip:
    id: str
    path: str
    samples: int


# ------------------------------------------------------------------ prepare
def read_metadata(corpus: Path) -> list[str]:
    """Clip IDs of ``corpus/metadata.csv`` (``id|text|normalized text``), in file order."""
    corpus = Path(corpus)
    if not corpus.is_dir():
        raise DataError(f"{corpus}: no such folder; expected an LJSpeech-1.1 folder with metadata.csv and wavs/")
    metadata, wavs = corpus / "metadata.csv", corpus / "wavs"
    if not metadata.is_file():
        raise DataError(f"{corpus}: no metadata.csv; expected an LJSpeech-1.1 folder (metadata.csv and wavs/)")
    if not wavs.is_dir():
        raise DataError(f"{corpus}: no wavs/ folder; expected an LJSpeech-1.1 folder (metadata.csv and wavs/)")
    raw = metadata.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{metadata}:{line}: not UTF-8 (byte {exc.object[exc.start]:#04x}); LJSpeech's metadata is UTF-8"
        ) from None
    ids = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        clip_id = line.split("|", 1)[0].strip()
        # an id names wavs/ID.wav: no separators or parent references, so nothing outside the corpus is read
        if not clip_id or any(c in clip_id for c in "/\\") or clip_id.startswith(".") or "\x00" in clip_id:
            raise DataError(
                f"{metadata}:{n}: expected 'id|text|normalized text' with a plain file id, got {line[:60]!r}"
            )
        ids.append(clip_id)
    if not ids:
        raise DataError(f"{metadata}: lists no clips")
    return ids


def check_clip(path: Path) -> tuple[int, str | None]:
    """(samples, None) for a usable clip, else (0, the reason it is skipped)."""
    try:
        if not path.is_file():
            return 0, "missing"
    except OSError as exc:  # e.g. a 300-character id: the file name is too long to exist
        return 0, f"cannot be opened ({exc.strerror or type(exc).__name__})"
    try:
        info = sf.info(str(path))
        audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for broken files
        return 0, f"unreadable ({_reason(exc)})"
    if info.channels != 1:
        return 0, f"{info.channels} channels, expected mono"
    if info.samplerate != SAMPLE_RATE:
        return 0, f"{info.samplerate} Hz, expected {SAMPLE_RATE}"
    if not np.isfinite(audio).all():
        return 0, "NaN or Inf samples"
    if audio.size and float(np.abs(audio).max()) > MAX_PEAK:
        return 0, f"peak amplitude {float(np.abs(audio).max()):.3g}, outside [-1, 1]"
    if audio.size == 0 or float(np.abs(audio).max()) < SILENCE_PEAK:
        return 0, "silent"
    return audio.shape[0], None


def split_ids(ids: list[str]) -> tuple[dict[str, list[str]], str]:
    """Deterministic train/dev/test split in ID order, and a sentence saying which rule applied."""
    ids = sorted(ids)
    n = len(ids)
    if n >= TEST_SIZE + DEV_SIZE + 1:
        test, dev = TEST_SIZE, DEV_SIZE
        rule = f"last {TEST_SIZE} clips in ID order are test, the {DEV_SIZE} before them dev (LJSpeech recipe split)"
    else:
        if n < 3:
            raise DataError(f"{n} usable clip(s); need at least 3 for a train/dev/test split")
        test = max(1, round(n * TEST_SIZE / FULL_CORPUS))
        dev = max(1, round(n * DEV_SIZE / FULL_CORPUS))
        rule = (
            f"corpus too small for the {TEST_SIZE}/{DEV_SIZE} LJSpeech split: proportional split "
            f"({test} test, {dev} dev), at least one clip each"
        )
    train_ids = ids[: n - test - dev]
    return {"train": train_ids, "dev": ids[n - test - dev : n - test], "test": ids[n - test :]}, rule


def write_filelist(path: Path, clips: list[Clip]) -> None:
    path.write_text("".join(f"{c.id}|{c.path}|{c.samples}\n" for c in clips))


def read_filelist(path: Path) -> list[Clip]:
    if not path.is_file():
        raise DataError(f"{path}: no such filelist; run `waveflow prepare` first")
    clips = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split("|")
        if len(parts) != 3 or not parts[2].isdigit():
            raise DataError(f"{path}:{n}: expected 'ID|path|samples', got {line[:80]!r}")
        clips.append(Clip(parts[0], parts[1], int(parts[2])))
    return clips


def prepare(corpus: Path, out: Path, mel_cache: bool = False, progress: bool = True) -> dict:
    """Check every clip, split, write the filelists (and the mel cache); returns the summary."""
    from tqdm import tqdm

    corpus = Path(corpus).resolve()
    ids = read_metadata(corpus)
    usable, skipped = {}, {}
    for clip_id in tqdm(ids, desc="checking clips", unit="clip", disable=not (progress and sys.stderr.isatty())):
        if clip_id in usable or clip_id in skipped:
            skipped[f"{clip_id} (again)"] = "duplicate id in metadata.csv: the first line is used"
            continue
        samples, reason = check_clip(corpus / "wavs" / f"{clip_id}.wav")
        if reason is None:
            usable[clip_id] = samples
        else:
            skipped[clip_id] = reason
    split, rule = split_ids(list(usable))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, names in split.items():
        clips = [Clip(i, str(corpus / "wavs" / f"{i}.wav"), usable[i]) for i in names]
        write_filelist(out / f"{name}.txt", clips)
    if mel_cache:
        _write_mel_cache(corpus, out / "mels", list(usable), progress)
    summary = {
        "corpus": str(corpus),
        "sample_rate": SAMPLE_RATE,
        "clips": len(ids),
        "usable": len(usable),
        "split": {name: len(names) for name, names in split.items()},
        "rule": rule,
        "skipped": skipped,
        "mel_cache": mel_cache,
    }
    (out / "prepared.json").write_text(json.dumps(summary, indent=2))
    return summary


def _write_mel_cache(corpus: Path, folder: Path, ids: list[str], progress: bool) -> None:
    from tqdm import tqdm

    from waveflow.dsp.audio import MelSpectrogram, load_wav

    folder.mkdir(exist_ok=True)
    mel_fn = MelSpectrogram()
    for clip_id in tqdm(ids, desc="mel cache", unit="clip", disable=not (progress and sys.stderr.isatty())):
        audio = torch.from_numpy(load_wav(corpus / "wavs" / f"{clip_id}.wav"))
        with torch.no_grad():
            mel = mel_fn(audio[None])[0].numpy()
        np.save(folder / f"{clip_id}.npy", mel)


def load_prepared(folder: Path, split: str) -> list[Clip]:
    folder = Path(folder)
    if not (folder / "prepared.json").is_file():
        raise DataError(f"{folder}: not a prepared data folder (no prepared.json); run `waveflow prepare` first")
    clips = read_filelist(folder / f"{split}.txt")
    if not clips:
        raise DataError(f"{folder / f'{split}.txt'}: lists no clips")
    return clips


# ------------------------------------------------------------------ batches
def read_segment(clip: Clip, offset: int, length: int) -> np.ndarray:
    """``length`` samples of ``clip`` from ``offset``, zero-padded past its end. A clip that
    cannot be read, or holds NaN/Inf, raises ``DataError`` naming it (a wav can change or rot
    after ``prepare``)."""
    try:
        audio, _ = sf.read(clip.path, start=offset, frames=length, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile's errors can fail even to print themselves
        raise DataError(f"clip {clip.id} ({clip.path}) cannot be read: {_reason(exc)}") from None
    audio = audio[:, 0]
    if not np.isfinite(audio).all():
        raise DataError(f"clip {clip.id} ({clip.path}) holds NaN or Inf samples")
    if audio.shape[0] < length:
        audio = np.pad(audio, (0, length - audio.shape[0]))
    return audio


class SegmentBatches(torch.utils.data.Dataset):
    """Item t is the batch of step t for one rank: audio ``(batch_size, context + segment_length)``.

    Clips shorter than a segment are zero-padded (``short_clips`` counts them). The first
    ``context`` samples of each row are the clip's audio just before the segment (zeros before
    the clip's start): linear prediction needs them, and they are not part of the segment.
    """

    def __init__(
        self,
        clips: list[Clip],
        segment_length: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        context: int = 0,
    ) -> None:
        self.clips, self.segment_length, self.batch_size = clips, segment_length, batch_size
        self.context = context
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.short_clips = sum(c.samples < segment_length for c in clips)
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return 2**62  # endless: the trainer decides where to stop

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.clips))}
        return self._orders[epoch]

    def positions(self, step: int) -> range:
        """Positions in the endless clip stream this rank trains on at ``step``."""
        per_step = self.batch_size * self.world_size
        return range(step * per_step + self.rank, (step + 1) * per_step, self.world_size)

    def clip_indices(self, step: int) -> list[int]:
        """Indices into ``clips`` this rank trains on at ``step``."""
        n = len(self.clips)
        return [int(self._order(p // n)[p % n]) for p in self.positions(step)]

    def __getitem__(self, step: int) -> torch.Tensor | str:
        """The batch, or a ``DataError``'s message when a clip could not be read: returned, not
        raised, so that it crosses from a worker process intact (``checked_batches`` raises it)."""
        try:
            return self._batch(step)
        except DataError as exc:
            return f"{BAD_BATCH}{exc}"

    def _batch(self, step: int) -> torch.Tensor:
        ctx = self.context
        out = np.zeros((self.batch_size, ctx + self.segment_length), dtype=np.float32)
        for i, (position, index) in enumerate(zip(self.positions(step), self.clip_indices(step), strict=False)):
            clip = self.clips[index]
            # seeded by the position in the stream, not the rank: N processes with batch B
            # train on exactly the segments of one process with batch N * B
            rng = np.random.default_rng([self.seed, position])
            slack = clip.samples - self.segment_length
            offset = int(rng.integers(0, slack + 1)) if slack > 0 else 0
            before = min(ctx, offset)
            out[i, ctx - before :] = read_segment(clip, offset - before, before + self.segment_length)
        return torch.from_numpy(out)


def _ignore_stop_signals(worker_id: int) -> None:
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group; the trainer handles
    # them (checkpoint, then exit) and shuts the workers down itself. A worker killed
    # first would make the loader raise mid-step and lose that checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Since they ignore SIGTERM, they must not outlive the trainer (kill -9, a crash): Linux
    # sends them SIGKILL when it dies.
    _die_with_parent()


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import os

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call
        os._exit(1)


BAD_BATCH = "waveflow-bad-batch:"


def checked_batches(batches):
    """Yield the loader's batches; raise ``DataError`` (naming the clip) for one that could not be
    read, or when a worker process failed, instead of a worker traceback or a wait."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:  # a worker died or raised something other than a DataError
            raise DataError(f"reading training data failed: {_reason(exc)}") from None
        if isinstance(batch, str) and batch.startswith(BAD_BATCH):
            raise DataError(batch[len(BAD_BATCH) :])
        yield batch


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none (or cannot
    be printed), at most 200 characters."""
    try:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    except Exception:
        text = ""
    text = text or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def batch_loader(dataset: SegmentBatches, start_step: int, num_workers: int) -> torch.utils.data.DataLoader:
    """Batches of steps ``start_step, start_step + 1, ...`` read ahead by worker processes."""
    steps = torch.utils.data.Subset(dataset, range(start_step, 2**62))
    return torch.utils.data.DataLoader(
        steps,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=_ignore_stop_signals,
    )

"""``waveflow synthesize`` (mel files -> wavs) and ``waveflow mel`` (wav -> mel file).

synthesize takes one ``.npy``/``.pt`` mel ``(n_mels, frames)`` or a folder of them, and
writes one wav or a folder of wavs (``NAME.npy`` -> ``NAME.wav``). Every wav is written to
a temp file and renamed, so a failure never leaves a partial file behind.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from waveflow.infer.vocoder import load_vocoder

log = logging.getLogger("waveflow")

MEL_SUFFIXES = (".npy", ".pt")


class SynthesisError(ValueError):
    """A user-facing failure of synthesize/mel: printed as one line by the CLI."""


# ------------------------------------------------------------------ mel files
def load_mel_file(path: str | Path) -> np.ndarray:
    """Read a mel saved as ``.npy`` (numpy array) or ``.pt`` (tensor), without executing code."""
    path = Path(path)
    if not path.exists():
        raise SynthesisError(f"{path}: no such mel file")
    if path.suffix not in MEL_SUFFIXES:
        raise SynthesisError(f"{path}: unknown mel file type {path.suffix!r}; expected .npy or .pt")
    if path.suffix == ".npy":
        _check_npy_header(path)
    try:
        if path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any file can be handed in: every failure means "unreadable"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SynthesisError(f"{path}: cannot read mel ({reason})") from None
    if torch.is_tensor(data):
        data = _dense_real(data, path).detach().float().numpy()
    if not isinstance(data, np.ndarray):
        raise SynthesisError(f"{path}: holds a {type(data).__name__}, expected an array (n_mels, frames)")
    return data


NPY_MAGIC = b"\x93NUMPY"


def _check_npy_header(path: Path) -> None:
    """One line saying what a ``.npy`` file is not, before numpy reads it: numpy falls back to
    unpickling a file without the NumPy header and then blames pickling, and it refuses an
    object array in words about pickles too."""
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    header = None
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
            if head == NPY_MAGIC:
                f.seek(0)
                version = np.lib.format.read_magic(f)
                header = read[version](f) if version in read else None
    except OSError as exc:
        raise SynthesisError(f"{path}: cannot read mel ({exc.strerror or exc})") from None
    except ValueError:  # a NumPy header numpy's own reader will judge (and word) below
        pass
    if head != NPY_MAGIC:
        what = "an empty file" if not head else f"{path.stat().st_size} bytes without the NumPy header"
        raise SynthesisError(f"{path}: not a .npy file ({what}); expected a numpy array saved with np.save")
    if header is not None and header[2].hasobject:
        objects = f"holds Python objects (dtype {header[2]}), which are never loaded"
        raise SynthesisError(f"{path}: {objects}; expected a float array")


def _dense_real(tensor: torch.Tensor, path: Path) -> torch.Tensor:
    """The tensor if it is a plain real one, as ``.npy`` mels must be; else one line saying why not."""
    expected = "expected a dense float tensor (n_mels, frames)"
    if tensor.layout != torch.strided:
        raise SynthesisError(f"{path}: a {str(tensor.layout).replace('torch.', '')} tensor; {expected}")
    if tensor.device.type == "meta":
        raise SynthesisError(f"{path}: a meta tensor (a shape without values); {expected}")
    if tensor.is_quantized:
        raise SynthesisError(f"{path}: a quantized tensor ({tensor.dtype}); {expected}")
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise SynthesisError(f"{path}: dtype {tensor.dtype}; {expected}")
    return tensor


def save_mel_file(path: str | Path, mel: np.ndarray) -> None:
    """Write ``.npy`` or ``.pt`` atomically (temp file + rename)."""
    path = Path(path)
    if path.suffix not in MEL_SUFFIXES:
        raise SynthesisError(f"{path}: unknown mel file type {path.suffix!r}; expected .npy or .pt")
    _check_writable(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            if path.suffix == ".npy":
                np.save(handle, mel.astype(np.float32))
            else:
                torch.save(torch.from_numpy(mel.astype(np.float32)), handle)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_writable(path: Path) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SynthesisError(f"{path}: cannot write, folder {folder} does not exist")
    if path.is_dir():
        raise SynthesisError(f"{path}: is a folder, expected a file name")
    if not os.access(folder, os.W_OK):
        raise SynthesisError(f"{path}: cannot write, folder {folder} is not writable")


# --------------------------------------------------------------------- plans
def plan(inp: Path, out: Path) -> list[tuple[Path, Path]]:
    """(mel file, wav file) pairs for an input file or folder and an output file or folder."""
    if not inp.exists():
        raise SynthesisError(f"{inp}: no such mel file or folder")
    if inp.is_dir():
        mels = sorted(p for p in inp.iterdir() if p.suffix in MEL_SUFFIXES and not p.name.startswith("."))
        if not mels:
            raise SynthesisError(f"{inp}: folder holds no .npy or .pt mel files")
        if out.suffix == ".wav":
            raise SynthesisError(f"{out}: the input is a folder, so the output must be a folder, not a .wav")
        if out.exists() and not out.is_dir():
            raise SynthesisError(f"{out}: exists and is not a folder")
        pairs = [(p, out / f"{p.stem}.wav") for p in mels]
        _check_collisions(pairs)
        if not out.exists():
            if not out.parent.is_dir():
                raise SynthesisError(f"{out}: cannot create output folder, {out.parent} does not exist")
            out.mkdir()
    else:
        target = out / f"{inp.stem}.wav" if out.is_dir() else out
        if target.suffix != ".wav":
            raise SynthesisError(f"{out}: the output must be a .wav file or an existing folder")
        pairs = [(inp, target)]
    for _, wav in pairs:
        _check_writable(wav)
    return pairs


def _check_collisions(pairs: list[tuple[Path, Path]]) -> None:
    """Two mels that would write one wav (``a.npy`` and ``a.pt``): refused before anything is
    written, or one output would silently replace the other."""
    seen: dict[Path, Path] = {}
    for mel, wav in pairs:
        if wav in seen:
            raise SynthesisError(
                f"{mel.parent}: {seen[wav].name} and {mel.name} would both be written to {wav}; "
                "rename or move one of them"
            )
        seen[wav] = mel


# ------------------------------------------------------------------------ CLI
def run(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from waveflow.dsp.audio import save_wav_pieces

    if args.batch_size < 1:
        raise SynthesisError(f"--batch-size must be >= 1, got {args.batch_size}")
    args.stream = args.stream or args.low_latency
    if args.stream and args.chunk_frames < 1:
        raise SynthesisError(f"--chunk-frames must be >= 1, got {args.chunk_frames}")
    if args.postfilter is not None and not 0 <= args.postfilter <= 1:
        raise SynthesisError(f"--postfilter must be in [0, 1] (0: off), got {args.postfilter}")
    if args.harmonic is not None and not 0 <= args.harmonic <= 1:
        raise SynthesisError(f"--harmonic must be in [0, 1] (0: off), got {args.harmonic}")
    if args.mel_correction is not None and args.mel_correction < 0:
        raise SynthesisError(f"--mel-correction must be an integer >= 0 (0: off), got {args.mel_correction}")
    if not (math.isfinite(args.denoise) and args.denoise >= 0):
        raise SynthesisError(f"--denoise must be a finite number >= 0 (0: off), got {args.denoise}")
    if args.sigma is not None and not (math.isfinite(args.sigma) and args.sigma >= 0):
        raise SynthesisError(f"--sigma must be a finite number >= 0, got {args.sigma}")
    pairs = plan(Path(args.input), Path(args.output))
    if args.reference:  # before anything is written: a missing extra or file must not cost the output
        from waveflow.train.evaluate import _need

        _need("pesq"), _need("pystoi")
        if not Path(args.reference).is_file():
            raise SynthesisError(f"--reference {args.reference}: no such file")
    mels = [load_mel_file(p) for p, _ in pairs]  # read (and validate) everything before any work
    voc = load_vocoder(args.checkpoint, args.device, args.half)
    if args.denoise_mode != "auto":
        voc.denoise_mode = args.denoise_mode
    _check_mels(voc, pairs, mels, args)
    start, seconds = time.perf_counter(), 0.0
    batches = [list(range(i, min(i + args.batch_size, len(pairs)))) for i in range(0, len(pairs), args.batch_size)]
    bar = tqdm(total=len(pairs), unit="mel", disable=len(pairs) == 1 or not sys.stderr.isatty())
    try:
        for idx in batches:
            if args.stream:
                outs = [_stream(voc, mels[i], args) for i in idx]
            else:
                outs = _offline(voc, [mels[i] for i in idx], args)
            for i, pieces in zip(idx, outs, strict=False):  # written as they come: flat memory
                seconds += save_wav_pieces(pairs[i][1], pieces, voc.sample_rate) / voc.sample_rate
            bar.update(len(idx))
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    what = pairs[0][1] if len(pairs) == 1 else f"{len(pairs)} wavs in {args.output}"
    print(f"wrote {what}: {seconds:.2f} s of audio in {elapsed:.2f} s (real-time factor {elapsed / seconds:.2f})")
    if args.reference:
        _compare(voc, args.reference, pairs[0][1])


def _check_mels(voc, pairs: list[tuple[Path, Path]], mels: list[np.ndarray], args: argparse.Namespace) -> None:
    """Shape, finiteness and scale of every mel before any synthesis; a mel that is not a log-mel
    of the convention (``waveflow.dsp.melcheck``) is refused unless ``--force``, which warns instead.
    With ``--reference``, a frame count of the other convention (HiFi-GAN's) is refused too."""
    from waveflow.dsp.melcheck import diagnose, frame_count_problem
    from waveflow.infer.vocoder import check_mel

    hint = "pass --time-major or transpose it"
    for i, ((path, _), mel) in enumerate(zip(pairs, mels, strict=False)):
        checked = check_mel(mel, voc.n_mels, name=str(path), time_major=args.time_major, time_major_hint=hint)
        if checked.shape[0] != 1:
            raise SynthesisError(f"{path}: shape {mel.shape}; expected one mel ({voc.n_mels}, frames)")
        mels[i] = checked[0].numpy()
        problem = diagnose(checked, voc.config.mel.clamp_min)
        if problem is None and args.reference and Path(args.reference).is_file():
            import soundfile as sf

            info = sf.info(args.reference)
            samples = round(info.frames * voc.sample_rate / info.samplerate)
            problem = frame_count_problem(checked.shape[2], samples, voc.hop_length, voc.config.mel.preset != "hifigan")
        if problem is not None:
            if not args.force:
                raise SynthesisError(f"{path}: {problem} (--force synthesizes it anyway)")
            log.warning("%s: %s (synthesized anyway: --force)", path, problem)


def _offline(voc, mels: list[np.ndarray], args: argparse.Namespace) -> list[Iterable[np.ndarray]]:
    """The audio of each mel as pieces to write one after another: one padded batch for the mels
    of ordinary length; a mel longer than ``LONG_MEL_FRAMES`` goes chunk by chunk
    (``iter_long``) and is written as it is synthesized, so that an hour of mel needs no more
    memory than a minute. With ``--denoise`` a long mel's audio is held whole (the denoiser
    takes the clip's spectrum at once)."""
    from waveflow.infer.streaming import iter_long
    from waveflow.infer.vocoder import LONG_MEL_FRAMES

    options = dict(sigma=args.sigma, seed=args.seed, postfilter=args.postfilter, mel_correction=args.mel_correction)
    options["harmonic"] = args.harmonic
    options["check_input"] = False  # judged above, per file
    limit = not args.no_limiter
    outs: list[Iterable[np.ndarray] | None] = [None] * len(mels)
    short = [i for i, mel in enumerate(mels) if mel.shape[1] <= LONG_MEL_FRAMES]
    if short:
        batch = voc([mels[i] for i in short], denoise=args.denoise, limit=limit, **options)
        for i, audio in zip(short, batch, strict=True):
            outs[i] = [audio]
    for i, mel in enumerate(mels):
        if outs[i] is None:
            log.info(f"{mel.shape[1]} frames: synthesized chunk by chunk, as a stream (flat memory)")
            pieces = iter_long(voc, mel, limit=limit and not args.denoise, **options)
            outs[i] = _denoised(voc, pieces, args.denoise, limit) if args.denoise > 0 else pieces
    return outs


def _stream(voc, mel: np.ndarray, args: argparse.Namespace) -> Iterable[np.ndarray]:
    """The stream's audio pieces, to be written as they come (whole, with ``--denoise``)."""
    from waveflow.infer.streaming import StreamingVocoder

    options = {
        "sigma": args.sigma,
        "seed": args.seed,
        "postfilter": args.postfilter,
        "harmonic": args.harmonic,
        "check_input": False,  # judged per file before synthesis
        "limit": not args.no_limiter and not args.denoise,
    }
    if args.low_latency:
        if args.mel_correction is not None:
            options["mel_correction"] = args.mel_correction
        stream = StreamingVocoder.low_latency(voc, **options)
    else:
        stream = StreamingVocoder(voc, mel_correction=args.mel_correction, **options)

    def pieces() -> Iterator[np.ndarray]:
        for i in range(0, mel.shape[1], args.chunk_frames):
            yield stream.push(mel[:, i : i + args.chunk_frames])
        yield stream.flush()
        print(
            f"streamed {mel.shape[1]} frames in chunks of {args.chunk_frames}: "
            f"look-ahead {stream.latency_ms:.0f} ms, real-time factor {stream.rtf:.2f}"
        )

    return _denoised(voc, pieces(), args.denoise, not args.no_limiter) if args.denoise > 0 else pieces()


def _denoised(voc, pieces: Iterable[np.ndarray], strength: float, limit: bool) -> list[np.ndarray]:
    """The whole audio of ``pieces``, denoised, then limited (the limiter comes last, as in
    ``Vocoder``; it is memoryless, so leaving it off the stream and applying it here is exact)."""
    from waveflow.dsp.limiter import soft_limit

    audio = voc.denoiser(torch.from_numpy(np.concatenate(list(pieces)))[None], strength)[0]
    return [(soft_limit(audio) if limit else audio).numpy()]


def _compare(voc, reference: str, output: Path) -> None:
    from waveflow.dsp.audio import load_wav
    from waveflow.train.evaluate import quality

    ref = load_wav(reference, voc.sample_rate)
    out = load_wav(output, voc.sample_rate)
    scores = quality(ref, out, voc.sample_rate, voc.mel)
    print(f"quality of {output} against {reference}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))


def run_mel(args: argparse.Namespace) -> None:
    from waveflow.config import MelConfig
    from waveflow.dsp.audio import MelSpectrogram, load_wav
    from waveflow.nn.checkpoint import checkpoint_config, read_checkpoint

    cfg = MelConfig()
    if args.checkpoint:
        cfg = checkpoint_config(read_checkpoint(args.checkpoint), args.checkpoint).mel
    out = Path(args.output)
    if out.suffix not in MEL_SUFFIXES:
        raise SynthesisError(f"{out}: unknown mel file type {out.suffix!r}; expected .npy or .pt")
    _check_writable(out)
    audio = torch.from_numpy(load_wav(args.wav, cfg.sample_rate))
    if not torch.isfinite(audio).all():
        raise SynthesisError(f"{args.wav}: holds NaN or Inf samples; expected finite audio in [-1, 1]")
    mel = MelSpectrogram(cfg)(audio).numpy()
    save_mel_file(out, mel)
    print(f"wrote {out}: mel {mel.shape} of {args.wav} ({audio.numel() / cfg.sample_rate:.2f} s)")

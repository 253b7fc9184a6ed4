"""Copy-synthesis quality: ``waveflow evaluate``.

For every clip: audio -> mel -> vocoder -> audio, compared with the original by the
usual measures of vocoder papers: mel-L1 (mean |log-mel difference|), PESQ wide-band at 16 kHz
(both signals resampled with soxr, quality HQ), STOI, and the held-out NLL of the original
audio under the flow (nats and bits per sample). Griffin-Lim (librosa, 60 iterations, from
the same mel) is scored the same way as the floor a trained model must beat.

Pitch (with ``pyworld``): an independent tracker, WORLD's harvest, on the reference, the
output and Griffin-Lim's output, at the mel's own frame centres. ``pitch_agreement`` gives the
F0 error in cents over the frames voiced in both tracks and the voiced/unvoiced F1 with the
reference as truth; the same figures for the mel-derived track (``MelPitch``, voiced where
its voicing exceeds 0.5) against harvest on the reference say where the voice's pitch is
decided, before any network.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from waveflow.atomic import atomic_open

log = logging.getLogger("waveflow")

PESQ_RATE = 16000
GRIFFIN_LIM_ITERS = 60
MEASURES = ("mel_l1", "pesq_wb", "stoi")
# harvest's search range: below LJSpeech's lowest F0 (about 75 Hz) and above a raised voice's
# highest, wider than MelPitch's 69-551 Hz so that the tracker does not share its limits
HARVEST_F0_RANGE = (60.0, 800.0)
MEL_VOICED = 0.5  # a frame counts as voiced by the mel when period_voicing's voicing exceeds this
# Bands of the harmonic-to-valley ratio (``harmonic_valley_db``), Hz: issue 19 asks for the
# harmonics of voiced frames up to 4 kHz
HVR_BANDS = ((0.0, 1000.0), (1000.0, 2000.0), (2000.0, 3000.0), (3000.0, 4000.0), (4000.0, 5000.0), (5000.0, 6000.0))
HVR_FFT = 2048  # 93 ms at 22050 Hz: harmonics of 60 Hz and up are resolved
PITCH_MEASURES = ("f0_median_cents", "f0_p90_cents", "f0_rmse_cents", "vuv_f1", "voiced_recall")
PITCH_SYSTEMS = {
    "waveflow": "waveflow output (harvest)",
    "griffin_lim": "Griffin-Lim (60 it.) output (harvest)",
    "mel_comb": "mel-derived track, comb tracker (voicing > 0.5)",
    "mel_template": "mel-derived track, template tracker (voicing > 0.5)",
    "harvest_window": "harvest on the reference, averaged over the mel's window (a mel track's floor)",
}


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ValueError(f"the {module} package is missing: pip install 'waveflow[eval]'") from None


def pesq_wb(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float:
    """Wide-band PESQ at 16 kHz (NaN when PESQ finds no speech to score)."""
    import soxr

    pesq = _need("pesq")
    ref = soxr.resample(reference, sample_rate, PESQ_RATE, quality="HQ")
    deg = soxr.resample(degraded, sample_rate, PESQ_RATE, quality="HQ")
    try:
        return float(pesq.pesq(PESQ_RATE, ref, deg, "wb"))
    except Exception as exc:  # pesq raises its own errors for silent or too-short input
        log.warning("PESQ could not score this clip (%s)", exc)
        return math.nan


def stoi(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float:
    pystoi = _need("pystoi")
    return float(pystoi.stoi(reference, degraded, sample_rate, extended=False))


def mel_l1(reference: np.ndarray, degraded: np.ndarray, mel_fn: Callable) -> float:
    """Mean |log-mel(reference) - log-mel(degraded)| over the common frames."""
    a, b = mel_fn(reference), mel_fn(degraded)
    n = min(a.shape[-1], b.shape[-1])
    return float(np.abs(a[..., :n] - b[..., :n]).mean())


def quality(reference: np.ndarray, degraded: np.ndarray, sample_rate: int, mel_fn: Callable) -> dict[str, float]:
    """mel-L1, PESQ-wb and STOI of ``degraded`` against ``reference`` (1-D float arrays).

    ``degraded`` is scored as a 16-bit wav holds it (``save_wav``'s clipping to [-1, 1)), so
    that a score is what a listener of the written file gets.
    """
    n = min(len(reference), len(degraded))
    reference = reference[:n].astype(np.float32)
    degraded = _as_written(degraded[:n])
    return {
        "mel_l1": mel_l1(reference, degraded, mel_fn),
        "pesq_wb": pesq_wb(reference, degraded, sample_rate),
        "stoi": stoi(reference, degraded, sample_rate),
    }


def _pyworld():
    """The pyworld module, or a ValueError saying why it cannot be used."""
    try:
        with warnings.catch_warnings():  # its pkg_resources deprecation notice, on every import
            warnings.simplefilter("ignore", UserWarning)
            import pyworld
    except ImportError as exc:  # pyworld imports pkg_resources, gone from setuptools >= 81
        raise ValueError(
            f"pitch measures need pyworld, which cannot be imported ({exc}): "
            "pip install 'waveflow[eval]' (pyworld and setuptools<81)"
        ) from None
    return pyworld


def pitch_available() -> str | None:
    """None when the pitch measures can run, else a one-line reason why not."""
    try:
        _pyworld()
    except ValueError as exc:
        return str(exc)
    return None


def harvest_f0(
    audio: np.ndarray,
    sample_rate: int,
    hop: int,
    frames: int | None = None,
    start: int = 0,
    f0_range: tuple[float, float] = HARVEST_F0_RANGE,
) -> np.ndarray:
    """F0 in Hz (0: unvoiced) of a 1-D ``audio`` by WORLD's harvest, ``(frames,)`` float64, at
    samples ``start + i * hop``: the centres of the default convention's mel frames (frames
    ``1 + len // hop``, the default count); the hifigan preset's are at ``hop / 2 + i * hop``."""
    pyworld = _pyworld()
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.isfinite(audio).all():
        raise ValueError(f"harvest_f0 needs 1-D finite audio, got shape {audio.shape}")
    frames = 1 + len(audio) // hop if frames is None else frames
    x = np.ascontiguousarray(audio[start:], dtype=np.float64)
    # harvest's frame i is at i * frame_period ms of x, that is sample start + i * hop
    f0, _ = pyworld.harvest(
        x, sample_rate, f0_floor=f0_range[0], f0_ceil=f0_range[1], frame_period=1000.0 * hop / sample_rate
    )
    out = np.zeros(frames)
    n = min(frames, len(f0))  # harvest counts int(1000 len / fs / period) + 1 frames, with float rounding
    out[:n] = f0[:n]
    return out


def harvest_at_frames(audio: np.ndarray, mel_cfg, frames: int) -> np.ndarray:
    """``harvest_f0`` of ``audio`` at the centres of ``frames`` mel frames of ``mel_cfg``'s
    convention (frame 0 on sample ``mel_cfg.frame0_centre``)."""
    return harvest_f0(audio, mel_cfg.sample_rate, mel_cfg.hop_length, frames, mel_cfg.frame0_centre)


def mel_f0(mel: np.ndarray, mel_cfg, tracker: str = "comb") -> np.ndarray:
    """The mel-derived pitch track ``(F,)`` float64 of a log-mel ``(n_mels, F)``: F0 in Hz from
    ``MelPitch``'s period (with ``tracker``) where its voicing exceeds ``MEL_VOICED``, else 0."""
    from waveflow.dsp.pulsetrain import mel_tracks

    f0, voicing = mel_tracks(mel, mel_cfg, tracker)
    return np.where(voicing > MEL_VOICED, f0, 0.0)


def pitch_agreement(f0_ref: np.ndarray, f0_est: np.ndarray) -> dict[str, float]:
    """How far a pitch track ``f0_est`` is from ``f0_ref`` (same frames, F0 in Hz, 0 where unvoiced).

    Over the frames voiced in both, the absolute error ``|1200 log2(est / ref)|`` in cents:
    median, 90th percentile (numpy's linear interpolation) and root mean square (NaN when no
    frame is voiced in both). Voicing, with ``f0_ref`` as the truth: ``vuv_f1`` = 2 TP / (2 TP +
    FP + FN), ``voiced_recall`` = TP / (TP + FN) (the share of the reference's voiced frames
    voiced in the estimate), ``voiced_precision`` = TP / (TP + FP); NaN where the denominator
    is 0. ``voiced_both``: the number of frames voiced in both.
    """
    ref, est = np.asarray(f0_ref, dtype=np.float64), np.asarray(f0_est, dtype=np.float64)
    if ref.ndim != 1 or ref.shape != est.shape:
        raise ValueError(f"pitch tracks must be 1-D of one length, got shapes {ref.shape} and {est.shape}")
    if not (np.isfinite(ref).all() and np.isfinite(est).all()) or (ref < 0).any() or (est < 0).any():
        raise ValueError("pitch tracks must hold F0 in Hz >= 0 (0: unvoiced), finite")
    v_ref, v_est = ref > 0, est > 0
    both = v_ref & v_est
    tp, fp, fn = int(both.sum()), int((v_est & ~v_ref).sum()), int((v_ref & ~v_est).sum())
    cents = np.abs(1200.0 * np.log2(est[both] / ref[both]))
    nan = math.nan
    return {
        "f0_median_cents": float(np.median(cents)) if tp else nan,
        "f0_p90_cents": float(np.percentile(cents, 90)) if tp else nan,
        "f0_rmse_cents": float(np.sqrt(np.mean(cents**2))) if tp else nan,
        "vuv_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan,
        "voiced_recall": tp / (tp + fn) if tp + fn else nan,
        "voiced_precision": tp / (tp + fp) if tp + fp else nan,
        "voiced_both": float(tp),
    }


def window_f0(f0: np.ndarray, mel_cfg) -> np.ndarray:
    """A pitch track ``(F,)`` (Hz, 0: unvoiced) averaged over the mel's analysis window: the
    F0 of each voiced frame becomes the weighted geometric mean of the voiced frames within the
    window around it, weighted by the periodic Hann window of ``win_length`` samples at their
    offsets (``hop_length`` apart: 1/4, 1/2, 1/4 at the default convention); unvoiced frames
    stay 0.

    A frame of the mel sees the pitch through that window, so a track read from the mel follows
    no detail finer than this. Scored against harvest's own track, the averaged track gives the
    error of an estimator that found every window's mean pitch exactly: the floor of a
    mel-derived track under ``pitch_agreement`` (``clip_pitch``'s ``"harvest_window"`` row)."""
    f0 = np.asarray(f0, dtype=np.float64)
    if f0.ndim != 1 or not np.isfinite(f0).all() or (f0 < 0).any():
        raise ValueError(f"window_f0 needs a 1-D track of F0 in Hz >= 0, got shape {f0.shape}")
    win, hop = mel_cfg.win_length, mel_cfg.hop_length
    reach = (win // 2 - 1) // hop  # whole hops strictly inside the window's half-width
    offsets = np.arange(-reach, reach + 1)
    weights = 0.5 - 0.5 * np.cos(2 * np.pi * (win // 2 + offsets * hop) / win)  # periodic Hann at the offsets
    voiced = f0 > 0
    logs = np.where(voiced, np.log(np.where(voiced, f0, 1.0)), 0.0)
    num, den = np.zeros_like(f0), np.zeros_like(f0)
    for k, w in zip(offsets, weights, strict=True):
        src = slice(max(0, k), len(f0) + min(0, k))
        dst = slice(max(0, -k), len(f0) - max(0, k))
        num[dst] += w * logs[src]
        den[dst] += w * voiced[src]
    return np.where(voiced, np.exp(num / np.where(voiced, den, 1.0)), 0.0)


def harmonic_valley_db(
    audio: np.ndarray,
    f0: np.ndarray,
    sample_rate: int,
    hop: int,
    start: int = 0,
    bands: tuple[tuple[float, float], ...] = HVR_BANDS,
    n_fft: int = HVR_FFT,
) -> np.ndarray:
    """How far the harmonics of ``f0`` stand out of ``audio``'s spectrum, per band: ``(bands,)``
    float64 in dB, NaN for a band no frame reaches.

    For every frame i voiced in ``f0`` (Hz, 0: unvoiced; frame i centred on sample
    ``start + i * hop``) whose ``n_fft`` Hann window lies inside the audio, and every band:
    the mean magnitude at the harmonics ``k f0`` in the band (the largest of the three bins
    nearest each) over the mean magnitude half-way between them (``(k + 1/2) f0``, interpolated),
    in dB; then the mean over frames. A clean harmonic series gives tens of dB, noise about 3
    (the peak takes the largest of three bins). Read it with ``f0`` from the reference (harvest),
    so every system is measured at the same frames and harmonics."""
    x = np.asarray(audio, dtype=np.float64)
    f0 = np.asarray(f0, dtype=np.float64)
    window = np.hanning(n_fft)
    bin_hz = sample_rate / n_fft
    sums, counts = np.zeros(len(bands)), np.zeros(len(bands))
    for i in np.flatnonzero(f0 > 0):
        lo = start + i * hop - n_fft // 2
        if lo < 0 or lo + n_fft > len(x):
            continue
        spectrum = np.abs(np.fft.rfft(x[lo : lo + n_fft] * window))
        for b, (f_lo, f_hi) in enumerate(bands):
            k = np.arange(max(1, math.ceil(f_lo / f0[i])), math.ceil(f_hi / f0[i]))
            k = k[(k + 0.5) * f0[i] < sample_rate / 2 - bin_hz]
            if not len(k):
                continue
            centre = np.rint(k * f0[i] / bin_hz).astype(int)
            peaks = np.max([spectrum[np.clip(centre + d, 0, len(spectrum) - 1)] for d in (-1, 0, 1)], axis=0)
            valleys = np.interp((k + 0.5) * f0[i] / bin_hz, np.arange(len(spectrum)), spectrum)
            sums[b] += 20 * np.log10(max(peaks.mean(), 1e-12) / max(valleys.mean(), 1e-12))
            counts[b] += 1
    with np.errstate(invalid="ignore"):
        return sums / counts


CREST_FRAME = 1024  # samples per frame of the crest factor (46 ms at 22050 Hz)
CREST_FLOOR_DB = -26.0  # frames quieter than this below the loudest frame are left out


def crest_db(audio: np.ndarray, frame: int = CREST_FRAME, floor_db: float = CREST_FLOOR_DB) -> np.ndarray:
    """The crest factor (peak over rms, dB) of each ``frame``-long run of ``audio`` (runs from
    sample 0; a last, shorter run is left out) whose rms is within ``floor_db`` of the loudest
    run's: ``(runs,)`` float64, empty when the audio is shorter than a frame or silent. A sine
    gives 3.01 dB, a square wave 0; speech about 10 dB at the median and 16 at the 99th
    percentile (LJSpeech). A clip's peak is the largest of these frames' peaks, so a system
    whose crest factors follow the recording's can still peak a few dB above or below it."""
    x = np.asarray(audio, dtype=np.float64)
    runs = len(x) // frame
    if runs == 0:
        return np.zeros(0)
    blocks = x[: runs * frame].reshape(runs, frame)
    rms = np.sqrt(np.mean(blocks**2, axis=1))
    if not rms.max() > 0:
        return np.zeros(0)
    keep = rms >= rms.max() * 10 ** (floor_db / 20)
    return 20 * np.log10(np.abs(blocks[keep]).max(axis=1) / rms[keep])


def peak_over_ref_db(reference: np.ndarray, output: np.ndarray) -> float:
    """The output's peak against the reference's, over the reference's length: 20 log10 of the
    ratio of the largest absolute samples (positive: the output peaks higher; -inf for a silent
    output). A silent reference is a ValueError."""
    ref_peak = np.abs(np.asarray(reference, dtype=np.float64)).max(initial=0.0)
    out_peak = np.abs(np.asarray(output, dtype=np.float64)[: len(reference)]).max(initial=0.0)
    if not ref_peak > 0:
        raise ValueError("peak figures need a reference that is not silent")
    return float(20 * np.log10(out_peak / ref_peak)) if out_peak > 0 else -math.inf


def peak_figures(reference: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """``peak_over_ref_db`` and the 50th and 99th percentiles of both crest factors (``crest_db``)
    over the reference's length; a silent output has no crest factors (NaN)."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)[: len(ref)]
    figures = {"peak_over_ref_db": peak_over_ref_db(ref, out)}
    for name, x in (("ref", ref), ("out", out)):
        crest = crest_db(x)
        for q in (50, 99):
            figures[f"crest_p{q}_{name}_db"] = float(np.percentile(crest, q)) if len(crest) else float("nan")
    return figures


def level_above_db(reference: np.ndarray, output: np.ndarray, sample_rate: int, f_max: float) -> float:
    """The output's energy above ``f_max`` (the mel's top) against the reference's, in dB, over
    the reference's length: positive, the output is brighter up there. The mel says nothing
    above its top, and none of the other measures hears it (PESQ-wb, STOI and the MOS
    predictors resample to 16 kHz or lower), so a vocoder's level there shows only here and in
    a spectrogram. NaN when the reference has next to no energy above ``f_max`` (under -50 dB of
    its total: audio upsampled from a lower rate); -inf for an output with none."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)[: len(ref)]
    above = np.fft.rfftfreq(len(ref), 1 / sample_rate) > f_max
    ref_power = np.abs(np.fft.rfft(ref)) ** 2
    ref_energy = float(np.sum(ref_power[above]))
    out_energy = float(np.sum(np.abs(np.fft.rfft(out, n=len(ref))[above]) ** 2))
    # under -50 dB of the clip's energy: a resampler's stop band or 16-bit rounding, not a voice (LJSpeech
    # has 2-5% of its energy above 8 kHz); a level against it would be noise over noise
    if not ref_energy > 1e-5 * float(np.sum(ref_power)):
        return math.nan
    return float(10 * np.log10(out_energy / ref_energy)) if out_energy > 0 else -math.inf


def _as_written(audio: np.ndarray) -> np.ndarray:
    """The audio as a 16-bit wav holds it (``save_wav`` clips to [-1, 1))."""
    return np.clip(audio.astype(np.float32), -1.0, 32767.0 / 32768.0)


def clip_pitch(
    audio: np.ndarray,
    mel: np.ndarray,
    mel_cfg,
    outputs: dict[str, np.ndarray],
    trackers: tuple[str, ...] = ("comb",),
    reference_f0: np.ndarray | None = None,
) -> dict[str, dict]:
    """Pitch figures of one clip: each of ``outputs`` (system -> audio, scored as written) and
    the mel-derived track of each of ``trackers`` (``"mel_<tracker>"``), against harvest on
    the reference ``audio``; ``"harvest_window"``, harvest's own track through ``window_f0``,
    is the floor of the mel-derived rows. ``reference_f0``: ``harvest_at_frames`` of ``audio``,
    when the caller has it already."""
    track = lambda x: harvest_at_frames(x, mel_cfg, mel.shape[-1])
    ref = track(audio.astype(np.float32)) if reference_f0 is None else reference_f0
    result = {name: pitch_agreement(ref, track(_as_written(out[: len(audio)]))) for name, out in outputs.items()}
    for tracker in trackers:
        result[f"mel_{tracker}"] = pitch_agreement(ref, mel_f0(mel, mel_cfg, tracker))
    result["harvest_window"] = pitch_agreement(ref, window_f0(ref, mel_cfg))
    return result


def _nanmean(values: list[float]) -> float:
    """The mean of the values that are not NaN (an infinity stays), NaN when none are, without
    numpy's warning: a clip may have no level to compare above the mel's top."""
    known = [v for v in values if not math.isnan(v)]
    return float(np.mean(known)) if known else math.nan


def _mean(values: list[float]) -> float:
    """The mean of the finite values (NaN when there are none), without numpy's warning."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def griffin_lim(mel: np.ndarray, mel_cfg, length: int, n_iter: int = GRIFFIN_LIM_ITERS) -> np.ndarray:
    """Audio from a log-mel ``(n_mels, F)`` by librosa's mel inversion and Griffin-Lim."""
    librosa = _need("librosa")

    if mel_cfg.preset != "default":
        raise ValueError(f"Griffin-Lim floor is implemented for the default mel preset, not {mel_cfg.preset!r}")
    magnitude = librosa.feature.inverse.mel_to_stft(
        np.exp(mel.astype(np.float64)),
        sr=mel_cfg.sample_rate,
        n_fft=mel_cfg.n_fft,
        power=1.0,
        fmin=mel_cfg.f_min,
        fmax=mel_cfg.f_max,
        htk=False,
        norm="slaney",
    )
    audio = librosa.griffinlim(
        magnitude,
        n_iter=n_iter,
        hop_length=mel_cfg.hop_length,
        win_length=mel_cfg.win_length,
        n_fft=mel_cfg.n_fft,
        window="hann",
        center=True,
        pad_mode="reflect",
        length=length,
        random_state=0,  # reproducible figures
    )
    return audio.astype(np.float32)


def nll(voc, audio: np.ndarray, mel: np.ndarray) -> tuple[float, float]:
    """NLL of ``audio`` under the flow given its mel: (nats, bits) per sample, at the
    training sigma of the checkpoint's config."""
    from waveflow.nn.loss import flow_nll

    model = voc.model
    with torch.inference_mode():
        a = torch.from_numpy(audio)[None].to(voc.device)
        m = torch.from_numpy(mel)[None].to(voc.device)
        if voc.half:
            a, m = a.half(), m.half()
        z, logdet = model(a, m)
        result = flow_nll(z.float(), logdet, sigma=voc.config.train.sigma)
    return float(result.nats), float(result.bits)


def silence_rms(
    voc,
    sigma: float | None = None,
    seed: int = 0,
    seconds: float = 2.0,
    postfilter: float | None = None,
    mel_correction: int | None = None,
    limit: bool = True,
    harmonic: float | None = None,
) -> float:
    """RMS of the audio for an all-silence mel (every band at the log floor): the model's hiss."""
    frames = max(1, round(seconds * voc.sample_rate / voc.hop_length))
    mel = np.full((voc.n_mels, frames), voc.silence, dtype=np.float32)
    options = dict(postfilter=postfilter, mel_correction=mel_correction, limit=limit, harmonic=harmonic)
    audio = voc(mel, sigma=sigma, seed=seed, **options)
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def find_clips(data: Path, split: str = "dev,test") -> list[Path]:
    """The wavs of an LJSpeech-style folder (``wavs/*.wav``) or of a plain folder, sorted; for a
    folder written by ``waveflow prepare``, the clips of the named splits (held out by default)."""
    if not data.is_dir():
        raise ValueError(f"{data}: no such data folder")
    if (data / "prepared.json").is_file():
        from waveflow.train.data import load_prepared

        names = [s.strip() for s in split.split(",") if s.strip()]
        unknown = sorted(set(names) - {"train", "dev", "test"})
        if unknown or not names:
            raise ValueError(f"--split {split!r}: expected a comma-separated list of train, dev, test")
        return [Path(c.path) for name in names for c in load_prepared(data, name)]
    folder = data / "wavs" if (data / "wavs").is_dir() else data
    clips = sorted(folder.glob("*.wav"))
    if not clips:
        raise ValueError(f"{data}: no .wav files (looked in {folder})")
    return clips


def evaluate(
    voc,
    clips: list[Path],
    sigma: float | None = None,
    seed: int = 0,
    griffin: bool = True,
    postfilter: float | None = None,
    mel_correction: int | None = None,
    pitch: bool = True,
    limit: bool = True,
    harmonic: float | None = None,
) -> dict:
    """Score copy synthesis of every clip; returns {"clips": [...], "summary": {system: means}}
    and, with ``pitch`` (needs pyworld), {"pitch": {system: means}} (``clip_pitch`` per clip)."""
    from tqdm import tqdm

    from waveflow.dsp.audio import load_wav

    rows = []
    f_max = voc.config.mel.f_max
    for path in tqdm(clips, unit="clip", disable=len(clips) < 2 or not sys.stderr.isatty()):
        audio = load_wav(path, voc.sample_rate)
        mel = voc.mel(audio)
        row = {"clip": path.stem, "seconds": len(audio) / voc.sample_rate}
        t0 = time.perf_counter()
        options = dict(postfilter=postfilter, mel_correction=mel_correction, limit=limit, harmonic=harmonic)
        out = voc(mel, sigma=sigma, seed=seed, **options)
        row["synthesis_s"] = time.perf_counter() - t0
        row["waveflow"] = quality(audio, out, voc.sample_rate, voc.mel)
        row["waveflow"]["peak_over_ref_db"] = peak_over_ref_db(audio, out)
        row["waveflow"]["level_above_fmax_db"] = level_above_db(audio, _as_written(out), voc.sample_rate, f_max)
        row["waveflow"]["nll_nats"], row["waveflow"]["nll_bits"] = nll(voc, audio, mel)
        outputs = {"waveflow": out}
        if griffin:
            gl = outputs["griffin_lim"] = griffin_lim(mel, voc.config.mel, len(audio))
            row["griffin_lim"] = quality(audio, gl, voc.sample_rate, voc.mel)
            row["griffin_lim"]["peak_over_ref_db"] = peak_over_ref_db(audio, gl)
            row["griffin_lim"]["level_above_fmax_db"] = level_above_db(audio, _as_written(gl), voc.sample_rate, f_max)
        if pitch:
            # the track of the model's own tracker: the one its source and post-filter read
            row["pitch"] = clip_pitch(audio, mel, voc.config.mel, outputs, (voc.config.model.pitch_tracker,))
        rows.append(row)
    systems = ["waveflow", "griffin_lim"] if griffin else ["waveflow"]
    summary = {}
    for system in systems:
        keys = rows[0][system].keys()
        summary[system] = {k: _nanmean([r[system][k] for r in rows]) for k in keys}
        summary[system]["peak_over_ref_db_max"] = max(r[system]["peak_over_ref_db"] for r in rows)
    audio_s = sum(r["seconds"] for r in rows)
    summary["waveflow"]["real_time_factor"] = sum(r["synthesis_s"] for r in rows) / audio_s
    summary["waveflow"]["silence_rms"] = silence_rms(
        voc, sigma, seed, postfilter=postfilter, mel_correction=mel_correction, limit=limit, harmonic=harmonic
    )
    result = {"clips": rows, "summary": summary, "n_clips": len(rows), "audio_seconds": audio_s, "f_max": f_max}
    if pitch:
        keys = rows[0]["pitch"]["waveflow"].keys()
        result["pitch"] = {
            system: {k: _mean([r["pitch"][system][k] for r in rows]) for k in keys} for system in rows[0]["pitch"]
        }
    return result


def format_table(result: dict) -> str:
    lines = [
        f"{result['n_clips']} clips, {result['audio_seconds']:.1f} s of audio (means over clips; the peak: "
        "the output's over the clip's, the largest over clips; the level above the mel's top: the output's "
        "energy there over the clip's)",
        "| system | mel-L1 | PESQ-wb | STOI | NLL nats/sample | NLL bits/sample | peak over the clip's (dB) "
        f"| level above {result['f_max'] / 1000:g} kHz (dB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system, s in result["summary"].items():
        nats = f"{s['nll_nats']:.3f}" if "nll_nats" in s else "-"
        bits = f"{s['nll_bits']:.3f}" if "nll_bits" in s else "-"
        peak = f"{s['peak_over_ref_db_max']:+.2f}" if "peak_over_ref_db_max" in s else "-"
        above = s.get("level_above_fmax_db", math.nan)
        above = f"{above:+.2f}" if not math.isnan(above) else "-"
        name = "Griffin-Lim (60 it.)" if system == "griffin_lim" else system
        cells = [name, f"{s['mel_l1']:.3f}", f"{s['pesq_wb']:.3f}", f"{s['stoi']:.3f}", nats, bits, peak, above]
        lines.append("| " + " | ".join(cells) + " |")
    if "pitch" in result:
        lines += ["", format_pitch_table(result["pitch"])]
    return "\n".join(lines)


def format_pitch_table(pitch: dict[str, dict[str, float]]) -> str:
    """A markdown table of pitch figures, ``{system: pitch_agreement means}``."""
    lines = [
        "| pitch against harvest on the reference | F0 error median (cents) | F0 error p90 (cents) "
        "| F0 RMSE (cents) | V/UV F1 | voiced recall |",
        "|---|---|---|---|---|---|",
    ]
    for system, s in pitch.items():
        cells = [f"{s[k]:.1f}" for k in PITCH_MEASURES[:3]] + [f"{s[k]:.3f}" for k in PITCH_MEASURES[3:]]
        lines.append(f"| {PITCH_SYSTEMS.get(system, system)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    from waveflow.infer.vocoder import load_vocoder

    if args.limit < 0:
        raise ValueError(f"--limit must be >= 0, got {args.limit}")
    _need("pesq"), _need("pystoi")
    clips = find_clips(Path(args.data), args.split)
    if args.limit:
        clips = clips[: args.limit]
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise ValueError(f"{args.json}: cannot write, its folder does not exist")
    pitch = not args.no_pitch
    if pitch and (reason := pitch_available()):
        log.warning("pitch measures skipped: %s", reason)
        pitch = False
    voc = load_vocoder(args.checkpoint, args.device)
    if args.mel_correction is not None and args.mel_correction < 0:
        raise ValueError(f"--mel-correction must be an integer >= 0 (0: off), got {args.mel_correction}")
    result = evaluate(
        voc,
        clips,
        sigma=args.sigma,
        seed=args.seed,
        griffin=not args.no_griffin_lim,
        postfilter=args.postfilter,
        mel_correction=args.mel_correction,
        pitch=pitch,
        limit=not args.no_limiter,
        harmonic=args.harmonic,
    )
    result["checkpoint"] = str(args.checkpoint or "bundled")
    result["sigma"] = voc.sigma if args.sigma is None else args.sigma
    result["harmonic"] = voc.harmonic_strength if args.harmonic is None else args.harmonic
    result["postfilter"] = voc.postfilter_strength if args.postfilter is None else args.postfilter
    result["mel_correction"] = voc.mel_correction_iterations if args.mel_correction is None else args.mel_correction
    print(format_table(result))
    summary = result["summary"]["waveflow"]
    print(
        f"waveflow at sigma {result['sigma']:g}, harmonic excitation {result['harmonic']:g}, "
        f"post-filter {result['postfilter']:g}, "
        f"mel correction {result['mel_correction']}: "
        f"real-time factor {summary['real_time_factor']:.3f} on {args.device}; "
        f"output rms for an all-silence mel: {summary['silence_rms']:.2e}"
    )
    if args.json:
        path = Path(args.json)
        with atomic_open(path, "w") as handle:
            json.dump(result, handle, indent=2)
        print(f"wrote {path}")

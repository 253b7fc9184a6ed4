#!/usr/bin/env python3
"""Naturalness study (issue 19): one folder of wavs per system, scored with and without a reference.

Systems, by copy synthesis of each clip (audio -> mel -> system -> audio):

- ``recordings``: the clips themselves;
- ``griffin_lim``: Griffin-Lim, 60 iterations (``waveflow evaluate``'s floor);
- ``waveflow``: the vocoder (default: the bundled model) with its defaults;
- ``flow_only``: the same, post-filter 0 and mel correction 0;
- ``pulse_mel``: no network: a pulse train plus noise with the mel's F0 and voicing
  (``MelPitch`` with the model's tracker), through the model's LP filter, post-filter and
  mel correction (``waveflow.dsp.pulsetrain``);
- ``pulse_harvest``: the same with the recording's F0 and voicing (harvest on the recording);
- ``lp_residual``: the recording's own LP residual under the mel's LP filter, through the same
  synthesis filter and post-processing: the ceiling of any excitation (``recorded_residual``).

Measures: DistillMOS and DNSMOS P.835 OVRL/SIG/BAK (no reference; ``../shared/tools/mos.py``,
run with ``--mos-python`` in a subprocess, skipped with a note when it cannot run), PESQ-wb
and STOI against the recording (as ``waveflow evaluate``), F0 error in cents and V/UV F1
against harvest on the recording (``waveflow.train.evaluate.pitch_agreement``), and the same pitch
figures for the mel-derived track of each tracker alone. Means over clips. A second table gives
each system's harmonic-to-valley ratio per band (``harmonic_valley_db``, at harvest's F0 on
the recording): how clearly its voiced frames carry harmonics, band by band, next to the
recording's own.

    python scripts/naturalness_study.py --out exp/naturalness            # the two held-out clips
    python scripts/naturalness_study.py --out exp/nat32 --systems recordings --no-mos \
        --clips ../shared/data/LJSpeech-1.1-mini/wavs/*.wav      # the mel track's pitch figures, 32 clips
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from waveflow.dsp.audio import load_wav, save_wav
from waveflow.dsp.pitch import TRACKERS
from waveflow.dsp.pulsetrain import excitation_vocoder, mel_tracks, pulse_noise_vocoder, recorded_residual
from waveflow.infer.vocoder import load_vocoder
from waveflow.train.evaluate import (
    HVR_BANDS,
    PITCH_SYSTEMS,
    clip_pitch,
    griffin_lim,
    harmonic_valley_db,
    harvest_at_frames,
    level_above_db,
    peak_figures,
    pitch_available,
    quality,
)

REPO = Path(__file__).resolve().parents[1]
WAVS = REPO.parent / "shared" / "data" / "LJSpeech-1.1-mini" / "wavs"
HELD_OUT = [WAVS / "LJ001-0031.wav", WAVS / "LJ001-0032.wav"]  # the bundled model never trained on these
MOS_SCRIPT = REPO.parent / "shared" / "tools" / "mos.py"
MOS_COLUMNS = ("distillmos", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak")
SYSTEMS = {
    "recordings": "the recordings",
    "griffin_lim": "Griffin-Lim, 60 iterations",
    "waveflow": "waveflow, {model}, defaults",
    "flow_only": "the same, flow only (post-filter 0, mel correction 0)",
    "pulse_mel": "pulse train + noise, mel F0 and voicing ({tracker}; LP, post-filter, correction)",
    "pulse_harvest": "pulse train + noise, the recording's F0 and voicing (harvest)",
    "lp_residual": "the recording's own LP residual (LP, post-filter, correction): the excitation's ceiling",
}


def synthesize(
    voc, audio: np.ndarray, mel: np.ndarray, system: str, seed: int, tracker: str, f0: np.ndarray
) -> np.ndarray:
    """One system's audio for a clip and its mel, as long as ``audio``; ``f0``: harvest on
    ``audio`` at the mel's frames (the ``pulse_harvest`` control's pitch)."""
    cfg = voc.config.mel
    if system == "recordings":
        return audio
    if system == "griffin_lim":
        return griffin_lim(mel, cfg, len(audio))
    if system == "waveflow":
        out = voc(mel, seed=seed)
    elif system == "flow_only":
        out = voc(mel, seed=seed, postfilter=0.0, mel_correction=0)
    elif system == "pulse_mel":
        out = pulse_noise_vocoder(voc, mel, *mel_tracks(mel, cfg, tracker), seed=seed, tracker=tracker)
    elif system == "lp_residual":
        out = excitation_vocoder(voc, mel, recorded_residual(voc, audio, mel), tracker=tracker)
    else:
        out = pulse_noise_vocoder(voc, mel, f0, (f0 > 0).astype(np.float64), seed=seed, tracker=tracker)
    return out[: len(audio)]


def run_mos(python: str, script: Path, folders: list[Path]) -> tuple[dict[str, dict[str, float]], str | None]:
    """mos.py's scores per folder ({folder name: {column: mean}}) and None, or {} and why not."""
    if not script.is_file():
        return {}, f"{script} not found"
    try:
        done = subprocess.run(
            [python, str(script), *map(str, folders)], capture_output=True, text=True, timeout=6 * 3600
        )
    except OSError as exc:
        return {}, f"{python} cannot run ({exc.strerror})"
    lines = done.stdout.splitlines()
    header = next((i for i, line in enumerate(lines) if line.split()[:2] == ["wavs", "DistillMOS"]), None)
    if done.returncode or header is None:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {}, f"{Path(script).name} failed (exit {done.returncode}): {why}"
    rows = [line.rsplit(None, 5) for line in lines[header + 1 :] if line.strip()]
    if len(rows) != len(folders):
        return {}, f"{Path(script).name} printed {len(rows)} rows for {len(folders)} folders"
    # one row per argument, in order (the name column holds only the last 32 characters)
    try:
        scores = [dict(zip(MOS_COLUMNS, map(float, row[1:5]), strict=True)) for row in rows]
    except ValueError:
        return {}, f"{Path(script).name} printed rows that are not 'name DistillMOS OVRL SIG BAK n'"
    return {f.name: row for f, row in zip(folders, scores, strict=True)}, None


def mean_of(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if np.isfinite(r.get(key, np.nan))]
    return float(np.mean(values)) if values else float("nan")


def hvr_key(band: tuple[float, float]) -> str:
    return f"hvr_{band[0] / 1000:g}_{band[1] / 1000:g}khz"


def format_hvr_table(summary: dict[str, dict[str, float]], names: dict[str, str]) -> str:
    """The harmonic-to-valley ratio per band (``harmonic_valley_db``, at harvest's F0 on the
    recording, its voiced frames): how far each system's harmonics stand out, band by band."""
    bands = [f"{lo / 1000:g}-{hi / 1000:g} kHz" for lo, hi in HVR_BANDS]
    lines = [
        "| harmonic-to-valley ratio (dB), voiced frames | " + " | ".join(bands) + " |",
        "|---" * (len(bands) + 1) + "|",
    ]
    for system, s in summary.items():
        cells = [f"{s[hvr_key(b)]:.1f}" if np.isfinite(s.get(hvr_key(b), np.nan)) else "-" for b in HVR_BANDS]
        lines.append(f"| {names[system]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_peak_table(per_clip: dict[str, list[dict]], names: dict[str, str]) -> str:
    """Each system's peak against the recording's (``peak_figures``: dB, per clip) and its
    frames' crest factors beside the recording's (``crest_db``; percentiles per clip, then the
    mean over clips), and its energy above the mel's top over the recording's (``level_above_db``,
    the mean over clips)."""
    lines = [
        "| system | peak over the recording's (dB): median / max | clips over +1 dB "
        "| crest factor p50 / p99 (dB) | the recording's p50 / p99 | level above the mel's top (dB) |",
        "|---|---|---|---|---|---|",
    ]
    for system, rows in per_clip.items():
        if not rows or "peak_over_ref_db" not in rows[0]:
            continue
        over = np.array([r["peak_over_ref_db"] for r in rows])
        crest = " / ".join(f"{mean_of(rows, f'crest_p{q}_out_db'):.1f}" for q in (50, 99))
        ref = " / ".join(f"{mean_of(rows, f'crest_p{q}_ref_db'):.1f}" for q in (50, 99))
        above = mean_of(rows, "level_above_fmax_db")
        above = f"{above:+.2f}" if np.isfinite(above) else "-"
        lines.append(
            f"| {names[system]} | {np.median(over):+.2f} / {over.max():+.2f} | {int((over > 1).sum())} of {len(over)} "
            f"| {crest} | {ref} | {above} |"
        )
    return "\n".join(lines)


def format_table(summary: dict[str, dict[str, float]], names: dict[str, str]) -> str:
    columns = [
        ("DistillMOS", "distillmos", 2),
        ("DNSMOS OVRL", "dnsmos_ovrl", 2),
        ("SIG", "dnsmos_sig", 2),
        ("BAK", "dnsmos_bak", 2),
        ("PESQ-wb", "pesq_wb", 2),
        ("STOI", "stoi", 3),
        ("F0 err. median (cents)", "f0_median_cents", 1),
        ("F0 err. p90 (cents)", "f0_p90_cents", 1),
        ("V/UV F1", "vuv_f1", 3),
        ("voiced recall", "voiced_recall", 3),
    ]
    lines = ["| system | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for system, s in summary.items():
        cells = [f"{s[key]:.{digits}f}" if np.isfinite(s.get(key, np.nan)) else "-" for _, key, digits in columns]
        lines.append(f"| {names[system]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", nargs="+", type=Path, default=None, help="wavs (default: the two held-out clips)")
    p.add_argument("--out", type=Path, required=True, help="output folder: one folder of wavs per system")
    p.add_argument("--checkpoint", default=None, help="default: the bundled model")
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated subset (default: all; the mel track's pitch figures are always computed)",
    )
    p.add_argument(
        "--tracker",
        choices=TRACKERS,
        default=None,
        help="the controls' pitch tracker (pulse_mel's F0 and voicing, their post-filter; default: the model's)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mos-python", default=sys.executable, help="the python that runs mos.py (default: this one)")
    p.add_argument("--mos-script", type=Path, default=MOS_SCRIPT, help=f"default: {MOS_SCRIPT}")
    p.add_argument("--no-mos", action="store_true", help="skip the MOS predictors")
    p.add_argument("--json", type=Path, default=None, help="also write the per-clip figures and means here")
    args = p.parse_args(argv)
    try:
        return study(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"naturalness_study: error: {exc}", file=sys.stderr)
        return 1


def study(args: argparse.Namespace) -> int:
    if reason := pitch_available():
        raise ValueError(reason)
    clips = args.clips or HELD_OUT
    missing = [str(c) for c in clips if not c.is_file()]
    if missing:
        raise ValueError(f"no such wav: {', '.join(missing)}")
    if len({c.stem for c in clips}) != len(clips):
        raise ValueError("two clips share a file name; each system's folder holds one wav per name")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := sorted(set(systems) - set(SYSTEMS)):
        raise ValueError(f"--systems: unknown {', '.join(unknown)}; expected a subset of {', '.join(SYSTEMS)}")
    torch.set_num_threads(2)
    voc = load_vocoder(args.checkpoint)
    tracker = args.tracker or voc.config.model.pitch_tracker
    folders = {name: args.out / name for name in SYSTEMS if name in systems}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    tracks = [*(f"mel_{tracker}" for tracker in TRACKERS), "harvest_window"]
    per_clip: dict[str, list[dict]] = {name: [] for name in [*folders, *tracks]}
    seconds = 0.0
    for path in clips:
        audio = load_wav(path, voc.sample_rate)
        seconds += len(audio) / voc.sample_rate
        mel = voc.mel(audio)
        cfg = voc.config.mel
        ref = harvest_at_frames(audio.astype(np.float32), cfg, mel.shape[-1])
        outputs = {name: synthesize(voc, audio, mel, name, args.seed, tracker, ref) for name in folders}
        scored = {k: v for k, v in outputs.items() if k != "recordings"}
        pitch = clip_pitch(audio, mel, cfg, scored, TRACKERS, reference_f0=ref)
        for name, x in outputs.items():
            save_wav(folders[name] / f"{path.stem}.wav", x, voc.sample_rate)
            hvr = harmonic_valley_db(x[: len(audio)], ref, cfg.sample_rate, cfg.hop_length, cfg.frame0_centre)
            row = {"clip": path.stem, **{hvr_key(band): float(v) for band, v in zip(HVR_BANDS, hvr, strict=True)}}
            if name != "recordings":
                row |= quality(audio, x, voc.sample_rate, voc.mel) | pitch[name] | peak_figures(audio, x)
                row["level_above_fmax_db"] = level_above_db(audio, x, voc.sample_rate, cfg.f_max)
            per_clip[name].append(row)
        for name in tracks:
            per_clip[name].append({"clip": path.stem, **pitch[name]})
        print(f"{path.name}: done", flush=True, file=sys.stderr)

    keys = ["mel_l1", "pesq_wb", "stoi", "f0_median_cents", "f0_p90_cents", "f0_rmse_cents", "vuv_f1", "voiced_recall"]
    summary = {name: {k: mean_of(rows, k) for k in keys} for name, rows in per_clip.items()}
    note = "MOS skipped (--no-mos)" if args.no_mos else "MOS skipped: no system's wavs to score"
    if not args.no_mos and folders:
        mos, why = run_mos(args.mos_python, args.mos_script, list(folders.values()))
        note = f"MOS skipped: {why}" if why else None
        for name, scores in mos.items():
            summary[name] |= scores
    model = "bundled model" if args.checkpoint is None else Path(args.checkpoint).name
    names = {**SYSTEMS, **{name: PITCH_SYSTEMS[name] for name in tracks}}
    names["waveflow"] = SYSTEMS["waveflow"].format(model=model)
    names["pulse_mel"] = SYSTEMS["pulse_mel"].format(tracker=f"{tracker} tracker")
    for name in folders:
        summary[name] |= {hvr_key(band): mean_of(per_clip[name], hvr_key(band)) for band in HVR_BANDS}
    print(f"{len(clips)} clips, {seconds:.1f} s; wavs in {args.out}/<system>/; means over clips")
    print(format_table(summary, names))
    if folders:
        print()
        print(format_hvr_table({name: summary[name] for name in folders}, names))
        if any(name != "recordings" for name in folders):
            print()
            print(format_peak_table({name: per_clip[name] for name in folders}, names))
    if note:
        print(note)
    if args.json:
        args.json.write_text(json.dumps({"clips": [c.stem for c in clips], "summary": summary, "per_clip": per_clip}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""scripts/naturalness_study.py end to end, on a tiny model with LP and a stand-in for mos.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO

from waveflow.config import make_config
from waveflow.dsp.audio import load_wav
from waveflow.nn.checkpoint import save_checkpoint
from waveflow.nn.model import WaveGlow

SCRIPT = REPO / "scripts" / "naturalness_study.py"
SYSTEMS = ["recordings", "griffin_lim", "waveflow", "flow_only", "pulse_mel", "pulse_harvest", "lp_residual"]

# Prints what ../shared/tools/mos.py prints: a header, then one row per argument in order,
# the name cut to its last 32 characters; scores that say which folder they belong to.
FAKE_MOS = """\
import sys
from pathlib import Path
print("DistillMOS variant 7 weights loaded from: somewhere")
print(f"{'wavs':<32} {'DistillMOS':>10} {'DNS-OVRL':>9} {'DNS-SIG':>8} {'DNS-BAK':>8}  n")
for i, arg in enumerate(sys.argv[1:]):
    n = len(list(Path(arg).glob("*.wav")))
    print(f"{arg[-32:]:<32} {1 + i:10.3f} {2 + i / 10:9.3f} {3.0:8.3f} {4.0:8.3f}  {n}")
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mini_corpus):
    pytest.importorskip("pyworld")
    tmp = tmp_path_factory.mktemp("study")
    cfg = make_config("tiny", {"model": {"lpc_order": 16}, "train": {"eval_postfilter": 0.5, "eval_mel_correction": 2}})
    torch.manual_seed(0)
    save_checkpoint(tmp / "tiny.pt", WaveGlow(cfg.model), cfg)
    speech = load_wav(mini_corpus / "wavs" / "LJ001-0001.wav")
    for name, offset in (("one", 22050), ("two", 44100)):
        sf.write(tmp / f"{name}.wav", speech[offset : offset + 11025], 22050, subtype="PCM_16")
    (tmp / "fake_mos.py").write_text(FAKE_MOS)
    return tmp


def table_rows(stdout: str, table: int = 0) -> dict[str, list[str]]:
    """{first cell: the other cells} of the rows of the ``table``-th markdown table printed."""
    tables = [t for t in stdout.split("\n\n") if "|" in t]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in tables[table].splitlines()]
    return {r[0]: r[1:] for r in rows if len(r) > 1}


def study(tmp, *extra, clips=("one", "two")):
    args = [sys.executable, str(SCRIPT), "--checkpoint", str(tmp / "tiny.pt"), "--clips"]
    args += [str(tmp / f"{name}.wav") for name in clips] + list(extra)
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_study_writes_one_folder_per_system_and_a_table(setup):
    out = setup / "out"
    done = study(setup, "--out", str(out), "--mos-script", str(setup / "fake_mos.py"), "--json", str(setup / "s.json"))
    assert done.returncode == 0, done.stderr
    for system in SYSTEMS:
        wavs = sorted(p.name for p in (out / system).glob("*.wav"))
        assert wavs == ["one.wav", "two.wav"], system
        assert sf.info(out / system / "one.wav").frames == 11025
    rows = table_rows(done.stdout)
    # header, rule, the systems, the mel track of each tracker, their floor
    assert len(rows) == 2 + len(SYSTEMS) + 2 + 1
    # the stand-in's scores land in the rows of their folders, in the order they were passed
    assert rows["the recordings"][:4] == ["1.00", "2.00", "3.00", "4.00"]
    assert rows["pulse train + noise, the recording's F0 and voicing (harvest)"][:2] == ["6.00", "2.50"]
    assert rows["the recordings"][4:] == ["-"] * 6  # nothing to compare the recording with
    for tracker in ("comb", "template"):
        mel_row = rows[f"mel-derived track, {tracker} tracker (voicing > 0.5)"]
        assert mel_row[:6] == ["-"] * 6 and "-" not in mel_row[6:]
    floor = rows["harvest on the reference, averaged over the mel's window (a mel track's floor)"]
    assert floor[:6] == ["-"] * 6 and float(floor[-1]) == 1.0  # voicing kept: every voiced frame stays voiced
    assert "pulse train + noise, mel F0 and voicing (comb tracker; LP, post-filter, correction)" in rows
    # the harmonic-to-valley table: a row per system, a column per band; the recording (real
    # speech) carries its harmonics well above the noise floor (about 3 dB) in the low bands
    hvr = table_rows(done.stdout, 1)
    assert len(hvr) == 2 + len(SYSTEMS) and set(hvr) >= {"the recordings", "waveflow, tiny.pt, defaults"}
    assert all(len(cells) == 6 for cells in hvr.values())  # 0-1 .. 5-6 kHz
    assert all(float(v) > 6 for v in hvr["the recordings"][:2]), hvr["the recordings"]
    summary = json.loads((setup / "s.json").read_text())["summary"]
    assert summary["recordings"]["hvr_0_1khz"] == pytest.approx(float(hvr["the recordings"][0]), abs=0.051)
    # the control fed the recording's own pitch keeps it: harvest on its output finds it again
    assert summary["pulse_harvest"]["voiced_recall"] > 0.8 and summary["pulse_harvest"]["f0_median_cents"] < 15
    assert summary["pulse_harvest"]["f0_median_cents"] < summary["pulse_mel"]["f0_median_cents"] + 15
    # the ceiling control, the recording's own LP residual, is closer to the recording than any
    # other system (the post-processing alone stands between them)
    ceiling = summary["lp_residual"]
    assert ceiling["stoi"] > 0.9 and ceiling["f0_median_cents"] < 15
    for other in ("griffin_lim", "waveflow", "pulse_mel", "pulse_harvest"):
        assert ceiling["mel_l1"] < summary[other]["mel_l1"] and ceiling["pesq_wb"] > summary[other]["pesq_wb"], other
    # the peak table: a row per synthesized system; its figures are the wav's against the clip's
    peaks = table_rows(done.stdout, 2)
    assert len(peaks) == 2 + len(SYSTEMS) - 1 and "the recordings" not in peaks
    per_clip = json.loads((setup / "s.json").read_text())["per_clip"]
    for system in ("waveflow", "lp_residual"):
        for row in per_clip[system]:
            ref = load_wav(setup / f"{row['clip']}.wav")
            wav = load_wav(out / system / f"{row['clip']}.wav")
            want = 20 * np.log10(np.abs(wav).max() / np.abs(ref).max())
            assert row["peak_over_ref_db"] == pytest.approx(want, abs=0.01), (system, row["clip"])
            above = np.fft.rfftfreq(len(ref), 1 / 22050) > 8000
            spectrum = np.abs(np.fft.rfft(wav[: len(ref)].astype(np.float64), n=len(ref))[above]) ** 2
            want = 10 * np.log10(spectrum.sum() / (np.abs(np.fft.rfft(ref.astype(np.float64))[above]) ** 2).sum())
            assert row["level_above_fmax_db"] == pytest.approx(want, abs=0.05), (system, row["clip"])  # 16-bit apart
    over = [r["peak_over_ref_db"] for r in per_clip["waveflow"]]
    median, top = (float(v) for v in peaks["waveflow, tiny.pt, defaults"][0].split(" / "))
    assert median == pytest.approx(np.median(over), abs=0.006) and top == pytest.approx(max(over), abs=0.006)
    assert peaks["waveflow, tiny.pt, defaults"][1] == f"{sum(v > 1 for v in over)} of 2"
    level = np.mean([r["level_above_fmax_db"] for r in per_clip["waveflow"]])
    assert peaks["waveflow, tiny.pt, defaults"][4] == f"{level:+.2f}"
    # the ceiling control's crest factors follow the recording's
    ceiling_row = peaks["the recording's own LP residual (LP, post-filter, correction): the excitation's ceiling"]
    ceiling_crest, ref_crest = ([float(v) for v in cell.split(" / ")] for cell in ceiling_row[2:4])
    assert abs(ceiling_crest[0] - ref_crest[0]) < 1.5, (ceiling_crest, ref_crest)


def test_study_without_the_predictors_skips_the_mos_columns_with_a_note(setup, capsys):
    argv = ["--out", str(setup / "out2"), "--mos-python", str(setup / "no-such-python"), "--systems", "waveflow"]
    done = study(setup, *argv, clips=["one"])
    assert done.returncode == 0, done.stderr
    assert "MOS skipped:" in done.stdout and "no-such-python" in done.stdout
    rows = table_rows(done.stdout)
    tracks = {f"mel-derived track, {tracker} tracker (voicing > 0.5)" for tracker in ("comb", "template")}
    floor = "harvest on the reference, averaged over the mel's window (a mel track's floor)"
    assert set(rows) == {"system", "---", "waveflow, tiny.pt, defaults", *tracks, floor}
    assert rows["waveflow, tiny.pt, defaults"][:4] == ["-"] * 4 and "-" not in rows["waveflow, tiny.pt, defaults"][4:]
    assert [p.name for p in (setup / "out2").iterdir()] == ["waveflow"]
    # bad arguments: one line and exit code 1 (the script's main in this process; the runs above
    # cover it as a command)
    spec = importlib.util.spec_from_file_location("naturalness_study", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    bad_cases = [(["--clips", str(setup / "missing.wav")], "missing.wav"), (["--systems", "hifigan"], "hifigan")]
    for bad_args, message in bad_cases:
        capsys.readouterr()
        argv = ["--checkpoint", str(setup / "tiny.pt"), "--clips", str(setup / "one.wav"), "--out", str(setup / "out3")]
        assert script.main([*argv, *bad_args]) == 1
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and message in err, err
    assert not (setup / "out3").exists()

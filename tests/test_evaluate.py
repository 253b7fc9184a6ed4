"""Quality measures and `waveflow evaluate` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO
from test_vocoder import tiny_setup, tiny_vocoder, write_tiny_checkpoint

from waveflow.audio import load_wav
from waveflow.cli import main
from waveflow.config import MelConfig
from waveflow.evaluate import griffin_lim, mel_l1, nll, quality
from waveflow.loss import flow_nll


@pytest.fixture
def speech(clip) -> np.ndarray:
    return load_wav(clip)[22050 : 22050 + 22050]  # one second of speech


def test_quality_of_identical_and_degraded_audio(speech):
    voc = tiny_vocoder()
    same = quality(speech, speech, 22050, voc.mel)
    assert same["mel_l1"] == 0.0 and same["stoi"] > 0.99 and same["pesq_wb"] > 4.5
    noisy = speech + np.random.default_rng(0).normal(0, 0.05, speech.shape).astype(np.float32)
    worse = quality(speech, noisy, 22050, voc.mel)
    assert worse["mel_l1"] > 0.1 and worse["stoi"] < same["stoi"] and worse["pesq_wb"] < 2.5


def test_mel_l1_is_the_mean_absolute_log_mel_difference(speech):
    voc = tiny_vocoder()
    louder = speech * 2.0
    # doubling the amplitude adds log(2) to every mel bin above the clamp floor
    a, b = voc.mel(speech), voc.mel(louder)
    assert mel_l1(speech, louder, voc.mel) == pytest.approx(float(np.abs(a - b).mean()), rel=1e-6)
    assert mel_l1(speech, louder, voc.mel) == pytest.approx(np.log(2), rel=0.05)


def test_griffin_lim_beats_noise_on_mel_l1(speech):
    voc = tiny_vocoder()
    mel = voc.mel(speech)
    gl = griffin_lim(mel, MelConfig(), len(speech), n_iter=10)
    assert gl.shape == speech.shape and np.isfinite(gl).all()
    noise = np.random.default_rng(0).normal(0, 0.1, speech.shape).astype(np.float32)
    assert mel_l1(speech, gl, voc.mel) < 0.5 * mel_l1(speech, noise, voc.mel)


def test_nll_is_the_flow_likelihood_of_the_original(speech):
    voc = tiny_vocoder()
    audio = speech[:4096]
    mel = voc.mel(audio)
    nats, bits = nll(voc, audio, mel)
    model, _ = tiny_setup()
    with torch.no_grad():
        z, logdet = model.eval()(torch.from_numpy(audio)[None], torch.from_numpy(mel)[None])
    expected = flow_nll(z, logdet, sigma=1.0)
    assert nats == pytest.approx(float(expected.nats), abs=1e-4)
    assert bits == pytest.approx(nats / np.log(2), rel=1e-6)


def test_evaluate_cli_writes_table_and_json(tmp_path, speech):
    (tmp_path / "data" / "wavs").mkdir(parents=True)
    for name in ("b_clip", "a_clip"):
        sf.write(tmp_path / "data" / "wavs" / f"{name}.wav", speech[:11025], 22050, subtype="PCM_16")
    write_tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "scores.json"
    args = ["evaluate", "--checkpoint", str(tmp_path / "tiny.pt"), "--data", str(tmp_path / "data")]
    result = subprocess.run(
        [sys.executable, "-m", "waveflow.cli", *args, "--limit", "1", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "| waveflow |" in result.stdout and "| Griffin-Lim (60 it.) |" in result.stdout
    data = json.loads(out.read_text())
    assert data["n_clips"] == 1 and data["clips"][0]["clip"] == "a_clip"
    for system in ("waveflow", "griffin_lim"):
        assert set(data["summary"][system]) >= {"mel_l1", "pesq_wb", "stoi"}
    assert np.isfinite(data["summary"]["waveflow"]["nll_nats"])
    # the untrained tiny model must not beat Griffin-Lim on mel-L1: the figures mean something
    assert data["summary"]["waveflow"]["mel_l1"] > data["summary"]["griffin_lim"]["mel_l1"]


def test_evaluate_bad_data_folder_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "--data", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "no such data folder" in err[0]


def test_prepared_folder_scores_its_held_out_splits(tmp_path, mini_corpus):
    from waveflow.data import prepare
    from waveflow.evaluate import find_clips

    prepared = prepare(mini_corpus, tmp_path / "prep", progress=False)
    held_out = find_clips(tmp_path / "prep")
    assert [p.stem for p in held_out] == ["LJ001-0031", "LJ001-0032"]  # dev, then test
    assert len(find_clips(tmp_path / "prep", "train")) == prepared["split"]["train"]
    with pytest.raises(ValueError, match="--split"):
        find_clips(tmp_path / "prep", "validation")


def test_silence_rms_measures_the_output_of_an_all_silence_mel():
    from waveflow.evaluate import silence_rms

    voc = tiny_vocoder()
    frames = round(2.0 * voc.sample_rate / voc.hop_length)
    expected = voc(np.full((80, frames), voc.silence, dtype=np.float32), sigma=0.6, seed=0)
    assert silence_rms(voc, 0.6, 0) == pytest.approx(float(np.sqrt(np.mean(expected.astype(np.float64) ** 2))))
    assert silence_rms(voc, 0.0, 0) < silence_rms(voc, 0.6, 0)  # the hiss scales with sigma

"""Fine-tuning as one command, and the train options it rests on: --init-from takes the
checkpoint's config (and keeps its inference settings under a recipe), --resume reads the run's
own config.yaml with every earlier --set, and a line is logged every minute off a terminal."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import soundfile as sf
import torch
from test_train import TINY, _config, _train, prepared  # noqa: F401  (prepared is a fixture)

from waveflow.cli import main
from waveflow.config import load_config, make_config
from waveflow.dsp.audio import load_wav
from waveflow.infer.vocoder import Vocoder
from waveflow.nn.checkpoint import read_checkpoint, save_checkpoint
from waveflow.nn.model import WaveGlow
from waveflow.train import trainer as train_module

FAST = [a for a in TINY if a != "--set"]  # key=value pairs, without the flag


def start_checkpoint(path) -> None:
    """A tiny model that is played with sigma 0.55, post-filter 0.3 and one mel correction step."""
    cfg = make_config("tiny", {"train": {"eval_sigma": 0.55, "eval_postfilter": 0.3, "eval_mel_correction": 1}})
    torch.manual_seed(0)
    save_checkpoint(path, WaveGlow(cfg.model, cfg.mel), cfg, step=7)


def voice_folder(folder, mini_corpus) -> None:
    """Four 1-second clips as a phone would hand them over: 16 kHz, stereo, no metadata."""
    import soxr

    folder.mkdir()
    for name in ("LJ001-0002", "LJ001-0003", "LJ001-0004", "LJ001-0005"):
        audio = load_wav(mini_corpus / "wavs" / f"{name}.wav")[:22050]
        mono = soxr.resample(audio, 22050, 16000)
        sf.write(folder / f"me_{name}.wav", np.stack([mono, 0.5 * mono], axis=1), 16000)


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "waveflow", *map(str, args)], capture_output=True, text=True, timeout=600, **kwargs
    )


def test_finetune_from_a_folder_of_wavs_to_a_shippable_model_and_resume(tmp_path, mini_corpus, capsys):
    start = tmp_path / "start.pt"
    start_checkpoint(start)
    voice_folder(tmp_path / "voice", mini_corpus)
    run = tmp_path / "run"
    sets = [
        x
        for kv in [*FAST, "train.max_steps=3", "train.eval_every=3", "train.eval_audio_clips=0"]
        for x in ("--set", kv)
    ]
    args = ["finetune", "--data", tmp_path / "voice", "--out", run, "--from", start, "--no-progress", "--device", "cpu"]
    result = cli(*args, *sets)
    assert result.returncode == 0, result.stderr
    assert "prepared 4 clips" in result.stdout and "2 train, 1 dev, 1 test" in result.stdout, result.stdout
    wav, rate = sf.read(run / "data" / "corpus" / "wavs" / "me_LJ001-0005.wav")
    assert rate == 22050 and wav.ndim == 1  # resampled, mixed to mono
    cfg = load_config(run / "train" / "config.yaml")
    # the model's own config and the way it is played; a fine-tuning schedule
    assert (cfg.train.eval_sigma, cfg.train.eval_postfilter, cfg.train.eval_mel_correction) == (0.55, 0.3, 1)
    assert cfg.model == make_config("tiny").model and cfg.train.lr_schedule == "cosine"
    voc = Vocoder.from_pretrained(run / "model")
    assert voc.sigma == 0.55 and voc.postfilter_strength == 0.3
    mel = voc.mel(load_wav(mini_corpus / "wavs" / "LJ001-0032.wav")[:11025])
    np.save(tmp_path / "mel.npy", mel)
    synth = cli("synthesize", tmp_path / "mel.npy", "-o", tmp_path / "out.wav", "--checkpoint", run / "model")
    assert synth.returncode == 0 and (tmp_path / "out.wav").is_file(), synth.stderr
    # resume: its own config (every earlier --set kept), the model written again
    again = cli("finetune", "--data", tmp_path / "voice", "--out", run, "--resume", "--no-progress", "--device", "cpu",
                "--set", "train.max_steps=5")  # fmt: skip
    assert again.returncode == 0, again.stderr
    cfg = load_config(run / "train" / "config.yaml")
    assert cfg.train.max_steps == 5 and cfg.train.segment_length == 2048 and cfg.train.eval_sigma == 0.55
    assert read_checkpoint(run / "train" / "checkpoints" / "step_0000005.pt")["step"] == 5
    assert Vocoder.from_pretrained(run / "model").sigma == 0.55
    # a folder that holds a run is not overwritten; a folder without audio is one line (the CLI's
    # main in this process: the subprocess runs above already cover the command end to end)
    capsys.readouterr()
    assert main(list(map(str, args))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds files" in err[0], err
    (tmp_path / "empty").mkdir()
    empty = ["finetune", "--data", tmp_path / "empty", "--out", tmp_path / "r2", "--from", start]
    assert main(list(map(str, empty))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no audio files" in err[0] and not (tmp_path / "r2").exists(), err


def test_init_from_without_config_takes_the_checkpoints_config(tmp_path, prepared):  # noqa: F811
    base = tmp_path / "base"
    assert _train(tmp_path, prepared, base, "--set", "model.lpc_order=8", "--set", "train.max_steps=1",
                  "--set", "train.eval_every=100", "--set", "train.eval_sigma=0.7") == 0  # fmt: skip
    start = base / "checkpoints" / "step_0000001.pt"
    tuned = tmp_path / "tuned"
    args = ["train", "--data", str(prepared), "--out", str(tuned), "--no-progress", "--device", "cpu"]
    assert train_module_main([*args, "--init-from", str(start), "--set", "train.max_steps=1"]) == 0
    cfg = load_config(tuned / "config.yaml")
    assert cfg.model.lpc_order == 8 and cfg.train.eval_sigma == 0.7 and cfg.train.segment_length == 2048


def test_init_from_with_a_recipe_keeps_the_inference_settings(tmp_path, prepared, capsys):  # noqa: F811
    start = tmp_path / "start.pt"
    start_checkpoint(start)
    out = tmp_path / "a"
    assert _train(tmp_path, prepared, out, "--set", "train.max_steps=1", "--init-from", str(start)) == 0
    cfg = load_config(out / "config.yaml")  # the recipe (preset tiny) says sigma 0.6; the model is played at 0.55
    assert (cfg.train.eval_sigma, cfg.train.eval_postfilter, cfg.train.eval_mel_correction) == (0.55, 0.3, 1)
    said = capsys.readouterr().err  # the CLI's log lines
    assert "train.eval_sigma 0.55 from" in said and "--set train.eval_sigma=0.6 to use it" in said, said
    out = tmp_path / "b"
    assert _train(tmp_path, prepared, out, "--set", "train.max_steps=1", "--init-from", str(start),
                  "--set", "train.eval_sigma=0.8") == 0  # fmt: skip
    assert load_config(out / "config.yaml").train.eval_sigma == 0.8  # asked for by name: taken


def test_resume_reads_the_runs_config_and_keeps_earlier_overrides(tmp_path, prepared):  # noqa: F811
    out = tmp_path / "run"
    common = ["--set", "train.eval_every=100", "--set", "train.checkpoint_every=1"]
    assert _train(tmp_path, prepared, out, *common, "--set", "train.max_steps=1", "--set", "train.lr=0.00123") == 0
    args = ["train", "--data", str(prepared), "--out", str(out), "--no-progress", "--device", "cpu", "--resume"]
    assert train_module_main([*args, "--set", "train.max_steps=2"]) == 0  # no --config: the run's own
    assert load_config(out / "config.yaml").train.lr == 0.00123
    assert train_module_main([*args, "--config", _config(tmp_path), "--set", "train.max_steps=3"]) == 0
    cfg = load_config(out / "config.yaml")
    assert cfg.train.lr == 0.00123 and cfg.train.max_steps == 3
    assert read_checkpoint(out / "checkpoints" / "step_0000003.pt")["config"]["train"]["lr"] == 0.00123


def test_a_line_is_logged_every_interval_off_a_terminal(tmp_path, prepared, monkeypatch):  # noqa: F811
    monkeypatch.setattr(train_module, "LOG_INTERVAL_S", 0.0)
    out = tmp_path / "run"
    assert _train(tmp_path, prepared, out, "--set", "train.max_steps=3", "--set", "train.eval_every=100") == 0
    lines = [line for line in (out / "train.log").read_text().splitlines() if "steps/s" in line]
    assert len(lines) == 3 and "step 3/3: train NLL" in lines[-1], lines
    monkeypatch.setattr(train_module, "LOG_INTERVAL_S", 3600.0)
    out = tmp_path / "quiet"
    assert _train(tmp_path, prepared, out, "--set", "train.max_steps=3", "--set", "train.eval_every=100") == 0
    assert "steps/s" not in (out / "train.log").read_text()


def train_module_main(argv) -> int:
    """``waveflow train`` without a config or the tiny training values: they must come from the
    checkpoint (``--init-from``) or the run folder (``--resume``)."""
    from waveflow.cli import main

    return main(argv)


def test_prepare_takes_a_plain_folder_of_wavs(tmp_path, mini_corpus):
    voice_folder(tmp_path / "voice", mini_corpus)
    result = cli("prepare", "--data", tmp_path / "voice", "--out", tmp_path / "prepared", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "no metadata.csv; 4 audio files" in result.stdout and "2 train, 1 dev, 1 test" in result.stdout
    rate = sf.info(tmp_path / "prepared" / "corpus" / "wavs" / "me_LJ001-0002.wav").samplerate
    assert rate == 22050 and (tmp_path / "prepared" / "train.txt").read_text().count("\n") == 2

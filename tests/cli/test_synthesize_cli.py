"""`waveflow mel` and `waveflow synthesize` run as a user would: in a subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO
from test_pitch import harmonic
from test_vocoder import random_mel, write_tiny_checkpoint

from waveflow.cli import main
from waveflow.config import make_config
from waveflow.dsp.audio import MelSpectrogram
from waveflow.nn.checkpoint import make_checkpoint
from waveflow.nn.model import WaveGlow


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "waveflow", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def run_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """The same entry point without a new interpreter (torch imports once): for the many
    bad-input cases; a few of them also run in a subprocess below."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "tiny.pt"
    write_tiny_checkpoint(path)
    return path


def test_round_trip_wav_to_mel_to_wav_with_the_bundled_model(tmp_path, clip):
    wav = tmp_path / "short.wav"
    audio, sr = sf.read(clip, dtype="float32")
    sf.write(wav, audio[:8000], sr, subtype="PCM_16")
    result = run_cli("mel", wav, "-o", tmp_path / "m.npy")
    assert result.returncode == 0, result.stderr
    mel = np.load(tmp_path / "m.npy")
    assert mel.shape == (80, 1 + 8000 // 256) and mel.dtype == np.float32
    result = run_cli("synthesize", tmp_path / "m.npy", "-o", tmp_path / "out.wav", "--reference", wav)
    assert result.returncode == 0, result.stderr
    out, rate = sf.read(tmp_path / "out.wav")
    assert rate == 22050 and out.shape == (mel.shape[1] * 256,)
    assert "pesq_wb" in result.stdout and "stoi" in result.stdout and "mel_l1" in result.stdout


def test_folder_of_npy_and_pt_batched_equals_one_by_one(tmp_path, ckpt):
    (tmp_path / "mels").mkdir()
    np.save(tmp_path / "mels" / "a.npy", random_mel(7, seed=1).numpy())
    torch.save(random_mel(12, seed=2), tmp_path / "mels" / "b.pt")
    np.save(tmp_path / "mels" / "c.npy", random_mel(3, seed=3).numpy())
    common = ["--checkpoint", ckpt, "--seed", "5"]
    result = run_cli("synthesize", tmp_path / "mels", "-o", tmp_path / "wavs", "--batch-size", "3", *common)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "wavs").iterdir()) == ["a.wav", "b.wav", "c.wav"]
    result = run_cli("synthesize", tmp_path / "mels" / "b.pt", "-o", tmp_path / "b_alone.wav", *common)
    assert result.returncode == 0, result.stderr
    batched, _ = sf.read(tmp_path / "wavs" / "b.wav", dtype="int16")
    alone, _ = sf.read(tmp_path / "b_alone.wav", dtype="int16")
    assert batched.shape == (12 * 256,)
    assert np.abs(batched.astype(int) - alone.astype(int)).max() <= 1  # 16-bit rounding at most


def test_stream_option_reports_latency(tmp_path, ckpt):
    np.save(tmp_path / "m.npy", random_mel(20).numpy())
    result = run_cli("synthesize", tmp_path / "m.npy", "-o", tmp_path / "s.wav", "--checkpoint", ckpt, "--stream")
    assert result.returncode == 0, result.stderr
    assert "look-ahead" in result.stdout and "real-time factor" in result.stdout
    assert sf.read(tmp_path / "s.wav")[0].shape == (20 * 256,)


def test_low_latency_option_streams_with_the_preset(tmp_path, ckpt, capsys):
    from waveflow.infer.streaming import StreamingVocoder
    from waveflow.infer.vocoder import load_vocoder

    mel = MelSpectrogram()(harmonic(150.0, 0.4)).numpy()
    np.save(tmp_path / "m.npy", mel)
    voc = load_vocoder(str(ckpt))
    for extra, options in [((), {}), (("--mel-correction", "0"), {"mel_correction": 0})]:
        out = tmp_path / "low.wav"
        args = ("synthesize", tmp_path / "m.npy", "-o", out, "--checkpoint", ckpt, "--low-latency", "--seed", "3")
        result = run_in_process(capsys, *args, "--chunk-frames", "1", *extra)
        assert result.returncode == 0 and "look-ahead" in result.stdout
        stream = StreamingVocoder.low_latency(voc, seed=3, **options)
        expected = np.concatenate([*(stream.push(mel[:, i : i + 1]) for i in range(mel.shape[1])), stream.flush()])
        np.testing.assert_allclose(sf.read(out, dtype="float32")[0], expected, atol=1e-4)


def bad_mels(tmp_path):
    np.save(tmp_path / "time_major.npy", np.zeros((50, 80), np.float32))
    np.save(tmp_path / "nan.npy", np.full((80, 5), np.nan, np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((80, 0), np.float32))
    (tmp_path / "garbage.npy").write_bytes(b"not a numpy file at all")
    (tmp_path / "zero_bytes.npy").write_bytes(b"")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "cut.npy", np.zeros((80, 50), np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:200])
    torch.save({"not": "a tensor"}, tmp_path / "dict.pt")
    return {
        "missing.npy": "no such mel file",
        "time_major.npy": "transpose",
        "nan.npy": "NaN or Inf",
        "empty.npy": "zero frames",
        "garbage.npy": "not a .npy file (23 bytes without the NumPy header)",
        "zero_bytes.npy": "not a .npy file (an empty file)",
        "objects.npy": "holds Python objects (dtype object), which are never loaded",
        "cut.npy": "cannot read mel",
        "dict.pt": "expected an array",
    }


def test_every_bad_mel_is_one_line_and_leaves_no_wav(tmp_path, ckpt, capsys):
    for name, message in bad_mels(tmp_path).items():
        out = tmp_path / f"{name}.wav"
        runner = run_cli if name == "time_major.npy" else lambda *a: run_in_process(capsys, *a)
        result = runner("synthesize", tmp_path / name, "-o", out, "--checkpoint", ckpt)
        assert_one_line_error(result, name, message)
        assert not out.exists()


def test_a_linear_mel_is_refused_unless_forced(tmp_path, ckpt):
    np.save(tmp_path / "lin.npy", np.full((80, 4), 40.0, np.float32))
    result = run_cli("synthesize", tmp_path / "lin.npy", "-o", tmp_path / "lin.wav", "--checkpoint", ckpt)
    assert result.returncode == 1 and result.stderr.count("linear mel") == 1, result.stderr
    assert not (tmp_path / "lin.wav").exists()
    result = run_cli("synthesize", tmp_path / "lin.npy", "-o", tmp_path / "lin.wav", "--checkpoint", ckpt, "--force")
    assert result.returncode == 0 and result.stderr.count("linear mel") == 1, result.stderr
    assert (tmp_path / "lin.wav").exists()


def test_bad_checkpoints_and_outputs(tmp_path, ckpt, capsys):
    np.save(tmp_path / "m.npy", random_mel(4).numpy())
    (tmp_path / "cut.pt").write_bytes(ckpt.read_bytes()[:300])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    small = make_config("small")
    data = make_checkpoint(WaveGlow(small.model), small)
    data["config"] = make_config("tiny").to_dict()  # config says tiny, weights are small
    torch.save(data, tmp_path / "mismatch.pt")
    cases = {
        "missing.pt": "no such checkpoint",
        "cut.pt": "truncated or corrupt",
        "other.pt": "not a waveflow checkpoint",
        "mismatch.pt": "do not fit the model config",
    }
    out = tmp_path / "out.wav"
    for name, message in cases.items():
        runner = run_cli if name == "cut.pt" else lambda *a: run_in_process(capsys, *a)
        result = runner("synthesize", tmp_path / "m.npy", "-o", out, "--checkpoint", tmp_path / name)
        assert_one_line_error(result, name, message)
        assert not out.exists()
    result = run_cli("synthesize", tmp_path / "m.npy", "-o", tmp_path / "nodir" / "o.wav", "--checkpoint", ckpt)
    assert_one_line_error(result, "nodir", "does not exist")
    result = run_in_process(capsys, "synthesize", tmp_path / "m.npy", "-o", tmp_path / "o.mp3", "--checkpoint", ckpt)
    assert_one_line_error(result, "o.mp3", ".wav")
    if not torch.cuda.is_available():
        result = run_in_process(capsys, "synthesize", tmp_path / "m.npy", "-o", out, "--half")
        assert_one_line_error(result, "--half needs --device cuda")
        result = run_in_process(capsys, "synthesize", tmp_path / "m.npy", "-o", out, "--device", "cuda")
        assert_one_line_error(result, "CUDA is not available")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".wav" or p.name.endswith(".tmp")) == []


def test_a_missing_reference_is_refused_before_any_wav_is_written(tmp_path, ckpt, capsys):
    mel = tmp_path / "m.npy"
    np.save(mel, np.full((80, 10), -5.0, dtype=np.float32))
    out = tmp_path / "out.wav"
    missing = tmp_path / "no.wav"
    result = run_in_process(capsys, "synthesize", mel, "-o", out, "--checkpoint", ckpt, "--reference", missing)
    assert_one_line_error(result, "--reference", "no such file")
    assert not out.exists()


def test_denoise_mode_option_picks_the_bias_rule(tmp_path, ckpt, capsys):
    import soundfile as sf

    mel = tmp_path / "m.npy"
    np.save(mel, np.random.default_rng(0).normal(-5, 2, (80, 20)).astype(np.float32))
    outs = {}
    for mode in ("waveflow", "nvidia"):
        out = tmp_path / f"{mode}.wav"
        args = ("synthesize", mel, "-o", out, "--checkpoint", ckpt, "--denoise", "0.5", "--denoise-mode", mode)
        assert run_in_process(capsys, *args).returncode == 0
        outs[mode] = sf.read(out)[0]
    assert not np.allclose(outs["waveflow"], outs["nvidia"])


@pytest.mark.parametrize(
    ("option", "on", "bad", "message"),
    [
        ("--postfilter", "1", "1.5", "--postfilter must be in [0, 1]"),
        ("--mel-correction", "2", "-2", "--mel-correction must be an integer >= 0"),
    ],
)
def test_post_processing_options_offline_and_streamed(tmp_path, ckpt, capsys, option, on, bad, message):
    """Each option reaches both paths: a stream with it equals offline synthesis with it, and
    a bad value is one line that writes nothing."""
    mel = tmp_path / "m.npy"
    np.save(mel, MelSpectrogram()(harmonic(150.0, 0.4)).numpy())
    outs = {}
    for name, extra in [("off", (option, "0")), ("on", (option, on)), ("stream", (option, on, "--stream"))]:
        out = tmp_path / f"{name}.wav"
        args = ("synthesize", mel, "-o", out, "--checkpoint", ckpt, "--seed", "3", *extra)
        assert run_in_process(capsys, *args).returncode == 0
        outs[name] = sf.read(out, dtype="float32")[0]
    assert not np.allclose(outs["off"], outs["on"], atol=1e-3)  # a voiced mel: the stage acts
    np.testing.assert_allclose(outs["stream"], outs["on"], atol=1e-4)
    wrong = tmp_path / "bad.wav"
    result = run_in_process(capsys, "synthesize", mel, "-o", wrong, "--checkpoint", ckpt, option, bad)
    assert_one_line_error(result, message)
    assert not wrong.exists()


def test_inference_needs_neither_librosa_nor_tensorboard(tmp_path, clip):
    """The core install is light: mel and synthesize run with the eval and train extras absent."""
    script = (
        "import sys\n"
        "for name in ('librosa', 'tensorboard', 'pesq', 'pystoi'):\n"
        "    sys.modules[name] = None  # import fails as if not installed\n"
        "from waveflow.cli import main\n"
        f"assert main(['mel', {str(clip)!r}, '-o', {str(tmp_path / 'm.npy')!r}]) == 0\n"
        f"assert main(['synthesize', {str(tmp_path / 'm.npy')!r}, '-o', {str(tmp_path / 'o.wav')!r}]) == 0\n"
        f"assert main(['evaluate', '--data', {str(tmp_path)!r}]) == 1  # needs the eval extra: one line\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o.wav").is_file()
    assert "pip install 'waveflow[eval]'" in result.stderr

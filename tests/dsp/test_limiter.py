"""The soft output limiter: untouched below the knee, never past the ceiling, smooth at the knee,
and the same offline, streamed and through the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from test_streaming import stream_all
from test_synthesize_cli import run_cli
from test_vocoder import random_mel, tiny_vocoder, write_tiny_checkpoint

from waveflow.dsp.limiter import CEILING, KNEE, soft_limit
from waveflow.infer.streaming import StreamingVocoder


def test_below_the_knee_nothing_changes_bit_for_bit():
    x = torch.linspace(-KNEE, KNEE, 10001, dtype=torch.float64)
    assert torch.equal(soft_limit(x), x)
    x32 = (torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 2 - 1) * KNEE
    assert torch.equal(soft_limit(x32), x32)


def test_above_the_knee_it_stays_below_the_ceiling_monotonic_and_odd():
    x = torch.linspace(0, 1e6, 200001, dtype=torch.float64)
    y = soft_limit(x)
    assert float(y.max()) <= CEILING
    assert bool((torch.diff(y) >= 0).all())
    torch.testing.assert_close(soft_limit(-x), -y, rtol=0, atol=0)
    assert y.dtype == x.dtype and soft_limit(x.float()).dtype == torch.float32


def test_slope_is_one_at_the_knee_and_falls_after():
    eps = 1e-7
    x = torch.tensor([KNEE - eps, KNEE, KNEE + eps, 1.0, 1.2], dtype=torch.float64)
    y = soft_limit(x)
    assert abs(float((y[2] - y[1]) / eps) - 1.0) < 1e-5  # continuous slope: no corner to hear
    assert abs(float((y[1] - y[0]) / eps) - 1.0) < 1e-5
    assert float(y[3]) < 1.0 and float(y[4]) < CEILING  # full-scale input comes out below full scale


def test_bad_knee_is_refused():
    with pytest.raises(ValueError, match="knee"):
        soft_limit(torch.zeros(3), knee=1.0, ceiling=0.9)


def test_vocoder_limits_by_default_and_not_when_asked():
    voc, mel = tiny_vocoder(), random_mel(12, batch=1, seed=4)
    loud = voc(mel, sigma=60.0, seed=1, limit=False)  # a large sigma drives the flow past full scale
    assert float(loud.abs().max()) > 1.0
    limited = voc(mel, sigma=60.0, seed=1)
    assert float(limited.abs().max()) <= CEILING + 1e-6  # float32 rounding of 0.99
    quiet = loud.abs() <= KNEE
    assert bool(quiet.any()) and torch.equal(limited[quiet], loud[quiet])
    torch.testing.assert_close(limited, soft_limit(loud), rtol=0, atol=0)


def test_stream_limits_like_offline():
    voc, mel = tiny_vocoder(), random_mel(20, seed=5)
    offline = voc(mel, sigma=60.0, seed=2)
    streamed, _ = stream_all(StreamingVocoder(voc, sigma=60.0, seed=2), mel, 3)
    assert float(streamed.abs().max()) <= CEILING + 1e-6
    raw, _ = stream_all(StreamingVocoder(voc, sigma=60.0, seed=2, limit=False), mel, 3)
    torch.testing.assert_close(streamed, soft_limit(raw), rtol=0, atol=0)
    torch.testing.assert_close(streamed, offline, rtol=0, atol=1e-4)


def test_cli_writes_no_clipped_sample_unless_no_limit(tmp_path):
    ckpt = tmp_path / "tiny.pt"
    write_tiny_checkpoint(ckpt)
    np.save(tmp_path / "mel.npy", random_mel(12, seed=6).numpy())
    for flag, out in (([], "limited.wav"), (["--no-limiter"], "raw.wav")):
        mel, wav = str(tmp_path / "mel.npy"), str(tmp_path / out)
        result = run_cli("synthesize", mel, "-o", wav, "--checkpoint", str(ckpt), "--sigma", "60", "--force", *flag)
        assert result.returncode == 0, result.stderr
    limited = sf.read(tmp_path / "limited.wav", dtype="int16")[0]
    raw = sf.read(tmp_path / "raw.wav", dtype="int16")[0]
    assert np.abs(limited.astype(np.int32)).max() <= round(32768 * CEILING) + 1  # save_wav scales by 32768
    assert np.abs(raw.astype(np.int32)).max() >= 32767  # written as synthesized: clipped at full scale

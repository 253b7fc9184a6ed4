"""Harmonic excitation (waveflow.dsp.harmonic): the closed-form pulse train against the sum of
its cosines, the mix's power and its off switches, and the step inside the vocoder: streamed
equal to offline, reached from the CLI, refused where the model has no pulse source."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from test_pitch import harmonic as harmonic_signal
from test_source import source_model
from test_streaming import stream_all
from test_synthesize_cli import run_in_process
from test_vocoder import random_mel, write_tiny_checkpoint

from waveflow.config import make_config
from waveflow.dsp.audio import MelSpectrogram
from waveflow.dsp.harmonic import (
    CUTOFF_HZ,
    TOP,
    check_harmonic,
    harmonic_excitation,
    pulse_top,
    pulse_train,
    run_rms,
    split,
)
from waveflow.infer.streaming import StreamingVocoder, snr_db
from waveflow.infer.vocoder import Vocoder
from waveflow.nn.checkpoint import save_checkpoint

SR = 22050


def block_rms(x, block):
    """``run_rms`` per sample: each sample takes its own run's."""
    return run_rms(x, block).repeat_interleave(block, dim=1)[:, : x.shape[1]]


def harmonic_mix(e, pulses, voicing, strength, block, sample_rate):
    """The step as the module docstring writes it, per sample and in float64: the reference the
    vocoder's blockwise path is held against."""
    mix = (strength * voicing.double()).clamp(0.0, 1.0)
    low, high = split(e.double(), sample_rate)
    return (torch.sqrt(1.0 - mix) * low + torch.sqrt(mix) * block_rms(low, block) * pulses + high).to(e.dtype)


def brute_pulses(phase: np.ndarray, f0: np.ndarray) -> np.ndarray:
    """The pulse train as its definition says: every cosine summed, then scaled to unit power."""
    out = np.zeros_like(phase)
    for n in range(len(phase)):
        count = max(TOP * SR / 2 / f0[n], 1.0)
        whole, part = math.floor(count), count - math.floor(count)
        harmonics = sum(math.cos(k * phase[n]) for k in range(1, whole + 1)) + part * math.cos((whole + 1) * phase[n])
        out[n] = harmonics * math.sqrt(2.0 / (whole + part * part))
    return out


def test_pulse_train_equals_the_sum_of_its_harmonics():
    rng = np.random.default_rng(0)
    f0 = rng.uniform(70.0, 550.0, 400)
    phase = rng.uniform(0.0, 2 * math.pi, 400)
    phase[:4] = [0.0, 2 * math.pi, 1e-12, 4 * math.pi]  # at a pulse, where the closed form is 0/0
    got = pulse_train(torch.from_numpy(phase)[None], torch.from_numpy(f0)[None], SR)[0].numpy()
    np.testing.assert_allclose(got, brute_pulses(phase, f0), rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("f0", [80.0, 123.4, 300.0])
def test_pulse_train_has_unit_power_and_harmonics_up_to_top(f0):
    n = 1 << 16
    f0 = round(f0 * n / SR) * SR / n  # on a bin: every harmonic's peak is one bin, without scalloping
    phase = torch.remainder(2 * math.pi * f0 / SR * torch.arange(n, dtype=torch.float64), 2 * math.pi)
    p = pulse_train(phase[None], torch.full((1, n), f0), SR)[0]
    assert abs(float(p.square().mean()) - 1.0) < 0.01
    spectrum = torch.fft.rfft(p * torch.hann_window(n, dtype=torch.float64)).abs()
    freqs = torch.fft.rfftfreq(n, 1 / SR)
    peaks = [float(spectrum[(freqs - k * f0).abs().argmin()]) for k in range(1, int(TOP * SR / 2 / f0))]
    between = float(spectrum[(freqs - 1.5 * f0).abs().argmin()])
    assert min(peaks) > 0.95 * max(peaks) and between < 1e-3 * max(peaks)  # equal, clean harmonics
    assert float(spectrum[freqs > TOP * SR / 2 + f0].max()) < 1e-3 * max(peaks)  # nothing past the top


def test_mix_keeps_the_power_per_block_and_is_off_at_zero():
    gen = torch.Generator().manual_seed(0)
    e = torch.randn(2, 4096, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3.0, 4096)
    phase = torch.remainder(torch.arange(4096, dtype=torch.float64) * 2 * math.pi / 97.3, 2 * math.pi).expand(2, -1)
    p = pulse_train(phase, torch.full((2, 4096), SR / 97.3), SR)
    voicing = torch.rand(2, 4096, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(harmonic_mix(e, p, voicing, 0.0, 256, SR), e)
    torch.testing.assert_close(harmonic_mix(e, p, torch.zeros_like(voicing), 1.0, 256, SR), e)
    low, high = split(e, SR)
    torch.testing.assert_close(low + high, e)
    # the split: the low part holds what is below the cut-off, the high part what is above
    spectrum = torch.fft.rfft(high[0]).abs().square()
    freqs = torch.fft.rfftfreq(4096, 1 / SR)
    assert float(spectrum[freqs < CUTOFF_HZ - 700].sum()) < 1e-3 * float(spectrum[freqs > CUTOFF_HZ + 700].sum())
    # all pulse train below the cut-off at the low part's level per block, the flow above it
    full = harmonic_mix(e, p, torch.ones_like(voicing), 1.0, 256, SR)
    torch.testing.assert_close(full, block_rms(low, 256) * p + high)
    half = harmonic_mix(e, p, voicing, 0.5, 256, SR)
    ratio = block_rms(half, 256)[:, ::256] / block_rms(e, 256)[:, ::256]
    assert float((ratio - 1).abs().median()) < 0.15  # uncorrelated parts: the power stays


def test_the_blockwise_path_equals_the_definition():
    gen = torch.Generator().manual_seed(1)
    e = torch.randn(2, 3000, generator=gen, dtype=torch.float64)  # not a whole number of blocks
    phase = torch.rand(2, 3000, generator=gen, dtype=torch.float64) * 2 * math.pi
    f0_blocks = 80.0 + 400.0 * torch.rand(2, 12, generator=gen, dtype=torch.float64)
    f0 = f0_blocks.repeat_interleave(256, dim=1)[:, :3000]
    voicing = torch.rand(2, 3000, generator=gen, dtype=torch.float64)
    voicing[:, 1000:2200] = 0.0  # an unvoiced stretch, across block edges
    for strength in (0.4, 1.0):
        want = harmonic_mix(e, pulse_train(phase, f0, SR, pulse_top(SR)), voicing, strength, 256, SR)
        got = harmonic_excitation(e, phase, f0_blocks, voicing, strength, 256, SR)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
        # float32, as the vocoder runs it: within 5e-4 of the peak (measured 1.1e-4, at the pulses
        # where the closed form divides by sin(phase / 2) near 0)
        fast = harmonic_excitation(e.float(), phase.float(), f0_blocks, voicing.float(), strength, 256, SR)
        assert float((fast.double() - want).abs().max()) < 5e-4 * float(want.abs().max())
    assert harmonic_excitation(e, phase, f0_blocks, torch.zeros_like(voicing), 1.0, 256, SR) is e


def test_run_rms_against_a_loop():
    x = torch.randn(1, 1000, dtype=torch.float64)
    got = block_rms(x, 256)[0]
    for start in range(0, 1000, 256):
        block = x[0, start : start + 256]
        torch.testing.assert_close(got[start : start + len(block)], block.square().mean().sqrt().expand(len(block)))


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "1", float("nan")])
def test_bad_strengths_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="harmonic excitation strength"):
        check_harmonic(bad)


def source_vocoder(harmonic: float = 1.0) -> Vocoder:
    cfg = make_config("tiny", {"model": {"lpc_order": 24, "pulse_source": True}, "train": {"eval_harmonic": harmonic}})
    return Vocoder(source_model(lpc_order=24), cfg)


def test_the_step_changes_only_voiced_audio_and_follows_the_checkpoint():
    voc = source_vocoder(1.0)
    voiced = MelSpectrogram()(harmonic_signal(160.0, 0.6))
    silent = torch.full((80, 40), voc.silence)
    assert voc.harmonic_strength == 1.0
    torch.testing.assert_close(voc(voiced, seed=3), voc(voiced, seed=3, harmonic=1.0))
    assert snr_db(voc(voiced, seed=3, harmonic=0.0), voc(voiced, seed=3)) < 20  # voiced: it acts
    torch.testing.assert_close(voc(silent, seed=3, harmonic=0.0), voc(silent, seed=3))  # unvoiced: nothing


@pytest.mark.parametrize("chunk", [1, 7])
def test_streaming_with_harmonic_excitation_equals_offline(chunk):
    voc = source_vocoder(1.0)
    mel = MelSpectrogram()(harmonic_signal(160.0, 0.6))
    offline = voc(mel, seed=3)
    streamed, _ = stream_all(StreamingVocoder(voc, seed=3, lookahead=2, lookback=4), mel, chunk)
    assert streamed.shape == offline.shape
    assert snr_db(offline, streamed) > 80


def test_a_model_without_a_pulse_source_refuses_it():
    from test_vocoder import tiny_vocoder

    voc = tiny_vocoder()
    with pytest.raises(ValueError, match="pulse source"):
        voc(random_mel(8), harmonic=0.5)
    with pytest.raises(ValueError, match="pulse source"):
        StreamingVocoder(voc, harmonic=1.0)
    assert voc(random_mel(8), harmonic=0.0).shape == (8 * 256,)


def test_cli_harmonic_option(tmp_path, capsys):
    cfg = make_config("tiny", {"model": {"lpc_order": 24, "pulse_source": True}})
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "src.pt", source_model(lpc_order=24), cfg)
    np.save(tmp_path / "mel.npy", MelSpectrogram()(harmonic_signal(160.0, 0.4)).numpy())
    outs = {}
    for strength in ("0", "1"):
        out = tmp_path / f"h{strength}.wav"
        done = run_in_process(capsys, "synthesize", tmp_path / "mel.npy", "-o", out, "--checkpoint",
                              tmp_path / "src.pt", "--harmonic", strength)  # fmt: skip
        assert done.returncode == 0, done.stderr
        outs[strength], _ = sf.read(out)
    assert snr_db(outs["0"], outs["1"]) < 20
    bad = run_in_process(capsys, "synthesize", tmp_path / "mel.npy", "-o", tmp_path / "bad.wav", "--checkpoint",
                         tmp_path / "src.pt", "--harmonic", "2")  # fmt: skip
    assert bad.returncode == 1 and "--harmonic must be in [0, 1]" in bad.stderr and not (tmp_path / "bad.wav").exists()
    write_tiny_checkpoint(tmp_path / "plain.pt")
    refused = run_in_process(capsys, "synthesize", tmp_path / "mel.npy", "-o", tmp_path / "p.wav", "--checkpoint",
                             tmp_path / "plain.pt", "--harmonic", "1")  # fmt: skip
    assert refused.returncode == 1 and "pulse source" in refused.stderr and not (tmp_path / "p.wav").exists()

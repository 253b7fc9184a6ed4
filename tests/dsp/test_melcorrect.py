"""Mel correction: the gains against a direct bin-by-bin computation, identity and uniform
gains exactly, the reach its margin promises, the mel it moves toward, and the Vocoder and
streaming paths (the CLI option: test_synthesize_cli)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from test_pitch import harmonic
from test_postfilter import source_vocoder
from test_streaming import assert_post_processing_streams_like_offline
from test_vocoder import random_mel, tiny_vocoder

from waveflow.config import ConfigError, MelConfig, make_config
from waveflow.dsp.audio import MelSpectrogram, mel_filterbank
from waveflow.dsp.melcorrect import MAX_GAIN_DB, MelCorrection
from waveflow.infer.streaming import StreamingVocoder, snr_db

SR = 22050


def voiced(seconds: float = 0.5, seed: int = 0) -> torch.Tensor:
    """A harmonic signal with a slowly varying level and a little noise, float64 ``(1, T)``."""
    x = harmonic(140.0, seconds).double()
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(x.numel(), dtype=torch.float64) / SR
    noise = torch.randn(x.numel(), generator=gen, dtype=torch.float64)
    x = x * (1 + 0.5 * torch.sin(2 * math.pi * 3 * t)) + 0.003 * noise
    return x[: x.numel() // 256 * 256][None]


def reference_correction(x: np.ndarray, target: np.ndarray, cfg: MelConfig, max_db: float) -> np.ndarray:
    """One iteration written out for the default preset: torch.stft/istft, and every bin's
    log-gain as the filterbank-weighted mean over the bands that contain it, one by one."""
    basis = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)
    window = torch.hann_window(cfg.win_length, dtype=torch.float64)
    spec = torch.stft(torch.from_numpy(x), cfg.n_fft, cfg.hop_length, cfg.win_length, window, return_complex=True)
    spec = spec.numpy()
    current = np.log(np.maximum(basis @ np.abs(spec), cfg.clamp_min))
    n = min(current.shape[1], target.shape[1])
    limit = max_db * math.log(10) / 20
    band_gain = np.clip(target[:, :n] - current[:, :n], -limit, limit)
    inside = [b for b in range(basis.shape[1]) if basis[:, b].sum() > 0]
    for f in range(n):
        for b in range(basis.shape[1]):
            src = min(inside, key=lambda i: abs(i - b))  # outside every band: the nearest bin inside one
            w = basis[:, src]
            spec[b, f] *= math.exp(float(w @ band_gain[:, f]) / w.sum())
    out = torch.istft(torch.from_numpy(spec), cfg.n_fft, cfg.hop_length, cfg.win_length, window, length=len(x))
    return out.numpy()


# ------------------------------------------------------------------ the correction itself
def test_one_iteration_equals_the_bin_by_bin_reference():
    cfg = MelConfig()
    x = voiced(0.25)
    mel = MelSpectrogram(cfg)(x)
    target = mel + 0.4 * torch.sin(torch.arange(80, dtype=torch.float64)[:, None] / 7 + torch.arange(mel.shape[2]))
    out = MelCorrection(cfg)(x, target.double(), 1)
    expected = reference_correction(x[0].numpy(), target[0].double().numpy(), cfg, MAX_GAIN_DB)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-9 * np.abs(expected).max())
    assert snr_db(x, out) < 30  # the gains did act


@pytest.mark.parametrize("preset", ["default", "hifigan"])
def test_unit_and_uniform_gains_are_exact(preset):
    """Its own mel as the target gives the input back; the mel plus log c gives c times it (a
    uniform gain is consistent), with c capped at max_gain_db per iteration."""
    cfg = MelConfig(preset=preset)
    correct = MelCorrection(cfg)
    x = voiced(0.3)
    mel = MelSpectrogram(cfg)(x).double()
    tol = 1e-7  # the float32 mel's rounding (1e-7 in log) is the only error
    torch.testing.assert_close(correct(x, mel, 3), x, atol=tol, rtol=0)
    torch.testing.assert_close(correct(x, mel + math.log(0.5), 1), 0.5 * x, atol=tol, rtol=0)
    cap = 10 ** (MAX_GAIN_DB / 20)
    torch.testing.assert_close(correct(x, mel + 10.0, 1), cap * x, atol=tol, rtol=0)
    torch.testing.assert_close(correct(x, mel + 10.0, 2), cap**2 * x, atol=tol, rtol=0)
    assert correct(x.float(), mel.float(), 2).dtype == torch.float32


def test_a_sample_reaches_no_further_than_the_margin():
    cfg = MelConfig()
    correct = MelCorrection(cfg)
    x = voiced(0.8)
    mel = MelSpectrogram(cfg)(x).double()
    target = mel - 0.3 + 0.2 * torch.randn(mel.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    at = 9000
    bumped = x.clone()
    bumped[0, at] += 0.05
    for iterations in (1, 2):
        diff = (correct(bumped, target, iterations) - correct(x, target, iterations))[0].abs()
        reach = correct.margin(iterations)
        assert diff[: at - reach].max() == 0 and diff[at + reach + 1 :].max() == 0
        assert diff[at - reach // 2 : at + reach // 2].max() > 0


@pytest.mark.parametrize("iterations", [1, 3])
def test_a_trimmed_window_gives_the_whole_signal_s_samples_away_from_its_ends(iterations):
    """What streaming relies on: a window cut from a longer signal on frame boundaries, with its
    ends trimmed each iteration, equals the whole signal's correction beyond the margin."""
    cfg = MelConfig()
    correct = MelCorrection(cfg)
    x = voiced(1.2)
    target = MelSpectrogram(cfg)(x).double() - 0.4
    whole = correct(x, target, iterations)
    lo, hi = 20 * 256, x.shape[1] - 16 * 256  # frame boundaries inside the signal
    window = correct(x[:, lo:hi], target[:, :, lo // 256 :], iterations, trim_start=True, trim_end=True)
    trimmed = (iterations - 1) * correct.step_reach
    assert window.shape[1] == hi - lo - 2 * trimmed
    margin = correct.margin(iterations)
    inner = window[:, margin - trimmed : window.shape[1] - (margin - trimmed)]
    torch.testing.assert_close(inner, whole[:, lo + margin : hi - margin], atol=1e-9, rtol=0)


def test_iterations_move_the_mel_toward_the_target():
    """From a flat-spectrum signal toward a voice's mel, each iteration closer."""
    cfg = MelConfig()
    correct, analyse = MelCorrection(cfg), MelSpectrogram(cfg)
    target = analyse(voiced(0.5)).double()
    length = (target.shape[2] - 1) * 256  # as many frames as the target
    x = 0.05 * torch.randn(1, length, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    distances = [float((analyse(correct(x, target, k)) - target).abs().mean()) for k in (0, 1, 2, 4)]
    assert all(a > b for a, b in itertools.pairwise(distances)), distances
    assert distances[-1] < 0.4 * distances[0], distances


def test_bad_calls_say_what_was_expected():
    correct = MelCorrection(MelConfig())
    x, mel = torch.zeros(1, 1024), torch.zeros(1, 80, 5)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="mel correction iterations must be an integer >= 0"):
            correct(x, mel, bad)
    with pytest.raises(ValueError, match=r"takes audio \(B, T\) and mel \(B, 80, frames\)"):
        correct(x, torch.zeros(1, 40, 5), 1)
    with pytest.raises(ValueError, match="max_gain_db must be > 0"):
        MelCorrection(MelConfig(), max_gain_db=0)
    assert correct(torch.zeros(1, 100), torch.zeros(1, 80, 1), 2).abs().max() == 0  # shorter than the padding


# ------------------------------------------------------------------ through the vocoder
def test_vocoder_takes_the_iterations_from_the_checkpoint_and_from_the_call():
    voc = source_vocoder(eval_postfilter=0.5, eval_mel_correction=2)
    mel = MelSpectrogram()(harmonic(160.0, 0.5))
    default = voc(mel, seed=2)
    torch.testing.assert_close(default, voc(mel, seed=2, mel_correction=2))
    raw = voc(mel, seed=2, mel_correction=0)
    torch.testing.assert_close(default, voc.mel_correction(raw[None], mel[None], 2)[0])

    def distance(k: int) -> float:
        return float((MelSpectrogram()(voc(mel, seed=2, mel_correction=k))[:, :-1] - mel).abs().mean())

    distances = {k: distance(k) for k in (0, 2)}
    assert distances[2] < 0.7 * distances[0], distances
    with pytest.raises(ValueError, match="mel correction iterations must be an integer >= 0"):
        voc(mel, mel_correction=-1)
    with pytest.raises(ValueError, match="mel correction iterations must be an integer >= 0"):
        StreamingVocoder(voc, mel_correction=1.5)
    with pytest.raises(ConfigError, match="eval_mel_correction"):
        make_config("tiny", {"train": {"eval_mel_correction": -1}})
    assert tiny_vocoder().mel_correction_iterations == 0  # off unless a checkpoint asks for it


@pytest.mark.parametrize("chunk", [1, 7, 40])
def test_streaming_with_the_mel_correction_equals_offline(chunk):
    voc = source_vocoder(eval_postfilter=0.5, eval_mel_correction=2)
    mel = MelSpectrogram()(harmonic(130.0, 0.9))
    margin = voc.postfilter.margin + voc.mel_correction.margin(2)
    assert_post_processing_streams_like_offline(voc, mel, chunk, {"mel_correction": 0}, 40, margin)


def test_mel_correction_on_any_model_and_a_clip_of_three_frames():
    """(A padded batch with it equals the clips one by one: test_postfilter.)"""
    voc, mel = tiny_vocoder(), random_mel(3)
    out = voc(mel, seed=0, mel_correction=2, limit=False)  # the limiter comes after, on the whole output
    assert out.shape == (3 * 256,) and torch.isfinite(out).all()
    raw = voc(mel, seed=0, mel_correction=0, limit=False)
    assert snr_db(raw, out) < 20  # it acts
    torch.testing.assert_close(out, voc.mel_correction(raw[None], mel[None], 2)[0])
    # and moves the output's mel toward the one asked for
    mel = random_mel(40, seed=1)
    raw, out = voc(mel, seed=0, mel_correction=0), voc(mel, seed=0, mel_correction=2)

    def distance(audio: torch.Tensor) -> float:
        return float((MelSpectrogram()(audio)[:, :-1] - mel).abs().mean())

    assert distance(out) < 0.8 * distance(raw), (distance(out), distance(raw))

"""The pulse-train control: a periodic excitation of the given pitch, noise where unvoiced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from waveflow.config import MelConfig, make_config
from waveflow.dsp.audio import load_wav
from waveflow.dsp.limiter import soft_limit
from waveflow.dsp.pulsetrain import (
    excitation_vocoder,
    mel_tracks,
    pulse_noise,
    pulse_noise_vocoder,
    recorded_residual,
)
from waveflow.infer.vocoder import Vocoder
from waveflow.nn.model import WaveGlow

SR, HOP = 22050, 256


def test_voicing_mixes_unit_power_pulses_and_noise_exactly():
    frames, length = 40, 40 * HOP
    f0 = np.full(frames, SR / 147)  # 150 Hz: a period of 147 samples
    pulses = pulse_noise(f0, np.ones(frames), length, SR, HOP, seed=3)
    noise = pulse_noise(f0, np.zeros(frames), length, SR, HOP, seed=3)
    np.testing.assert_allclose(noise, np.random.default_rng(3).standard_normal(length).astype(np.float32))
    mixed = pulse_noise(f0, np.full(frames, 0.25), length, SR, HOP, seed=3)
    np.testing.assert_allclose(mixed, 0.5 * pulses + np.sqrt(0.75) * noise, atol=1e-6)
    assert np.mean(pulses.astype(np.float64) ** 2) == pytest.approx(1.0, rel=0.02)
    # a pulse every 147 samples, harmonics at every multiple of 150 Hz up to 0.95 Nyquist
    peaks = [i * 147 + int(np.argmax(pulses[i * 147 : (i + 1) * 147])) for i in range(5, 60)]
    assert set(np.diff(peaks)) <= {146, 147, 148}
    spectrum = np.abs(np.fft.rfft(pulses[: 147 * 60]))  # 60 whole periods: harmonic k in bin 60 k
    harmonics, between = spectrum[60 : 60 * 65 : 60], spectrum[90 : 60 * 65 : 60]
    assert harmonics.min() > 100 * between.max()


def test_f0_follows_the_frames_and_runs_through_unvoiced_gaps():
    frames = 30
    f0 = np.where(np.arange(frames) < 15, 100.0, 200.0)
    voicing = np.ones(frames)
    f0[5:8], voicing[5:8] = 0.0, 0.0  # a gap: F0 unknown there
    e = pulse_noise(f0, voicing, frames * HOP, SR, HOP, seed=0)
    assert np.isfinite(e).all() and (e[5 * HOP + 64 : 7 * HOP - 64] != 0).all()  # noise in the gap
    # the pulse spacing is the period of the frame around it: 220.5 samples, then 110.25
    peaks = lambda lo, hi, w: [i for i in range(lo, hi) if e[i] == e[i - w : i + w + 1].max() > e[i - 1]]
    before, after = peaks(2 * HOP, 4 * HOP, 110), peaks(20 * HOP, 28 * HOP, 55)
    assert 219 <= np.diff(before).mean() <= 222 and 109 <= np.diff(after).mean() <= 112
    with pytest.raises(ValueError, match="one length"):
        pulse_noise(f0, voicing[:-1], 100, SR, HOP)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pulse_noise(f0, voicing * 2, 100, SR, HOP)


def lpc_vocoder(**train) -> Vocoder:
    cfg = make_config("tiny", {"model": {"lpc_order": 16}, "train": train})
    torch.manual_seed(0)
    return Vocoder(WaveGlow(cfg.model), cfg)


def test_control_keeps_the_pitch_it_is_given_through_lp_and_post_processing(clip):
    pytest.importorskip("pyworld")
    from waveflow.train.evaluate import harvest_f0, pitch_agreement

    audio = load_wav(clip)[22050 : 22050 + 33075]  # 1.5 s of speech
    voc = lpc_vocoder(eval_postfilter=0.5, eval_mel_correction=2)
    mel = voc.mel(audio)
    f0 = harvest_f0(audio, SR, HOP)
    out = pulse_noise_vocoder(voc, mel, f0, (f0 > 0).astype(np.float64), seed=0)
    assert out.shape == (mel.shape[1] * HOP,) and np.isfinite(out).all()
    # the soft limiter comes last, as in the vocoder
    raw = pulse_noise_vocoder(voc, mel, f0, (f0 > 0) * 1.0, seed=0, limit=False)
    np.testing.assert_array_equal(out, soft_limit(torch.from_numpy(raw)).numpy())
    # the post-filter reads the model's tracker unless told otherwise
    np.testing.assert_array_equal(out, pulse_noise_vocoder(voc, mel, f0, (f0 > 0) * 1.0, seed=0, tracker="comb"))
    other = pulse_noise_vocoder(voc, mel, f0, (f0 > 0) * 1.0, seed=0, tracker="template")
    assert np.abs(other - out).max() > 1e-3
    got = pitch_agreement(f0, harvest_f0(out[: len(audio)], SR, HOP))
    assert got["voiced_recall"] > 0.8 and got["f0_median_cents"] < 10, got
    # the LP filter gives the recording's level: the mel of the control is close to the original
    assert np.abs(voc.mel(out[: len(audio)]) - mel).mean() < 0.6
    # the mel's own tracks (MelPitch) drive the other control; F0 in MelPitch's search range
    for tracker in ("comb", "template"):
        mel_f0, mel_voicing = mel_tracks(mel, MelConfig(), tracker)
        assert mel_f0.shape == mel_voicing.shape == (mel.shape[1],) and 60 < mel_f0.min() <= mel_f0.max() < 600
        assert 0 <= mel_voicing.min() and mel_voicing.max() <= 1 and mel_voicing.max() > 0.5
    with pytest.raises(ValueError, match="linear prediction"):
        pulse_noise_vocoder(Vocoder(WaveGlow(make_config("tiny").model), make_config("tiny")), mel, f0, f0 > 0)


def test_the_recorded_residual_gives_the_recording_back(clip):
    """The ceiling control: the recording's LP residual under the mel's filter, through the
    synthesis filter alone, is the recording (cut to the mel's frames); with post-processing it
    stays close, and a residual of the wrong length is refused."""
    audio = load_wav(clip)[: 40 * HOP + 100]
    bare = lpc_vocoder(eval_postfilter=0.0, eval_mel_correction=0)
    mel = bare.mel(audio)
    e = recorded_residual(bare, audio, mel)
    assert e.shape == (mel.shape[1] * HOP,) and 0.1 < np.sqrt(np.mean(e.astype(np.float64) ** 2)) < 10
    back = excitation_vocoder(bare, mel, e, limit=False)
    padded = np.pad(audio, (0, len(e) - len(audio)))
    assert np.abs(back - padded).max() < 1e-4 * np.abs(audio).max()
    post = excitation_vocoder(lpc_vocoder(eval_postfilter=0.5, eval_mel_correction=2), mel, e)
    assert 0 < np.abs(post - padded).max() and np.abs(bare.mel(post[: len(audio)]) - mel).mean() < 0.1
    with pytest.raises(ValueError, match=r"expected \(\d+,\): hop samples per frame"):
        excitation_vocoder(bare, mel, e[:-1])

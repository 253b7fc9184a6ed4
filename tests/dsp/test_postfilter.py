"""The harmonic post-filter: its response against the closed form, identity where it must not act,
the comb placed by the mel's own pitch, streaming equal to offline, and its options through the
Vocoder and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_pitch import harmonic
from test_source import source_model
from test_streaming import assert_post_processing_streams_like_offline
from test_vocoder import random_mel, tiny_vocoder

from waveflow.config import ConfigError, make_config
from waveflow.dsp.audio import MelSpectrogram
from waveflow.dsp.pitch import PERIODS, REFERENCE_HZ
from waveflow.dsp.postfilter import FIR_HALF, HarmonicPostfilter, default_cutoff, lowpass_taps
from waveflow.infer.streaming import StreamingVocoder, snr_db
from waveflow.infer.vocoder import Vocoder

SR = 22050


def tone(freq: float, length: int = 8192, phase: float = 0.3) -> torch.Tensor:
    return torch.cos(2 * math.pi * freq * torch.arange(length, dtype=torch.float64) / SR + phase).float()[None]


def constant_tracks(period: int, length: int, voicing: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((1, length), period, dtype=torch.long), torch.full((1, length), voicing)


def interior_gain(x: torch.Tensor, y: torch.Tensor, guard: int) -> float:
    """Output/input amplitude over the samples the ends cannot reach (least squares)."""
    x, y = x[0, guard:-guard].double(), y[0, guard:-guard].double()
    return float((x @ y) / (x @ x))


# ------------------------------------------------------------------ the filter itself
@pytest.mark.parametrize("strength", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("cycles", [1.0, 1.5, 2.25, 3.0])
def test_low_band_response_is_the_two_sided_comb(strength, cycles):
    """A tone at ``cycles`` / T below the cut-off comes out scaled by 1 + s (cos(2 pi f T) - 1):
    1 on the harmonics, 1 - 2 s half-way between them."""
    pf, period = HarmonicPostfilter(), 100
    freq = cycles * SR / period  # 220.5 .. 661.5 Hz, far below the 8 kHz cut-off
    x = tone(freq)
    y = pf.apply(x, *constant_tracks(period, x.shape[1]), strength)
    expected = 1 + strength * (math.cos(2 * math.pi * freq * period / SR) - 1)
    assert interior_gain(x, y, pf.margin) == pytest.approx(expected, abs=5e-3)
    inner = slice(pf.margin, -pf.margin)  # zero phase: nothing left beside the scaled tone
    assert (y[0, inner] - expected * x[0, inner]).abs().max() < 5e-3


def test_the_filter_matches_a_direct_sum_sample_by_sample():
    """Brute force: the FIR over the comb difference, written out as a plain double loop."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 700, generator=gen)
    period = torch.randint(40, 321, (1, 700), generator=gen)
    voicing = torch.rand(1, 700, generator=gen)
    y = HarmonicPostfilter(cutoff_hz=3000.0).apply(x, period, voicing, 0.7)
    xs, ps, taps = x[0].double().numpy(), period[0].numpy(), lowpass_taps(3000.0, SR).numpy()
    n_all = len(xs)

    def tap(n: int, m: int) -> float:
        return xs[m] if 0 <= m < n_all else xs[n]

    d = np.array([0.5 * (tap(n, n - ps[n]) + tap(n, n + ps[n])) - xs[n] for n in range(n_all)])
    reach = range(-FIR_HALF, FIR_HALF + 1)

    def lowpass(s: np.ndarray) -> np.ndarray:  # the input held at the ends
        held = lambda m: s[min(max(m, 0), n_all - 1)]
        return np.array([sum(taps[j + FIR_HALF] * held(n - j) for j in reach) for n in range(n_all)])

    a = 0.7 * voicing[0].double().numpy()
    # the comb below the cut-off; above it the comb's rms gain on white noise, (1 - a + a cos)^2 averaged:
    # g x + lowpass(a d + (1 - g) x), the low-pass's input held at the ends
    high_gain = np.sqrt(1 - 2 * a + 1.5 * a**2)
    expected = high_gain * xs + lowpass(a * d + (1 - high_gain) * xs)
    np.testing.assert_allclose(y[0].double().numpy(), expected, atol=2e-6)


def test_the_margin_is_the_filters_exact_reach():
    """An output sample depends on input up to ``margin`` samples away (the longest period plus the
    FIR's half-length) and no further: what a stream must hold back, exactly."""
    pf, n = HarmonicPostfilter(), 2000
    period, voicing = constant_tracks(PERIODS[1], 4000)
    x = torch.zeros(1, 4000)
    for side in (1, -1):
        for distance, reaches in ((pf.margin, True), (pf.margin + 1, False)):
            y = x.clone()
            y[0, n + side * distance] = 1.0
            assert bool(pf.apply(y, period, voicing, 1.0)[0, n] != 0) == reaches, (side, distance)


def test_identity_where_it_must_not_act():
    pf = HarmonicPostfilter(cutoff_hz=2000.0)
    x = torch.randn(1, 5000, generator=torch.Generator().manual_seed(1))
    period, voicing = constant_tracks(150, 5000)
    assert torch.equal(pf.apply(x, period, voicing, 0.0), x)  # strength 0
    assert torch.equal(pf.apply(x, period, torch.zeros_like(voicing), 1.0), x)  # unvoiced
    const = torch.full((1, 5000), 0.3)
    torch.testing.assert_close(pf.apply(const, period, voicing, 1.0), const)  # no comb difference, ends included
    high = tone(6000.0)  # far above the cut-off: no comb, only the band's gain (next test)
    out = pf.apply(high, *constant_tracks(150, high.shape[1]), 1.0)
    assert abs(interior_gain(high, out, pf.margin) - math.sqrt(0.5)) < 0.01
    inner = slice(pf.margin, -pf.margin)
    assert (out[0, inner] - math.sqrt(0.5) * high[0, inner]).abs().max() < 0.01  # scaled, not combed
    # the default cut-off is the mel's top: a tone half-way between two harmonics near 6 kHz
    # (40.5 cycles in a period of 150 samples) is nulled there, one above the mel's top passes
    default, mid = HarmonicPostfilter(), tone(40.5 * SR / 150)
    assert abs(interior_gain(mid, default.apply(mid, *constant_tracks(150, mid.shape[1]), 0.5), pf.margin)) < 0.02
    top = tone(10000.0)
    out = default.apply(top, *constant_tracks(150, top.shape[1]), 0.5)
    assert abs(interior_gain(top, out, pf.margin) - math.sqrt(0.375)) < 0.02


@pytest.mark.parametrize("strength", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("voicing", [0.4, 1.0])
def test_above_the_cut_off_the_band_keeps_its_balance_with_the_band_below(strength, voicing):
    """The comb takes from white noise below the cut-off the mean over f of
    (1 - a + a cos(2 pi f T))^2, 1 - 2a + 1.5a^2 for a = strength * voicing; the band above is
    scaled by the same power (a tone there by its square root), so that noise keeps its spectral
    balance across the cut-off and the mel correction's lift, which the band above takes from the
    band below, does not over-raise it."""
    pf, period = HarmonicPostfilter(cutoff_hz=4000.0), 123
    a = strength * voicing
    want_db = 10 * math.log10(1 - 2 * a + 1.5 * a * a)
    x = tone(7000.0, 16384)
    y = pf.apply(x, *constant_tracks(period, x.shape[1], voicing), strength)
    assert 20 * math.log10(interior_gain(x, y, pf.margin)) == pytest.approx(want_db, abs=0.05)
    noise = torch.randn(1, 2**17, generator=torch.Generator().manual_seed(3))
    out = pf.apply(noise, *constant_tracks(period, noise.shape[1], voicing), strength)
    spec_in, spec_out = (np.abs(np.fft.rfft(s[0, 4096:-4096].double().numpy())) ** 2 for s in (noise, out))
    freqs = np.fft.rfftfreq(noise.shape[1] - 8192, 1 / SR)
    for band in ((200, 3700), (4400, 10500)):  # clear of the FIR's transition band
        keep = (freqs > band[0]) & (freqs < band[1])
        got = 10 * np.log10(spec_out[keep].sum() / spec_in[keep].sum())
        assert got == pytest.approx(want_db, abs=0.2), band


def test_the_default_cut_off_is_the_mels_top_below_nyquist():
    assert HarmonicPostfilter().cutoff_hz == 8000.0  # the default mel's f_max
    assert HarmonicPostfilter(f_max=6000.0).cutoff_hz == 6000.0
    assert HarmonicPostfilter(sample_rate=16000, f_max=8000.0).cutoff_hz == pytest.approx(7200.0)  # 0.9 Nyquist
    assert default_cutoff(22050, 11025.0) == pytest.approx(0.9 * 11025)
    assert HarmonicPostfilter(cutoff_hz=2000.0).cutoff_hz == 2000.0


def test_the_mel_pitch_places_the_comb_on_a_voice():
    """On a harmonic voice plus noise, from its own mel: the harmonics stay, the noise between
    them in the low band drops, the band above the cut-off is scaled as noise below it is."""
    f0, seconds = 150.0, 1.0
    clean = harmonic(f0, seconds)
    noise = 0.01 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    audio = (clean + noise)[None]
    mel = MelSpectrogram()(audio)
    out = HarmonicPostfilter(cutoff_hz=2000.0)(audio, mel, 0.5)
    spec_in, spec_out = (np.abs(np.fft.rfft(s[0, 2048:-2048].double().numpy())) ** 2 for s in (audio, out))
    freqs = np.fft.rfftfreq(audio.shape[1] - 4096, 1 / SR)
    harmonics = np.isclose(freqs[:, None], f0 * np.arange(1, 13)[None], atol=3).any(1)
    between = np.isclose(freqs[:, None], f0 * (np.arange(1, 12)[None] + 0.5), atol=30).any(1)
    kept = 10 * np.log10(spec_out[harmonics].sum() / spec_in[harmonics].sum())
    dropped = 10 * np.log10(spec_out[between].sum() / spec_in[between].sum())
    above = (freqs > 3000) & (freqs < 8000)
    scaled = 10 * np.log10(spec_out[above].sum() / spec_in[above].sum())
    assert abs(kept) < 0.5, kept
    assert dropped < -10, dropped
    assert scaled == pytest.approx(10 * np.log10(0.375), abs=0.2)  # no comb, the noise's balance kept


@pytest.mark.parametrize("f0", [110.0, 120.0, 130.0, 150.0, 183.0, 200.0, 220.0])
def test_the_comb_period_is_the_pitch_trackers_own_period(f0):
    """The pitch tracker picks a whole period T and encodes it as log(sr / T) - log(200); the comb
    must use that same T. Decoding in floating point lands a hair below T at some F0s (120, 130,
    183, 200, 220 Hz, whose true periods fall between integers) and a hair above at others, so a
    period truncated instead of rounded is one sample short there only. The reference decodes
    by brute force: the candidate period whose encoding is nearest the feature."""
    pf = HarmonicPostfilter()
    mel = MelSpectrogram()(harmonic(f0, 0.5))[None]
    feature = pf.pitch(mel)[0, 0].double().numpy()
    candidates = np.arange(PERIODS[0], PERIODS[1] + 1)
    encoded = np.log(SR / candidates) - np.log(REFERENCE_HZ)
    expected = candidates[np.abs(feature[:, None] - encoded[None]).argmin(1)]
    period, voicing = pf.frame_tracks(mel)
    assert period.dtype == torch.long
    np.testing.assert_array_equal(period[0].numpy(), expected)
    inner = period[0, 5:-5].double()
    assert ((inner - SR / f0).abs() <= 1).all() and float(voicing[0, 5:-5].min()) > 0.9  # the voice's own period
    # and per sample, each sample's frame's period
    per_sample, _ = pf.sample_tracks(period, voicing, 0, 20 * 256)
    frames = (torch.arange(20 * 256) + 128) // 256
    assert torch.equal(per_sample[0], period[0, frames])


def test_silence_stays_silent_and_bad_calls_say_what_was_expected():
    pf = HarmonicPostfilter()
    mel = torch.full((1, 80, 20), math.log(1e-5))
    assert torch.equal(pf(torch.zeros(1, 20 * 256), mel, 0.5), torch.zeros(1, 20 * 256))
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        pf(torch.zeros(1, 256), mel, 1.5)
    with pytest.raises(ValueError, match="audio \\(B, T\\) and mel"):
        pf(torch.zeros(256), mel, 0.5)
    with pytest.raises(ValueError, match="cut-off"):
        HarmonicPostfilter(cutoff_hz=20000.0)


# ------------------------------------------------------------------ through the vocoder
def source_vocoder(**train) -> Vocoder:
    cfg = make_config("tiny", {"model": {"lpc_order": 8, "pulse_source": True}, "train": train})
    return Vocoder(source_model(), cfg)


def test_vocoder_takes_the_strength_from_the_checkpoint_and_from_the_call():
    voc = source_vocoder(eval_postfilter=0.5)
    mel = MelSpectrogram()(harmonic(160.0, 0.5))
    default = voc(mel, seed=2)
    torch.testing.assert_close(default, voc(mel, seed=2, postfilter=0.5))
    raw = voc(mel, seed=2, postfilter=0.0)
    assert snr_db(raw, default) < 60  # the filter acts on a voiced mel
    expected = voc.postfilter(raw[None], mel[None], 0.5)[0]
    torch.testing.assert_close(default, expected)
    with pytest.raises(ValueError, match=r"postfilter strength must be a number in \[0, 1\]"):
        voc(mel, postfilter=-0.1)
    with pytest.raises(ValueError, match=r"postfilter strength must be a number in \[0, 1\]"):
        StreamingVocoder(voc, postfilter=2.0)
    with pytest.raises(ConfigError, match="eval_postfilter"):
        make_config("tiny", {"train": {"eval_postfilter": 1.5}})
    assert tiny_vocoder().postfilter_strength == 0.0  # off unless a checkpoint asks for it


@pytest.mark.parametrize("chunk", [1, 6, 17])
def test_streaming_with_the_postfilter_equals_offline(chunk):
    voc = source_vocoder(eval_postfilter=0.5)
    mel = MelSpectrogram()(harmonic(130.0, 0.7))
    assert_post_processing_streams_like_offline(voc, mel, chunk, {"postfilter": 0.0}, 60, voc.postfilter.margin)


@pytest.mark.parametrize("train", [{"eval_postfilter": 0.5}, {"eval_mel_correction": 3}])
def test_padded_batch_with_post_processing_equals_one_by_one(train):
    """Each stage (the harmonic post-filter, the mel correction) runs clip by clip."""
    voc = source_vocoder(**train)
    long, short = MelSpectrogram()(harmonic(160.0, 0.5)), MelSpectrogram()(harmonic(120.0, 0.3))
    batched = voc([long, short], seed=1)
    torch.testing.assert_close(batched[1], voc(short, seed=1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched[0], voc(long, seed=1), atol=1e-5, rtol=1e-4)


def test_postfilter_on_a_model_without_pitch_conditioning():
    """Any model can use it: the tracks come from the mel, not from the model."""
    voc = tiny_vocoder()
    mel = MelSpectrogram()(harmonic(150.0, 0.3))
    out = voc(mel, seed=0, postfilter=1.0, limit=False)  # the limiter comes after, on the whole output
    assert out.shape == (mel.shape[1] * 256,) and torch.isfinite(out).all()
    raw = voc(mel, seed=0, postfilter=0.0, limit=False)
    assert snr_db(raw, out) < 40  # it acts on a voiced mel
    torch.testing.assert_close(out, voc.postfilter(raw[None], mel[None], 1.0)[0])
    assert voc(random_mel(12), seed=0, postfilter=1.0).shape == (12 * 256,)

"""Linear prediction from the mel: exact log-det, exact inverse, state carried across calls,
bounded output for any finite mel, and the model, vocoder, streaming and export paths with it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import brute_force_logdet, perturb_
from test_streaming import stream_all
from test_vocoder import random_mel

from waveflow.config import ConfigError, MelConfig, make_config, model_preset
from waveflow.dsp.audio import MelSpectrogram, load_wav
from waveflow.infer.streaming import StreamingVocoder, snr_db
from waveflow.infer.vocoder import Vocoder
from waveflow.nn.lpc import LinearPrediction, _affine_scan, _levinson_functional, _zero_input_response, levinson
from waveflow.nn.model import WaveGlow
from waveflow.train.data import Clip, SegmentBatches

# A miniature convention (hop 16, 32-point FFT, 8 mels) keeps brute-force Jacobians small.
SMALL = dict(n_mels=8, sample_rate=1600, n_fft=32, win_length=32, hop_length=16, f_min=0.0, f_max=600.0)


def small_lp(order: int = 4, **kwargs) -> LinearPrediction:
    return LinearPrediction(order, **{**SMALL, **kwargs})


def speechlike(length: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Noise through a resonator whose frequency drifts: a signal linear prediction can model."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(length, generator=gen, dtype=torch.float64).numpy()
    out = np.zeros(length)
    for n in range(2, length):
        theta = 0.4 + 0.3 * math.sin(n / 200)
        out[n] = noise[n] + 1.8 * 0.95 * math.cos(theta) * out[n - 1] - 0.95**2 * out[n - 2]
    return torch.from_numpy(out / np.abs(out).max() * 0.5).to(dtype)


def mel_of(audio: torch.Tensor, **conv) -> torch.Tensor:
    cfg = MelConfig(**conv) if conv else MelConfig()
    return MelSpectrogram(cfg)(audio.float().reshape(1, -1))


def reference_synthesis(u: np.ndarray, a_per_sample: np.ndarray, state: np.ndarray) -> np.ndarray:
    """x[n] = u[n] - sum_k a_k(n) x[n - k], one sample at a time (the definition)."""
    p = state.shape[0]
    x = np.concatenate([state, np.zeros(u.shape[0])])
    for n in range(u.shape[0]):
        a = a_per_sample[n]
        x[p + n] = u[n] - sum(a[k] * x[p + n - k] for k in range(1, p + 1))
    return x[p:]


# ------------------------------------------------------------------ DSP
@pytest.mark.parametrize("path", ["in place", "functional"])
def test_levinson_solves_the_normal_equations(path):
    """Both implementations: in place for inference, and the one tracing and autograd take."""
    gen = torch.Generator().manual_seed(0)
    sig = torch.randn(3, 400, generator=gen, dtype=torch.float64).cumsum(1)
    p = 6
    r = torch.stack([(sig[:, : 400 - k] * sig[:, k:]).sum(1) for k in range(p + 1)], dim=1)
    a, err = levinson(r, p) if path == "in place" else _levinson_functional(r, p)
    assert a.dtype == err.dtype == torch.float64 and a.shape == (3, p + 1) and err.shape == (3,)
    for b in range(3):
        toeplitz = torch.tensor([[float(r[b, abs(i - j)]) for j in range(p)] for i in range(p)], dtype=torch.float64)
        expected = torch.linalg.solve(toeplitz, -r[b, 1:])
        torch.testing.assert_close(a[b, 1:], expected, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(err[b], r[b, 0] + (a[b, 1:] * r[b, 1:]).sum(), rtol=1e-9, atol=1e-9)
        roots = np.roots(a[b].numpy())  # minimum phase: 1/A(z) is stable
        assert np.abs(roots).max() < 1


@pytest.mark.parametrize("n", [1, 2, 3, 13, 16, 37])
def test_scan_equals_the_sequential_recurrence_and_extra_levels_change_nothing(n):
    """Both scans (the tree, and the fixed-depth one export traces) against the recurrence, at
    lengths that are and are not powers of two (the tree pads odd levels)."""
    gen = torch.Generator().manual_seed(n)
    m = torch.randn(2, n, 3, 3, generator=gen, dtype=torch.float64) * 0.5
    c = torch.randn(2, n, 3, generator=gen, dtype=torch.float64)
    s, expected = torch.zeros(2, 3, dtype=torch.float64), []
    for b in range(n):
        s = (m[:, b] @ s.unsqueeze(-1)).squeeze(-1) + c[:, b] if b else c[:, 0]
        expected.append(s)
    torch.testing.assert_close(_affine_scan(m, c), torch.stack(expected, 1))
    torch.testing.assert_close(_affine_scan(m, c, levels=16), torch.stack(expected, 1))


@pytest.mark.parametrize(("order", "length"), [(3, 11), (5, 8), (24, 32), (4, 4)])
def test_zero_input_response_equals_the_recursion_from_each_unit_state(order, length):
    """The doubling against the filter run sample by sample from every unit state, at lengths
    below, at and past 2 * order (where a step's state is all rows of Z)."""
    gen = torch.Generator().manual_seed(order)
    r = torch.randn(2, 3, 400, generator=gen, dtype=torch.float64).cumsum(-1)
    r = torch.stack([(r[..., : 400 - k] * r[..., k:]).sum(-1) for k in range(order + 1)], -1)
    a, _ = levinson(r, order)
    z = _zero_input_response(a, length)
    assert z.shape == (2, 3, length, order)
    for col in range(order):
        state = np.zeros(order)
        state[col] = 1.0
        for b, f in np.ndindex(2, 3):
            coeffs = np.repeat(a[b, f].numpy()[None], length, axis=0)
            expected = reference_synthesis(np.zeros(length), coeffs, state)
            np.testing.assert_allclose(z[b, f, :, col].numpy(), expected, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("start", [0, 5, 8, 37])
def test_synthesis_equals_the_per_sample_definition(start):
    lp = small_lp(order=5)
    audio = speechlike(700, seed=2)
    mel = mel_of(audio, **SMALL)
    a, g = lp.coefficients(mel)
    gen = torch.Generator().manual_seed(3)
    e = torch.randn(1, 300, generator=gen, dtype=torch.float64)
    state = torch.randn(1, 5, generator=gen, dtype=torch.float64) * 0.1
    x, new_state = lp.synthesize(e, a, g, start=start, state=state)
    idx = lp.frame_index(start, 300, a.shape[1], e.device)
    u = (e[0] * g[0, idx]).numpy()
    expected = reference_synthesis(u, a[0, idx].numpy(), state[0].numpy())
    np.testing.assert_allclose(x[0].numpy(), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(new_state[0].numpy(), expected[-5:], atol=1e-10)


def test_analysis_log_det_equals_the_brute_force_jacobian():
    lp = small_lp(order=4)
    audio = speechlike(120, seed=4)
    mel = mel_of(audio, **SMALL)
    context = torch.randn(1, 4, dtype=torch.float64) * 0.1
    _, logdet = lp(audio[None], mel, context)
    brute = brute_force_logdet(lambda x: lp(x, mel, context)[0], audio[None])
    assert abs(float(logdet[0]) - float(brute)) < 1e-6 * max(1.0, abs(float(brute)))
    assert abs(float(brute)) > 1.0  # not a volume-preserving map: the test can fail


def test_inverse_of_forward_is_identity_with_context_and_across_calls():
    lp = small_lp(order=4)
    audio = speechlike(900, seed=5)
    mel = mel_of(audio, **SMALL)
    a, g = lp.coefficients(mel)
    whole_e, _ = lp(audio[None], mel)
    whole = lp.inverse(whole_e, mel)
    torch.testing.assert_close(whole[0], audio, rtol=0, atol=1e-9)
    # Synthesis from the middle, from the true state, gives the rest of the clip.
    x, _ = lp.synthesize(whole_e[:, 200:], a, g, start=200, state=audio[None, 196:200])
    torch.testing.assert_close(x[0], audio[200:], rtol=0, atol=1e-9)
    # A segment analysed with its real context (as in training) has the clip's residual there.
    mel_seg = mel_of(audio[208:], **SMALL)
    e_seg, _ = lp(audio[None, 208:], mel_seg, audio[None, 204:208])
    e_zero, _ = lp(audio[None, 208:], mel_seg)
    a_seg, g_seg = lp.coefficients(mel_seg)
    assert not torch.allclose(e_seg[:, :4], e_zero[:, :4])  # the context is used
    torch.testing.assert_close(e_seg[:, 4:], e_zero[:, 4:])  # and only for the first p samples
    back, _ = lp.synthesize(e_seg, a_seg, g_seg, state=audio[None, 204:208])
    torch.testing.assert_close(back[0], audio[208:], rtol=0, atol=1e-9)
    # The whole clip in one call equals pieces with the state carried (pieces shorter than p too).
    pieces, state, at = [], None, 0
    for size in (3, 1, 50, 17, 300, 529):
        piece, state = lp.synthesize(whole_e[:, at : at + size], a, g, start=at, state=state)
        pieces.append(piece)
        at += size
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=0, atol=1e-10)


def test_real_clip_round_trip_gain_and_float32(clip):
    audio = torch.from_numpy(load_wav(clip))[None]
    mel = MelSpectrogram()(audio)
    lp = LinearPrediction(24)
    e, _ = lp(audio, mel)
    g = lp.coefficients(mel)[1]
    raw = e.double() * g[:, lp.frame_index(0, audio.shape[1], mel.shape[2], audio.device)]
    gain_db = 10 * math.log10(float(audio.double().square().mean() / raw.square().mean()))
    assert gain_db > 12, f"prediction gain {gain_db:.1f} dB"  # about 16-18 dB on LJSpeech
    assert 0.5 < float(e.std()) < 2.0  # the residual is normalised
    back = lp.inverse(e, mel)  # float32 path
    assert back.dtype == torch.float32
    assert float((back - audio).abs().max()) < 1e-4


@pytest.mark.parametrize(
    "mel",
    [
        torch.randn(2, 80, 40) * 3 - 4,
        torch.full((1, 80, 40), math.log(1e-5)),
        torch.full((1, 80, 40), -1e4),
        torch.full((1, 80, 40), 1e4),
        torch.where(torch.rand(1, 80, 40) < 0.5, -1e4, 1e4),
    ],
    ids=["random", "silence", "very-low", "very-high", "alternating-extremes"],
)
def test_synthesis_is_finite_and_bounded_for_any_finite_mel(mel):
    lp = LinearPrediction(24)
    e = torch.randn(mel.shape[0], 40 * 256, generator=torch.Generator().manual_seed(0))
    out = lp.inverse(e, mel)
    assert torch.isfinite(out).all()
    assert float(out.abs().max()) < 1e4  # log-mels above 6 (full scale reaches 2.5) are clamped
    if float(mel.max()) <= math.log(1e-5):
        assert float(out.square().mean().sqrt()) < 1e-3  # a silent mel gives (near) silence


def test_bad_order_and_state_are_refused():
    with pytest.raises(ValueError, match="order"):
        LinearPrediction(0)
    with pytest.raises(ConfigError, match="lpc_order"):
        model_preset("tiny", lpc_order=256)
    lp = LinearPrediction(8)
    a, g = lp.coefficients(torch.zeros(1, 80, 4) - 5)
    with pytest.raises(ValueError, match="state"):
        lp.synthesize(torch.zeros(1, 100), a, g, state=torch.zeros(1, 3))


# ------------------------------------------------------------------ in the model
def lp_model(seed: int = 0, **overrides) -> WaveGlow:
    torch.manual_seed(seed)
    return perturb_(WaveGlow(model_preset("tiny", **{"lpc_order": 8, **overrides})), std=0.05, seed=seed)


def test_model_with_lp_inverts_and_adds_the_lp_log_det():
    model = lp_model().double().eval()
    audio = speechlike(4096, seed=6)[None]
    mel = mel_of(audio).double()
    context = audio[:, :8] * 0.5
    z, logdet = model(audio, mel, context)
    no_lp = WaveGlow(model_preset("tiny")).double()
    no_lp.load_state_dict(model.state_dict())
    e, lp_logdet = model.lpc(audio, mel, context)
    z_flow, flow_logdet = no_lp(e, mel)
    torch.testing.assert_close(z, z_flow)
    torch.testing.assert_close(logdet.double(), (flow_logdet + lp_logdet).double(), rtol=1e-6, atol=1e-3)
    with torch.no_grad():
        back = model.infer(mel, z=model(audio, mel)[0], length=audio.shape[1])
    torch.testing.assert_close(back, audio, rtol=0, atol=1e-8)


def test_model_log_det_equals_the_brute_force_jacobian():
    cfg = dict(n_flows=2, n_group=4, n_early_every=0, n_layers=1, n_channels=4, lpc_order=3)
    torch.manual_seed(0)
    model = perturb_(WaveGlow(model_preset("tiny", **cfg)), std=0.2).double()
    audio = speechlike(256, seed=7)[None]
    mel = random_mel(2, batch=1, seed=7).double()  # 1 + 256 // hop frames
    _, logdet = model(audio, mel)
    brute = brute_force_logdet(lambda x: model(x, mel)[0], audio)
    assert abs(float(logdet[0].detach()) - float(brute)) < 1e-4 * abs(float(brute))


def test_hifigan_frames_map_to_their_centres():
    # hifigan frame f is centred on sample f * hop + hop / 2: sample n belongs to frame n // hop
    model = WaveGlow(model_preset("tiny", lpc_order=4), MelConfig(preset="hifigan"))
    idx = model.lpc.frame_index(0, 1024, 10, torch.device("cpu"))
    assert idx[255] == 0 and idx[256] == 1
    default = WaveGlow(model_preset("tiny", lpc_order=4))
    idx = default.lpc.frame_index(0, 1024, 10, torch.device("cpu"))
    assert idx[127] == 0 and idx[128] == 1


def test_silence_mel_gives_silence_from_an_lp_vocoder():
    cfg = make_config("tiny", {"model": {"lpc_order": 24}})
    voc = Vocoder(lp_model(lpc_order=24), cfg)
    silence = torch.full((80, 60), math.log(1e-5))
    speech = random_mel(60, seed=1)
    rms = lambda x: float(x.square().mean().sqrt())
    assert rms(voc(silence, seed=0)) < 1e-3
    assert rms(voc(speech, seed=0)) > 10 * rms(voc(silence, seed=0))


@pytest.mark.parametrize("chunk", [1, 5, 16])
def test_streaming_with_lp_equals_offline(chunk):
    cfg = make_config("tiny", {"model": {"lpc_order": 24}})
    voc = Vocoder(lp_model(lpc_order=24), cfg)
    mel = random_mel(40, seed=2)
    offline = voc(mel, seed=5)
    streamed, _ = stream_all(StreamingVocoder(voc, seed=5, lookahead=2, lookback=4), mel, chunk)
    assert streamed.shape == offline.shape
    assert snr_db(offline, streamed) > 80


def test_streaming_with_lp_at_the_default_context_is_exact():
    """Default look-ahead and look-back: 127 dB measured, one frame less of look-back 92 dB."""
    cfg = make_config("tiny", {"model": {"lpc_order": 24}})
    voc = Vocoder(lp_model(lpc_order=24), cfg)
    mel = random_mel(40, seed=2)
    streamed, _ = stream_all(StreamingVocoder(voc, seed=5), mel, 5)
    assert snr_db(voc(mel, seed=5), streamed) > 110


def test_training_batches_carry_the_audio_before_each_segment(mini_corpus):
    clips = [Clip(i, str(mini_corpus / "wavs" / f"{i}.wav"), n) for i, n in [("LJ001-0001", 212893)]]
    plain = SegmentBatches(clips, 4096, 2, seed=3)[5]
    with_ctx = SegmentBatches(clips, 4096, 2, seed=3, context=24)[5]
    assert with_ctx.shape == (2, 24 + 4096)
    torch.testing.assert_close(with_ctx[:, 24:], plain)  # the same segments
    full = torch.from_numpy(load_wav(clips[0].path))
    for row in with_ctx:
        candidates = np.flatnonzero(full.numpy() == row[24].item())
        at = next(int(o) for o in candidates if torch.equal(full[o : o + 64], row[24:88]))
        expected = full[max(0, at - 24) : at]
        torch.testing.assert_close(row[24 - expected.numel() : 24], expected)

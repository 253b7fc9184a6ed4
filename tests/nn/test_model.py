"""The whole WaveGlow: exact inverse, exact log-det, gradients, and input validation."""

from __future__ import annotations

import pytest
import torch
from conftest import EARLY_OUTPUTS, assert_finite, brute_force_logdet, tiny_config, tiny_model

from waveflow.config import MODEL_PRESETS, ModelConfig, model_preset
from waveflow.nn.cost import flops_per_sample
from waveflow.nn.flows import Invertible1x1Conv, squeeze
from waveflow.nn.loss import flow_nll
from waveflow.nn.model import WaveGlow

VARIANTS = {
    "early": {},
    "no_early": dict(n_early_every=0),
    "lu": dict(lu=True),
    "actnorm": dict(actnorm=True),
    "lu_actnorm_no_wn": dict(lu=True, actnorm=True, weight_norm=False),
    "group_rate_cond": dict(cond_rate="group", upsample_kernel=128),
    "two_early": EARLY_OUTPUTS[2],
    "three_early": EARLY_OUTPUTS[3],
}


def _pair(batch: int = 2, length: int = 1024, frames: int | None = None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    frames = frames if frames is not None else 1 + length // 256
    return torch.randn(batch, length, generator=gen) * 0.1, torch.randn(batch, 80, frames, generator=gen)


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_inverse_recovers_audio(variant):
    model = tiny_model(**VARIANTS[variant])
    audio, mel = _pair()
    z, logdet = model(audio, mel)
    n_group = model.cfg.n_group
    assert z.shape == (2, n_group, 1024 // n_group) and logdet.shape == (2,)
    assert_finite(z, logdet)
    torch.testing.assert_close(model.inverse(z, mel), audio, atol=1e-4, rtol=0)
    model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(model.infer(mel, z=z, length=1024), audio, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_logdet_matches_brute_force_jacobian(variant):
    model = tiny_model(**VARIANTS[variant]).double()
    audio, mel = _pair(batch=1, length=48, frames=1)
    audio, mel = audio.double(), mel.double()
    if model.cfg.actnorm:
        model(audio, mel)  # data-dependent init happens once, before the Jacobian
    expected = brute_force_logdet(lambda a: model(a, mel)[0], audio)
    _, logdet = model(audio, mel)
    assert abs(float(expected)) > 1e-2
    torch.testing.assert_close(logdet, expected.reshape(1), atol=1e-6, rtol=1e-6)


def test_early_outputs_leave_the_flow():
    """Perturbing flow k must not change the early channels that left before it."""
    model = tiny_model()  # tiny: n_group 4, early output of 2 channels before flow 2
    audio, mel = _pair()
    z1, _ = model(audio, mel)
    with torch.no_grad():
        model.flows[3].coupling.wn.end.bias.add_(1.0)
    z2, _ = model(audio, mel)
    assert torch.equal(z1[:, :2], z2[:, :2])
    assert not torch.allclose(z1[:, 2:], z2[:, 2:])
    # and the early channels are the first two flows' output, taken before flow 2
    x = squeeze(audio, 4)
    cond = model.upsample_mel(mel, 1024)
    for flow in model.flows[:2]:
        x, _ = flow(x, cond)
    torch.testing.assert_close(z1[:, :2], x[:, :2])


def test_untrained_model_logdet_is_the_invconvs_alone():
    torch.manual_seed(0)
    model = WaveGlow(tiny_config(n_early_every=0))  # zero-init end convs
    with torch.no_grad():  # move the 1x1 convs off det +1 so their log-det is not zero
        for m in model.modules():
            if isinstance(m, Invertible1x1Conv):
                m.weight.mul_(torch.rand(m.channels, 1) + 0.5)
    audio, mel = _pair()
    z, logdet = model(audio, mel)
    steps = 1024 // 4
    expected = sum(float(f.invconv.log_abs_det().detach()) * steps for f in model.flows)
    assert abs(expected) > 1.0
    torch.testing.assert_close(logdet, torch.full((2,), expected), atol=1e-3, rtol=1e-6)
    # the couplings are identities, so z is the product of the 1x1 convs
    x = squeeze(audio, 4)
    for f in model.flows:
        x = f.invconv.matrix() @ x
    torch.testing.assert_close(z, x, atol=1e-5, rtol=1e-5)


def test_nll_gradients_reach_every_parameter():
    model = tiny_model(lu=True, actnorm=True)
    audio, mel = _pair()
    model(audio, mel)  # actnorm init
    z, logdet = model(audio, mel)
    flow_nll(z, logdet).nats.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().max() > 0, f"{name} has an all-zero gradient"


def test_fresh_model_learns_through_the_zero_end_convs():
    """At init only the end convs (and the 1x1 convs) get gradient; one step unlocks the rest."""
    model = tiny_model(perturbed=False)
    audio, mel = _pair()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = flow_nll(*model(audio, mel)).nats
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.flows[0].coupling.wn.in_layers[0].weight_v.grad.abs().max() > 0


def test_infer_is_reproducible_and_follows_device_and_dtype():
    model = tiny_model().eval()
    _, mel = _pair(frames=5)
    with torch.inference_mode():
        a = model.infer(mel, sigma=0.6, generator=torch.Generator().manual_seed(3))
        b = model.infer(mel, sigma=0.6, generator=torch.Generator().manual_seed(3))
        c = model.infer(mel, sigma=0.6, generator=torch.Generator().manual_seed(4))
    assert a.shape == (2, 5 * 256) and a.dtype == mel.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    # sigma scales the latent: sigma 0 gives the deterministic "mean" output
    with torch.inference_mode():
        zero = model.infer(mel, sigma=0.0)
        z = torch.zeros(model.latent_shape(2, 5 * 256))
        torch.testing.assert_close(model.infer(mel, z=z), zero)


@pytest.mark.parametrize("variant", VARIANTS)
def test_optimize_for_inference_keeps_the_function(variant):
    model = tiny_model(perturbed=True, **VARIANTS[variant]).eval()
    _, mel = _pair(frames=5)
    z = torch.randn(model.latent_shape(2, 5 * 256), generator=torch.Generator().manual_seed(1)) * 0.6
    with torch.no_grad():
        expected = model.infer(mel, z=z)
    model.optimize_for_inference()
    assert not any(name.endswith(("weight_g", "weight_v")) for name in model.state_dict())
    assert not any(p.requires_grad for p in model.parameters())
    with torch.inference_mode():
        got = model.infer(mel, z=z)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_optimize_for_inference_inside_inference_mode():
    model = tiny_model(perturbed=True).eval()
    _, mel = _pair(frames=5)
    z = torch.randn(model.latent_shape(2, 5 * 256), generator=torch.Generator().manual_seed(1)) * 0.6
    with torch.no_grad():
        expected = model.infer(mel, z=z)
    with torch.inference_mode():
        got = model.optimize_for_inference(compose=True).infer(mel, z=z)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_optimize_for_inference_in_half_keeps_the_invertible_convs_in_float32():
    model = tiny_model(perturbed=True, lu=True, actnorm=True).eval()
    _, mel = _pair(frames=5)
    z = torch.randn(model.latent_shape(2, 5 * 256), generator=torch.Generator().manual_seed(1)) * 0.6
    with torch.no_grad():
        expected = model.infer(mel, z=z)
    model.optimize_for_inference(torch.bfloat16)
    assert model.upsample.weight.dtype == torch.bfloat16
    exact = [p for f in model.flows for p in [*f.invconv.parameters(), *f.actnorm.parameters()]]
    assert all(p.dtype == torch.float32 for p in exact)
    with torch.inference_mode():
        got = model.infer(mel.bfloat16(), z=z.bfloat16())
    assert got.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: agreement to a few percent of the signal's scale
    assert (got.float() - expected).abs().max() < 0.05 * expected.abs().max()


def test_infer_pads_to_whole_groups_and_trims():
    model = tiny_model().eval()
    _, mel = _pair(frames=3)
    with torch.inference_mode():
        out = model.infer(mel, length=509, generator=torch.Generator().manual_seed(0))
        full = model.infer(mel, length=512, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 509)
    assert model.latent_shape(2, 509) == (2, 4, 128)
    torch.testing.assert_close(out, full[:, :509])


def test_training_input_trimmed_to_whole_groups():
    model = tiny_model()
    audio, mel = _pair(length=1027, frames=5)
    z, _ = model(audio, mel)
    assert z.shape == (2, 4, 256)
    z_trim, _ = model(audio[:, :1024], mel)
    torch.testing.assert_close(z, z_trim)


@pytest.mark.parametrize(
    "audio_shape, mel_shape, match",
    [
        ((2, 1024), (2, 40, 5), r"mel has shape \(2, 40, 5\); expected \(batch, 80, frames\)"),
        ((2, 1024), (2, 5, 80), "time-major, transpose"),
        ((2, 1024), (3, 80, 5), "audio batch 2 does not match mel batch 3"),
        ((2, 1024), (2, 80, 40), "mel has 40 frames but audio has 1024 samples; expected"),
        ((2, 1024), (2, 80, 1), "mel has 1 frames"),
        ((2, 3), (2, 80, 1), "expected at least one group of 4"),
        ((1024,), (80, 5), r"audio has shape \(1024,\); expected \(batch, samples\)"),
    ],
)
def test_bad_shapes_raise_clear_value_errors(audio_shape, mel_shape, match):
    model = tiny_model()
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(audio_shape), torch.zeros(mel_shape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["audio", "mel"])
def test_non_finite_input_is_refused(bad, where):
    model = tiny_model()
    audio, mel = _pair()
    (audio if where == "audio" else mel)[0, 3, ...] = bad
    with pytest.raises(ValueError, match=f"{where} contains NaN or Inf"):
        model(audio, mel)
    if where == "mel":
        with pytest.raises(ValueError, match="mel contains NaN or Inf"):
            model.infer(mel)


def test_infer_rejects_wrong_latent_and_empty_mel():
    model = tiny_model().eval()
    _, mel = _pair(frames=2)
    with pytest.raises(ValueError, match=r"z has shape \(2, 4, 10\); expected \(2, 4, 128\)"):
        model.infer(mel, z=torch.zeros(2, 4, 10))
    with pytest.raises(ValueError, match="mel has no frames"):
        model.infer(torch.zeros(1, 80, 0))


def test_presets():
    default = ModelConfig()
    published = dict(
        n_mels=80,
        n_flows=12,
        n_group=8,
        n_early_every=4,
        n_early_size=2,
        n_layers=8,
        n_channels=256,
        kernel_size=3,
        hop_length=256,
        upsample_kernel=1024,
    )
    assert {k: getattr(default, k) for k in published} == published
    assert model_preset("paper").n_channels == 512
    assert set(MODEL_PRESETS) >= {"tiny", "small", "default", "paper"}
    n_default = WaveGlow(model_preset("default")).num_parameters()
    n_small = WaveGlow(model_preset("small")).num_parameters()
    assert n_default >= 5 * n_small


def test_group_rate_conditioning_sees_the_mel_at_the_group_rate():
    cfg = model_preset("realtime")
    assert cfg.cond_channels == cfg.n_mels and cfg.upsample_stride == cfg.hop_length // cfg.n_group
    model = WaveGlow(cfg)
    cond = model.upsample_mel(torch.randn(1, 80, 7), 7 * 256)
    assert cond.shape == (1, 80, 7 * 256 // cfg.n_group)
    # the conditioner of every coupling reads n_mels channels, not n_mels * n_group
    assert model.flows[0].coupling.wn.cond_layer.in_channels == 80
    # far cheaper per sample than the default, which conditions on 640 channels per step
    assert flops_per_sample(cfg) * 50 < flops_per_sample(model_preset("default"))


@pytest.mark.parametrize("overrides", [{}, dict(n_group=8, n_early_size=2, upsample_kernel=768)])
def test_composed_conditioning_gives_the_same_audio(overrides):
    model = tiny_model(perturbed=True, **overrides).eval()
    _, mel = _pair(frames=9)
    z = torch.randn(model.latent_shape(2, 9 * 256), generator=torch.Generator().manual_seed(1)) * 0.6
    with torch.no_grad():
        expected = model.infer(mel, z=z)
        model.optimize_for_inference(compose=True)
        assert model._composed is not None
        got = model.infer(mel, z=z)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # the composed maps follow the weights: a change falls back to the exact path
    with torch.no_grad():
        model.upsample.bias.add_(0.5)
        moved = model.infer(mel, z=z)
    assert model._composed is None
    assert not torch.allclose(moved, got)
    model.compose_conditioning()
    with torch.no_grad():
        torch.testing.assert_close(model.infer(mel, z=z), moved, rtol=1e-4, atol=1e-5)


def test_composing_refuses_a_layout_it_cannot_compose():
    model = tiny_model(cond_rate="group", upsample_kernel=128)
    with pytest.raises(ValueError, match="composing the conditioning needs cond_rate 'sample'"):
        model.compose_conditioning()

"""Every invertible layer: inverse(forward(x)) == x and log|det| against the brute-force Jacobian."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_finite, brute_force_logdet, perturb_

from waveflow.nn.flows import (
    ActNorm,
    AffineCoupling,
    FlowStep,
    Invertible1x1Conv,
    Squeeze,
    squeeze,
    squeeze_cond,
    unsqueeze,
)

C, T, COND = 4, 6, 5


def _layers():
    torch.manual_seed(0)
    coupling = AffineCoupling(C, COND, n_layers=2, n_channels=8, kernel_size=3)
    actnorm = ActNorm(C)
    actnorm(torch.randn(3, C, T) * 2 + 1)  # data-dependent init on a first batch
    return {
        "invconv": Invertible1x1Conv(C),
        "invconv_lu": Invertible1x1Conv(C, lu=True),
        "actnorm": actnorm,
        "coupling": perturb_(coupling),
        "step": perturb_(FlowStep(C, COND, 2, 8, 3, lu=False, actnorm=False)),
        "step_lu_actnorm": perturb_(FlowStep(C, COND, 2, 8, 3, lu=True, actnorm=True)),
    }


LAYERS = list(_layers())


@pytest.fixture(params=LAYERS)
def layer(request):
    torch.manual_seed(1)
    layer = _layers()[request.param]
    # Scale the 1x1 convs away from a rotation so their log-det is not zero.
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, Invertible1x1Conv):
                if m.lu:
                    m.log_s.add_(torch.randn_like(m.log_s) * 0.3)
                    m.lower.add_(torch.randn_like(m.lower) * 0.3)
                else:
                    m.weight.mul_(torch.rand(C, 1) + 0.5)
    return layer


def test_inverse_recovers_input(layer):
    x, cond = torch.randn(3, C, 50), torch.randn(3, COND, 50)
    y, logdet = layer(x, cond)
    assert y.shape == x.shape and logdet.shape == (3,)
    assert_finite(y, logdet)
    assert not torch.allclose(y, x, atol=1e-3), "layer is the identity; the test would prove nothing"
    torch.testing.assert_close(layer.inverse(y, cond), x, atol=1e-4, rtol=0)


def test_inverse_recovers_input_in_eval_mode(layer):
    layer.eval()
    x, cond = torch.randn(2, C, 40), torch.randn(2, COND, 40)
    with torch.no_grad():
        y, _ = layer(x, cond)
        torch.testing.assert_close(layer.inverse(y, cond), x, atol=1e-4, rtol=0)


def test_logdet_matches_brute_force_jacobian(layer):
    layer.double()
    x, cond = torch.randn(1, C, T, dtype=torch.float64), torch.randn(1, COND, T, dtype=torch.float64)
    expected = brute_force_logdet(lambda v: layer(v, cond)[0], x)
    _, logdet = layer(x, cond)
    assert abs(float(expected)) > 1e-3, "log-det is ~0; the comparison would prove nothing"
    torch.testing.assert_close(logdet.double(), expected.reshape(1), atol=1e-6, rtol=1e-6)


def test_logdet_is_per_example():
    layer = _layers()["coupling"]
    x, cond = torch.randn(3, C, T), torch.randn(3, COND, T)
    _, batched = layer(x, cond)
    single = torch.cat([layer(x[i : i + 1], cond[i : i + 1])[1] for i in range(3)])
    torch.testing.assert_close(batched, single)
    assert batched.unique().numel() == 3


def test_squeeze_layout_and_inverse():
    audio = torch.arange(2 * 24, dtype=torch.float32).reshape(2, 24)
    sq = Squeeze(8)
    x, logdet = sq(audio)
    assert x.shape == (2, 8, 3)
    # channel j at step t holds sample t * n_group + j
    assert x[1, 5, 2] == audio[1, 2 * 8 + 5]
    assert torch.equal(logdet, torch.zeros(2))
    assert torch.equal(sq.inverse(x), audio)
    assert torch.equal(unsqueeze(squeeze(audio, 4)), audio)
    with pytest.raises(ValueError, match="multiple of n_group"):
        sq(torch.zeros(1, 20))


def test_squeeze_logdet_is_zero_by_brute_force():
    audio = torch.randn(1, 16, dtype=torch.float64)
    assert abs(float(brute_force_logdet(lambda v: squeeze(v, 4), audio))) < 1e-12


def test_squeeze_cond_layout():
    cond = torch.randn(2, 3, 16)
    sq = squeeze_cond(cond, 4)
    assert sq.shape == (2, 12, 4)
    # channel c * n_group + j at step t is cond[:, c, t * n_group + j]
    for c, j, t in [(0, 0, 0), (2, 3, 1), (1, 2, 3)]:
        assert torch.equal(sq[:, c * 4 + j, t], cond[:, c, t * 4 + j])


@pytest.mark.parametrize("lu", [False, True])
def test_invconv_starts_as_rotation_with_det_plus_one(lu):
    for seed in range(5):
        torch.manual_seed(seed)
        w = Invertible1x1Conv(8, lu=lu).matrix(torch.float64).detach()
        torch.testing.assert_close(w @ w.T, torch.eye(8, dtype=torch.float64), atol=1e-6, rtol=0)
        assert float(torch.linalg.det(w)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("lu", [False, True])
def test_invconv_cached_inverse_is_refreshed_after_optimizer_steps(lu):
    torch.manual_seed(0)
    conv = Invertible1x1Conv(C, lu=lu)
    x = torch.randn(4, C, 32)
    conv.eval()
    with torch.no_grad():
        y = conv(x)[0]
        conv.inverse(y)
    stale = conv._inverse_cache[1].clone()
    # Train a few steps towards an arbitrary non-orthogonal target (eval mode: the cache
    # must notice the parameter change by itself, without a train() call).
    opt = torch.optim.Adam(conv.parameters(), lr=0.05)
    target = torch.randn(4, C, 32) * 3
    for _ in range(5):
        opt.zero_grad()
        loss = (conv(x)[0] - target).square().mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        y = conv(x)[0]
        x_back = conv.inverse(y)
    assert not torch.allclose(conv._inverse_cache[1], stale), "inverse cache was not refreshed"
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=0)
    w = conv.matrix(torch.float64)
    assert torch.linalg.cond(w) < 1e3
    # train() drops the cache outright
    conv.train()
    assert conv._inverse_cache is None


def test_actnorm_data_dependent_init():
    torch.manual_seed(0)
    an = ActNorm(3)
    x = torch.randn(8, 3, 100) * torch.tensor([0.5, 2.0, 5.0]).view(1, 3, 1) + torch.tensor([1.0, -2.0, 0.0]).view(
        1, 3, 1
    )
    y, _ = an(x)
    torch.testing.assert_close(y.mean(dim=(0, 2)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    assert bool(an.initialized)
    # later batches do not re-initialise
    loc = an.loc.detach().clone()
    an(torch.randn(8, 3, 100))
    assert torch.equal(an.loc.detach(), loc)
    # and the initialisation survives a state-dict round trip
    fresh = ActNorm(3)
    fresh.load_state_dict(an.state_dict())
    assert bool(fresh.initialized)


def test_coupling_starts_as_identity():
    torch.manual_seed(0)
    coupling = AffineCoupling(C, COND, 2, 8, 3)
    x, cond = torch.randn(2, C, 20), torch.randn(2, COND, 20)
    y, logdet = coupling(x, cond)
    assert torch.equal(y, x)
    assert torch.equal(logdet, torch.zeros(2))


def test_coupling_passes_first_half_unchanged_and_rejects_odd_channels():
    coupling = perturb_(AffineCoupling(C, COND, 2, 8, 3))
    x, cond = torch.randn(2, C, 20), torch.randn(2, COND, 20)
    y, _ = coupling(x, cond)
    assert torch.equal(y[:, : C // 2], x[:, : C // 2])
    with pytest.raises(ValueError, match="even"):
        AffineCoupling(3, COND, 2, 8, 3)

"""The NLL is the true Gaussian negative log-likelihood, constant included."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

from waveflow.nn.loss import flow_nll, gaussian_constant, nll_per_example


@pytest.mark.parametrize("sigma", [1.0, 0.5])
def test_identity_flow_nll_equals_gaussian_log_prob(sigma):
    torch.manual_seed(0)
    z = torch.randn(3, 8, 50) * 0.7
    nll = flow_nll(z, torch.zeros(3), sigma=sigma)
    expected = -torch.distributions.Normal(0.0, sigma).log_prob(z).mean()
    torch.testing.assert_close(nll.nats, expected)
    torch.testing.assert_close(nll.bits, expected / math.log(2))
    torch.testing.assert_close(nll.waveglow, expected - 0.5 * math.log(2 * math.pi * sigma**2))


def test_logdet_enters_with_minus_sign_per_sample():
    z = torch.zeros(2, 4, 10)
    base = nll_per_example(z, torch.zeros(2))
    shifted = nll_per_example(z, torch.tensor([40.0, 0.0]))
    torch.testing.assert_close(shifted - base, torch.tensor([-1.0, 0.0]))  # 40 / 40 samples


def test_change_of_variables_on_a_scaled_gaussian():
    """Audio ~ N(0, s^2) pushed through z = audio / s has NLL = -log N(audio; 0, s^2)."""
    torch.manual_seed(0)
    s = 0.05
    audio = torch.randn(4, 1000) * s
    z = audio / s
    logdet = torch.full((4,), 1000 * math.log(1 / s))
    expected = -torch.distributions.Normal(0.0, s).log_prob(audio).mean()
    torch.testing.assert_close(flow_nll(z, logdet).nats, expected, atol=1e-4, rtol=1e-5)


def test_model_nll_convention_offsets():
    model = tiny_model()
    audio, mel = torch.randn(2, 1024) * 0.1, torch.randn(2, 80, 5)
    nll = flow_nll(*model(audio, mel), sigma=1.0)
    assert float((nll.nats - nll.waveglow).detach()) == pytest.approx(gaussian_constant(1.0), abs=1e-6)
    assert nll.as_floats().keys() == {"nll_nats", "nll_bits", "loss_waveglow"}

"""The fused WaveNet computes exactly the network as defined, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from waveflow.nn.conditioner import STACKED_MAX_STEPS, WaveNet, infer_conv1d


def _wavenet(kernel_size: int = 3, n_layers: int = 3, weight_norm: bool = True, seed: int = 0) -> WaveNet:
    torch.manual_seed(seed)
    net = WaveNet(4, 6, 10, n_layers=n_layers, n_channels=8, kernel_size=kernel_size, weight_norm=weight_norm)
    # the zero-initialised end conv would hide every skip path
    with torch.no_grad():
        net.end.weight.normal_(0.0, 0.1)
        net.end.bias.normal_(0.0, 0.1)
    return net


@pytest.mark.parametrize("kernel_size, n_layers", [(3, 3), (5, 2), (1, 2), (3, 1)])
@pytest.mark.parametrize("length", [1, 2, 3, 5, 17])
def test_fused_forward_equals_the_layer_by_layer_network(kernel_size, n_layers, length):
    net = _wavenet(kernel_size, n_layers).double()
    x, cond = torch.randn(2, 4, length, dtype=torch.float64), torch.randn(2, 10, length, dtype=torch.float64)
    torch.testing.assert_close(net(x, cond), net.forward_unfused(x, cond), rtol=1e-10, atol=1e-10)
    net.eval()
    with torch.inference_mode():
        torch.testing.assert_close(net(x, cond), net.forward_unfused(x, cond), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("weight_norm", [True, False])
def test_fused_gradients_equal_the_layer_by_layer_gradients(weight_norm):
    net = _wavenet(weight_norm=weight_norm).double()
    x, cond = torch.randn(2, 4, 9, dtype=torch.float64), torch.randn(2, 10, 9, dtype=torch.float64)
    target = torch.randn(2, 6, 9, dtype=torch.float64)
    grads = []
    for fn in (net.forward, net.forward_unfused):
        net.zero_grad()
        ((fn(x, cond) - target) ** 2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-12, msg=name)


def test_fused_cache_follows_parameter_updates():
    net = _wavenet().eval()
    x, cond = torch.randn(1, 4, 8), torch.randn(1, 10, 8)
    with torch.no_grad():
        before = net(x, cond)
        net.end.weight.mul_(2.0)
        after = net(x, cond)
        torch.testing.assert_close(after, net.forward_unfused(x, cond))
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("kernel, dilation", [(3, 1), (3, 2), (3, 8), (1, 1)])
@pytest.mark.parametrize("batch, length", [(1, 40), (1, STACKED_MAX_STEPS), (1, STACKED_MAX_STEPS + 1), (2, 40)])
def test_infer_conv1d_is_conv1d(kernel, dilation, batch, length):
    """Every path at inference (stacked taps up to STACKED_MAX_STEPS at batch 1, oneDNN past it
    or at batch 2, torch's own for one tap) against torch's conv1d, and with autograd."""
    torch.manual_seed(dilation)
    x, w, b = torch.randn(batch, 96, length), torch.randn(192, 96, kernel), torch.randn(192)
    pad = dilation * (kernel - 1) // 2
    expected = F.conv1d(x, w, b, padding=pad, dilation=dilation)
    with torch.inference_mode():
        torch.testing.assert_close(infer_conv1d(x, w, b, pad, dilation), expected, rtol=1e-4, atol=1e-4)
        with torch.profiler.profile() as prof:
            infer_conv1d(x, w, b, pad, dilation)
    ops = {e.name for e in prof.events()}
    stacked = batch == 1 and length <= STACKED_MAX_STEPS
    assert ("aten::addmm" in ops) == stacked, ops
    if kernel > 1:  # one tap past the stacked range is torch's own choice
        assert ("aten::mkldnn_convolution" in ops) == (not stacked), ops
    w.requires_grad_(True)
    infer_conv1d(x, w, b, pad, dilation).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_infer_conv1d_takes_torchs_path_when_told_the_fast_paths_do_not_apply():
    """``fast=False`` (what a caller passes once it has found autograd, tracing or export on)
    keeps F.conv1d even at float32 CPU inference; ``fast=True`` is the stacked-taps path."""
    x, w, b = torch.randn(1, 96, 40), torch.randn(192, 96, 3), torch.randn(192)
    expected = F.conv1d(x, w, b, padding=2, dilation=2)
    with torch.inference_mode():
        for fast, op in ((False, "aten::convolution"), (True, "aten::addmm"), (None, "aten::addmm")):
            with torch.profiler.profile() as prof:
                got = infer_conv1d(x, w, b, 2, 2, fast=fast)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
            ops = {e.name for e in prof.events()}
            assert op in ops and ("aten::addmm" in ops) == (op == "aten::addmm"), (fast, ops)


def test_fused_float32_inference_at_batch_one_equals_the_network():
    net = _wavenet().eval()
    for length in (3, 60):
        x, cond = torch.randn(1, 4, length), torch.randn(1, 10, length)
        with torch.inference_mode():
            torch.testing.assert_close(net(x, cond), net.forward_unfused(x, cond), rtol=1e-5, atol=1e-5)

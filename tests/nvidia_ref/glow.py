"""A stand-in for NVIDIA's ``glow`` module, for tests only: same class names, attribute and
parameter names as the published checkpoints, in each of the three WN layouts, written from
the layouts' definitions. ``reference_forward``/``reference_inverse`` evaluate the NVIDIA
math directly (no waveflow code), with z given instead of drawn.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.utils import weight_norm


def _wn_conv(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Conv1d:
    conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, but it is what the releases pickled
        return weight_norm(conv, name="weight")


class WN(nn.Module):
    def __init__(self, n_in, n_cond, n_layers, n_channels, kernel_size, layout="latest"):
        super().__init__()
        self.n_layers, self.n_channels, self.layout = n_layers, n_channels, layout
        c = n_channels
        self.start = _wn_conv(n_in, c)
        self.end = nn.Conv1d(c, 2 * n_in, 1)
        self.in_layers = nn.ModuleList(_wn_conv(c, 2 * c, kernel_size, 2**i) for i in range(n_layers))
        if layout == "latest":
            self.cond_layer = _wn_conv(n_cond, 2 * c * n_layers)
        else:
            self.cond_layers = nn.ModuleList(_wn_conv(n_cond, 2 * c) for _ in range(n_layers))
        if layout == "first":
            self.res_layers = nn.ModuleList(_wn_conv(c, c) for _ in range(n_layers - 1))
            self.skip_layers = nn.ModuleList(_wn_conv(c, c) for _ in range(n_layers))
        else:
            self.res_skip_layers = nn.ModuleList(_wn_conv(c, 2 * c if i < n_layers - 1 else c) for i in range(n_layers))

    def forward(self, audio, spect):
        c = self.n_channels
        h = self.start(audio)
        output = 0
        if self.layout == "latest":
            all_cond = self.cond_layer(spect)
        for i in range(self.n_layers):
            if self.layout == "latest":
                cond = all_cond[:, 2 * c * i : 2 * c * (i + 1)]
            else:
                cond = self.cond_layers[i](spect)
            pre = self.in_layers[i](h) + cond
            acts = torch.tanh(pre[:, :c]) * torch.sigmoid(pre[:, c:])
            if self.layout == "first":
                if i < self.n_layers - 1:
                    h = h + self.res_layers[i](acts)
                output = output + self.skip_layers[i](acts)
            else:
                rs = self.res_skip_layers[i](acts)
                if i < self.n_layers - 1:
                    h = h + rs[:, :c]
                    output = output + rs[:, c:]
                else:
                    output = output + rs
        return self.end(output)


class Invertible1x1Conv(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv1d(c, c, 1, bias=False)
        w, _ = torch.linalg.qr(torch.randn(c, c))
        if torch.det(w) < 0:
            w[:, 0] = -w[:, 0]
        self.conv.weight.data = w.view(c, c, 1)


class WaveGlow(nn.Module):
    def __init__(
        self,
        n_mel_channels,
        n_flows,
        n_group,
        n_early_every,
        n_early_size,
        WN_config,
        upsample=(1024, 256),
        layout="latest",
    ):
        super().__init__()
        self.upsample = nn.ConvTranspose1d(n_mel_channels, n_mel_channels, upsample[0], stride=upsample[1])
        self.n_flows, self.n_group = n_flows, n_group
        self.n_early_every, self.n_early_size = n_early_every, n_early_size
        self.WN = nn.ModuleList()
        self.convinv = nn.ModuleList()
        remaining = n_group
        for k in range(n_flows):
            if k % n_early_every == 0 and k > 0:
                remaining -= n_early_size
            self.convinv.append(Invertible1x1Conv(remaining))
            self.WN.append(WN(remaining // 2, n_mel_channels * n_group, layout=layout, **WN_config))
        self.n_remaining_channels = remaining

    def _cond(self, spect, length):
        up = self.upsample(spect)[:, :, :length]
        b, c, _ = up.shape
        g = self.n_group
        # channel c * g + j at step t is up[:, c, t * g + j]
        return up.reshape(b, c, length // g, g).permute(0, 1, 3, 2).reshape(b, c * g, length // g)


def perturb(model: WaveGlow, seed: int = 0) -> WaveGlow:
    """Random values in every tensor (end convs start at zero in real training)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("convinv"):
                continue
            scale = 0.05 if ".end." in name else 0.5
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


@torch.no_grad()
def reference_forward(model: WaveGlow, audio, spect):
    """audio (B, T) -> z (B, n_group, T/g) and per-example log|det| (B,), NVIDIA's forward."""
    g = model.n_group
    cond = model._cond(spect, audio.shape[1])
    x = audio.reshape(audio.shape[0], -1, g).transpose(1, 2)
    early, logdet = [], torch.zeros(audio.shape[0], dtype=torch.float64)
    for k in range(model.n_flows):
        if k % model.n_early_every == 0 and k > 0:
            early.append(x[:, : model.n_early_size])
            x = x[:, model.n_early_size :]
        w = model.convinv[k].conv.weight.squeeze(-1)
        x = torch.einsum("ij,bjt->bit", w, x)
        logdet += x.shape[2] * torch.linalg.slogdet(w.double())[1]
        half = x.shape[1] // 2
        out = model.WN[k](x[:, :half], cond)
        b, log_s = out[:, :half], out[:, half:]
        x = torch.cat([x[:, :half], torch.exp(log_s) * x[:, half:] + b], 1)
        logdet += log_s.double().sum(dim=(1, 2))
    return torch.cat([*early, x], 1), logdet


@torch.no_grad()
def reference_inverse(model: WaveGlow, z, spect):
    """z (B, n_group, T') -> audio (B, T' * n_group), NVIDIA's infer with the noise given."""
    g = model.n_group
    cond = model._cond(spect, z.shape[2] * g)
    n_early = sum(1 for k in range(1, model.n_flows) if k % model.n_early_every == 0)
    split = n_early * model.n_early_size
    early = list(z[:, :split].split(model.n_early_size, 1)) if split else []
    x = z[:, split:]
    for k in reversed(range(model.n_flows)):
        half = x.shape[1] // 2
        out = model.WN[k](x[:, :half], cond)
        b, log_s = out[:, :half], out[:, half:]
        x = torch.cat([x[:, :half], (x[:, half:] - b) / torch.exp(log_s)], 1)
        w_inv = torch.linalg.inv(model.convinv[k].conv.weight.squeeze(-1).double()).float()
        x = torch.einsum("ij,bjt->bit", w_inv, x)
        if k % model.n_early_every == 0 and k > 0:
            x = torch.cat([early.pop(), x], 1)
    return x.transpose(1, 2).reshape(z.shape[0], -1)

"""The WaveNet-like network that gives each affine coupling its log-scale and shift."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _param_key(*tensors: torch.Tensor) -> tuple:
    # _version moves on every in-place update (optimizer steps, load_state_dict, copy_);
    # data_ptr moves when .to() swaps the storage.
    return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)


class Conv1d(nn.Module):
    """A 1D convolution with optional weight normalisation (w = g * v / ||v||).

    Parameters are ``weight_g`` (out, 1, 1) and ``weight_v`` when weight-normed, else
    ``weight``; ``bias`` either way. In eval mode without autograd the normalised weight
    is computed once and cached (what ``remove_weight_norm`` does, without mutating the
    module); the cache is dropped by ``train()`` and whenever a parameter changes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        dilation: int = 1,
        weight_norm: bool = True,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.dilation = kernel_size, dilation
        self.padding = dilation * (kernel_size - 1) // 2
        self.weight_norm = weight_norm
        weight = torch.empty(out_channels, in_channels, kernel_size)
        bias = torch.empty(out_channels)
        if zero_init:
            weight.zero_()
            bias.zero_()
        else:
            # PyTorch's Conv1d default initialisation.
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(in_channels * kernel_size)
            nn.init.uniform_(bias, -bound, bound)
        if weight_norm:
            self.weight_v = nn.Parameter(weight)
            self.weight_g = nn.Parameter(weight.flatten(1).norm(dim=1).view(-1, 1, 1))
        else:
            self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def train(self, mode: bool = True) -> Conv1d:
        self._cache = None
        return super().train(mode)

    def _raw_weight(self) -> torch.Tensor:
        if not self.weight_norm:
            return self.weight
        norm = self.weight_v.flatten(1).norm(dim=1).view(-1, 1, 1)
        return self.weight_v * (self.weight_g / norm)

    def effective_weight(self) -> torch.Tensor:
        """The convolution weight ``(out, in, kernel)`` actually applied."""
        if not self.weight_norm or self.training or torch.is_grad_enabled():
            return self._raw_weight()
        key = _param_key(self.weight_g, self.weight_v)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._raw_weight())
        return self._cache[1]

    @torch.no_grad()
    def remove_weight_norm(self) -> None:
        """Fold ``weight_g``/``weight_v`` into one plain ``weight`` (for inference: the
        function computed is unchanged, the norm is no longer recomputed)."""
        if not self.weight_norm:
            return
        weight = self._raw_weight().detach().clone()
        del self.weight_v, self.weight_g
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_norm = False
        self._cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.effective_weight(), self.bias, padding=self.padding, dilation=self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}, weight_norm={self.weight_norm}"
        )


def gated_activation(x: torch.Tensor, n_channels: int) -> torch.Tensor:
    """tanh of the first ``n_channels`` channels times sigmoid of the rest."""
    return torch.tanh(x[:, :n_channels]) * torch.sigmoid(x[:, n_channels:])


class WaveNet(nn.Module):
    """Non-causal WaveNet: ``(B, in_channels, T)`` and conditioning ``(B, cond_channels, T)``
    -> ``(B, out_channels, T)``.

    start 1x1 conv -> ``n_layers`` dilated convs (dilation 2**i) whose outputs, plus the
    conditioning projected for that layer, go through tanh * sigmoid -> residual and skip
    1x1 convs -> sum of skips -> end 1x1 conv. The conditioning of every layer comes from
    one 1x1 conv (``cond_layer``) with ``2 * n_channels * n_layers`` outputs, layer i taking
    rows ``[2 * n_channels * i, 2 * n_channels * (i + 1))``, tanh half first.
    ``end`` starts at zero so an untrained coupling is the identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_channels: int,
        n_layers: int,
        n_channels: int,
        kernel_size: int,
        weight_norm: bool = True,
    ) -> None:
        super().__init__()
        self.n_layers, self.n_channels = n_layers, n_channels
        self.start = Conv1d(in_channels, n_channels, 1, weight_norm=weight_norm)
        self.cond_layer = Conv1d(cond_channels, 2 * n_channels * n_layers, 1, weight_norm=weight_norm)
        self.in_layers = nn.ModuleList(
            Conv1d(n_channels, 2 * n_channels, kernel_size, dilation=2**i, weight_norm=weight_norm)
            for i in range(n_layers)
        )
        # The last layer has no residual output: only its skip half would be used.
        self.res_skip_layers = nn.ModuleList(
            Conv1d(n_channels, 2 * n_channels if i < n_layers - 1 else n_channels, 1, weight_norm=weight_norm)
            for i in range(n_layers)
        )
        self.end = Conv1d(n_channels, out_channels, 1, weight_norm=False, zero_init=True)

    def project_cond(self, cond: torch.Tensor) -> torch.Tensor:
        """Conditioning for all layers, ``(B, 2 * n_channels * n_layers, T)``."""
        return self.cond_layer(cond)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cond_projected: bool = False) -> torch.Tensor:
        h = self.start(x)
        cond = cond if cond_projected else self.project_cond(cond)
        c2 = 2 * self.n_channels
        skip = None
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            acts = gated_activation(in_layer(h) + cond[:, i * c2 : (i + 1) * c2], self.n_channels)
            out = res_skip(acts)
            if i < self.n_layers - 1:
                h = h + out[:, : self.n_channels]
                out = out[:, self.n_channels :]
            skip = out if skip is None else skip + out
        return self.end(skip)

"""The WaveNet-like network that gives each affine coupling its log-scale and shift."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _param_key(*tensors: torch.Tensor) -> tuple:
    # _version moves on every in-place update (optimizer steps, load_state_dict, copy_);
    # data_ptr moves when .to() swaps the storage.
    # (inference-mode tensors keep no version counter: they cannot be updated in place
    # outside inference mode, so their storage identifies them)
    return tuple((0 if t.is_inference() else t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)


# Batch-1 inputs up to this many steps take one matrix product over the stacked taps at CPU
# inference: below it that beat both of torch's conv paths on 2 cores (96 -> 192 channels,
# kernel 3: 97 against 158-334 us at 14 steps, 409 against 554-692 at 204), above it oneDNN won.
STACKED_MAX_STEPS = 512


def infer_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    padding: int = 0,
    dilation: int = 1,
    taps: torch.Tensor | None = None,
    fast: bool | None = None,
) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, padding=padding, dilation=dilation)``, ``(B, C_in, T) ->
    (B, C_out, T')``, computed the fastest way measured at CPU inference in float32:

    * a batch-1 input of at most ``STACKED_MAX_STEPS`` steps (a 1 s mel of the ``realtime``
      preset, every streamed window) as one product of ``taps``, the weight laid out
      ``(C_out, kernel * C_in)`` tap by tap (computed when not given), with the shifted inputs
      stacked: torch's own choice there is its native path, 2-3x slower for dilated convs;
    * a longer one through oneDNN (torch also picks it there for one tap; for several it picks
      the native path at batch 1 under 20,480 input elements).

    Autograd, tracing and export (which has no oneDNN op) take ``F.conv1d``. ``fast``: whether
    the fast paths may run, ``fast_path_applies(x)`` (computed when None): a caller that runs
    many convs on inputs of one kind checks once (the check costs about 35 us, a third of a
    small conv's time)."""
    if not (fast_path_applies(x) if fast is None else fast):
        return F.conv1d(x, weight, bias, padding=padding, dilation=dilation)
    kernel = weight.shape[2]
    if x.shape[0] == 1 and x.shape[2] <= STACKED_MAX_STEPS:
        xs = x[0]
        if kernel > 1:
            xs = F.pad(xs, (padding, padding))
            steps = xs.shape[1] - dilation * (kernel - 1)
            xs = torch.cat([xs[:, j * dilation : j * dilation + steps] for j in range(kernel)])
        if taps is None:
            taps = weight[:, :, 0] if kernel == 1 else stacked_taps(weight)
        return torch.addmm(bias[:, None], taps, xs).unsqueeze(0)
    if kernel == 1:
        return F.conv1d(x, weight, bias)
    out = torch.ops.aten.mkldnn_convolution(
        x.unsqueeze(2), weight.unsqueeze(2), bias, [0, padding], [1, 1], [1, dilation], 1
    )
    return out.squeeze(2)


def fast_path_applies(x: torch.Tensor) -> bool:
    """Whether ``infer_conv1d`` may leave ``F.conv1d`` for an input like ``x``: float32 CPU
    inference with oneDNN, no autograd, tracing, scripting, compiling or ONNX export."""
    return (
        not torch.is_grad_enabled()
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and _ONEDNN
        and torch.backends.mkldnn.enabled
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not _compiling()
        and not torch.onnx.is_in_onnx_export()
    )


_ONEDNN = torch.backends.mkldnn.is_available()
_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch >= 2.3


def stacked_taps(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight ``(C_out, C_in, kernel)`` as ``(C_out, kernel * C_in)``, tap by tap."""
    return weight.permute(0, 2, 1).reshape(weight.shape[0], -1).contiguous()


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
        return infer_conv1d(x, self.effective_weight(), self.bias, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}, weight_norm={self.weight_norm}"
        )


def gated_activation(x: torch.Tensor, n_channels: int) -> torch.Tensor:
    """tanh of the first ``n_channels`` channels times sigmoid of the rest."""
    # split, not slicing: the backward of a slice zero-fills a gradient of the full input
    # for every slice taken; split's backward is one concatenation.
    a, b = x.split([n_channels, x.shape[1] - n_channels], dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


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
        self._fused_cache: tuple[tuple, _FusedWeights] | None = None

    def project_cond(self, cond: torch.Tensor) -> torch.Tensor:
        """Conditioning for all layers, ``(B, 2 * n_channels * n_layers, T)``."""
        return self.cond_layer(cond)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cond_projected: bool = False) -> torch.Tensor:
        """Exactly the layer-by-layer network of the class docstring, computed with two
        algebraic shortcuts (see ``_fused``): the end conv is folded into every skip
        conv, and the start conv into the first dilated conv."""
        cond = cond if cond_projected else self.project_cond(cond)
        if x.shape[-1] <= 2 * self.in_layers[0].padding:
            return self.forward_unfused(x, cond, cond_projected=True)
        fused = self._fused()
        c, c2 = self.n_channels, 2 * self.n_channels
        pad = self.in_layers[0].padding
        conds = cond.split(c2, dim=1)  # one per layer (see gated_activation on split)
        fast = fast_path_applies(x) and cond.dtype == x.dtype  # checked once: every conv below takes x's kind
        h = infer_conv1d(x, fused.start_w, fused.start_b, fast=fast)
        pre = infer_conv1d(x, fused.first_w, fused.first_b, pad, taps=fused.first_taps, fast=fast)
        if pad:
            # The first dilated conv zero-pads h, not x: outside the signal start(x) would
            # be start's bias, so take its contribution back where taps fall off the ends.
            pre = torch.cat([pre[..., :pad] - fused.left, pre[..., pad:-pad], pre[..., -pad:] - fused.right], dim=-1)
        out = None
        for i, in_layer in enumerate(self.in_layers):
            if i:
                pre = infer_conv1d(
                    h, fused.in_w[i], fused.in_b[i], in_layer.padding, in_layer.dilation, fused.in_taps[i], fast
                )
            acts = gated_activation(pre + conds[i], c)
            res_skip = infer_conv1d(acts, fused.res_skip_w[i], fused.res_skip_b[i], fast=fast)
            if i < self.n_layers - 1:
                res, res_skip = res_skip.split([c, res_skip.shape[1] - c], dim=1)
                h = h + res
            out = res_skip if out is None else out + res_skip
        return out

    def forward_unfused(self, x: torch.Tensor, cond: torch.Tensor, cond_projected: bool = False) -> torch.Tensor:
        """The network as defined, layer by layer (the reference ``forward`` is tested against)."""
        h = self.start(x)
        cond = cond if cond_projected else self.project_cond(cond)
        c2 = 2 * self.n_channels
        skip = None
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers, strict=False)):
            acts = gated_activation(in_layer(h) + cond[:, i * c2 : (i + 1) * c2], self.n_channels)
            out = res_skip(acts)
            if i < self.n_layers - 1:
                h = h + out[:, : self.n_channels]
                out = out[:, self.n_channels :]
            skip = out if skip is None else skip + out
        return self.end(skip)

    def _fused(self) -> _FusedWeights:
        """The fused weights; cached in eval mode without autograd, like ``Conv1d``'s."""
        if self.training or torch.is_grad_enabled():
            return self._compute_fused()
        key = _param_key(*self.parameters())
        if self._fused_cache is None or self._fused_cache[0] != key:
            self._fused_cache = (key, self._compute_fused())
        return self._fused_cache[1]

    def train(self, mode: bool = True) -> WaveNet:
        self._fused_cache = None
        return super().train(mode)

    def _compute_fused(self) -> _FusedWeights:
        """Weights of the shortcuts, exact by linearity:

        * end(sum_i skip_i(a_i)) = sum_i (E S_i) a_i + (E sum_i s_i + e): each layer's skip
          conv S_i (C -> C) is replaced by E S_i (C -> out_channels), and the end conv goes;
        * in_0(start(x)) is one conv from in_channels with weights W0_k Ws per tap k and
          bias b0 + sum_k W0_k bs, corrected at the ends where in_0 zero-pads start(x).
        """
        c = self.n_channels
        end_w = self.end.effective_weight()[:, :, 0]  # (out, C)
        res_skip_w, res_skip_b = [], []
        for i, layer in enumerate(self.res_skip_layers):
            w, b = layer.effective_weight()[:, :, 0], layer.bias
            skip_w, skip_b = (w[c:], b[c:]) if i < self.n_layers - 1 else (w, b)
            skip_w, skip_b = end_w @ skip_w, end_w @ skip_b
            if i == 0:
                skip_b = skip_b + self.end.bias
            if i < self.n_layers - 1:
                skip_w, skip_b = torch.cat([w[:c], skip_w]), torch.cat([b[:c], skip_b])
            res_skip_w.append(skip_w.unsqueeze(-1))
            res_skip_b.append(skip_b)
        start_w, start_b = self.start.effective_weight(), self.start.bias
        first = self.in_layers[0]
        w0 = first.effective_weight()  # (2C, C, k)
        taps = torch.einsum("ock,c->ko", w0, start_b)  # W0_k bs per tap, (k, 2C)
        pad = first.padding
        # left end, position t < pad: taps k < pad - t read padding; right end mirrored.
        left = torch.stack([taps[: pad - t].sum(0) for t in range(pad)], dim=-1) if pad else None
        right = torch.stack([taps[pad + t + 1 :].sum(0) for t in range(pad)][::-1], dim=-1) if pad else None
        first_w = torch.einsum("ock,ci->oik", w0, start_w[:, :, 0])
        in_w = [None] + [layer.effective_weight() for layer in self.in_layers[1:]]
        inference = not (self.training or torch.is_grad_enabled())  # only inference reads the taps
        return _FusedWeights(
            start_w=start_w,
            start_b=start_b,
            first_w=first_w,
            first_b=first.bias + taps.sum(0),
            left=left,
            right=right,
            in_w=in_w,
            in_b=[None] + [layer.bias for layer in self.in_layers[1:]],
            res_skip_w=res_skip_w,
            res_skip_b=res_skip_b,
            first_taps=stacked_taps(first_w) if inference else None,
            in_taps=[None] + [stacked_taps(w) if inference else None for w in in_w[1:]],
        )


@dataclass
class _FusedWeights:
    start_w: torch.Tensor
    start_b: torch.Tensor
    first_w: torch.Tensor
    first_b: torch.Tensor
    left: torch.Tensor | None
    right: torch.Tensor | None
    in_w: list[torch.Tensor | None]
    in_b: list[torch.Tensor | None]
    res_skip_w: list[torch.Tensor]
    res_skip_b: list[torch.Tensor]
    first_taps: torch.Tensor | None  # first_w and in_w as infer_conv1d's stacked taps (inference)
    in_taps: list[torch.Tensor | None]

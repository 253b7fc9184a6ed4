"""The mel upsampler and a coupling's conditioning conv composed into one map at the mel rate.

Both are linear. At the sample rate (WaveGlow's layout), group step s of the conditioning
is ``W @ squeeze(upsample(mel))[:, s]``: ``n_mels * n_group`` inputs per step. But those
inputs are a linear function of only the ``upsample_kernel / hop`` mel frames that reach
step s, ``n_mels`` values each, so the product of the two maps needs half the arithmetic
in the default configuration (320 inputs instead of 640) and no upsampled tensor at all.

The composed weight is large (``n_mels * outputs * upsample_kernel / n_group`` values per
flow: 168 MB for each of the default model's 12 flows), so composing is an option of
``WaveGlow.optimize_for_inference``, for servers that synthesize a lot, not the default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from waveflow.config import ModelConfig
from waveflow.nn.conditioner import Conv1d, _param_key


def can_compose(cfg: ModelConfig) -> bool:
    """Composition needs the sample-rate layout, an upsampler spanning whole frames, and the mel
    alone as its input (no pitch features, no pulse source)."""
    return (
        cfg.cond_rate == "sample"
        and not cfg.pitch_features
        and not cfg.pulse_source
        and cfg.hop_length % cfg.n_group == 0
        and cfg.upsample_kernel % cfg.hop_length == 0
    )


class ComposedConditioning:
    """``cond_layer(squeeze(upsample(mel)))`` as one matrix product over stacked frames.

    Step ``s = f' * P + p`` (``P = hop / n_group`` steps per frame) receives frames
    ``f' - q`` for ``q < Q = upsample_kernel / hop``; the weight is laid out as
    ``(P * outputs, Q * n_mels)`` so that one GEMM gives every phase p of every frame f'.
    """

    def __init__(self, upsample: nn.ConvTranspose1d, cond_layer: Conv1d, n_group: int) -> None:
        n_mels, channels, kernel = upsample.weight.shape
        hop = upsample.stride[0]
        self.steps_per_frame = hop // n_group
        self.frames_per_kernel = kernel // hop
        self.key = _param_key(upsample.weight, upsample.bias, *cond_layer.parameters())
        with torch.no_grad():
            w = cond_layer.effective_weight()[:, :, 0].float()  # (O, channels * n_group)
            outputs = w.shape[0]
            w = w.view(outputs, channels, n_group)
            u = upsample.weight.float().view(n_mels, channels, kernel // n_group, n_group)
            # a[m, o, tau] = sum_{c, j} W[o, c, j] U[m, c, tau * n_group + j]
            a = torch.einsum("ocj,mctj->mot", w, u)
            a = a.reshape(n_mels, outputs, self.frames_per_kernel, self.steps_per_frame)
            self.weight = a.permute(3, 1, 2, 0).reshape(-1, self.frames_per_kernel * n_mels)
            self.weight = self.weight.to(upsample.weight.dtype).contiguous()
            bias = cond_layer.bias.float() + torch.einsum("ocj,c->o", w, upsample.bias.float())
            self.bias = bias.to(upsample.weight.dtype).view(-1, 1)
        self.outputs = outputs

    def matches(self, upsample: nn.ConvTranspose1d, cond_layer: Conv1d) -> bool:
        return self.key == _param_key(upsample.weight, upsample.bias, *cond_layer.parameters())

    def covers(self, frames: int, steps: int) -> bool:
        return (frames + self.frames_per_kernel - 1) * self.steps_per_frame >= steps

    def __call__(self, mel: torch.Tensor, steps: int) -> torch.Tensor:
        """mel ``(B, n_mels, F)`` -> conditioning ``(B, outputs, steps)``."""
        b, _, frames = mel.shape
        q = self.frames_per_kernel
        padded = F.pad(mel, (q - 1, q - 1))
        blocks = frames + q - 1
        stacked = torch.cat([padded[:, :, q - 1 - i : q - 1 - i + blocks] for i in range(q)], dim=1)
        out = torch.matmul(self.weight, stacked)  # (B, P * outputs, blocks)
        out = out.view(b, self.steps_per_frame, self.outputs, blocks).permute(0, 2, 3, 1)
        return out.reshape(b, self.outputs, blocks * self.steps_per_frame)[:, :, :steps] + self.bias

"""Analytic cost of the model: floating-point operations per output sample.

Counts the multiply-adds of the convolutions and matrix products (2 FLOPs each), which is
where the time goes; element-wise work (gates, affine, adds) is left out. The benchmark
divides measured samples/s by these counts to report achieved GFLOP/s.
"""

from __future__ import annotations

from waveflow.config import ModelConfig


def flow_flops_per_step(cfg: ModelConfig, channels: int) -> int:
    """FLOPs of one flow step (1x1 conv + coupling) on ``channels`` channels, per group step."""
    c, h, width, layers = channels, channels // 2, cfg.n_channels, cfg.n_layers
    start = h * width
    cond = cfg.cond_channels * 2 * width * layers
    dilated = layers * width * 2 * width * cfg.kernel_size
    res_skip = (layers - 1) * width * 2 * width + width * width
    end = width * c
    invconv = c * c
    return 2 * (start + cond + dilated + res_skip + end + invconv)


def upsample_flops_per_sample(cfg: ModelConfig) -> float:
    """The transposed convolution: every mel frame emits ``upsample_kernel`` steps of n_mels^2 MACs."""
    return 2 * cfg.n_mels * cfg.n_mels * cfg.upsample_kernel / cfg.hop_length


def flops_per_sample(cfg: ModelConfig) -> float:
    """FLOPs per output sample of a forward (or inverse) pass of the whole model."""
    flows = sum(flow_flops_per_step(cfg, c) for c in cfg.channels_per_flow())
    return flows / cfg.n_group + upsample_flops_per_sample(cfg)

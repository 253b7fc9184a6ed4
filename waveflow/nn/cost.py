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


def fused_flow_flops_per_step(cfg: ModelConfig, channels: int) -> int:
    """FLOPs one flow step actually executes with the WaveNet's fused weights (the end conv
    folded into the skip convs, the start conv into the first dilated conv)."""
    c, h, width, layers = channels, channels // 2, cfg.n_channels, cfg.n_layers
    start = h * width
    first = h * 2 * width * cfg.kernel_size
    cond = cfg.cond_channels * 2 * width * layers
    dilated = (layers - 1) * width * 2 * width * cfg.kernel_size
    res_skip = (layers - 1) * width * (width + c) + width * c
    invconv = c * c
    return 2 * (start + first + cond + dilated + res_skip + invconv)


def upsample_flops_per_sample(cfg: ModelConfig) -> float:
    """The transposed convolution: every mel frame emits ``upsample_kernel`` steps of n_mels^2 MACs."""
    return 2 * cfg.n_mels * cfg.n_mels * cfg.upsample_kernel / cfg.hop_length


def flops_per_sample(cfg: ModelConfig, fused: bool = False) -> float:
    """FLOPs per output sample of a forward (or inverse) pass of the whole model: of the
    network as defined (the model's nominal cost, the basis of every GFLOP/s figure), or
    ``fused=True``: what waveflow's fused implementation executes."""
    per_step = fused_flow_flops_per_step if fused else flow_flops_per_step
    flows = sum(per_step(cfg, c) for c in cfg.channels_per_flow())
    return flows / cfg.n_group + upsample_flops_per_sample(cfg)

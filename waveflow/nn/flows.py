"""Invertible layers of the flow.

Every layer has ``forward(x, cond) -> (y, logdet)`` with ``logdet`` of shape ``(B,)``
(log |det dy/dx| per batch element) and ``inverse(y, cond) -> x``. Tensors are
``(B, channels, T)`` where T counts groups of ``n_group`` samples.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from waveflow.nn.conditioner import WaveNet, _param_key


def squeeze(audio: torch.Tensor, n_group: int) -> torch.Tensor:
    """``(B, T)`` -> ``(B, n_group, T // n_group)``: channel j at step t is sample ``t * n_group + j``.

    T must be a multiple of ``n_group``.
    """
    b, t = audio.shape
    return audio.view(b, t // n_group, n_group).transpose(1, 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """Inverse of ``squeeze``: ``(B, n_group, T')`` -> ``(B, T' * n_group)``."""
    return x.transpose(1, 2).reshape(x.shape[0], -1)


def squeeze_cond(cond: torch.Tensor, n_group: int) -> torch.Tensor:
    """``(B, C, T)`` -> ``(B, C * n_group, T // n_group)``; channel ``c * n_group + j`` at step t
    is ``cond[:, c, t * n_group + j]`` (the layout NVIDIA's WaveGlow uses)."""
    b, c, t = cond.shape
    return cond.view(b, c, t // n_group, n_group).permute(0, 1, 3, 2).reshape(b, c * n_group, t // n_group)


class Squeeze(nn.Module):
    """Group ``n_group`` consecutive samples into channels: ``(B, T)`` <-> ``(B, n_group, T / n_group)``."""

    def __init__(self, n_group: int) -> None:
        super().__init__()
        self.n_group = n_group

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] % self.n_group:
            raise ValueError(f"length {x.shape[-1]} is not a multiple of n_group={self.n_group}")
        return squeeze(x, self.n_group), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return unsqueeze(y)


def _random_rotation(channels: int) -> torch.Tensor:
    """A random orthogonal matrix with determinant +1."""
    q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class Invertible1x1Conv(nn.Module):
    """y = W x over channels at every step; log|det| = T * log|det W|.

    ``lu=True`` parameterises W = P L (U + diag(sign * exp(log_s))) (Glow), making the
    log-determinant ``T * sum(log_s)`` and W invertible by construction. Both start from a
    random rotation (det +1). The matrix and its inverse are applied in float32 (or wider)
    whatever autocast says: the audio path must stay exactly invertible. In eval mode
    without autograd, W^-1 is computed once in float64 and cached; ``train()`` or any
    change to the parameters drops it.
    """

    def __init__(self, channels: int, lu: bool = False) -> None:
        super().__init__()
        self.channels, self.lu = channels, lu
        w = _random_rotation(channels)
        if lu:
            p, lower, upper = torch.linalg.lu(w)
            s = torch.diagonal(upper)
            self.register_buffer("perm", p.float())
            self.register_buffer("sign_s", torch.sign(s).float())
            self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
            self.lower = nn.Parameter(lower.float())
            self.upper = nn.Parameter(torch.triu(upper, 1).float())
            self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())
        else:
            self.weight = nn.Parameter(w.float())
        self._inverse_cache: tuple[tuple, torch.Tensor] | None = None

    def train(self, mode: bool = True) -> Invertible1x1Conv:
        self._inverse_cache = None
        return super().train(mode)

    def _params(self) -> tuple[torch.Tensor, ...]:
        return (self.lower, self.upper, self.log_s) if self.lu else (self.weight,)

    def matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W as a ``(C, C)`` matrix, computed in ``dtype`` (at least float32)."""
        if not self.lu:
            return self.weight.to(dtype)
        eye = torch.eye(self.channels, device=self.log_s.device, dtype=dtype)
        mask = self.lower_mask.to(dtype)
        lower = self.lower.to(dtype) * mask + eye
        upper = self.upper.to(dtype) * mask.T + torch.diag(self.sign_s.to(dtype) * torch.exp(self.log_s.to(dtype)))
        return self.perm.to(dtype) @ lower @ upper

    def log_abs_det(self) -> torch.Tensor:
        """log |det W| as a float64 scalar (the matrix is tiny; the accuracy is free)."""
        if self.lu:
            return self.log_s.double().sum()
        return torch.linalg.slogdet(self.weight.double())[1]

    def inverse_matrix(self) -> torch.Tensor:
        """W^-1, computed in float64; cached in eval mode without autograd."""
        if self.training or torch.is_grad_enabled():
            return torch.linalg.inv(self.matrix(torch.float64))
        key = _param_key(*self._params())
        if self._inverse_cache is None or self._inverse_cache[0] != key:
            self._inverse_cache = (key, torch.linalg.inv(self.matrix(torch.float64)))
        return self._inverse_cache[1]

    @staticmethod
    def _apply_matrix(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = torch.promote_types(x.dtype, torch.float32)
            return torch.matmul(w.to(dtype), x.to(dtype)).to(x.dtype)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=x.device.type, enabled=False):
            logdet = (self.log_abs_det() * x.shape[-1]).to(torch.promote_types(x.dtype, torch.float32))
        w = self.matrix(torch.promote_types(x.dtype, torch.float32))
        return self._apply_matrix(w, x), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        w_inv = self.inverse_matrix().to(torch.promote_types(y.dtype, torch.float32))
        return self._apply_matrix(w_inv, y)


class ActNorm(nn.Module):
    """Per-channel affine y = (x + loc) * exp(log_scale), initialised from the first batch
    seen in training so that y has zero mean and unit variance per channel (Glow).

    Under torch.distributed the statistics are averaged over ranks so every replica
    starts from the same parameters.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.loc = nn.Parameter(torch.zeros(1, channels, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        x = x.float()
        stats = torch.stack([x.mean(dim=(0, 2)), x.square().mean(dim=(0, 2))])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
            stats /= dist.get_world_size()
        mean, sq_mean = stats
        std = torch.sqrt(torch.clamp(sq_mean - mean.square(), min=0.0))
        self.loc.copy_(-mean.view_as(self.loc))
        self.log_scale.copy_(-torch.log(std + self.eps).view_as(self.log_scale))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self._initialize(x)
        y = (x + self.loc.to(x.dtype)) * torch.exp(self.log_scale).to(x.dtype)
        logdet = self.log_scale.to(torch.promote_types(x.dtype, torch.float32)).sum() * x.shape[-1]
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return y * torch.exp(-self.log_scale).to(y.dtype) - self.loc.to(y.dtype)


class AffineCoupling(nn.Module):
    """x = [xa, xb]; y = [xa, exp(log_s) * xb + t] with (t, log_s) = WaveNet(xa, cond).

    The conditioner's first half of output channels is the shift t, the second log s
    (NVIDIA's order). The affine arithmetic is done in float32 even when the conditioner
    runs in reduced precision.
    """

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        n_layers: int,
        n_channels: int,
        kernel_size: int,
        weight_norm: bool = True,
    ) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"affine coupling needs an even channel count, got {channels}")
        self.half = channels // 2
        self.wn = WaveNet(self.half, 2 * self.half, cond_channels, n_layers, n_channels, kernel_size, weight_norm)

    def _shift_logscale(
        self, xa: torch.Tensor, cond: torch.Tensor, cond_projected: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.wn(xa, cond, cond_projected)
        out = out.to(torch.promote_types(xa.dtype, torch.float32))
        return out[:, : self.half], out[:, self.half :]

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, cond_projected: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = x[:, : self.half], x[:, self.half :]
        shift, log_s = self._shift_logscale(xa, cond, cond_projected)
        yb = (torch.exp(log_s) * xb.to(log_s.dtype) + shift).to(x.dtype)
        return torch.cat([xa, yb], dim=1), log_s.sum(dim=(1, 2))

    def inverse(self, y: torch.Tensor, cond: torch.Tensor, cond_projected: bool = False) -> torch.Tensor:
        ya, yb = y[:, : self.half], y[:, self.half :]
        shift, log_s = self._shift_logscale(ya, cond, cond_projected)
        xb = ((yb.to(log_s.dtype) - shift) * torch.exp(-log_s)).to(y.dtype)
        return torch.cat([ya, xb], dim=1)


class FlowStep(nn.Module):
    """One step of flow: [ActNorm] -> invertible 1x1 conv -> affine coupling."""

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        n_layers: int,
        n_channels: int,
        kernel_size: int,
        weight_norm: bool = True,
        lu: bool = False,
        actnorm: bool = False,
    ) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels) if actnorm else None
        self.invconv = Invertible1x1Conv(channels, lu=lu)
        self.coupling = AffineCoupling(channels, cond_channels, n_layers, n_channels, kernel_size, weight_norm)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, cond_projected: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0], dtype=torch.float32)
        if self.actnorm is not None:
            x, ld = self.actnorm(x)
            logdet = logdet + ld
        x, ld = self.invconv(x)
        logdet = logdet + ld
        x, ld = self.coupling(x, cond, cond_projected)
        return x, logdet + ld

    def inverse(self, y: torch.Tensor, cond: torch.Tensor, cond_projected: bool = False) -> torch.Tensor:
        x = self.coupling.inverse(y, cond, cond_projected)
        x = self.invconv.inverse(x)
        if self.actnorm is not None:
            x = self.actnorm.inverse(x)
        return x

"""Output limiter: audio that never reaches full scale, without hard clipping.

The flow's pulses are more phase-aligned than a real voice's, and the mel correction moves
every frame's level onto the mel without regard to the waveform's peaks, so a synthesized
clip can peak above 1 (LJ001-0032 reaches 1.56 where the recording peaks at 0.84). A 16-bit
wav then clips hard. The limiter is a soft knee, sample by sample:

    |y| = |x|                                                     for |x| <= knee
    |y| = knee + (ceiling - knee) tanh((|x| - knee) / (ceiling - knee))   above,

with the sign of x. Its slope is 1 at the knee and falls smoothly to 0, so |y| <= ceiling for
any input (equal only where tanh rounds to 1), and nothing below the knee changes, bit for
bit. Being memoryless, it needs no look-ahead: a stream limits each chunk as it leaves and
equals offline synthesis exactly.
"""

from __future__ import annotations

import torch

KNEE = 0.9  # -0.9 dBFS: below it the audio is untouched
CEILING = 0.99  # -0.09 dBFS: approached, never passed, so a 16-bit wav never clips


def soft_limit(audio: torch.Tensor, knee: float = KNEE, ceiling: float = CEILING) -> torch.Tensor:
    """``audio`` of any shape -> the same shape and dtype, ``|y| <= ceiling``; identity below ``knee``."""
    if not 0 < knee < ceiling:
        raise ValueError(f"limiter needs 0 < knee < ceiling, got knee {knee} and ceiling {ceiling}")
    over = audio.abs() - knee
    if not bool((over > 0).any()):
        return audio
    span = ceiling - knee
    limited = torch.sign(audio) * (knee + span * torch.tanh(over.clamp(min=0) / span))
    return torch.where(over > 0, limited.to(audio.dtype), audio)

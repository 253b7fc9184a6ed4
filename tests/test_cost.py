"""The analytic FLOP count the benchmark reports against, checked by counting a real pass."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from waveflow.config import model_preset
from waveflow.cost import flops_per_sample
from waveflow.model import WaveGlow


@pytest.mark.parametrize("preset", ["tiny", "small", "realtime"])
@pytest.mark.parametrize("direction", ["inverse", "forward"])
def test_flops_per_sample_equals_counted_flops(preset, direction):
    model = WaveGlow(model_preset(preset)).eval()
    frames = 12
    mel = torch.randn(1, 80, frames)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        if direction == "inverse":
            model.infer(mel)
        else:
            model(torch.randn(1, frames * 256) * 0.1, mel)
    assert counter.get_total_flops() == pytest.approx(flops_per_sample(model.cfg) * frames * 256, rel=1e-9)

"""The analytic FLOP count the benchmark reports against, checked by counting a real pass."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from waveflow.config import model_preset
from waveflow.nn import conditioner
from waveflow.nn.conditioner import WaveNet
from waveflow.nn.cost import flops_per_sample
from waveflow.nn.model import WaveGlow


@pytest.mark.parametrize("preset", ["tiny", "small", "realtime"])
@pytest.mark.parametrize("direction", ["inverse", "forward"])
@pytest.mark.parametrize("fused", [True, False])
def test_flops_per_sample_equals_counted_flops(preset, direction, fused, monkeypatch):
    # FlopCounterMode counts aten.convolution, not the oneDNN op infer_conv1d calls directly
    monkeypatch.setattr(conditioner, "_ONEDNN", False)
    if not fused:  # the network as defined, layer by layer
        monkeypatch.setattr(WaveNet, "forward", WaveNet.forward_unfused)
    model = WaveGlow(model_preset(preset)).eval()
    frames = 12
    mel = torch.randn(1, 80, frames)
    audio = torch.randn(1, frames * 256) * 0.1
    run = (lambda: model.infer(mel)) if direction == "inverse" else (lambda: model(audio, mel))
    with torch.no_grad():
        run()  # builds the eval-mode weight caches, a one-off cost the count leaves out
        with FlopCounterMode(display=False) as counter:
            run()
    assert counter.get_total_flops() == pytest.approx(flops_per_sample(model.cfg, fused=fused) * frames * 256, rel=1e-9)

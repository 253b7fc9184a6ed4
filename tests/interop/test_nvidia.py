"""NVIDIA WaveGlow checkpoints: every layout converts to the same function, nothing unsafe loads.

The NVIDIA-side models come from ``tests/nvidia_ref/glow.py`` (class and parameter names of
NVIDIA's ``glow.py``, real torch layers and ``weight_norm``), are saved with ``torch.save``
as full pickles or state dicts, and are evaluated by a reference written from the layout's
definition, independent of waveflow's code.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch
from conftest import EARLY_OUTPUTS, REPO, tiny_model

from waveflow.config import make_config
from waveflow.interop.nvidia import (
    NvidiaCheckpointError,
    load_nvidia,
    nvidia_config,
    read_nvidia,
    to_nvidia_state_dict,
)
from waveflow.nn.checkpoint import load_model, save_checkpoint

REF_DIR = REPO / "tests" / "nvidia_ref"
SMALL = dict(n_mel_channels=4, n_flows=4, n_group=4, n_early_every=2, n_early_size=2)
WN_CFG = dict(n_layers=3, n_channels=4, kernel_size=3)
UPSAMPLE = (64, 16)  # kernel, stride: NVIDIA's 1024/256 scaled down


@pytest.fixture
def glow(monkeypatch):
    monkeypatch.syspath_prepend(str(REF_DIR))
    monkeypatch.delitem(sys.modules, "glow", raising=False)
    return importlib.import_module("glow")


def _nvidia_model(glow, layout, seed=0, upsample=UPSAMPLE, small=None):
    torch.manual_seed(seed)
    model = glow.WaveGlow(**(small or SMALL), WN_config=WN_CFG, upsample=upsample, layout=layout)
    return glow.perturb(model, seed).eval()


def _inputs(frames=6, seed=1, n_mels=4, hop=16, n_group=4):
    gen = torch.Generator().manual_seed(seed)
    mel = torch.randn(2, n_mels, frames, generator=gen)
    z = torch.randn(2, n_group, frames * hop // n_group, generator=gen)
    audio = torch.randn(2, frames * hop, generator=gen) * 0.3
    return mel, z, audio


def _assert_same_function(glow, nv, model, n_mels=4, hop=16, n_group=4):
    mel, z, audio = _inputs(n_mels=n_mels, hop=hop, n_group=n_group)
    with torch.no_grad():
        torch.testing.assert_close(model.inverse(z, mel), glow.reference_inverse(nv, z, mel), rtol=1e-5, atol=1e-5)
        z_ref, logdet_ref = glow.reference_forward(nv, audio, mel)
        z_ours, logdet = model(audio, mel)
    torch.testing.assert_close(z_ours, z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logdet.double(), logdet_ref, rtol=1e-5, atol=1e-3)


def _nvidia_numel(nv):
    # weight_g/weight_v/bias are the parameters; the hook's computed `weight` attribute is not.
    return sum(p.numel() for p in nv.parameters())


@pytest.mark.parametrize("layout", ["first", "middle", "latest"])
def test_pickled_release_converts_to_the_same_function(tmp_path, glow, layout):
    nv = _nvidia_model(glow, layout)
    path = tmp_path / f"waveglow_{layout}.pt"
    torch.save({"model": nv, "iteration": 7, "optimizer": None, "learning_rate": 1e-4}, path)
    sys.modules.pop("glow")  # conversion must not need NVIDIA's code
    model, cfg = load_nvidia(path)
    m = cfg.model
    assert (m.n_mels, m.n_flows, m.n_group, m.n_early_every, m.n_early_size) == (4, 4, 4, 2, 2)
    assert (m.n_layers, m.n_channels, m.kernel_size, m.upsample_kernel, m.hop_length) == (3, 4, 3, 64, 16)
    assert cfg.mel.hop_length == 16 and cfg.mel.n_mels == 4
    # Every tensor is mapped: same number of values on both sides (fused rows are concatenations).
    assert model.num_parameters() == _nvidia_numel(nv)
    _assert_same_function(glow, nv, model)


@pytest.mark.parametrize("early", sorted(EARLY_OUTPUTS))
def test_releases_with_several_early_outputs_convert_to_the_same_function(tmp_path, glow, early):
    """NVIDIA's published models have two early outputs: the order in which they re-join the
    flow on the way back only shows with two or more."""
    shape = EARLY_OUTPUTS[early]
    small = {**SMALL, **{k: shape[k] for k in ("n_flows", "n_group", "n_early_every", "n_early_size")}}
    nv = _nvidia_model(glow, "latest", seed=early, small=small)
    path = tmp_path / "waveglow.pt"
    torch.save({"model": nv, "iteration": 1}, path)
    model, cfg = load_nvidia(path)
    assert sum(cfg.model.early_output_at(k) for k in range(cfg.model.n_flows)) == early
    _assert_same_function(glow, nv, model, n_group=shape["n_group"])
    mel, z, _ = _inputs(n_group=shape["n_group"])
    with torch.no_grad():  # and our own inverse undoes our own forward
        torch.testing.assert_close(model(model.inverse(z, mel), mel)[0], z, rtol=1e-4, atol=1e-4)


def test_legacy_serialization_format_loads(tmp_path, glow):
    # The 2018 releases predate the zip format.
    nv = _nvidia_model(glow, "first", seed=3)
    path = tmp_path / "old_format.pt"
    torch.save({"model": nv, "iteration": 1}, path, _use_new_zipfile_serialization=False)
    model, _ = load_nvidia(path)
    _assert_same_function(glow, nv, model)


@pytest.mark.parametrize("style", ["plain", "parametrizations"])
def test_state_dict_release_converts(tmp_path, glow, style):
    # A state dict does not record the upsampler's stride; NVIDIA's code fixes it at 256.
    nv = _nvidia_model(glow, "middle", seed=2, upsample=(512, 256))
    state = {}
    for key, value in nv.state_dict().items():
        if style == "parametrizations":
            key = key.replace("weight_g", "parametrizations.weight.original0")
            key = key.replace("weight_v", "parametrizations.weight.original1")
        state["module." + key] = value
    config = {**SMALL, "WN_config": WN_CFG}
    path = tmp_path / "dle.pt"
    torch.save({"state_dict": state, "config": config, "epoch": 3}, path)
    model, cfg = load_nvidia(path)
    assert cfg.model.hop_length == 256 and cfg.model.upsample_kernel == 512
    _assert_same_function(glow, nv, model, hop=256)


def test_weight_norm_removed_state_dict_converts(tmp_path, glow):
    nv = _nvidia_model(glow, "latest", seed=4, upsample=(512, 256))
    state = {}
    for name, module in nv.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if pname == "weight_g":
                v = module.weight_v.detach()
                state[f"{name}.weight"] = p.detach() * v / v.flatten(1).norm(dim=1).view(-1, 1, 1)
            elif pname != "weight_v":
                state[f"{name}.{pname}"] = p.detach()
    path = tmp_path / "no_wn.pt"
    torch.save({"state_dict": state, "config": {**SMALL, "WN_config": WN_CFG}}, path)
    model, _ = load_nvidia(path)
    _assert_same_function(glow, nv, model, hop=256)


def test_round_trip_waveflow_nvidia_waveflow_is_exact(tmp_path, glow):
    model = tiny_model(seed=5)
    state = to_nvidia_state_dict(model)
    # The NVIDIA side accepts it as is, and computes the same function.
    nv = glow.WaveGlow(**nvidia_config(make_config("tiny")), upsample=(512, 256), layout="latest")
    nv.load_state_dict(state, strict=True)
    _assert_same_function(glow, nv.eval(), model.eval(), n_mels=80, hop=256, n_group=4)
    path = tmp_path / "as_nvidia.pt"
    torch.save({"state_dict": state, "config": nvidia_config(make_config("tiny"))}, path)
    back, cfg = read_nvidia(path)
    assert cfg.model == model.cfg
    own = model.state_dict()
    assert set(back) == set(own)
    for key in own:
        assert torch.equal(back[key], own[key]), key


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"model": _Exploit(), "iteration": 1}, path)
    with pytest.raises(NvidiaCheckpointError, match=r"refusing to unpickle (posix|os)\.system"):
        read_nvidia(path)
    assert not (tmp_path / "pwned_marker").exists()


def test_unexpected_class_is_named(tmp_path, glow):
    path = tmp_path / "extra.pt"
    torch.save({"model": _nvidia_model(glow, "latest"), "extra": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(NvidiaCheckpointError, match=r"torch\.nn\.modules\.linear\.Linear"):
        read_nvidia(path)


def test_glow_old_is_refused_clearly(tmp_path, glow, monkeypatch):
    (tmp_path / "glow_old.py").write_text("import glow\n\n\nclass WaveGlow(glow.WaveGlow):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    glow_old = importlib.import_module("glow_old")
    torch.manual_seed(0)
    old = glow_old.WaveGlow(**SMALL, WN_config=WN_CFG, upsample=UPSAMPLE, layout="first")
    path = tmp_path / "waveglow_old.pt"
    torch.save({"model": old}, path)
    sys.modules.pop("glow_old")
    with pytest.raises(NvidiaCheckpointError, match=r"glow_old\.WaveGlow.*not supported"):
        read_nvidia(path)


def test_bad_inputs_give_one_clear_error(tmp_path, glow):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(NvidiaCheckpointError, match="not a readable PyTorch checkpoint"):
        read_nvidia(text)
    with pytest.raises(NvidiaCheckpointError, match="no such file"):
        read_nvidia(tmp_path / "missing.pt")
    # Another architecture: a waveflow checkpoint (plain data, but not NVIDIA's names).
    ours = tmp_path / "ours.pt"
    save_checkpoint(ours, tiny_model(), make_config("tiny"))
    with pytest.raises(NvidiaCheckpointError, match="not an NVIDIA WaveGlow checkpoint"):
        read_nvidia(ours)
    # Mismatched shapes: one in_layer of another width.
    state = _nvidia_model(glow, "latest", upsample=(512, 256)).state_dict()
    state["WN.1.in_layers.0.weight_v"] = torch.zeros(8, 3, 3)
    bad = tmp_path / "bad_shape.pt"
    torch.save({"state_dict": state, "config": {**SMALL, "WN_config": WN_CFG}}, bad)
    with pytest.raises(
        NvidiaCheckpointError, match=r"flows\.1\.coupling\.wn\.in_layers\.0\.weight_v \(8, 3, 3\) vs \(8, 4, 3\)"
    ):
        read_nvidia(bad)
    # The recorded config contradicts the weights.
    state = _nvidia_model(glow, "latest", upsample=(512, 256)).state_dict()
    lying = tmp_path / "lying.pt"
    torch.save({"state_dict": state, "config": {**SMALL, "WN_config": {**WN_CFG, "n_channels": 8}}}, lying)
    with pytest.raises(NvidiaCheckpointError, match="n_channels=8 but its weights have 4"):
        read_nvidia(lying)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "waveflow", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_cli_converts_and_refuses(tmp_path, glow):
    nv = _nvidia_model(glow, "middle", seed=6)
    src = tmp_path / "waveglow.pt"
    torch.save({"model": nv, "iteration": 1, "optimizer": None, "learning_rate": 1e-4}, src)
    out = tmp_path / "converted.pt"
    result = _cli("convert-nvidia", str(src), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "4 flows, n_group 4" in result.stdout
    model, _ = load_model(out)
    _assert_same_function(glow, nv, model)

    evil = tmp_path / "evil.pt"
    torch.save({"model": _Exploit()}, evil)
    out2 = tmp_path / "never.pt"
    result = _cli("convert-nvidia", str(evil), "-o", str(out2))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "evil.pt" in lines[0] and "refusing to unpickle" in lines[0]
    assert not out2.exists() and not list(tmp_path.glob(".never.pt*"))


def test_vocoder_from_nvidia_synthesizes_like_the_original_model(tmp_path):
    from waveflow.infer.vocoder import Vocoder

    model = tiny_model(seed=6)
    path = tmp_path / "release.pt"
    torch.save({"state_dict": to_nvidia_state_dict(model), "config": nvidia_config(make_config("tiny"))}, path)
    mel = torch.randn(80, 7, generator=torch.Generator().manual_seed(0)) - 4.0
    ours = Vocoder(model, make_config("tiny"))(mel, seed=3)
    theirs = Vocoder.from_nvidia(path)(mel, seed=3)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"not_here\.pt"):
        Vocoder.from_nvidia(tmp_path / "not_here.pt")

"""Configs: presets, strict overrides, YAML loading."""

from __future__ import annotations

import pytest

from waveflow.config import ConfigError, config_from_dict, load_config, make_config, model_preset


def test_overrides_apply_on_top_of_preset():
    cfg = make_config("small", {"model": {"n_layers": 2}, "train": {"lr": 3e-4, "batch_size": 2}})
    assert cfg.model.n_layers == 2 and cfg.model.n_channels == model_preset("small").n_channels
    assert cfg.train.lr == 3e-4
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"model": {"n_flow": 3}}, r"unknown key\(s\) \['n_flow'\] in 'model'"),
        ({"modle": {}}, r"unknown top-level config key\(s\) \['modle'\]"),
        ({"model": {"n_flows": "12"}}, "model.n_flows must be an integer, got '12'"),
        ({"model": {"lu": 1}}, "model.lu must be true or false"),
        ({"train": {"precision": "fp8"}}, r"train.precision must be one of \['auto', 'fp32', 'bf16', 'fp16'\]"),
        ({"model": {"n_group": 6, "n_early_size": 1}}, "needs an even number"),
        ({"model": {"kernel_size": 4}}, "kernel_size must be odd"),
        ({"model": {"n_mels": 40}}, r"model.n_mels \(40\) must equal mel.n_mels \(80\)"),
        ({"preset": "huge"}, "unknown model preset 'huge'"),
        ({"model": {"cond_rate": "frame"}}, "model.cond_rate must be 'sample' or 'group'"),
        ({"model": {"cond_rate": "group", "n_group": 24}}, r"needs n_group \(24\) to divide hop_length \(256\)"),
        ({"model": {"upsample_kernel": 128}}, r"upsample_kernel must be >= the upsampler stride \(256\)"),
    ],
)
def test_bad_overrides_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        make_config("default", overrides)


def test_load_config_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\ntrain:\n  segment_length: 4096\n")
    cfg = load_config(path)
    assert cfg.preset == "tiny" and cfg.train.segment_length == 4096 and cfg.model.n_flows == 4
    path.write_text("model: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: config section 'model' must be a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_every_recipe_config_loads_and_the_bundled_model_matches_its_recipe():
    from conftest import REPO

    from waveflow.nn.checkpoint import read_checkpoint

    configs = {p.name: load_config(p) for p in sorted((REPO / "recipes" / "ljspeech" / "conf").glob("*.yaml"))}
    assert len(configs) >= 7
    bundled = read_checkpoint(REPO / "waveflow" / "assets" / "ljspeech_mini.pt")
    recipe = configs["realtime_lpc_source.yaml"]
    # the shipped model is what its recipe config builds (the ship step changes only the inference
    # sigma); read as a checkpoint is read, so that fields added since it was written take their defaults
    shipped = config_from_dict(bundled["config"]).to_dict()
    assert shipped["model"] == recipe.to_dict()["model"]
    assert shipped["mel"] == recipe.to_dict()["mel"]

"""waveflow: a WaveGlow-style normalizing-flow vocoder trained by exact maximum likelihood."""

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names, imported on first use: ``import waveflow`` (and ``waveflow --help``) stays
# free of torch until something that needs it is touched.
_EXPORTS = {
    "MelSpectrogram": "dsp.audio",
    "load_wav": "dsp.audio",
    "save_wav": "dsp.audio",
    "save_wav_pieces": "dsp.audio",
    "Config": "config",
    "ConfigError": "config",
    "MelConfig": "config",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "load_config": "config",
    "make_config": "config",
    "model_preset": "config",
    "NLL": "nn.loss",
    "flow_nll": "nn.loss",
    "WaveGlow": "nn.model",
    "StreamingVocoder": "infer.streaming",
    "synthesize_long": "infer.streaming",
    "Vocoder": "infer.vocoder",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"waveflow.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'waveflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "NLL",
    "Config",
    "ConfigError",
    "MelConfig",
    "MelSpectrogram",
    "ModelConfig",
    "StreamingVocoder",
    "TrainConfig",
    "Vocoder",
    "WaveGlow",
    "flow_nll",
    "load_config",
    "load_wav",
    "make_config",
    "model_preset",
    "save_wav",
    "save_wav_pieces",
    "synthesize_long",
]

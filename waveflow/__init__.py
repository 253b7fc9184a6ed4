"""waveflow: a WaveGlow-style normalizing-flow vocoder trained by exact maximum likelihood."""

from waveflow.audio import MelSpectrogram, load_wav, save_wav
from waveflow.config import (
    Config,
    ConfigError,
    MelConfig,
    ModelConfig,
    TrainConfig,
    load_config,
    make_config,
    model_preset,
)
from waveflow.loss import NLL, flow_nll
from waveflow.model import WaveGlow
from waveflow.streaming import StreamingVocoder
from waveflow.vocoder import Vocoder

__version__ = "0.1.0"

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
]

"""Typed configuration: mel front end, model, training.

Configs are nested dataclasses. A recipe YAML holds overrides only; ``load_config``
starts from a named model preset and applies them, refusing unknown or ill-typed keys
so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin


class ConfigError(ValueError):
    """A configuration key is unknown, ill-typed or out of range."""


# Upper bounds, checked before anything is allocated: a config (a recipe, a checkpoint's) is
# input, and a few bytes of it can ask for terabytes or hours. Each is far above any published
# vocoder (WaveGlow's paper model: 268 M weights, 6.5e7 FLOPs per sample).
MAX_WEIGHTS = 500_000_000  # 2 GB of float32
MAX_FLOPS_PER_SAMPLE = 3e8  # 4.5x the paper model: minutes of CPU per second of audio
MAX_CONFIG_BYTES = 1_000_000  # a config file; recipes are a few hundred bytes
LIMITS = {
    "mel.sample_rate": 384_000,
    "mel.n_fft": 16_384,
    "mel.n_mels": 512,
    "model.n_flows": 64,
    "model.n_group": 1024,
    "model.n_layers": 16,  # dilation 2**(n_layers - 1)
    "model.n_channels": 4096,
    "model.kernel_size": 63,
    "model.hop_length": 8192,
    "model.upsample_kernel": 65_536,
    "train.segment_length": 2**22,
    "train.batch_size": 4096,
    "train.keep_last": 10_000,
    "train.num_workers": 256,
    "train.eval_mel_correction": 1000,
    "train.eval_audio_clips": 1000,
}


def check_limits(section: str, obj: Any) -> None:
    """Every bounded field of one config section against ``LIMITS``."""
    for key, limit in LIMITS.items():
        where, name = key.split(".")
        if where == section and getattr(obj, name) > limit:
            raise ConfigError(f"{key} is {getattr(obj, name)}; at most {limit} is accepted")


def short(value: Any, limit: int = 60) -> str:
    """A bounded repr for error messages: a value from a file may be nested or huge (a YAML or
    pickle alias bomb); its full repr could take gigabytes."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 2, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def safe_yaml(text: str, where: str = "YAML") -> Any:
    """``yaml.safe_load`` that refuses aliases (``*name``): a few hundred bytes of nested aliases
    expand into gigabytes, and no waveflow config needs them; refuses text over
    ``MAX_CONFIG_BYTES``. Raises ConfigError naming ``where``."""
    import yaml

    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters; a config holds at most {MAX_CONFIG_BYTES}")

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise ConfigError(f"{where}: line {mark.line + 1}: YAML aliases (*name) are not accepted in a config")
            return super().compose_node(parent, index)

    loader = NoAliasLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({short(str(exc), 200)})") from None
    finally:
        loader.dispose()


@dataclass
class MelConfig:
    """Log-mel convention (described in ``waveflow.dsp.audio``). ``preset`` selects the padding/magnitude rule."""

    sample_rate: int = 22050
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0
    clamp_min: float = 1e-5
    preset: Literal["default", "hifigan"] = "default"

    def validate(self) -> None:
        _check(self.sample_rate > 0, "mel.sample_rate must be positive")
        _check(self.win_length <= self.n_fft, "mel.win_length must be <= mel.n_fft")
        _check(0 < self.hop_length <= self.win_length, "mel.hop_length must be in (0, win_length]")
        _check(self.n_mels > 0, "mel.n_mels must be positive")
        _check(
            0 <= self.f_min < self.f_max <= self.sample_rate / 2,
            f"mel band must satisfy 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}..{self.f_max}",
        )
        _check(self.clamp_min > 0, "mel.clamp_min must be positive")
        check_limits("mel", self)
        if self.preset == "hifigan":
            _check(
                (self.n_fft - self.hop_length) % 2 == 0,
                "the hifigan preset pads (n_fft - hop_length) / 2 each side; that must be an integer",
            )

    @property
    def frame_offset(self) -> int:
        """Sample n belongs to frame ``(n + frame_offset) // hop``: centred frames (default) start
        half a hop early; hifigan's frame f is centred on ``f * hop + hop / 2``."""
        return self.hop_length // 2 if self.preset == "default" else 0

    @property
    def frame0_centre(self) -> int:
        """The sample on which frame 0 is centred (frame f: ``frame0_centre + f * hop``): 0 for
        the default's centred frames, ``hop / 2`` for hifigan's."""
        return self.hop_length // 2 - self.frame_offset

    def frames(self, num_samples: int) -> int:
        """Number of mel frames this convention produces for ``num_samples`` samples."""
        if self.preset == "hifigan":
            return num_samples // self.hop_length
        return 1 + num_samples // self.hop_length


@dataclass
class ModelConfig:
    """WaveGlow architecture. Defaults are NVIDIA's published ``waveglow_256channels``."""

    n_mels: int = 80
    n_flows: int = 12
    n_group: int = 8
    n_early_every: int = 4
    n_early_size: int = 2
    # WaveNet-like conditioner of every affine coupling.
    n_layers: int = 8
    n_channels: int = 256
    kernel_size: int = 3
    # Mel upsampler: ConvTranspose1d(n_mels, n_mels, upsample_kernel, stride=hop_length).
    hop_length: int = 256
    upsample_kernel: int = 1024
    # Where the conditioning lives. "sample" (WaveGlow): the mel is upsampled to the sample
    # rate and squeezed like the audio, so the conditioner sees n_mels * n_group channels.
    # "group" (SqueezeWave): the mel is upsampled only to the group rate (stride
    # hop_length / n_group, upsample_kernel counted in group steps) and the conditioner
    # sees n_mels channels: the conditioning cost per sample falls by n_group.
    cond_rate: str = "sample"
    # Options beyond the published model.
    weight_norm: bool = True
    lu: bool = False
    actnorm: bool = False
    # Linear prediction from the mel (waveflow.nn.lpc): the flow models the LP residual and the
    # envelope comes from DSP. 0 turns it off (NVIDIA's models); 24 is the measured choice.
    lpc_order: int = 0
    # Two pitch features from the mel (waveflow.dsp.pitch: log F0 and periodicity per frame) join
    # the mel as conditioning, so that the couplings are told the period they must produce.
    pitch_features: bool = False
    # A pulse source phase-locked to the voice (waveflow.nn.source) joins the conditioning at the
    # sample rate: in training from pulses picked in the LP residual, at synthesis free-running
    # at the mel's period. Needs lpc_order > 0.
    pulse_source: bool = False
    # How pitch and voicing are read from the mel (waveflow.dsp.pitch) for the pulse source, the
    # pitch features and the post-filter: "comb" (checkpoints that name none) or "template"
    # (voices about 90% of the frames an independent tracker calls voiced, where comb voices 55%).
    pitch_tracker: str = "comb"

    def validate(self) -> None:
        for name in ("n_mels", "n_flows", "n_group", "n_layers", "n_channels", "hop_length"):
            _check(getattr(self, name) > 0, f"model.{name} must be positive")
        check_limits("model", self)
        _check(self.n_early_every >= 0, "model.n_early_every must be >= 0 (0 disables early outputs)")
        _check(self.n_early_size >= 0, "model.n_early_size must be >= 0")
        _check(self.kernel_size % 2 == 1, "model.kernel_size must be odd (non-causal 'same' convolutions)")
        _check(
            0 <= self.lpc_order < self.hop_length,
            f"model.lpc_order must be in 0..{self.hop_length - 1} (0 disables linear prediction)",
        )
        _check(self.cond_rate in ("sample", "group"), "model.cond_rate must be 'sample' or 'group'")
        _check(
            self.pitch_tracker in ("comb", "template"),
            f"model.pitch_tracker must be 'comb' or 'template', got {self.pitch_tracker!r}",
        )
        _check(
            not self.pulse_source or self.lpc_order > 0,
            "model.pulse_source picks its pulses in the LP residual: it needs model.lpc_order > 0",
        )
        _check(
            self.cond_rate == "sample" or self.hop_length % self.n_group == 0,
            f"model.cond_rate 'group' needs n_group ({self.n_group}) to divide hop_length ({self.hop_length})",
        )
        _check(
            self.upsample_kernel >= self.upsample_stride,
            f"model.upsample_kernel must be >= the upsampler stride ({self.upsample_stride}), "
            "or upsampled frames leave gaps",
        )
        for k, channels in enumerate(self.channels_per_flow()):
            _check(
                channels >= 2 and channels % 2 == 0,
                f"flow {k} would see {channels} channels; the affine coupling needs an even number >= 2 "
                f"(n_group={self.n_group}, n_early_every={self.n_early_every}, n_early_size={self.n_early_size})",
            )
        weights = self.weights_estimate()
        _check(
            weights <= MAX_WEIGHTS,
            f"this model would have about {weights / 1e6:.0f} M weights ({weights * 4 / 2**30:.1f} GiB); "
            f"at most {MAX_WEIGHTS / 1e6:.0f} M are accepted",
        )
        flops = 2 * weights / self.n_group
        _check(
            flops <= MAX_FLOPS_PER_SAMPLE,
            f"this model would cost about {flops:.1e} FLOPs per sample; "
            f"at most {MAX_FLOPS_PER_SAMPLE:.0e} are accepted",
        )

    def weights_estimate(self) -> int:
        """About how many weights the model has (the couplings' convolutions, the 1x1 convs and
        the upsampler; biases left out), from the config alone, before anything is allocated.
        Each weight is one multiply-add per group step, so ``2 * this / n_group`` is about the
        FLOPs per sample (``waveflow.nn.cost`` counts them exactly)."""
        width, layers = self.n_channels, self.n_layers
        total = self.cond_inputs**2 * self.upsample_kernel
        for c in self.channels_per_flow():
            coupling = c // 2 * width + layers * 2 * width * width * self.kernel_size
            coupling += self.cond_channels * 2 * width * layers + layers * 2 * width * width + width * c
            total += coupling + c * c
        return total

    @property
    def upsample_stride(self) -> int:
        """Steps of the upsampled conditioning per mel frame (samples, or groups)."""
        return self.hop_length if self.cond_rate == "sample" else self.hop_length // self.n_group

    @property
    def cond_inputs(self) -> int:
        """Channels per frame that the upsampler takes: the mel, and the pitch features if on."""
        return self.n_mels + (2 if self.pitch_features else 0)

    @property
    def source_channels(self) -> int:
        """Sample-rate channels of the pulse source (0 when off)."""
        return 3 if self.pulse_source else 0

    @property
    def cond_channels(self) -> int:
        """Channels of the conditioning every coupling's WaveNet sees: the upsampled mel (and
        pitch features), then the pulse source, squeezed like the audio."""
        if self.cond_rate == "sample":
            return (self.cond_inputs + self.source_channels) * self.n_group
        return self.cond_inputs + self.source_channels * self.n_group

    def early_output_at(self, k: int) -> bool:
        """Whether ``n_early_size`` channels leave the flow before flow ``k``."""
        return self.n_early_every > 0 and self.n_early_size > 0 and k > 0 and k % self.n_early_every == 0

    def channels_per_flow(self) -> list[int]:
        channels, out = self.n_group, []
        for k in range(self.n_flows):
            if self.early_output_at(k):
                channels -= self.n_early_size
            out.append(channels)
        return out


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping for ``waveflow train``."""

    seed: int = 1234
    segment_length: int = 16000
    batch_size: int = 12
    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine", "exponential"] = "constant"
    lr_min: float = 0.0
    lr_decay: float = 0.999998
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 disables clipping
    sigma: float = 1.0  # prior std of z during training
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    max_steps: int = 100_000
    log_every: int = 10
    eval_every: int = 1000
    checkpoint_every: int = 1000
    keep_last: int = 3
    num_workers: int = 2
    max_bad_steps: int = 10  # consecutive non-finite steps before the run stops
    eval_sigma: float = 0.6
    eval_postfilter: float = 0.0  # harmonic post-filter strength at inference (waveflow.dsp.postfilter); 0: off
    eval_harmonic: float = 0.0  # harmonic excitation strength at inference (waveflow.dsp.harmonic); 0: off
    eval_mel_correction: int = 0  # mel correction iterations at inference (waveflow.dsp.melcorrect); 0: off
    eval_audio_clips: int = 2
    eval_max_clips: int = 0  # 0: every dev clip

    def validate(self) -> None:
        for name in ("segment_length", "batch_size", "max_steps", "log_every", "eval_every", "checkpoint_every"):
            _check(getattr(self, name) > 0, f"train.{name} must be positive")
        _check(self.lr > 0, "train.lr must be positive")
        _check(self.sigma > 0, "train.sigma must be positive")
        _check(self.eval_sigma >= 0, "train.eval_sigma (the inference sigma) must be >= 0")
        _check(0 <= self.eval_postfilter <= 1, "train.eval_postfilter (the post-filter strength) must be in [0, 1]")
        _check(0 <= self.eval_harmonic <= 1, "train.eval_harmonic (the harmonic excitation strength) must be in [0, 1]")
        _check(self.eval_mel_correction >= 0, "train.eval_mel_correction (mel correction iterations) must be >= 0")
        _check(self.keep_last >= 1, "train.keep_last must be >= 1")
        _check(self.max_bad_steps >= 1, "train.max_bad_steps must be >= 1")
        _check(self.grad_clip >= 0, "train.grad_clip must be >= 0")
        check_limits("train", self)


@dataclass
class Config:
    """Everything a run needs; written beside every run and inside every checkpoint."""

    preset: str = "default"
    mel: MelConfig = field(default_factory=MelConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.mel.validate()
        self.model.validate()
        self.train.validate()
        _check(
            self.model.n_mels == self.mel.n_mels,
            f"model.n_mels ({self.model.n_mels}) must equal mel.n_mels ({self.mel.n_mels})",
        )
        _check(
            self.model.hop_length == self.mel.hop_length,
            f"model.hop_length ({self.model.hop_length}) must equal mel.hop_length ({self.mel.hop_length})",
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Named model presets. Values are overrides of ModelConfig's defaults.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # Unit tests: a few hundred parameters' worth of layers, all features exercised.
    "tiny": dict(n_flows=4, n_group=4, n_early_every=2, n_early_size=2, n_layers=2, n_channels=8, upsample_kernel=512),
    # Trains on a laptop CPU in minutes; >5x fewer parameters than the default.
    "small": dict(
        n_flows=8, n_group=8, n_early_every=4, n_early_size=2, n_layers=4, n_channels=64, upsample_kernel=512
    ),
    # Over 10x real time on 2 CPU cores: SqueezeWave's recipe of a large group (128 samples
    # per step, 172 steps/s) with the mel upsampled only to the group rate.
    "realtime": dict(
        n_flows=8,
        n_group=128,
        n_early_every=2,
        n_early_size=16,
        n_layers=4,
        n_channels=96,
        cond_rate="group",
        upsample_kernel=4,
    ),
    # NVIDIA's published waveglow_256channels configuration.
    "default": dict(),
    # The paper's model: 512 conditioner channels.
    "paper": dict(n_channels=512),
}


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """A validated ``ModelConfig`` for a named preset, with optional field overrides."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; expected one of {sorted(MODEL_PRESETS)}")
    cfg = _from_dict(ModelConfig, {**MODEL_PRESETS[name], **overrides}, "model")
    cfg.validate()
    return cfg


def make_config(preset: str = "default", overrides: dict[str, Any] | None = None) -> Config:
    """Build a validated ``Config`` from a preset name and nested overrides.

    ``overrides`` looks like a recipe YAML: ``{"model": {...}, "mel": {...}, "train": {...}}``.
    """
    overrides = dict(overrides or {})
    preset = overrides.pop("preset", preset)
    if not isinstance(preset, str) or preset not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {short(preset)}; expected one of {sorted(MODEL_PRESETS)}")
    unknown = set(overrides) - {"mel", "model", "train"}
    if unknown:
        raise ConfigError(
            f"unknown top-level config key(s) {short(sorted(map(str, unknown)), 120)}; "
            "expected 'preset', 'mel', 'model', 'train'"
        )
    for section in ("mel", "model", "train"):
        if not isinstance(overrides.get(section, {}), dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
    cfg = Config(
        preset=preset,
        mel=_from_dict(MelConfig, overrides.get("mel", {}), "mel"),
        model=_from_dict(ModelConfig, {**MODEL_PRESETS[preset], **overrides.get("model", {})}, "model"),
        train=_from_dict(TrainConfig, overrides.get("train", {}), "train"),
    )
    cfg.validate()
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a ``Config`` saved by ``Config.to_dict`` (e.g. from a checkpoint)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping, got {type(data).__name__}")
    data = dict(data)
    preset = data.pop("preset", "default")
    unknown = set(data) - {"mel", "model", "train"}
    if unknown:
        raise ConfigError(f"unknown top-level config key(s) {short(sorted(map(str, unknown)), 120)}")
    cfg = Config(
        preset=preset if isinstance(preset, str) else "default",
        mel=_from_dict(MelConfig, data.get("mel", {}), "mel"),
        model=_from_dict(ModelConfig, data.get("model", {}), "model"),
        train=_from_dict(TrainConfig, data.get("train", {}), "train"),
    )
    cfg.validate()
    return cfg


def load_config(path: str | Path) -> Config:
    """Read a YAML file of overrides (``preset``, ``mel``, ``model``, ``train``)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes; a config holds at most {MAX_CONFIG_BYTES}")
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    data = safe_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    try:
        return make_config(overrides=data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def with_overrides(cfg: Config, section: str, **values: Any) -> Config:
    """A copy of ``cfg`` with fields of one section replaced (validated)."""
    sub = getattr(cfg, section)
    new = replace(cfg, **{section: _from_dict(type(sub), {**asdict(sub), **values}, section)})
    new.validate()
    return new


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where!r} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(map(str, set(data) - known))
    if unknown:
        raise ConfigError(f"unknown key(s) {short(unknown, 120)} in {where!r}; known keys: {sorted(known)}")
    values = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where} must be one of {list(choices)}, got {short(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(hint):
            if arg is type(None) and value is None:
                return None
        non_none = [a for a in get_args(hint) if a is not type(None)]
        return _coerce(value, non_none[0], where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {short(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {short(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {short(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {short(value)}")
        return value
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, where)
    return value

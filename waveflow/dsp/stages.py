"""Post-processing stages: the weightless steps after the flow, under one contract.

A stage takes audio ``(B, T)`` and the log-mel ``(B, n_mels, frames)`` it should render, and
returns audio of the same shape. It declares two things a stream needs:

- ``margin``: how many samples after a sample its output reads. A stream holds a sample back
  until that many have followed it (the latency the stage adds); 0 for a memoryless stage.
  The mel correction can be asked to hold back less (``MelCorrectionStage.held_back``), and
  then approximates the offline output, for lower latency.
- ``stream()``: its state for streaming, a ``StageStream`` whose ``push(audio, mel, final)``
  takes the newly synthesized samples and the newly arrived mel frames and returns the samples
  that are final, so that the concatenated output equals the stage applied to the whole clip.
  A stage that needs the whole clip says so (``streams = False``) and a stream refuses it.

A ``Chain`` is an ordered list of stages: ``Vocoder`` applies it clip by clip,
``StreamingVocoder`` holds back its summed margin, and ``describe`` is what ``waveflow info``
prints. ``STAGES``, at the end, lists the stage classes in the order they run, and
``build_chain`` picks from it the chain a vocoder plays at given settings. A new stage is a
class (here, or beside its signal processing in its own module) and one line in ``STAGES``.
"""

from __future__ import annotations

from typing import Any

import torch

from waveflow.dsp.limiter import soft_limit
from waveflow.dsp.melcorrect import MelCorrection, check_iterations
from waveflow.dsp.postfilter import HarmonicPostfilter, check_strength


class StageStream:
    """A stage's streaming state for one utterance."""

    def push(self, audio: torch.Tensor, mel: torch.Tensor, final: bool) -> torch.Tensor:
        """``audio (T,)``: the next samples of the utterance; ``mel (n_mels, n)``: the frames that
        arrived since the last push (none at the end). Returns the samples that became final;
        with ``final`` every sample left."""
        raise NotImplementedError


class Stage:
    """One post-processing step; see the module docstring.

    Class attributes: ``name`` (its key in a vocoder's settings), ``config_key`` (the
    ``train.*`` key where a checkpoint stores its setting, if any) and ``default`` (the
    setting when neither the call nor the checkpoint gives one). ``from_vocoder`` builds the
    stage a vocoder plays at a setting; ``is_off`` says which settings mean no stage at all.
    """

    name = "stage"
    config_key: str | None = None
    default: Any = 0
    setting: Any = None  # this instance's setting
    margin = 0  # samples after a sample that its output reads
    streams = True

    @classmethod
    def is_off(cls, setting: Any) -> bool:
        return not setting

    @classmethod
    def from_vocoder(cls, vocoder: Any, setting: Any) -> Stage:
        raise NotImplementedError

    @classmethod
    def describe_setting(cls, setting: Any) -> str:
        return cls.name

    def __call__(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stream(self, device: torch.device | str = "cpu") -> StageStream:
        """Fresh streaming state (the default serves a memoryless stage)."""
        if self.margin or not self.streams:
            raise NotImplementedError(f"{self.name}: no streaming state")
        return _Memoryless(self)

    def describe(self) -> str:
        return self.describe_setting(self.setting)


class _Memoryless(StageStream):
    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def push(self, audio: torch.Tensor, mel: torch.Tensor, final: bool) -> torch.Tensor:
        return self.stage(audio[None], mel[None])[0] if audio.numel() else audio


class Chain:
    """Stages applied in order; ``margin`` is their sum, ``stream()`` chains their states."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = list(stages)

    @property
    def margin(self) -> int:
        return sum(stage.margin for stage in self.stages)

    @property
    def streams(self) -> bool:
        return all(stage.streams for stage in self.stages)

    def __call__(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            audio = stage(audio, mel)
        return audio

    def stream(self, device: torch.device | str = "cpu") -> ChainStream:
        refused = [stage.name for stage in self.stages if not stage.streams]
        if refused:
            raise ValueError(f"{', '.join(refused)}: runs on whole clips only, not in a stream")
        return ChainStream([stage.stream(device) for stage in self.stages])

    def describe(self) -> str:
        return " -> ".join(stage.describe() for stage in self.stages) or "none"

    def __len__(self) -> int:
        return len(self.stages)


class ChainStream(StageStream):
    def __init__(self, streams: list[StageStream]) -> None:
        self.streams = streams

    def push(self, audio: torch.Tensor, mel: torch.Tensor, final: bool) -> torch.Tensor:
        for stream in self.streams:
            audio = stream.push(audio, mel, final)
        return audio


# ------------------------------------------------------------------- the stages
class PostfilterStage(Stage):
    """The harmonic post-filter (``waveflow.dsp.postfilter``) at ``strength``."""

    name = "postfilter"
    config_key = "eval_postfilter"

    def __init__(self, postfilter: HarmonicPostfilter, strength: float) -> None:
        self.postfilter, self.strength = postfilter, check_strength(strength)
        self.setting = self.strength
        self.margin = postfilter.margin

    @classmethod
    def from_vocoder(cls, vocoder: Any, setting: float) -> PostfilterStage:
        return cls(vocoder.postfilter, setting)

    @classmethod
    def describe_setting(cls, setting: float) -> str:
        return f"post-filter {setting:g}"

    def __call__(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return self.postfilter(audio, mel, self.strength)

    def stream(self, device: torch.device | str = "cpu") -> StageStream:
        return _PostfilterStream(self, device)


class _PostfilterStream(StageStream):
    """Per-frame tracks as frames arrive (each a function of its frame alone); a sample is
    filtered once ``margin`` samples after it have arrived, from a window reaching ``margin``
    before it."""

    def __init__(self, stage: PostfilterStage, device: torch.device | str) -> None:
        self.pf, self.strength, self.device = stage.postfilter, stage.strength, device
        # synthesized samples from absolute sample base, the next sample to return, and per-frame
        # period and voicing from absolute frame frame0 on
        self.raw = torch.empty(0)
        self.base = self.out = self.frame0 = 0
        self.period = torch.empty(1, 0, dtype=torch.long)
        self.voicing = torch.empty(1, 0)
        self.pending: list[torch.Tensor] = []  # frames arrived, not yet tracked

    def push(self, audio: torch.Tensor, mel: torch.Tensor, final: bool) -> torch.Tensor:
        pf, margin, hop = self.pf, self.pf.margin, self.pf.hop_length
        if mel.shape[-1]:  # tracked when samples are filtered: one call for many one-frame pushes
            self.pending.append(mel)
        self.raw = torch.cat([self.raw, audio])
        end = self.base + self.raw.numel()
        ready = end if final else end - margin
        if ready <= self.out:
            return torch.empty(0)
        if self.pending:
            period, voicing = pf.frame_tracks(torch.cat(self.pending, dim=1)[None].to(self.device))
            self.period = torch.cat([self.period, period.cpu()], dim=1)
            self.voicing = torch.cat([self.voicing, voicing.cpu()], dim=1)
            self.pending = []
        lo = max(self.out - margin, self.base)
        x = self.raw[lo - self.base :]
        period, voicing = pf.sample_tracks(self.period, self.voicing, lo - self.frame0 * hop, x.numel())
        out = pf.apply(x[None], period, voicing, self.strength)[0, self.out - lo : ready - lo]
        self.out = ready
        keep = max(self.out - margin, 0)  # forget what no later sample reads
        self.raw = self.raw[keep - self.base :]
        self.base = keep
        first_frame = max(0, (keep + pf.frame_offset) // hop)
        self.period = self.period[:, first_frame - self.frame0 :]
        self.voicing = self.voicing[:, first_frame - self.frame0 :]
        self.frame0 = first_frame
        return out


class MelCorrectionStage(Stage):
    """The mel correction (``waveflow.dsp.melcorrect``), ``iterations`` steps toward the mel."""

    name = "mel_correction"
    config_key = "eval_mel_correction"

    def __init__(self, correction: MelCorrection, iterations: int, hold: int | None = None) -> None:
        self.correction, self.iterations = correction, check_iterations(iterations)
        self.setting = self.iterations
        self.reach = correction.margin(self.iterations)  # what an output sample really reads
        if hold is not None and (isinstance(hold, bool) or not isinstance(hold, int) or hold < 0):
            raise ValueError(f"mel correction hold must be an integer number of samples >= 0, got {hold!r}")
        self.margin = self.reach if hold is None else min(hold, self.reach)

    def held_back(self, hold: int | None) -> MelCorrectionStage:
        """The same correction, whose stream returns a sample once ``hold`` samples have followed
        it instead of its whole reach (None: the reach, exact). With less, the window's end
        stands in for the samples not yet there: what is returned is close to the offline
        output, not equal (docs/streaming.md measures it), for ``reach - hold`` samples less
        latency."""
        return MelCorrectionStage(self.correction, self.iterations, hold)

    @classmethod
    def from_vocoder(cls, vocoder: Any, setting: int) -> MelCorrectionStage:
        return cls(vocoder.mel_correction, setting)

    @classmethod
    def describe_setting(cls, setting: int) -> str:
        return f"mel correction {setting} steps"

    def __call__(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return self.correction(audio, mel, self.iterations)

    def stream(self, device: torch.device | str = "cpu") -> StageStream:
        return _MelCorrectionStream(self, device)


class _MelCorrectionStream(StageStream):
    """A sample is corrected once ``margin`` samples after it have arrived (the stage's reach,
    or less: ``held_back``), from a window that starts on a frame boundary the reach or more
    before the first sample returned, so that its frames are the utterance's and its own start
    reaches no sample returned."""

    def __init__(self, stage: MelCorrectionStage, device: torch.device | str) -> None:
        self.mc, self.iterations, self.device = stage.correction, stage.iterations, device
        self.hold, self.exact = stage.margin, stage.margin == stage.reach
        # samples from absolute sample base (a frame boundary), the next sample to return, and the
        # mel from absolute frame base // hop on
        self.raw = torch.empty(0)
        self.base = self.out = 0
        self.mel = torch.empty(self.mc.cfg.n_mels, 0)

    def push(self, audio: torch.Tensor, mel: torch.Tensor, final: bool) -> torch.Tensor:
        mc, hop, iterations = self.mc, self.mc.cfg.hop_length, self.iterations
        margin = mc.margin(iterations)
        if mel.shape[-1]:
            self.mel = torch.cat([self.mel, mel.cpu()], dim=1)
        self.raw = torch.cat([self.raw, audio])
        end = self.base + self.raw.numel()
        ready = end if final else end - self.hold
        if ready <= self.out:
            return torch.empty(0)
        x = self.raw[None].to(self.device)
        target = self.mel[None].to(self.device)
        # Each iteration drops the window's edges that no returned sample needs (not the
        # utterance's own start or end, where offline synthesis has the same edge): half the work.
        # Held back less than the reach, the window's end is the edge the returned samples see.
        trim_start = self.base > 0
        start = self.base + (iterations - 1) * mc.step_reach * trim_start
        corrected = mc(x, target, iterations, trim_start=trim_start, trim_end=self.exact and not final)
        out = corrected[0, self.out - start : ready - start].cpu()
        self.out = ready
        keep = max(self.out - margin, 0) // hop * hop  # forget what no later sample reads
        self.raw = self.raw[keep - self.base :]
        self.mel = self.mel[:, (keep - self.base) // hop :]
        self.base = keep
        return out


class DenoiseStage(Stage):
    """Bias removal (``waveflow.dsp.denoiser``) at ``strength``: over the whole clip's spectrum,
    so it does not stream."""

    name = "denoise"
    streams = False

    def __init__(self, denoiser: Any, strength: float) -> None:
        self.denoiser, self.strength = denoiser, float(strength)
        self.setting = self.strength

    @classmethod
    def from_vocoder(cls, vocoder: Any, setting: float) -> DenoiseStage:
        return cls(vocoder.denoiser, setting)

    @classmethod
    def describe_setting(cls, setting: float) -> str:
        return f"denoise {setting:g}"

    def __call__(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return self.denoiser(audio, self.strength)


class LimiterStage(Stage):
    """The soft output limiter (``waveflow.dsp.limiter``): memoryless, no margin."""

    name = "limiter"
    default = True  # on unless a call turns it off
    setting = True

    @classmethod
    def from_vocoder(cls, vocoder: Any, setting: bool) -> LimiterStage:
        return cls()

    def __call__(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return soft_limit(audio)


# ------------------------------------------------------------------- the registry
# The stages in the order they run. A new stage: its class, and one line here.
STAGES: tuple[type[Stage], ...] = (PostfilterStage, DenoiseStage, MelCorrectionStage, LimiterStage)


def build_chain(vocoder: Any, settings: dict[str, Any]) -> Chain:
    """The chain a vocoder plays at ``settings`` (stage name -> setting; a stage not named takes
    its ``default``). ``vocoder`` provides the stages' parts (its post-filter, mel correction
    and denoiser, built for its mel convention)."""
    return Chain([cls.from_vocoder(vocoder, setting) for cls, setting in _chosen(settings)])


def checkpoint_settings(train: Any) -> dict[str, Any]:
    """The settings a checkpoint stores (its ``train`` config section), with the defaults of the
    stages it has no key for."""
    return {cls.name: getattr(train, cls.config_key) if cls.config_key else cls.default for cls in STAGES}


def describe(settings: dict[str, Any]) -> str:
    """``"post-filter 0.5 -> mel correction 8 steps -> limiter"``: the chain at ``settings``."""
    return " -> ".join(cls.describe_setting(setting) for cls, setting in _chosen(settings)) or "none"


def _chosen(settings: dict[str, Any]) -> list[tuple[type[Stage], Any]]:
    """The stage classes that are on at ``settings``, in running order, with their settings."""
    unknown = sorted(set(settings) - {cls.name for cls in STAGES})
    if unknown:
        raise ValueError(f"unknown post-processing stage {unknown}; expected {[cls.name for cls in STAGES]}")
    chosen = [(cls, settings.get(cls.name, cls.default)) for cls in STAGES]
    return [(cls, setting) for cls, setting in chosen if not cls.is_off(setting)]

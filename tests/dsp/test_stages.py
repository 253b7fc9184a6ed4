"""The post-processing contract (waveflow.dsp.stages): each stage's stream equals the stage on the
whole clip, a chain is its stages in registry order, and a new stage added through the registry
alone is applied by Vocoder and StreamingVocoder, its margin held back."""

from __future__ import annotations

import pytest
import torch
from test_streaming import stream_all
from test_vocoder import random_mel, tiny_vocoder

import waveflow.dsp.stages as stages
from waveflow.config import MelConfig
from waveflow.dsp.melcorrect import MelCorrection
from waveflow.dsp.postfilter import HarmonicPostfilter
from waveflow.dsp.stages import (
    STAGES,
    DenoiseStage,
    LimiterStage,
    MelCorrectionStage,
    PostfilterStage,
    Stage,
    StageStream,
    build_chain,
    describe,
)
from waveflow.infer.streaming import StreamingVocoder, snr_db

HOP = 256


def _voiced(frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A pulse train at 140 Hz with noise, 1.2 x full scale in places (so the limiter acts), and
    the mel of a recording-like clip for its tracks."""
    gen = torch.Generator().manual_seed(seed)
    n = frames * HOP
    t = torch.arange(n) / 22050
    audio = 1.2 * torch.sin(2 * torch.pi * 140 * t) ** 15 + 0.05 * torch.randn(n, generator=gen)
    mel = random_mel(frames, seed=seed)
    return audio[None].float(), mel[None]


def _streamed(stage: Stage, audio: torch.Tensor, mel: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Push the clip in pieces of ``sizes`` frames (audio and mel together), then the end."""
    state, out, at = stage.stream(), [], 0
    for size in sizes:
        out.append(state.push(audio[0, at * HOP : (at + size) * HOP], mel[0, :, at : at + size], final=False))
        at += size
    out.append(state.push(audio[0, at * HOP :], mel[0, :, at:], final=True))
    return torch.cat(out)


@pytest.mark.parametrize(
    "stage",
    [
        PostfilterStage(HarmonicPostfilter.for_mel(MelConfig()), 0.7),
        MelCorrectionStage(MelCorrection.for_mel(MelConfig()), 3),
        LimiterStage(),
    ],
    ids=lambda s: s.name,
)
@pytest.mark.parametrize("sizes", [[1] * 39, [7, 1, 13, 5, 2, 11], [40]], ids=["1-frame", "uneven", "whole"])
def test_each_stage_streams_as_it_runs_on_the_whole_clip(stage, sizes):
    audio, mel = _voiced(40)
    whole = stage(audio, mel)[0]
    streamed = _streamed(stage, audio, mel, sizes)
    assert streamed.shape == whole.shape
    assert snr_db(whole, streamed) > 100, snr_db(whole, streamed)
    assert not torch.equal(whole, audio[0])  # the stage acts on this clip: equality proves something


def test_a_stream_holds_back_exactly_the_margin():
    """Until the end, a stage returns a sample only once ``margin`` samples after it have come."""
    stage = PostfilterStage(HarmonicPostfilter.for_mel(MelConfig()), 0.5)
    audio, mel = _voiced(30)
    state, given, returned = stage.stream(), 0, 0
    for k in range(30):
        returned += state.push(audio[0, k * HOP : (k + 1) * HOP], mel[0, :, k : k + 1], final=False).numel()
        given += HOP
        assert returned == max(0, given - stage.margin)


def test_a_chain_runs_its_stages_in_registry_order_and_sums_their_margins():
    voc = tiny_vocoder()
    settings = {"limiter": True, "mel_correction": 2, "postfilter": 0.5}  # not in running order
    chain = build_chain(voc, settings)
    assert [s.name for s in chain.stages] == ["postfilter", "mel_correction", "limiter"]
    assert [cls.name for cls in STAGES] == ["postfilter", "denoise", "mel_correction", "limiter"]
    assert chain.margin == voc.postfilter.margin + voc.mel_correction.margin(2)
    assert chain.describe() == describe(settings) == "post-filter 0.5 -> mel correction 2 steps -> limiter"
    audio, mel = _voiced(20)
    by_hand = soft_limit_of(voc.mel_correction(voc.postfilter(audio, mel, 0.5), mel, 2))
    torch.testing.assert_close(chain(audio, mel), by_hand, rtol=0, atol=0)
    off = build_chain(voc, {"postfilter": 0.0, "mel_correction": 0, "limiter": False})
    assert len(off) == 0 and off.describe() == "none" and torch.equal(off(audio, mel), audio)


def soft_limit_of(audio: torch.Tensor) -> torch.Tensor:
    from waveflow.dsp.limiter import soft_limit

    return soft_limit(audio)


def test_unknown_stages_and_whole_clip_stages_in_a_stream_are_refused():
    voc = tiny_vocoder()
    with pytest.raises(ValueError, match=r"unknown post-processing stage \['reverb'\]"):
        build_chain(voc, {"reverb": 1})
    chain = build_chain(voc, {"denoise": 0.1, "limiter": True})
    assert isinstance(chain.stages[0], DenoiseStage) and not chain.streams
    with pytest.raises(ValueError, match="denoise: runs on whole clips only"):
        chain.stream()


class _Echo(Stage):
    """A test stage with a margin: y[n] = x[n] + gain * x[n + lag] (zero past the end)."""

    name = "echo"
    default = 0.0

    def __init__(self, gain: float, lag: int = 300) -> None:
        self.gain, self.lag, self.margin, self.setting = gain, lag, lag, gain

    @classmethod
    def from_vocoder(cls, vocoder, setting: float) -> _Echo:
        return cls(setting)

    @classmethod
    def describe_setting(cls, setting: float) -> str:
        return f"echo {setting:g}"

    def __call__(self, audio: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        ahead = torch.nn.functional.pad(audio[:, self.lag :], (0, min(self.lag, audio.shape[1])))
        return audio + self.gain * ahead

    def stream(self, device="cpu") -> StageStream:
        stage = self

        class State(StageStream):
            held = torch.empty(0)

            def push(self, audio, mel, final):
                self.held = torch.cat([self.held, audio])
                ready = self.held.numel() if final else max(0, self.held.numel() - stage.lag)
                out = stage(self.held[None], mel[None])[0, :ready]
                self.held = self.held[ready:]
                return out

        return State()


def test_a_stage_added_through_the_registry_alone_runs_offline_and_streamed(monkeypatch):
    """One class and one line in STAGES: Vocoder applies it, StreamingVocoder holds back its
    margin and equals offline, and describe() names it, with no other change."""
    voc = tiny_vocoder()
    mel = random_mel(24, seed=2)
    plain = voc(mel, seed=4, postfilter=0, mel_correction=0, limit=False)
    monkeypatch.setattr(stages, "STAGES", (*STAGES[:-1], _Echo, STAGES[-1]))
    assert torch.equal(voc(mel, seed=4, postfilter=0, mel_correction=0, limit=False), plain)  # off: as before
    monkeypatch.setattr(_Echo, "default", 0.5)  # on by default, as the limiter is
    assert voc.chain(postfilter=0, mel_correction=0).describe() == "echo 0.5 -> limiter"
    offline = voc(mel, seed=4, postfilter=0, mel_correction=0)
    torch.testing.assert_close(offline, soft_limit_of(_Echo(0.5)(plain[None], mel[None])[0]), rtol=0, atol=0)
    stream = StreamingVocoder(voc, seed=4, postfilter=0, mel_correction=0)
    streamed, _ = stream_all(stream, mel, 5)
    assert snr_db(offline, streamed) > 100
    assert stream.latency_ms == pytest.approx(1000 * (stream.lookahead * HOP + 300) / voc.sample_rate)
    assert snr_db(plain, offline) < 20  # the echo changed the audio


def test_a_correction_held_back_keeps_its_reach_and_refuses_bad_holds():
    stage = MelCorrectionStage(MelCorrection(MelConfig()), 3)
    assert stage.margin == stage.reach == 3 * 1024
    assert stage.held_back(512).margin == 512 and stage.held_back(512).reach == stage.reach
    assert stage.held_back(10**6).margin == stage.reach and stage.held_back(None).margin == stage.reach
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="hold"):
            stage.held_back(bad)

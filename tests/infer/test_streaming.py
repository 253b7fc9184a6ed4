"""StreamingVocoder: the same signal as offline synthesis, chunk boundaries without jumps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import EARLY_OUTPUTS
from test_vocoder import random_mel, tiny_vocoder

from waveflow.dsp.audio import load_wav
from waveflow.infer.streaming import StreamingVocoder, default_lookahead, snr_db
from waveflow.infer.vocoder import Vocoder

HOP = 256


def stream_all(stream: StreamingVocoder, mel: torch.Tensor, chunk: int) -> tuple[torch.Tensor, list[int]]:
    """Streamed audio and the sample indices where one returned piece ends and the next begins."""
    pieces = [stream.push(mel[:, i : i + chunk]) for i in range(0, mel.shape[1], chunk)]
    pieces.append(stream.flush())
    bounds = np.cumsum([p.numel() for p in pieces if p.numel()])[:-1].tolist()
    return torch.cat(pieces), bounds


def assert_post_processing_streams_like_offline(
    voc: Vocoder, mel: torch.Tensor, chunk: int, off: dict, off_below_db: float, margin: int
) -> None:
    """With the vocoder's post-processing defaults, a stream (look-ahead 2, look-back 4) equals
    offline synthesis, while the stream without the stage (``off``, StreamingVocoder options)
    is told apart; the latency counts the stage's ``margin`` samples."""
    offline = voc(mel, seed=3)
    stream = StreamingVocoder(voc, seed=3, lookahead=2, lookback=4)
    streamed, _ = stream_all(stream, mel, chunk)
    assert streamed.shape == offline.shape
    assert snr_db(offline, streamed) > 80
    without, _ = stream_all(StreamingVocoder(voc, seed=3, lookahead=2, lookback=4, **off), mel, chunk)
    assert snr_db(offline, without) < off_below_db  # the comparison can tell the stage from none
    assert stream.latency_ms == pytest.approx(1000 * (2 * HOP + margin) / voc.sample_rate)


def assert_no_boundary_jump(streamed: torch.Tensor, offline: torch.Tensor, bounds: list[int]) -> None:
    """A step across a chunk boundary must not exceed the offline signal's own largest
    sample-to-sample step in the surrounding hop."""
    steps = offline.diff().abs()
    for b in bounds:
        jump = (streamed[b] - streamed[b - 1]).abs()
        local = steps[max(0, b - HOP) : b + HOP].max()
        assert jump <= local + 1e-6, f"jump {jump:.4g} at sample {b} exceeds offline steps {local:.4g}"


# The default context (look-ahead: the receptive field; look-back: that plus the upsampler's
# overlap) covers everything a frame's audio depends on, so a stream equals offline synthesis up
# to float32 rounding: 143-163 dB measured on these models, where one frame less of look-back
# gives 74-99 dB. 120 dB tells the two apart.
EXACT_DB = 120


@pytest.mark.parametrize("early", [1, 2, 3])
@pytest.mark.parametrize("chunk", [1, 7, 24])
def test_streamed_equals_offline_with_default_context(chunk, early):
    """At the default look-ahead and look-back, for models with one, two and three early outputs."""
    voc = tiny_vocoder(model=EARLY_OUTPUTS.get(early, {}))
    assert sum(voc.model.cfg.early_output_at(k) for k in range(voc.model.cfg.n_flows)) == early
    mel = random_mel(24, seed=1)
    offline = voc(mel, seed=9)
    stream = StreamingVocoder(voc, seed=9)
    streamed, bounds = stream_all(stream, mel, chunk)
    assert streamed.shape == offline.shape
    assert snr_db(offline, streamed) >= EXACT_DB
    assert_no_boundary_jump(streamed, offline, bounds)


def test_context_covering_the_receptive_field_is_exact_and_none_is_not():
    voc = tiny_vocoder()
    mel = random_mel(16, seed=2)
    offline = voc(mel, seed=1)
    exact, _ = stream_all(StreamingVocoder(voc, seed=1, lookahead=2, lookback=4), mel, 4)
    assert snr_db(offline, exact) > 80
    blind, _ = stream_all(StreamingVocoder(voc, seed=1, lookahead=0, lookback=0), mel, 4)
    assert snr_db(offline, blind) < 80  # the test can tell context from none


def test_latency_rtf_reset_and_misuse():
    voc = tiny_vocoder()
    stream = StreamingVocoder(voc, seed=0, lookahead=3)
    assert stream.latency_ms == pytest.approx(1000 * 3 * HOP / 22050)
    assert math.isnan(stream.rtf)
    mel = random_mel(10)
    first = stream.push(mel[:, :3])
    assert first.numel() == 0  # 3 frames are all look-ahead: nothing is final yet
    assert stream.push(mel[:, 3:]).numel() == 7 * HOP
    assert stream.flush().numel() == 3 * HOP and stream.rtf > 0
    with pytest.raises(ValueError, match="flushed"):
        stream.push(mel)
    stream.reset()
    with pytest.raises(ValueError, match="transpose"):
        stream.push(mel.T)
    again, _ = stream_all(stream, mel, 10)
    torch.testing.assert_close(again, voc(mel, seed=0), atol=1e-5, rtol=1e-4)
    assert default_lookahead(voc) == 1


def test_streaming_a_real_clip_with_the_bundled_model(clip):
    voc = Vocoder.default()
    audio = load_wav(clip)[22050 : 22050 + 6000]
    mel = torch.from_numpy(voc.mel(audio))
    offline = voc(mel, seed=4)
    streamed, bounds = stream_all(StreamingVocoder(voc, seed=4), mel, 10)
    assert snr_db(offline, streamed) >= 30
    assert_no_boundary_jump(streamed, offline, bounds)


def test_numpy_chunks_give_numpy_audio_like_the_vocoder():
    voc = tiny_vocoder()
    mel = random_mel(12, seed=5).numpy()
    stream = StreamingVocoder(voc, seed=3, lookahead=2, lookback=4)
    pieces = [stream.push(mel[:, i : i + 5]) for i in range(0, 12, 5)] + [stream.flush()]
    assert all(isinstance(p, np.ndarray) and p.dtype == np.float32 for p in pieces)
    offline = voc(mel, seed=3)
    assert isinstance(offline, np.ndarray)
    assert snr_db(offline, np.concatenate(pieces)) > 80
    assert list(StreamingVocoder(voc, seed=3).stream([mel[:, :6], mel[:, 6:]]))[-1].dtype == np.float32


def test_streaming_abuse_gets_clear_errors_or_documented_behaviour():
    voc = tiny_vocoder()
    mel = random_mel(10, seed=6)
    stream = StreamingVocoder(voc, seed=1, lookahead=2, lookback=4)
    with pytest.raises(ValueError, match="zero frames"):
        stream.push(mel[:, :0])  # an empty chunk is refused and changes nothing
    with pytest.raises(ValueError, match="mel chunk"):
        stream.push(torch.randn(3, 80, 2))  # a batch is not a chunk
    uneven = [stream.push(mel[:, a:b]) for a, b in ((0, 1), (1, 2), (2, 7), (7, 10))] + [stream.flush()]
    assert snr_db(voc(mel, seed=1), torch.cat(uneven)) > 80  # the refused chunks left no trace
    with pytest.raises(ValueError, match="already flushed"):
        stream.push(mel[:, :1])
    assert stream.flush().numel() == 0  # a second flush returns nothing
    stream.reset()
    assert stream.push(mel).numel() > 0  # reset starts a new utterance


def test_blocks_wait_for_whole_blocks_and_give_the_same_audio():
    voc = tiny_vocoder()
    mel = random_mel(23, seed=7)
    frame_by_frame, _ = stream_all(StreamingVocoder(voc, seed=2, lookahead=2, lookback=4), mel, 1)
    stream = StreamingVocoder(voc, seed=2, lookahead=2, lookback=4, block_frames=5)
    pieces = [stream.push(mel[:, i : i + 1]) for i in range(mel.shape[1])]
    sizes = [p.numel() for p in pieces]
    # every 5th push synthesizes what is final then (frame k once frame k + 2 arrived)
    assert [(i, n // HOP) for i, n in enumerate(sizes) if n] == [(4, 3), (9, 5), (14, 5), (19, 5)]
    rest = stream.flush()
    assert rest.numel() == 5 * HOP
    eights = StreamingVocoder(voc, seed=2, lookahead=2, lookback=4, block_frames=5)
    assert all(eights.push(mel[:, i : i + 8]).numel() for i in (0, 8, 16))  # a push of 5 or more synthesizes
    assert snr_db(frame_by_frame, torch.cat([*pieces, rest])) >= EXACT_DB
    assert stream.latency_ms == pytest.approx(1000 * (2 + 4) * HOP / voc.sample_rate)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="block_frames"):
            StreamingVocoder(voc, block_frames=bad)


def test_the_low_latency_preset_and_its_overrides():
    from waveflow.infer.streaming import LOW_LATENCY

    voc = Vocoder.default()
    stream = StreamingVocoder.low_latency(voc)
    assert (stream.lookahead, stream.block_frames) == (LOW_LATENCY["lookahead"], LOW_LATENCY["block_frames"])
    assert stream.mel_correction == voc.mel_correction_iterations  # the checkpoint's steps, held back less
    held = [s.margin for s in stream.chain.stages if s.name == "mel_correction"]
    assert held == [LOW_LATENCY["correction_frames"] * HOP]
    assert stream.latency_ms < StreamingVocoder(voc).latency_ms / 3
    assert StreamingVocoder.low_latency(voc, block_frames=1, seed=3).block_frames == 1


def test_a_correction_held_back_less_than_its_reach_approximates_offline(clip):
    """Held back its whole reach the correction streams exactly; held back 2 frames it is
    close to offline (not equal), with no jump at the chunk boundaries, for less latency."""
    voc = Vocoder.default()
    mel = torch.from_numpy(voc.mel(load_wav(clip)[:33075]))
    offline = voc(mel, seed=4)
    reach = 4 * voc.mel_correction_iterations  # frames: n_fft 1024 is 4 hops a step
    exact, _ = stream_all(StreamingVocoder(voc, seed=4, correction_frames=reach), mel, 8)
    assert snr_db(offline, exact) >= 100
    early = StreamingVocoder(voc, seed=4, correction_frames=2)
    streamed, bounds = stream_all(early, mel, 8)
    assert 30 < snr_db(offline, streamed) < 45  # 35 dB measured; 24 with 1 frame, 56 with 4
    assert_no_boundary_jump(streamed, offline, bounds)
    assert StreamingVocoder(voc).latency_ms - early.latency_ms == pytest.approx(1000 * (reach - 2) * HOP / 22050)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="correction_frames"):
            StreamingVocoder(voc, correction_frames=bad)


def test_a_stream_reads_each_frames_pitch_and_lp_once(clip):
    """The pulse source's tracks and the LP coefficients are per-frame values: a stream keeps
    them for the frames its windows share, so one-frame pushes compute each frame's once
    (the tail included) and the audio is offline synthesis's."""
    voc = Vocoder.default()
    mel = torch.from_numpy(voc.mel(load_wav(clip)[:12000]))
    model, counted = voc.model, {"tracks": 0, "lp": 0}

    def counting(name, method):
        def wrapper(m, *args, **kwargs):
            counted[name] += m.shape[2]
            return method(m, *args, **kwargs)

        return wrapper

    options = {"seed": 1, "postfilter": 0.0, "mel_correction": 0}
    offline = voc(mel, **options)
    model.source.frame_tracks = counting("tracks", model.source.frame_tracks)
    model.lpc.coefficients = counting("lp", model.lpc.coefficients)
    try:
        streamed, _ = stream_all(StreamingVocoder(voc, block_frames=3, **options), mel, 1)
    finally:
        del model.source.frame_tracks, model.lpc.coefficients
    assert counted == {"tracks": mel.shape[1] + voc.tail_frames, "lp": mel.shape[1] + voc.tail_frames}
    assert snr_db(offline, streamed) >= 100

"""Streaming synthesis: mel frames in chunks of any size, audio out as soon as possible.

Audio for frames ``[a, b)`` is synthesized from the window of frames
``[a - lookback, b + lookahead)`` with the noise of those absolute positions (see
``waveflow.infer.vocoder``), and only the samples of ``[a, b)`` are kept. Since z is the same as
offline, a streamed utterance differs from the offline one only where the flow's receptive
field reaches past the window; with context covering the receptive field the two are equal
up to float rounding. A model with linear prediction runs its synthesis filter once over the
emitted audio, carrying the filter's state from chunk to chunk, as offline synthesis does;
a pulse source carries its free-running phase past the frames it drops.
The harmonic post-filter (``waveflow.dsp.postfilter``) reads ``margin`` samples either side of a
sample, so with it on, audio is held back by that margin more and filtered once every sample
it reads has been synthesized; the utterance's end is filtered at ``flush``, as offline.
The mel correction (``waveflow.dsp.melcorrect``) comes after it in the same way: a sample is
corrected once ``margin`` (``iterations * n_fft``) samples after it have passed the
post-filter, from a window reaching as far back, whose frames sit on the utterance's grid.
The end of the utterance (``flush``) gets the same silent tail as offline synthesis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from waveflow.dsp.melcorrect import check_iterations
from waveflow.dsp.postfilter import check_strength
from waveflow.dsp.stages import Chain, MelCorrectionStage
from waveflow.infer.vocoder import (
    MAX_CONTEXT_FRAMES,
    MelLike,
    Vocoder,
    check_mel,
    check_seed,
    check_sigma,
    context_frames,
    warn_mel_scale,
)

MAX_DEFAULT_LOOKAHEAD = MAX_CONTEXT_FRAMES  # the cap on the default look-ahead (its old name, kept)
# `waveflow synthesize` sends mels longer than ``waveflow.infer.vocoder.LONG_MEL_FRAMES`` (about 95 s
# at 22050 Hz, hop 256) through ``synthesize_long``, in chunks of this many frames, so that
# memory stays flat however long the mel is.
LONG_MEL_CHUNK = 512
# The low-latency streaming preset (``StreamingVocoder.low_latency``).
LOW_LATENCY = {"lookahead": 2, "correction_frames": 2, "block_frames": 8}


def default_lookahead(vocoder: Vocoder) -> int:
    """The model's receptive field in frames, capped at ``MAX_CONTEXT_FRAMES``: the context
    offline synthesis gives a clip's last frame (``Vocoder.tail_frames``)."""
    return context_frames(vocoder.model)


class StreamingVocoder:
    """Push mel chunks ``(n_mels, n)`` with ``push``; each call returns the audio ``(samples,)``
    that became final (possibly empty); ``flush`` returns the rest at the end of the utterance.

    ``lookahead``: frames of future context before a frame's audio is emitted (the
    algorithmic latency); ``lookback``: frames of past context (default: lookahead plus the
    mel upsampler's overlap). ``postfilter`` and ``mel_correction`` as ``Vocoder`` takes them
    (default: the checkpoint's); each adds its margin to the latency. ``harmonic`` as
    ``Vocoder`` takes it (default: the checkpoint's; no latency: it reads its own frames and
    ``SPLIT_HALF`` samples past them, inside the look-ahead). One utterance at a time;
    ``reset`` starts a new one. ``seed``: as ``Vocoder``'s (default 0). ``limit``: the soft
    limiter, as ``Vocoder`` applies it (memoryless: no latency). ``check_input``: warn
    once per utterance (``MelScaleWarning``) when the mel is not a log-mel of the convention,
    judged on the frames pushed so far (up to the first ``SCALE_CHECK_FRAMES``).
    ``correction_frames``: frames of audio the mel correction waits for after a sample (default:
    its whole reach, 4 frames a step, so that the stream equals offline synthesis); fewer
    approximate it (``MelCorrectionStage.held_back``) for less latency.
    ``block_frames``: synthesize once that many frames have been pushed since the last
    synthesis (a push of that many or more synthesizes at once; the rest comes at ``flush``): a
    decoder pushing one frame at a time then pays one window per block instead of one per frame,
    for up to ``block_frames - 1`` frames more latency; the audio is the same.
    ``StreamingVocoder.low_latency(voc)`` is the documented low-latency preset.
    """

    SCALE_CHECK_FRAMES = 32

    @classmethod
    def low_latency(cls, vocoder: Vocoder, **options) -> StreamingVocoder:
        """The low-latency preset, ``LOW_LATENCY`` (options override it): a short look-ahead, a
        mel correction that waits for 2 frames instead of its reach, blocks of a few frames
        (docs/streaming.md has its latency, speed and quality beside the defaults)."""
        return cls(vocoder, **{**LOW_LATENCY, **options})

    def __init__(
        self,
        vocoder: Vocoder,
        sigma: float | None = None,
        seed: int | None = None,
        lookahead: int | None = None,
        lookback: int | None = None,
        postfilter: float | None = None,
        mel_correction: int | None = None,
        check_input: bool = True,
        limit: bool = True,
        harmonic: float | None = None,
        block_frames: int = 1,
        correction_frames: int | None = None,
    ) -> None:
        self.vocoder = vocoder
        if isinstance(block_frames, bool) or not isinstance(block_frames, int) or block_frames < 1:
            raise ValueError(f"block_frames must be an integer >= 1, got {block_frames!r}")
        self.block_frames = block_frames
        self.harmonic = vocoder.check_harmonic(harmonic)
        self.limit = bool(limit)
        self.check_input = check_input
        self.sigma = check_sigma(vocoder.sigma if sigma is None else sigma)
        check_seed(seed)
        self.postfilter = check_strength(vocoder.postfilter_strength if postfilter is None else postfilter)
        self.mel_correction = check_iterations(
            vocoder.mel_correction_iterations if mel_correction is None else mel_correction
        )
        cfg = vocoder.model.cfg
        self.lookahead = default_lookahead(vocoder) if lookahead is None else int(lookahead)
        overlap = math.ceil(cfg.upsample_kernel / cfg.upsample_stride) - 1  # frames one upsampled step mixes
        self.lookback = self.lookahead + overlap if lookback is None else int(lookback)
        if self.lookahead < 0 or self.lookback < 0:
            raise ValueError(f"lookahead and lookback must be >= 0, got {self.lookahead}, {self.lookback}")
        self.seed = vocoder.resolve_seed(seed)
        # the post-processing after the flow (waveflow.dsp.stages), each stage streaming on its own
        self.chain = vocoder.chain(postfilter=self.postfilter, mel_correction=self.mel_correction, limit=self.limit)
        if correction_frames is not None:
            if isinstance(correction_frames, bool) or not isinstance(correction_frames, int) or correction_frames < 0:
                raise ValueError(f"correction_frames must be an integer >= 0 (or None), got {correction_frames!r}")
            hold = correction_frames * vocoder.hop_length
            stages = [s.held_back(hold) if isinstance(s, MelCorrectionStage) else s for s in self.chain.stages]
            self.chain = Chain(stages)
        self.compute_s = 0.0
        self.audio_samples = 0
        self.reset()

    def reset(self) -> None:
        """Forget the utterance; the next push starts a new one (same seed)."""
        self._mel = torch.empty(self.vocoder.n_mels, 0)
        self._offset = 0  # absolute index of self._mel's first frame
        self._emitted = 0  # frames whose audio has been returned
        self._unsynthesized = 0  # frames pushed since the last window was synthesized
        self._done = False
        self._scale_checked = not self.check_input  # decided for this utterance (warned, or enough frames)
        self._lp_state: torch.Tensor | None = None  # linear prediction: the last output samples
        self._phase = torch.zeros(1, dtype=torch.float64)  # pulse source: its phase at frame self._offset
        # Per-frame values of self._mel's first frames (each a function of its frame alone), kept
        # so that a frame's are computed once however many windows read it: the pulse source's
        # period and voicing, and the LP predictor and gain.
        self._tracks: tuple[torch.Tensor, torch.Tensor] | None = None
        self._lp: tuple[torch.Tensor, torch.Tensor] | None = None
        self._numpy = False  # the last chunk was a numpy array: return numpy
        self._post = self.chain.stream(self.vocoder.device)  # the stages' state for this utterance

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency: the look-ahead, the post-processing margins and the frames a block
        waits for (``block_frames - 1``), in milliseconds."""
        samples = (self.lookahead + self.block_frames - 1) * self.vocoder.hop_length + self.chain.margin
        return 1000.0 * samples / self.vocoder.sample_rate

    @property
    def rtf(self) -> float:
        """Measured real-time factor so far: compute seconds per second of audio returned."""
        seconds = self.audio_samples / self.vocoder.sample_rate
        return self.compute_s / seconds if seconds else math.nan

    def push(self, mel: MelLike) -> MelLike:
        """Add frames ``(n_mels, n)`` (n >= 1) and return the audio that is now final: a numpy
        array for a numpy chunk (as ``Vocoder`` does), else a tensor on CPU."""
        if self._done:
            raise ValueError("stream already flushed; call reset() for a new utterance")
        chunk = check_mel(mel, self.vocoder.n_mels, name="mel chunk")
        if chunk.shape[0] != 1:
            raise ValueError(f"mel chunk has shape {tuple(chunk.shape)}; expected ({self.vocoder.n_mels}, frames)")
        self._numpy = isinstance(mel, np.ndarray)
        self._mel = torch.cat([self._mel, chunk[0].cpu()], dim=1)
        if not self._scale_checked:
            seen = self._mel[:, : self.SCALE_CHECK_FRAMES] if self._offset == 0 else chunk[0].cpu()
            warned = warn_mel_scale(seen, self.vocoder.config.mel.clamp_min, name="mel chunk")
            self._scale_checked = warned or self._offset + self._mel.shape[1] >= self.SCALE_CHECK_FRAMES
        total = self._offset + self._mel.shape[1]
        end = total - self.lookahead
        self._unsynthesized += chunk.shape[2]
        if self._unsynthesized < self.block_frames:
            end = self._emitted  # wait for a block of frames: one window per block, not per push
        else:
            self._unsynthesized = 0
        return self._out(self._finish(self._emit(end, total), chunk[0].cpu(), final=False))

    def flush(self) -> MelLike:
        """End of utterance: the remaining audio (with offline synthesis's silent tail as context),
        of the type the last pushed chunk had."""
        if self._done:
            return self._out(torch.empty(0))
        total = self._offset + self._mel.shape[1]
        tail = torch.full((self.vocoder.n_mels, self.vocoder.tail_frames), self.vocoder.silence)
        self._mel = torch.cat([self._mel, tail], dim=1)
        no_frames = torch.empty(self.vocoder.n_mels, 0)  # the tail is the flow's context, not a stage's
        out = self._finish(self._emit(total, total + self.vocoder.tail_frames), no_frames, final=True)
        self._done = True
        return self._out(out)

    def _out(self, audio: torch.Tensor) -> MelLike:
        return audio.numpy() if self._numpy else audio

    def _finish(self, audio: torch.Tensor, mel: torch.Tensor, final: bool) -> torch.Tensor:
        """The chain's streaming state takes the new samples and the frames pushed with them and
        returns the samples that became final (every one left at the end)."""
        t0 = time.perf_counter()
        out = self._post.push(audio, mel, final)
        self.compute_s += time.perf_counter() - t0
        return out

    def _emit(self, end: int, available: int) -> torch.Tensor:
        """Audio of frames ``[emitted, end)`` from the window ending at frame ``available``."""
        if end <= self._emitted:
            return torch.empty(0)
        start = max(0, self._emitted - self.lookback)
        window = self._mel[:, start - self._offset : available - self._offset]
        hop = self.vocoder.hop_length
        t0 = time.perf_counter()
        lo, hi = (self._emitted - start) * hop, (end - start) * hop
        with torch.no_grad():
            mel = window[None].to(self.vocoder.device)
            lpc, source = self.vocoder.model.lpc, self.vocoder.model.source
            self._extend_frame_values(available)
            first, last = start - self._offset, available - self._offset  # the window in the buffer
            phase0, tracks = 0.0, None
            if source is not None:  # the phase at the window's start, from the phase at the buffer's start
                period, voicing = self._tracks
                phase0 = source.advance_periods(period, self._phase, first)
                tracks = period[:, first:last], voicing[:, first:last]
            if lpc is None:
                audio = self.vocoder.synthesize_window(mel, start, self.seed, self.sigma, self.harmonic)[0, lo:hi]
                audio = audio.cpu()
            else:  # the synthesis filter runs once over the utterance, its state carried from chunk to chunk
                residual = self.vocoder.excitation_window(
                    mel, start, self.seed, self.sigma, phase0, self.harmonic, tracks=tracks
                )
                residual = residual[:, lo:hi]
                a, g = (values[:, first:last] for values in self._lp)
                audio, self._lp_state = lpc.synthesize(residual, a, g, start=lo, state=self._lp_state)
                audio = audio[0].float().cpu()
        self.compute_s += time.perf_counter() - t0
        self.audio_samples += audio.numel()
        self._emitted = end
        # Keep only the frames a later window can still need.
        drop = max(0, self._emitted - self.lookback) - self._offset
        if drop > 0:
            if source is not None:
                self._phase = source.advance_periods(self._tracks[0], self._phase, drop).cpu()
            self._tracks = None if self._tracks is None else tuple(v[:, drop:] for v in self._tracks)
            self._lp = None if self._lp is None else tuple(v[:, drop:] for v in self._lp)
            self._mel = self._mel[:, drop:]
            self._offset += drop
        return audio

    def _extend_frame_values(self, available: int) -> None:
        """Compute the per-frame values (``reset`` lists them) of the buffer's frames up to
        absolute frame ``available`` that have none yet, in one call."""
        model, dtype = self.vocoder.model, self.vocoder.dtype
        if model.source is not None:  # as the model reads them: from the mel in its own dtype
            self._tracks = self._extended(self._tracks, available, lambda m: model.source.frame_tracks(m.to(dtype)))
        if model.lpc is not None:
            self._lp = self._extended(self._lp, available, model.lpc.coefficients)

    def _extended(self, kept, available: int, compute) -> tuple[torch.Tensor, ...]:
        """Per-frame values ``kept`` (tensors ``(1, n, ...)`` of the buffer's first n frames, or
        None) followed by ``compute``'s of the buffer's frames from n up to absolute frame
        ``available``."""
        done = 0 if kept is None else kept[0].shape[1]
        if done >= available - self._offset:
            return kept
        values = compute(self._mel[None, :, done : available - self._offset].to(self.vocoder.device))
        if kept is None:
            return values
        return tuple(torch.cat([old, new], dim=1) for old, new in zip(kept, values, strict=True))

    def stream(self, chunks: Iterable[MelLike]) -> Iterator[MelLike]:
        """Yield audio for an iterable of mel chunks, ending with the flush."""
        for chunk in chunks:
            audio = self.push(chunk)
            if len(audio):
                yield audio
        yield self.flush()


def synthesize_long(
    vocoder: Vocoder,
    mel: MelLike,
    sigma: float | None = None,
    seed: int | None = None,
    postfilter: float | None = None,
    mel_correction: int | None = None,
    chunk_frames: int | None = None,
    check_input: bool = True,
    limit: bool = True,
    harmonic: float | None = None,
) -> np.ndarray:
    """Audio ``(frames * hop,)`` float32 of one mel ``(n_mels, frames)`` of any length, through
    ``StreamingVocoder`` in chunks of ``chunk_frames``: the working memory is that of one chunk
    (the output array aside), where one offline pass grows with the length. Equal to the stream's
    output with those chunks (default ``LONG_MEL_CHUNK``); close to ``vocoder(mel)`` (see the
    module docstring). ``check_input``, ``limit`` and ``harmonic`` as ``StreamingVocoder`` takes them.
    ``iter_long`` yields the same audio piece by piece, for writing it as it comes."""
    pieces = iter_long(
        vocoder, mel, sigma, seed, postfilter, mel_correction, chunk_frames, check_input, limit, harmonic
    )
    audio = np.zeros(mel.shape[-1] * vocoder.hop_length, dtype=np.float32)  # mel checked by iter_long
    at = 0
    for piece in pieces:
        audio[at : at + piece.size] = piece
        at += piece.size
    return audio


def iter_long(
    vocoder: Vocoder,
    mel: MelLike,
    sigma: float | None = None,
    seed: int | None = None,
    postfilter: float | None = None,
    mel_correction: int | None = None,
    chunk_frames: int | None = None,
    check_input: bool = True,
    limit: bool = True,
    harmonic: float | None = None,
) -> Iterator[np.ndarray]:
    """``synthesize_long`` piece by piece: float32 audio pieces whose concatenation is
    ``synthesize_long``'s output, for ``waveflow.dsp.audio.save_wav_pieces`` to write as they come.
    The mel and the options are checked here, before the first piece is asked for."""
    checked = check_mel(mel, vocoder.n_mels, name="mel")
    if checked.shape[0] != 1:
        raise ValueError(f"mel: shape {tuple(checked.shape)}; expected one mel ({vocoder.n_mels}, frames)")
    chunk_frames = LONG_MEL_CHUNK if chunk_frames is None else chunk_frames
    if not (isinstance(chunk_frames, int) and chunk_frames >= 1):
        raise ValueError(f"chunk_frames must be an integer >= 1, got {chunk_frames!r}")
    stream = StreamingVocoder(
        vocoder,
        sigma=sigma,
        seed=seed,
        postfilter=postfilter,
        mel_correction=mel_correction,
        check_input=check_input,
        limit=limit,
        harmonic=harmonic,
    )
    return _pieces(stream, checked[0], chunk_frames)


def _pieces(stream: StreamingVocoder, mel: torch.Tensor, chunk_frames: int) -> Iterator[np.ndarray]:
    frames = mel.shape[1]
    for k in range(0, frames + chunk_frames, chunk_frames):  # the last round flushes
        piece = stream.push(mel[:, k : k + chunk_frames]) if k < frames else stream.flush()
        if piece.numel():
            yield piece.numpy()


def snr_db(reference: np.ndarray | torch.Tensor, estimate: np.ndarray | torch.Tensor) -> float:
    """10 log10(|reference|^2 / |reference - estimate|^2) over the common length."""
    ref = torch.as_tensor(reference).double().flatten()
    est = torch.as_tensor(estimate).double().flatten()
    n = min(ref.numel(), est.numel())
    noise = (ref[:n] - est[:n]).square().sum()
    if noise == 0:
        return math.inf
    return float(10 * torch.log10(ref[:n].square().sum() / noise))

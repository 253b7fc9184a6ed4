"""A pulse train plus noise through the mel's LP filter and post-processing: no network at all.

The control of issue 19: what the flow adds over a plain periodic excitation with the same
pitch. Per sample n, with F0 and voicing ``v`` interpolated linearly between frame centres:

    e[n] = sqrt(v) * p[n] + sqrt(1 - v) * w[n]

``w`` white Gaussian noise, ``p`` a band-limited pulse train of unit power,
``sqrt(2 / K) * sum_k a_k cos(k phi[n])`` over the harmonics below ``TOP`` of the Nyquist
frequency (a_k tapers to 0 over the last ``TAPER_HZ``, so that no harmonic switches on or off
abruptly as F0 moves; K the sum of a_k squared), ``phi[n] = 2 pi sum_{m <= n} F0[m] / sample_rate``.
``e`` has unit power, as the LP residual has (the LP gain carries the level), and goes through
the same steps as the flow's residual: the LP synthesis filter, the harmonic post-filter, the
mel correction and the soft limiter.

``recorded_residual`` gives the other end: the recording's own LP residual under the filter
that the mel gives, which ``excitation_vocoder`` turns back into (nearly) the recording. Through
the same post-processing it is the ceiling of any excitation that this filter and chain could
be given.
"""

from __future__ import annotations

import numpy as np
import torch

from waveflow.dsp.postfilter import HarmonicPostfilter
from waveflow.dsp.stages import Chain, PostfilterStage

TOP = 0.95  # share of the Nyquist frequency that the pulse train reaches
TAPER_HZ = 500.0


def mel_tracks(mel: np.ndarray, mel_cfg, tracker: str = "comb") -> tuple[np.ndarray, np.ndarray]:
    """The mel's own pitch: F0 in Hz and voicing in [0, 1] per frame, ``(F,)`` float64 each, of
    a log-mel ``(n_mels, F)`` (``MelPitch`` with ``tracker`` and ``period_voicing``, as the
    pulse source and the post-filter of a model with that tracker read it)."""
    from waveflow.dsp.pitch import MelPitch, period_voicing

    pitch = MelPitch(mel_cfg.n_mels, mel_cfg.sample_rate, mel_cfg.n_fft, mel_cfg.f_min, mel_cfg.f_max, tracker)
    with torch.no_grad():
        feats = pitch(torch.from_numpy(np.asarray(mel, dtype=np.float32))[None])
    period, voicing = period_voicing(feats, mel_cfg.sample_rate)
    return (mel_cfg.sample_rate / period[0]).numpy(), voicing[0].numpy()


def _per_sample(track: np.ndarray, length: int, hop: int, start: int) -> np.ndarray:
    """A per-frame track (frame f centred on sample ``start + f * hop``) interpolated linearly
    to samples 0..length, held constant beyond the first and last centres."""
    return np.interp(np.arange(length), start + hop * np.arange(len(track)), track)


def pulse_noise(
    f0: np.ndarray,
    voicing: np.ndarray,
    length: int,
    sample_rate: int,
    hop: int,
    start: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """The excitation ``(length,)`` float32 of unit power for per-frame ``f0`` (Hz; where it is
    0 or the frame unvoiced the F0 is interpolated from the voiced neighbours, for a continuous
    phase) and ``voicing`` in [0, 1] ``(F,)``, frame f centred on sample ``start + f * hop``."""
    f0, voicing = np.asarray(f0, dtype=np.float64), np.asarray(voicing, dtype=np.float64)
    if f0.ndim != 1 or f0.shape != voicing.shape or len(f0) == 0:
        raise ValueError(f"f0 and voicing must be 1-D of one length >= 1, got shapes {f0.shape} and {voicing.shape}")
    if not (np.isfinite(f0).all() and np.isfinite(voicing).all()) or (f0 < 0).any():
        raise ValueError("f0 must be finite Hz >= 0 and voicing finite")
    if ((voicing < 0) | (voicing > 1)).any():
        raise ValueError("voicing must lie in [0, 1]")
    voiced = (f0 > 0) & (voicing > 0)
    frames = np.arange(len(f0))
    if voiced.any():  # fill the gaps in log F0, so that the phase runs on smoothly through them
        log_f0 = np.interp(frames, frames[voiced], np.log(f0[voiced]))
    else:
        log_f0 = np.full(len(f0), np.log(100.0))
    freq = np.exp(_per_sample(log_f0, length, hop, start))
    v = np.clip(_per_sample(np.where(voiced, voicing, 0.0), length, hop, start), 0.0, 1.0)
    phase = 2 * np.pi * np.cumsum(freq / sample_rate)
    top = TOP * sample_rate / 2
    pulses = np.zeros(length)
    power = np.zeros(length)
    for k in range(1, int(top / freq.min()) + 1):
        a = np.clip((top - k * freq) / TAPER_HZ, 0.0, 1.0)
        if not a.any():
            break
        pulses += a * np.cos(k * phase)
        power += a * a
    pulses *= np.sqrt(2.0 / np.maximum(power, 1e-12))
    noise = np.random.default_rng(seed).standard_normal(length)
    return (np.sqrt(v) * pulses + np.sqrt(1.0 - v) * noise).astype(np.float32)


def pulse_noise_vocoder(
    voc,
    mel: np.ndarray,
    f0: np.ndarray,
    voicing: np.ndarray,
    seed: int = 0,
    tracker: str | None = None,
    limit: bool = True,
) -> np.ndarray:
    """Audio ``(F * hop,)`` float32 from ``pulse_noise`` for a log-mel ``(n_mels, F)`` through the
    vocoder's own LP synthesis filter, then its post-filter and mel correction at the
    checkpoint's settings and the soft limiter (``limit``), as ``Vocoder`` runs them on the
    flow's residual (``excitation_vocoder``). ``tracker``: the pitch tracker the post-filter
    reads (default: the model's own)."""
    cfg = voc.config.mel
    length = mel.shape[-1] * cfg.hop_length
    e = pulse_noise(f0, voicing, length, cfg.sample_rate, cfg.hop_length, cfg.frame0_centre, seed)
    return excitation_vocoder(voc, mel, e, tracker, limit)


def recorded_residual(voc, audio: np.ndarray, mel: np.ndarray) -> np.ndarray:
    """The LP residual ``(F * hop,)`` float32 of a recording ``audio`` under the filter that the
    vocoder derives from its log-mel ``(n_mels, F)`` (``model.lpc``'s analysis; the audio cut or
    zero-padded to the mel's frames): the excitation that gives the recording back through the
    synthesis filter, so ``excitation_vocoder`` of it is the ceiling of any excitation."""
    _check_lp(voc)
    length = mel.shape[-1] * voc.config.mel.hop_length
    x = np.zeros(length, dtype=np.float32)
    x[: min(length, len(audio))] = audio[:length]
    target = torch.from_numpy(np.asarray(mel, dtype=np.float32))[None]
    with torch.no_grad():
        return voc.model.lpc(torch.from_numpy(x)[None], target)[0][0].numpy()


def excitation_vocoder(
    voc, mel: np.ndarray, excitation: np.ndarray, tracker: str | None = None, limit: bool = True
) -> np.ndarray:
    """Audio ``(F * hop,)`` float32 from an LP residual ``excitation`` ``(F * hop,)`` (unit power,
    as the flow's) and its log-mel ``(n_mels, F)``: the vocoder's LP synthesis filter, then the
    checkpoint's post-processing as ``Vocoder`` runs it after the flow. ``tracker``: the pitch
    tracker the post-filter reads (default: the model's own)."""
    _check_lp(voc)
    cfg = voc.config.mel
    length = mel.shape[-1] * cfg.hop_length
    if np.shape(excitation) != (length,):
        raise ValueError(f"excitation has shape {np.shape(excitation)}; expected ({length},): hop samples per frame")
    stages = voc.chain(limit=limit).stages  # the checkpoint's post-processing, as Vocoder plays it
    if tracker is not None and tracker != voc.config.model.pitch_tracker:  # the post-filter reads this one
        postfilter = HarmonicPostfilter.for_mel(cfg, tracker)
        stages = [PostfilterStage(postfilter, s.strength) if isinstance(s, PostfilterStage) else s for s in stages]
    target = torch.from_numpy(np.asarray(mel, dtype=np.float32))[None]
    e = torch.from_numpy(np.asarray(excitation, dtype=np.float32))[None]
    with torch.no_grad():
        audio = Chain(stages)(voc.model.lpc.inverse(e, target), target)
    return audio[0].numpy()


def _check_lp(voc) -> None:
    if voc.model.lpc is None:
        raise ValueError("the excitation controls need a model with linear prediction (model.lpc_order > 0)")

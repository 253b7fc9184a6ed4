"""Is this mel on the vocoder's scale? A check of the values, not the shape.

The vocoder takes the natural log of ``clamp(mel, clamp_min)`` (1e-5: silence is
log(1e-5) = -11.51). Other tools write mels on other scales, and a mel on the wrong scale is
synthesized as loud noise without any error. What the values can tell, measured on the 32
clips of the shared LJSpeech corpus (``tests/dsp/test_melcheck.py`` keeps these figures honest):

- a log-mel of the convention spans about [-11.5, +2]: per clip the minimum is -11.5 to -11.0,
  the 1st percentile -10.0 to -9.3, the median -5.6 to -5.1, the 99th percentile -0.7 to -0.2
  and the maximum 0.7 to 2.1; one frame alone has its median between -9.2 and -2.8;
- a linear (magnitude) or power mel has no negative value at all;
- a dB mel (librosa ``power_to_db``: 10 log10 of power, or ``amplitude_to_db``: 20 log10 of
  magnitude) is the log-mel times 20 / ln 10 = 8.69: it spans about 80 dB, far below -11.5;
- a log10 mel is the log-mel times 1 / ln 10 = 0.43: it never goes below log10(1e-5) = -5 and
  its median sits near -2.4;
- a natural log of power is the log-mel times 2.

A HiFi-GAN-convention mel (``mel.preset: hifigan``: no centring, ``sqrt(|X|^2 + 1e-9)``) has
the same values: the 1e-9 under the root is 3e-5 per bin, about 1.5e-6 after a band's
area-normalised weights, far below the 1e-5 clamp. What differs is where the frames sit (half
a hop later) and how many there are (``samples // hop`` instead of ``1 + samples // hop``).
From a mel alone neither is detectable; given the audio's length (``waveflow synthesize
--reference``), the frame count is (``frame_count_problem``).
"""

from __future__ import annotations

import math

import torch

# Bounds with a margin around the corpus figures above: a TTS model's mel may undershoot the
# floor a little and a louder recording may peak higher, but not by these amounts.
# Below the floor: a TTS model's output and synthetic test mels (normal(-5, 2) reaches -13.9 in
# 80,000 values) undershoot it; a dB mel (-60 and below) or the log of a power (-23) go far past.
BELOW_FLOOR = 5.0  # nats below log(clamp_min) still accepted (-16.5 for the default floor)
HIGHEST = 5.0  # e^5 = 148: 20 dB above the loudest LJSpeech band
MIN_FRAMES_FOR_STATS = 8  # the log10 rule reads the median, which needs more than a frame or two
LOG_SPREAD = 9.5  # the 1st-99th percentile spread of a log-mel of speech (corpus: 9.2-9.9)


class MelScaleWarning(UserWarning):
    """A mel whose values are not on the vocoder's scale (linear, power, dB, log10, out of range).

    Turn it off per call with ``check_input=False``, or for a program with
    ``warnings.filterwarnings("ignore", category=MelScaleWarning)``."""


def diagnose(mel: torch.Tensor, clamp_min: float = 1e-5) -> str | None:
    """What is wrong with the scale of a finite mel ``(B, n_mels, T)`` or ``(n_mels, T)``, as
    one phrase saying what it looks like and how to convert it; None when it looks right."""
    floor = math.log(clamp_min)
    values = mel.detach().float().reshape(-1).cpu()
    if values.numel() == 0:
        return None
    lo, hi = float(values.min()), float(values.max())
    # The largest error first: 1e30 in a few frames must be named, not averaged.
    if lo >= 0:
        return _linear(values, lo, hi, floor)
    if lo >= floor - BELOW_FLOOR and hi <= HIGHEST:
        frames = mel.shape[-1]
        median = float(_sample(values).median())  # a sample: the median of an hour would copy it
        log10_floor = floor / math.log(10)
        if frames >= MIN_FRAMES_FOR_STATS and lo >= log10_floor - 0.01 and hi <= 1.5 and median > -3.5:
            return (
                f"looks like a log10 mel (values {lo:.2f}..{hi:.2f}, median {median:.2f}; floor log10({clamp_min:g}) "
                f"= {log10_floor:.2f}): the vocoder takes the natural log, convert with mel * {math.log(10):.4f}"
            )
        return None
    frame_lo = mel.detach().float().cpu().reshape(-1, mel.shape[-2], mel.shape[-1]).amin(dim=(0, 1))
    frame_hi = mel.detach().float().cpu().reshape(-1, mel.shape[-2], mel.shape[-1]).amax(dim=(0, 1))
    bad = (frame_lo < floor - BELOW_FLOOR) | (frame_hi > HIGHEST)
    if bad.float().mean() <= 0.25:  # most frames in range: a few broken frames, not a scale
        where = bad.nonzero().flatten().tolist()
        shown = ", ".join(str(i) for i in where[:5]) + (", ..." if len(where) > 5 else "")
        return (
            f"{len(where)} of {mel.shape[-1]} frames out of a log-mel's range (frames {shown}: values "
            f"{float(frame_lo[bad].min()):.3g}..{float(frame_hi[bad].max()):.3g}; expected {floor:.2f} = "
            f"log({clamp_min:g}) up to about +3): repair those frames, e.g. with np.clip(mel, {floor:.3f}, 3.0)"
        )
    q01, q99 = (float(q) for q in torch.quantile(_sample(values), torch.tensor([0.01, 0.99])))
    scale = (q99 - q01) / LOG_SPREAD
    if scale >= 4:
        return (
            f"looks like a dB mel (values {lo:.1f}..{hi:.1f}; librosa power_to_db or amplitude_to_db): the "
            f"vocoder takes the natural log of the magnitude, convert with "
            f"np.maximum(mel_db * {math.log(10) / 20:.5f}, {floor:.3f}) (exact for a dB mel made with ref=1.0 and "
            "top_db=None; ref=np.max loses the level and top_db the quiet bands)"
        )
    if scale >= 1.5:
        return (
            f"looks like the log of a power mel (values {lo:.2f}..{hi:.2f}, about twice a log-mel's spread): "
            f"the vocoder takes the log of the magnitude, convert with np.maximum(mel / 2, {floor:.3f})"
        )
    return (
        f"values {lo:.3g}..{hi:.3g} are outside a log-mel's range ({floor:.2f} = log({clamp_min:g}) up to about +3): "
        "the vocoder takes the natural log of clamp(mel, 1e-5) of the Tacotron 2 / WaveGlow convention"
    )


def _linear(values: torch.Tensor, lo: float, hi: float, floor: float) -> str:
    if hi == 0:
        return (
            f"all zeros: not a log-mel of speech (silence is {floor:.2f} = log(1e-5)); a zero-padded batch "
            "needs lengths="
        )
    positive = _sample(values[values > 0])
    q01, q99 = (float(q) for q in torch.quantile(positive.log(), torch.tensor([0.01, 0.99])))
    if q99 - q01 > 1.5 * LOG_SPREAD or hi > 60:
        return (
            f"looks like a power mel (no negative values, max {hi:.3g}): the vocoder takes the natural log of "
            f"the magnitude, convert with np.log(np.maximum(np.sqrt(mel), 1e-5))"
        )
    return (
        f"looks like a linear mel (no negative values, max {hi:.3g}): the vocoder takes the natural log, "
        f"convert with np.log(np.maximum(mel, 1e-5))"
    )


def _sample(values: torch.Tensor, limit: int = 200_000) -> torch.Tensor:
    """At most ``limit`` evenly spaced values (torch.quantile refuses very large inputs)."""
    if values.numel() <= limit:
        return values
    return values[:: math.ceil(values.numel() / limit)]


def frame_count_problem(frames: int, samples: int, hop: int, center: bool = True) -> str | None:
    """Given the length of the audio a mel was computed from, say when its frame count is that of
    the other convention: ``samples // hop`` (HiFi-GAN, ``center=False``) where ``1 + samples //
    hop`` (Tacotron 2 / WaveGlow, centred) is expected, or the reverse."""
    expected = 1 + samples // hop if center else samples // hop
    if frames == expected:
        return None
    other = samples // hop if center else 1 + samples // hop
    if frames == other and center:
        return (
            f"{frames} frames for {samples} samples is the HiFi-GAN convention (samples // {hop}, no centring); "
            f"this model takes the Tacotron 2 / WaveGlow one ({expected} frames, centred): make the mel with "
            "waveflow mel or center=True"
        )
    if frames == other:
        return (
            f"{frames} frames for {samples} samples is the Tacotron 2 / WaveGlow convention (centred); this model "
            f"takes the HiFi-GAN one ({expected} frames)"
        )
    return None

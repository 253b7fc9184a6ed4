"""Mel front end against an independent numpy/librosa computation, and wav I/O."""

from __future__ import annotations

import logging

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from waveflow.config import MelConfig
from waveflow.dsp.audio import MelSpectrogram, load_wav, mel_filterbank, save_wav


def reference_log_mel(audio: np.ndarray, preset: str) -> np.ndarray:
    """CONVENTIONS.md written out with numpy and librosa only."""
    n_fft, hop = 1024, 256
    if preset == "default":
        padded = np.pad(audio, (n_fft // 2, n_fft // 2), mode="reflect")
        spec = librosa.stft(padded, n_fft=n_fft, hop_length=hop, win_length=1024, window="hann", center=False)
        mag = np.abs(spec)
    else:
        pad = (n_fft - hop) // 2
        padded = np.pad(audio, (pad, pad), mode="reflect")
        spec = librosa.stft(padded, n_fft=n_fft, hop_length=hop, win_length=1024, window="hann", center=False)
        mag = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    basis = librosa.filters.mel(sr=22050, n_fft=n_fft, n_mels=80, fmin=0.0, fmax=8000.0)
    return np.log(np.maximum(basis @ mag, 1e-5))


def test_filterbank_equals_librosa_slaney():
    ours = mel_filterbank(22050, 1024, 80, 0.0, 8000.0)
    ref = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0)
    np.testing.assert_allclose(ours, ref, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("preset, frames", [("default", lambda n: 1 + n // 256), ("hifigan", lambda n: n // 256)])
def test_mel_of_shared_clip_matches_reference(clip, preset, frames):
    audio = load_wav(clip)
    mel = MelSpectrogram(MelConfig(preset=preset))(torch.from_numpy(audio))
    ref = reference_log_mel(audio, preset)
    assert mel.dtype == torch.float32
    assert mel.shape == (80, frames(len(audio))) == ref.shape
    assert MelConfig(preset=preset).frames(len(audio)) == mel.shape[1]
    np.testing.assert_allclose(mel.numpy(), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("preset", ["default", "hifigan"])
@pytest.mark.parametrize("length", [600, 1000, 1024, 4097])
def test_frame_count_is_exact(preset, length):
    cfg = MelConfig(preset=preset)
    mel = MelSpectrogram(cfg)(torch.randn(2, length) * 0.1)
    assert mel.shape == (2, 80, cfg.frames(length))


def test_batch_equals_one_by_one_and_is_float32_for_any_input_dtype():
    torch.manual_seed(0)
    module = MelSpectrogram()
    audio = torch.randn(3, 5000) * 0.1
    batched = module(audio)
    for i in range(3):
        torch.testing.assert_close(batched[i], module(audio[i]))
    assert module(audio.double()).dtype == torch.float32
    # .half() on an enclosing model must not degrade the float64 filterbank
    module.half()
    torch.testing.assert_close(module(audio), batched)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_mel_on_cuda_matches_cpu():
    audio = torch.randn(2, 8000) * 0.1
    module = MelSpectrogram()
    torch.testing.assert_close(module(audio.cuda()).cpu(), module(audio), atol=1e-4, rtol=0)


def test_too_short_and_malformed_audio():
    module = MelSpectrogram()
    with pytest.raises(ValueError, match="needs at least 513"):
        module(torch.zeros(1, 100))
    with pytest.raises(ValueError, match=r"expected \(batch, samples\)"):
        module(torch.zeros(1, 1, 1000))
    with pytest.raises(ValueError, match="needs at least 385"):
        MelSpectrogram(MelConfig(preset="hifigan"))(torch.zeros(1, 300))


def test_load_wav_mixes_stereo_down_and_says_so(tmp_path, caplog):
    left, right = np.full(2205, 0.5, np.float32), np.full(2205, -0.25, np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 22050, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="waveflow"):
        audio = load_wav(path)
    assert audio.shape == (2205,)
    np.testing.assert_allclose(audio, 0.125, atol=1e-6)
    assert "mixed down to mono" in caplog.text


def test_load_wav_resamples_and_says_so(tmp_path, caplog):
    t = np.arange(44100) / 44100
    path = tmp_path / "44k.wav"
    sf.write(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    with caplog.at_level(logging.WARNING, logger="waveflow"):
        audio = load_wav(path)
    assert abs(len(audio) - 22050) <= 1
    assert "resampled from 44100 Hz to 22050 Hz" in caplog.text
    # still a 440 Hz tone
    peak = np.argmax(np.abs(np.fft.rfft(audio))) * 22050 / len(audio)
    assert abs(peak - 440) < 2


def test_load_wav_rejects_non_audio(tmp_path):
    path = tmp_path / "not.wav"
    path.write_text("hello")
    with pytest.raises(ValueError, match="cannot read audio"):
        load_wav(path)


def test_save_wav_round_trip_and_atomicity(tmp_path):
    audio = np.sin(np.linspace(0, 100, 4000)).astype(np.float32) * 0.5
    path = tmp_path / "out.wav"
    save_wav(path, torch.from_numpy(audio))
    back, sr = sf.read(path, dtype="float32")
    assert sr == 22050 and sf.info(path).subtype == "PCM_16"
    np.testing.assert_allclose(back, audio, atol=1 / 32768)
    # a failed write leaves neither the target nor a temp file, and keeps an existing file intact
    with pytest.raises(ValueError, match="NaN or Inf"):
        save_wav(path, np.array([0.0, np.nan], np.float32))
    back2, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(back, back2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]
    with pytest.raises(ValueError, match="does not exist"):
        save_wav(tmp_path / "missing" / "x.wav", audio)


def test_save_wav_writes_beside_the_target_then_renames(tmp_path, monkeypatch):
    """The new wav is complete in a temp file before it replaces the old one, and a write that
    fails at the disk (after the file was opened) leaves the old wav and no temp file."""
    import errno
    import os

    from waveflow.atomic import WriteError

    path = tmp_path / "out.wav"
    old = np.zeros(1000, np.float32)
    save_wav(path, old)
    before = path.read_bytes()
    new = (np.sin(np.arange(3000) / 10) * 0.5).astype(np.float32)
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((sf.info(src).frames, path.read_bytes() == before))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    save_wav(path, new)
    assert renames == [(3000, True)]  # the temp file held the whole new wav; the target was still the old one
    monkeypatch.undo()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match="No space left"):
        save_wav(path, old)
    np.testing.assert_allclose(sf.read(path, dtype="float32")[0], new, atol=1 / 32768)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def test_save_wav_pieces_writes_the_bytes_of_one_whole_write_and_loses_nothing_on_failure(tmp_path):
    """Pieces of any size (tensors, arrays, empty ones) make the very file that soundfile writes for
    the whole audio (header sizes patched at the end); a NaN in a late piece or an error from the
    iterator leaves the previous file and no temp file."""
    import io
    import itertools

    from waveflow.dsp.audio import save_wav_pieces

    rng = np.random.default_rng(5)
    audio = rng.uniform(-1.3, 1.3, 20_001).astype(np.float32)  # past full scale too: clipped alike
    whole = io.BytesIO()
    sf.write(whole, np.clip(audio, -1, 32767 / 32768), 16000, subtype="PCM_16", format="WAV")
    cuts = [0, 1, 1, 777, 5000, 20_001]
    pieces = [audio[a:b] for a, b in itertools.pairwise(cuts)]
    path = tmp_path / "out.wav"
    assert save_wav_pieces(path, [torch.from_numpy(p) if i % 2 else p for i, p in enumerate(pieces)], 16000) == 20_001
    assert path.read_bytes() == whole.getvalue()
    save_wav(tmp_path / "whole.wav", audio, 16000)
    assert (tmp_path / "whole.wav").read_bytes() == whole.getvalue()

    def late_nan():
        yield audio[:100]
        yield np.array([0.0, np.nan], np.float32)

    def failing():
        yield audio[:100]
        raise RuntimeError("synthesis failed")

    with pytest.raises(ValueError, match="NaN or Inf"):
        save_wav_pieces(path, late_nan(), 16000)
    with pytest.raises(RuntimeError, match="synthesis failed"):
        save_wav_pieces(path, failing(), 16000)
    assert path.read_bytes() == whole.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav", "whole.wav"]

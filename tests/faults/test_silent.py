"""Fault class 'silent output': input that would give wrong audio (or wrong training data)
without a word is refused, or flagged, in one line."""

from __future__ import annotations

import json
import math
import shutil
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch
from test_vocoder import random_mel, tiny_vocoder, write_tiny_checkpoint

from waveflow.cli import main
from waveflow.infer.streaming import StreamingVocoder
from waveflow.infer.vocoder import DEFAULT_CHECKPOINT, Vocoder
from waveflow.nn.checkpoint import CHECKSUM_KEY, CheckpointError, make_checkpoint, read_checkpoint


@pytest.mark.parametrize("sigma", [math.nan, math.inf, -0.1])
def test_a_non_finite_or_negative_sigma_is_refused(sigma):
    voc = tiny_vocoder()
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        voc(random_mel(6), sigma=sigma, seed=0)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        StreamingVocoder(voc, sigma=sigma, seed=0)


def test_a_seed_that_is_not_an_integer_is_refused():
    voc = tiny_vocoder()
    for seed in (1.5, "1", True):
        with pytest.raises(ValueError, match="seed must be an integer"):
            voc(random_mel(6), seed=seed)
        with pytest.raises(ValueError, match="seed must be an integer"):
            StreamingVocoder(voc, seed=seed)
    voc(random_mel(6), seed=np.int64(3))  # numpy integers are integers


@pytest.mark.parametrize("strength", [-1.0, math.nan, math.inf])
def test_a_negative_or_nan_denoise_strength_is_refused_not_taken_as_off(tmp_path, capsys, strength):
    voc = tiny_vocoder()
    with pytest.raises(ValueError, match="denoise strength must be a finite number >= 0"):
        voc(random_mel(6), seed=0, denoise=strength)
    write_tiny_checkpoint(tmp_path / "tiny.pt")
    np.save(tmp_path / "m.npy", random_mel(6).numpy())
    args = ["synthesize", str(tmp_path / "m.npy"), "-o", str(tmp_path / "o.wav")]
    args += ["--checkpoint", str(tmp_path / "tiny.pt")]
    assert main([*args, "--denoise", str(strength)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--denoise must be a finite number >= 0" in err[0], err
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_waveflow_mel_of_a_nan_or_inf_wav_is_refused(tmp_path, capsys, value):
    audio = np.zeros(22050, dtype=np.float32)
    audio[1000] = value
    sf.write(tmp_path / "bad.wav", audio, 22050, subtype="FLOAT")
    assert main(["mel", str(tmp_path / "bad.wav"), "-o", str(tmp_path / "bad.npy")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.wav" in err[0] and "NaN or Inf" in err[0], err
    assert not (tmp_path / "bad.npy").exists()


@pytest.mark.parametrize(("dtype", "name"), [(torch.bool, "bool"), (torch.complex64, "complex64")])
def test_bool_and_complex_pt_mels_are_refused_like_npy_ones(tmp_path, capsys, dtype, name):
    write_tiny_checkpoint(tmp_path / "tiny.pt")
    torch.save((torch.randn(80, 6) - 5).to(dtype), tmp_path / "m.pt")
    args = ["synthesize", str(tmp_path / "m.pt"), "-o", str(tmp_path / "o.wav")]
    args += ["--checkpoint", str(tmp_path / "tiny.pt")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.pt" in err[0] and f"dtype torch.{name}" in err[0], err
    assert not (tmp_path / "o.wav").exists()


def test_prepare_skips_nan_and_out_of_range_wavs_saying_why(tmp_path, mini_corpus):
    from waveflow.train.data import prepare

    corpus = tmp_path / "corpus"
    (corpus / "wavs").mkdir(parents=True)
    lines = (mini_corpus / "metadata.csv").read_text().splitlines()[:5]
    (corpus / "metadata.csv").write_text("\n".join(lines) + "\n")
    ids = [line.split("|", 1)[0] for line in lines]
    for clip_id in ids:
        shutil.copy(mini_corpus / "wavs" / f"{clip_id}.wav", corpus / "wavs" / f"{clip_id}.wav")
    sf.write(corpus / "wavs" / f"{ids[0]}.wav", np.full(22050, np.nan, dtype=np.float32), 22050, subtype="FLOAT")
    loud = np.sin(np.arange(22050) / 10).astype(np.float32) * 100  # a +-100 float wav
    sf.write(corpus / "wavs" / f"{ids[1]}.wav", loud, 22050, subtype="FLOAT")
    summary = prepare(corpus, tmp_path / "out", progress=False)
    assert summary["skipped"] == {ids[0]: "NaN or Inf samples", ids[1]: "peak amplitude 100, outside [-1, 1]"}
    assert summary["usable"] == 3


def _flip_a_weight_byte(src, dst):
    """Copy a checkpoint with one byte flipped in the middle of its largest tensor's data."""
    shutil.copy(src, dst)
    with zipfile.ZipFile(dst) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(dst, "r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(handle.read(4), dtype="<u2")
        at = info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size // 2
        handle.seek(at)
        byte = handle.read(1)[0]
        handle.seek(at)
        handle.write(bytes([byte ^ 0x01]))


def test_a_flipped_byte_in_the_bundled_checkpoint_is_refused(tmp_path):
    assert CHECKSUM_KEY in read_checkpoint(DEFAULT_CHECKPOINT)
    _flip_a_weight_byte(DEFAULT_CHECKPOINT, tmp_path / "flipped.pt")
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        Vocoder.from_checkpoint(tmp_path / "flipped.pt")
    assert main(["info", str(tmp_path / "flipped.pt")]) == 1


def test_checkpoints_without_a_checksum_still_load(tmp_path):
    from test_vocoder import tiny_setup

    model, cfg = tiny_setup()
    data = make_checkpoint(model, cfg)
    del data[CHECKSUM_KEY]  # as written before checksums
    torch.save(data, tmp_path / "old.pt")
    Vocoder.from_checkpoint(tmp_path / "old.pt")


def test_a_flipped_byte_in_a_pretrained_folder_is_refused(tmp_path):
    from waveflow.interop.pretrained import WEIGHTS_FILE, save_pretrained

    write_tiny_checkpoint(tmp_path / "tiny.pt")
    folder = save_pretrained(tmp_path / "tiny.pt", tmp_path / "pretrained")
    Vocoder.from_pretrained(folder)
    weights = folder / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1000] ^= 0x01  # in the tensor data, after the header
    weights.chmod(0o644)
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        Vocoder.from_pretrained(folder)
    assert json.loads((folder / "card.json").read_text()) is not None

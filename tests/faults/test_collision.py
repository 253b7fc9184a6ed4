"""Fault class 'collision': two inputs that would write one output are refused before anything
is written (a folder with a.npy and a.pt wrote one a.wav and said 'wrote 2 wavs')."""

from __future__ import annotations

import numpy as np
import torch
from test_vocoder import random_mel, write_tiny_checkpoint

from waveflow.cli import main


def test_two_mels_with_one_name_in_a_folder_are_refused_before_anything_is_written(tmp_path, capsys):
    write_tiny_checkpoint(tmp_path / "tiny.pt")
    mels = tmp_path / "mels"
    mels.mkdir()
    np.save(mels / "a.npy", random_mel(8, seed=1).numpy())
    torch.save(random_mel(8, seed=2), mels / "a.pt")
    np.save(mels / "b.npy", random_mel(8, seed=3).numpy())
    out = tmp_path / "wavs"
    code = main(["synthesize", str(mels), "-o", str(out), "--checkpoint", str(tmp_path / "tiny.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "a.npy and a.pt" in err[0] and "a.wav" in err[0], err
    assert not out.exists()  # not even the folder

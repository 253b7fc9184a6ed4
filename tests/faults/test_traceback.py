"""Fault class 'traceback': bad input gets one line naming the file and what was expected."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_model
from test_nvidia import _nvidia_model, glow  # noqa: F401  (glow is a fixture)
from test_vocoder import write_tiny_checkpoint

from waveflow.cli import main


def _one_line(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    for word in words:
        assert word in err[0], err[0]
    return err[0]


@pytest.mark.parametrize(
    ("kind", "make", "expected"),
    [
        ("sparse", lambda m: m.to_sparse(), "sparse"),
        ("meta", lambda m: m.to("meta"), "meta tensor"),
        ("quantized", lambda m: torch.quantize_per_tensor(m, 0.1, 0, torch.qint8), "quantized"),
    ],
)
def test_sparse_meta_and_quantized_pt_mels_are_one_line(tmp_path, capsys, kind, make, expected):
    write_tiny_checkpoint(tmp_path / "tiny.pt")
    path = tmp_path / f"{kind}.pt"
    torch.save(make(torch.randn(80, 6) - 5), path)
    code = main(["synthesize", str(path), "-o", str(tmp_path / "o.wav"), "--checkpoint", str(tmp_path / "tiny.pt")])
    assert code == 1
    _one_line(capsys, f"{kind}.pt", expected)
    assert not (tmp_path / "o.wav").exists()


def _break_cycle(nv):
    nv.WN[0]._modules["loop"] = nv  # the module tree refers back to its root


def _break_param(nv):
    nv.upsample._parameters["weight"] = 3


def _break_list(nv):
    nv.WN[0].start.__dict__["_parameters"] = [1, 2]


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [("cyclic", _break_cycle, "loops back"), ("param", _break_param, "is a int"), ("list", _break_list, "list")],
)
def test_convert_nvidia_of_a_malformed_module_tree_is_one_line(tmp_path, capsys, glow, name, damage, expected):  # noqa: F811
    nv = _nvidia_model(glow, "latest")
    damage(nv)
    src = tmp_path / f"{name}.pt"
    torch.save({"model": nv, "iteration": 1}, src)
    assert main(["convert-nvidia", str(src), "-o", str(tmp_path / "out.pt")]) == 1
    _one_line(capsys, f"{name}.pt", expected)
    assert not (tmp_path / "out.pt").exists()


def _tiny_corpus(tmp_path, mini_corpus, ids):
    corpus = tmp_path / "corpus"
    (corpus / "wavs").mkdir(parents=True)
    lines = (mini_corpus / "metadata.csv").read_text().splitlines()[:4]
    for line in lines:
        clip_id = line.split("|", 1)[0]
        shutil.copy(mini_corpus / "wavs" / f"{clip_id}.wav", corpus / "wavs" / f"{clip_id}.wav")
    (corpus / "metadata.csv").write_text("\n".join([*lines, *(f"{i}|text|text" for i in ids)]) + "\n")
    return corpus


def test_prepare_skips_a_300_character_id_with_its_reason(tmp_path, capsys, mini_corpus):
    corpus = _tiny_corpus(tmp_path, mini_corpus, ["x" * 300])
    assert main(["prepare", "--data", str(corpus), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "File name too long" in out and "4 of 5 clips usable" in out, out
    skipped = json.loads((tmp_path / "out" / "prepared.json").read_text())["skipped"]
    assert list(skipped) == ["x" * 300]


def test_prepare_into_a_closed_pipe_ends_quietly(tmp_path, mini_corpus):
    corpus = _tiny_corpus(tmp_path, mini_corpus, [])
    args = [sys.executable, "-m", "waveflow", "prepare", "--data", str(corpus), "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # `| head -1` that has already gone: every write meets a closed pipe
    stderr = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 141, stderr  # 128 + SIGPIPE, as Unix tools end
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert (tmp_path / "out" / "prepared.json").is_file()  # the files come before the summary


@pytest.mark.parametrize(("text", "expected"), [("[1, 2]", "holds a JSON list"), ("{not json", "not valid JSON")])
def test_a_pretrained_card_that_is_not_a_json_object_is_one_line_naming_it(tmp_path, text, expected):
    from waveflow.config import make_config
    from waveflow.infer.vocoder import Vocoder
    from waveflow.interop.pretrained import save_pretrained
    from waveflow.nn.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "tiny.pt", tiny_model(), make_config("tiny", {"model": {}}))
    folder = save_pretrained(tmp_path / "tiny.pt", tmp_path / "pretrained")
    (folder / "card.json").write_text(text)
    with pytest.raises(ValueError, match=expected) as info:
        Vocoder.from_pretrained(folder)
    assert str(folder / "card.json") in str(info.value) and "\n" not in str(info.value)

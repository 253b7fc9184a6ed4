"""Fault class 'bomb': a small file must not make waveflow allocate gigabytes or run for minutes.
Every case runs in a child process capped at 4 GiB of address space and 120 s, so a
regression fails the test instead of taking the machine down."""

from __future__ import annotations

import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_model

from waveflow.config import ConfigError, make_config
from waveflow.nn.checkpoint import make_checkpoint

LIMIT_BYTES = 4 * 2**30

# 352 bytes: nine levels of nine aliases, 9**9 (387 M) leaves once expanded
ALIAS_BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    + ["model: *i", ""]
)


def _capped():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))


def _waveflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "waveflow", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_capped,
    )


def _one_line(done: subprocess.CompletedProcess, *words: str) -> str:
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 500, done.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_yaml_alias_bomb_as_config_is_refused_in_one_line(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 500
    done = _waveflow("train", "--config", str(bomb), "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    _one_line(done, "bomb.yaml", "aliases")
    assert not (tmp_path / "run").exists()


def _nested(depth: int):
    x = ["lol"]
    for _ in range(depth):
        x = [x] * 9  # pickled once per level (the memo): a few kB for 9**depth leaves
    return x


def test_a_checkpoint_with_an_alias_bomb_in_its_config_is_refused_by_info(tmp_path):
    path = tmp_path / "bomb.pt"
    torch.save({"format": "waveflow", "version": 1, "config": {"model": {"n_flows": _nested(10)}}, "model": {}}, path)
    assert path.stat().st_size < 10_000
    _one_line(_waveflow("info", str(path)), "bomb.pt", "model.n_flows must be an integer")


def _huge_checkpoint(tmp_path, **sections) -> str:
    data = make_checkpoint(tiny_model(), make_config("tiny"))
    for section, values in sections.items():
        data["config"][section].update(values)
    path = tmp_path / "huge.pt"
    torch.save(data, path)
    assert path.stat().st_size < 20_000_000  # the tiny model's weights
    return str(path)


def test_a_checkpoint_config_asking_for_9_gb_is_refused_before_allocation(tmp_path):
    path = _huge_checkpoint(tmp_path, model={"n_channels": 20000})
    np.save(tmp_path / "mel.npy", np.zeros((80, 4), dtype=np.float32))
    done = _waveflow("synthesize", str(tmp_path / "mel.npy"), "-o", str(tmp_path / "out.wav"), "--checkpoint", path)
    _one_line(done, "huge.pt", "model.n_channels is 20000")
    assert not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"mel": {"n_fft": 10**9, "win_length": 10**9}}, "mel.n_fft is 1000000000"),  # numpy asked for 305 GiB
        ({"model": {"n_flows": 2000}}, "model.n_flows is 2000"),  # ran for over 5 minutes
        ({"model": {"n_layers": 40}}, "model.n_layers is 40"),  # dilation 2**39
        ({"model": {"n_channels": 4096, "n_layers": 4}}, "would have about"),  # each field in bounds, 1.6 G weights
        ({"model": {"n_group": 2, "n_early_every": 0, "n_channels": 2048, "n_layers": 3}}, "FLOPs per sample"),
    ],
)
def test_config_sizes_are_checked_against_memory_and_time_before_allocation(tmp_path, sections, expected):
    from waveflow.nn.checkpoint import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(_huge_checkpoint(tmp_path, **sections))


def test_every_bounded_field_has_a_bound_that_presets_respect():
    from waveflow.config import LIMITS, MODEL_PRESETS

    for preset in MODEL_PRESETS:
        make_config(preset)  # every preset is inside the bounds
    for key, limit in LIMITS.items():
        section, name = key.split(".")
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            make_config("tiny", {section: {name: limit + 1}})


def test_an_expanded_tensor_in_an_nvidia_file_is_refused_before_it_is_materialised(tmp_path):
    from waveflow.interop.nvidia import nvidia_config, to_nvidia_state_dict

    state = to_nvidia_state_dict(tiny_model())
    # 16 GiB once cast to float32, 2 bytes on disk: one float16 element seen through stride 0
    state["WN.0.end.extra"] = torch.zeros(1, dtype=torch.float16).expand(2**32)
    path = tmp_path / "expanded.pt"
    torch.save({"state_dict": state, "config": nvidia_config(make_config("tiny"))}, path)
    assert path.stat().st_size < 20_000_000  # the tiny model
    done = _waveflow("convert-nvidia", str(path), "-o", str(tmp_path / "out.pt"))
    _one_line(done, "expanded.pt", "stride 0")
    assert not (tmp_path / "out.pt").exists()


def test_a_long_mel_is_synthesized_chunk_by_chunk_as_the_stream_and_short_ones_as_before(tmp_path, monkeypatch):
    """Above LONG_MEL_FRAMES, `waveflow synthesize` goes through the stream (flat memory: figures
    from scripts/long_mel_memory.py in the README); its output equals the stream's, and a mel
    below the threshold comes out bit for bit as one offline pass."""
    from test_vocoder import random_mel, write_tiny_checkpoint

    import waveflow.infer.streaming as streaming
    import waveflow.infer.vocoder as vocoder_module
    from waveflow.cli import main
    from waveflow.dsp.audio import save_wav
    from waveflow.infer.streaming import StreamingVocoder, snr_db
    from waveflow.infer.vocoder import Vocoder

    monkeypatch.setattr(vocoder_module, "LONG_MEL_FRAMES", 60)
    monkeypatch.setattr(streaming, "LONG_MEL_CHUNK", 16)
    write_tiny_checkpoint(tmp_path / "tiny.pt")
    mels = tmp_path / "mels"
    mels.mkdir()
    long, short = random_mel(100, seed=1).numpy(), random_mel(50, seed=2).numpy()
    np.save(mels / "long.npy", long)
    np.save(mels / "short.npy", short)
    out = tmp_path / "wavs"
    args = ["synthesize", str(mels), "-o", str(out), "--checkpoint", str(tmp_path / "tiny.pt"), "--seed", "3"]
    assert main(args) == 0
    voc = Vocoder.from_checkpoint(tmp_path / "tiny.pt")
    stream = StreamingVocoder(voc, seed=3)
    streamed = np.concatenate([*(stream.push(long[:, k : k + 16]) for k in range(0, 100, 16)), stream.flush()])
    save_wav(tmp_path / "stream.wav", streamed, voc.sample_rate)
    assert (out / "long.wav").read_bytes() == (tmp_path / "stream.wav").read_bytes()
    save_wav(tmp_path / "offline.wav", voc(short, seed=3), voc.sample_rate)
    assert (out / "short.wav").read_bytes() == (tmp_path / "offline.wav").read_bytes()
    chunked = streaming.synthesize_long(voc, long, seed=3)
    np.testing.assert_array_equal(chunked, streamed)
    with pytest.warns(UserWarning, match="synthesize_long"):  # one pass past the threshold says so
        one_pass = voc(long, seed=3)
    print(f"chunked vs one pass: SNR {snr_db(one_pass, chunked):.1f} dB")
    assert snr_db(one_pass, chunked) > 60


def test_a_long_mel_is_written_while_it_is_synthesized(tmp_path, monkeypatch):
    """The long path never holds the whole audio: by the time the stream flushes, the wav's temp
    file already holds the earlier chunks' samples (the output appears, whole, only at the end)."""
    from test_vocoder import random_mel, write_tiny_checkpoint

    import waveflow.infer.streaming as streaming
    import waveflow.infer.vocoder as vocoder_module
    from waveflow.cli import main

    monkeypatch.setattr(vocoder_module, "LONG_MEL_FRAMES", 60)
    monkeypatch.setattr(streaming, "LONG_MEL_CHUNK", 16)
    write_tiny_checkpoint(tmp_path / "tiny.pt")
    np.save(tmp_path / "long.npy", random_mel(100, seed=1).numpy())
    out = tmp_path / "out"
    out.mkdir()
    seen = []
    flush = streaming.StreamingVocoder.flush

    def spy(self):
        seen.append(([p.stat().st_size for p in out.glob(".long.wav.*.tmp")], (out / "long.wav").exists()))
        return flush(self)

    monkeypatch.setattr(streaming.StreamingVocoder, "flush", spy)
    args = ["synthesize", str(tmp_path / "long.npy"), "-o", str(out / "long.wav")]
    args += ["--checkpoint", str(tmp_path / "tiny.pt")]
    assert main(args) == 0
    [(sizes, final_exists)] = seen
    assert len(sizes) == 1 and sizes[0] > 44 + 2 * 50 * 256 and not final_exists, seen
    assert sorted(p.name for p in out.iterdir()) == ["long.wav"]

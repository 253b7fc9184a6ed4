"""The Python examples of the README and the docs run as written, with stand-ins for what a user
brings (a TTS model, a playback function), and do what their comments say."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO

from waveflow.dsp.audio import load_wav
from waveflow.infer.vocoder import Vocoder

FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: str) -> list[str]:
    """The ``python`` code blocks of a markdown file of the repository, lines that need a GPU or
    a download (``cuda``, the NVIDIA release) left out."""
    blocks = FENCE.findall((REPO / page).read_text())
    assert blocks, f"{page} has no python example any more: drop it from this test"
    keep = lambda line: not any(word in line.split("#")[0] for word in ("cuda", "nvidia-waveglow-ljspeech"))
    return ["\n".join(line for line in block.splitlines() if keep(line)) for block in blocks]


class StandInTTS:
    """A front end that 'speaks' cuts of a real clip's mel: the shapes a TTS model gives."""

    def __init__(self, mel: np.ndarray) -> None:
        self.mel = mel

    def __call__(self, text: str) -> np.ndarray:
        return self.mel[:, : 20 + len(text)]

    def batch(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        mels = [self(t) for t in texts]
        lengths = [m.shape[1] for m in mels]
        padded = np.zeros((len(mels), mels[0].shape[0], max(lengths)), np.float32)
        for i, m in enumerate(mels):
            padded[i, :, : m.shape[1]] = m
        return padded, lengths

    def stream(self, text: str):
        mel = self(text)
        for start in range(0, mel.shape[1], 7):
            yield mel[:, start : start + 7]


@pytest.fixture(scope="module")
def speech_mel(mini_corpus) -> np.ndarray:
    audio = load_wav(mini_corpus / "wavs" / "LJ001-0001.wav")[: 22050 * 2]
    return Vocoder.default().mel(audio)


def test_the_readme_examples_run_and_stream_as_offline(speech_mel, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    played = []
    tts = StandInTTS(speech_mel)
    scope = {"tts_model": tts, "text": "Printing, in the only sense", "texts": ["one", "three", "seven!"]}
    scope |= {"names": ["a", "b", "c"], "play": played.append}
    first, stream, *_ = python_blocks("README.md")
    exec(first, scope)
    lengths, voc = scope["lengths"], scope["voc"]
    for name, frames in zip(scope["names"], lengths, strict=True):  # each clip cut at its own end
        assert sf.info(tmp_path / f"{name}.wav").frames == frames * voc.hop_length
    assert scope["check"].shape == (voc.n_mels, lengths[0])  # frame for frame with the input mel
    exec(stream, scope)
    assert round(float(capsys.readouterr().out)) == 573  # the latency the comment gives
    mel = tts(scope["text"])
    np.testing.assert_allclose(np.concatenate(played), voc(mel), atol=1e-4)  # "same output as voc(mel)"


def test_the_python_api_page_runs_as_written(speech_mel, mini_corpus):
    mel = speech_mel[:, :30]
    wav = load_wav(mini_corpus / "wavs" / "LJ001-0002.wav")[:11025]
    scope = {"mel": mel, "mel_tm": mel.T.copy(), "mel_a": mel, "mel_b": speech_mel[:, :12], "wav": wav}
    scope |= {"padded": np.zeros((2, 80, 90), np.float32) - 11.5, "wav16k": (wav[::2] * 32767).astype(np.int16)}
    (block,) = python_blocks("docs/python-api.md")
    exec(block, scope)
    assert [c.shape for c in scope["clips"]] == [(30 * 256,), (12 * 256,)]
    assert scope["audio"].shape == (2, 90 * 256) and scope["mel"].shape == (80, 30)
    assert (scope["voc"].sample_rate, scope["voc"].hop_length) == (22050, 256)


def test_the_streaming_page_runs_as_written(speech_mel):
    played = []
    voc = Vocoder.default()
    mel = speech_mel[:, :40]
    scope = {"voc": voc, "mel_chunks": [mel[:, i : i + 5] for i in range(0, 40, 5)], "play": played.append}
    (block,) = python_blocks("docs/streaming.md")
    exec(block, scope)
    np.testing.assert_allclose(np.concatenate(played), voc(mel, seed=0), atol=1e-4)
    assert scope["stream"].rtf > 0


def test_the_export_page_runs_as_written(tmp_path, monkeypatch):
    """The ONNX example's inputs (names, shapes, z's 8 channels) are those of a default-group model."""
    import torch
    from conftest import tiny_model

    from waveflow.interop.export import export_onnx

    model = tiny_model(seed=4, n_group=8).eval()
    assert model.cfg.n_group == 8 and model.cfg.hop_length == 256  # the numbers the example hard-codes
    export_onnx(model, tmp_path / "waveglow.onnx")
    mel = np.random.default_rng(0).uniform(-8, -2, (80, 9)).astype(np.float32)
    np.save(tmp_path / "mel.npy", mel)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    (block,) = python_blocks("docs/export.md")
    exec(block, scope)
    assert scope["audio"].shape == (1, 9 * 256)
    with torch.no_grad():
        expected = model.infer(torch.from_numpy(mel)[None], z=torch.from_numpy(scope["z"])).numpy()
    np.testing.assert_allclose(scope["audio"], expected, rtol=0, atol=1e-4)

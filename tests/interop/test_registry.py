"""Models by name: the bundled one, and a remote NVIDIA checkpoint fetched from a loopback HTTP
server (127.0.0.1 only, shut down after each test): converted and cached, resumed after a cut,
refused on a checksum mismatch or a pickle that would run code; never a folder that loads
before the whole file is checked and converted."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from waveflow.config import make_config
from waveflow.infer.vocoder import Vocoder
from waveflow.interop import registry
from waveflow.interop.nvidia import nvidia_config, to_nvidia_state_dict

NAME = "nvidia-test-waveglow"


class Server:
    """Serves ``files`` (name -> bytes) with HTTP Range; ``cut`` (name -> bytes) makes the next
    full response stop after that many bytes, as a dropped connection would."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                body, start = server.files[name], 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                stop = len(body)
                if name in server.cut:
                    stop = start + server.cut.pop(name)
                self.wfile.write(body[start:stop])
                if stop < len(body):
                    self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 10
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WAVEFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "KNOWN", dict(registry.KNOWN))  # registrations stay in the test
    return tmp_path / "cache"


def nvidia_release(tmp_path: Path) -> tuple[bytes, torch.nn.Module]:
    """A small checkpoint in NVIDIA's state-dict release layout, and the model it holds."""
    model = tiny_model(seed=6)
    path = tmp_path / "release.pt"
    torch.save({"state_dict": to_nvidia_state_dict(model), "config": nvidia_config(make_config("tiny"))}, path)
    return path.read_bytes(), path


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("WAVEFLOW_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.cache_dir() == tmp_path / "xdg" / "waveflow"
    monkeypatch.setenv("WAVEFLOW_CACHE", str(tmp_path / "mine"))
    assert registry.cache_dir() == tmp_path / "mine"


def test_the_bundled_model_by_name():
    mel = torch.randn(80, 12, generator=torch.Generator().manual_seed(0)) - 5
    torch.testing.assert_close(
        Vocoder.from_pretrained("ljspeech-mini", progress=False)(mel), Vocoder.default()(mel), rtol=0, atol=0
    )


def test_a_remote_model_is_downloaded_converted_and_cached(tmp_path, server, cache):
    body, path = nvidia_release(tmp_path)
    server.files["release.pt"] = body
    registry.register(NAME, server.url("release.pt"), sha256=hashlib.sha256(body).hexdigest())
    mel = torch.randn(80, 7, generator=torch.Generator().manual_seed(0)) - 4.0
    voc = Vocoder.from_pretrained(NAME, progress=False)
    torch.testing.assert_close(voc(mel, seed=3), Vocoder.from_nvidia(path)(mel, seed=3), rtol=1e-5, atol=1e-6)
    assert voc.denoise_mode == "nvidia"  # NVIDIA's bias rule follows the weights
    folder = registry.cached(NAME)
    assert folder == cache / "models" / NAME and (folder / "model.safetensors").is_file()
    assert not list((cache / "downloads").iterdir())  # the raw pickle is not kept
    Vocoder.from_pretrained(NAME)
    assert len(server.requests) == 1  # the second load reads the cache
    listed = subprocess.run(
        [sys.executable, "-m", "waveflow", "pretrained"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WAVEFLOW_CACHE": str(cache)},
    )
    assert "ljspeech-mini" in listed.stdout and "nvidia-waveglow-ljspeech" in listed.stdout, listed
    assert re.search(rf"^{NAME} +cached in {re.escape(str(folder))}", listed.stdout, re.M), listed.stdout


def test_a_cut_download_leaves_nothing_that_loads_and_resumes(tmp_path, server, cache):
    body, _ = nvidia_release(tmp_path)
    server.files["release.pt"] = body
    server.cut["release.pt"] = len(body) // 3
    registry.register(NAME, server.url("release.pt"), sha256=hashlib.sha256(body).hexdigest())
    with pytest.raises(registry.ModelDownloadError, match=r"interrupted.*run again to resume"):
        Vocoder.from_pretrained(NAME, progress=False)
    assert registry.cached(NAME) is None and not (cache / "models" / NAME).exists()
    partial = cache / "downloads" / "release.pt.partial"
    assert partial.stat().st_size == len(body) // 3
    Vocoder.from_pretrained(NAME, progress=False)
    assert server.requests[-1] == ("release.pt", f"bytes={len(body) // 3}-")  # resumed, not restarted
    assert registry.cached(NAME) is not None and not partial.exists()


def test_a_checksum_mismatch_is_refused(tmp_path, server, cache):
    body, _ = nvidia_release(tmp_path)
    server.files["release.pt"] = body
    registry.register(NAME, server.url("release.pt"), sha256="0" * 64)
    with pytest.raises(registry.ModelDownloadError, match=r"checksum mismatch.*deleted"):
        Vocoder.from_pretrained(NAME, progress=False)
    assert registry.cached(NAME) is None and not list((cache / "downloads").iterdir())


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, server, cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Exploit(), "iteration": 1}, evil)
    server.files["evil.pt"] = evil.read_bytes()
    registry.register(NAME, server.url("evil.pt"))
    refused = r"refused and deleted.*refusing to unpickle (posix|os)\.system"
    with pytest.raises(registry.ModelDownloadError, match=refused):
        Vocoder.from_pretrained(NAME, progress=False)
    assert not (tmp_path / "pwned_marker").exists()
    assert registry.cached(NAME) is None and not list((cache / "downloads").iterdir())
    assert not (cache / "models").exists() or not list((cache / "models").iterdir())  # no temp folder either


def test_an_unknown_name_or_a_dead_server_is_one_clear_error(server, cache):
    registry.register(NAME, server.url("missing.pt"))
    with pytest.raises(registry.ModelDownloadError, match="HTTP 404"):
        Vocoder.from_pretrained(NAME, progress=False)
    with pytest.raises(ValueError, match="not a pretrained folder"):
        Vocoder.from_pretrained("no-such-model")

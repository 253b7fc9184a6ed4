"""Models by name: ``Vocoder.from_pretrained("ljspeech-mini")``, ``"nvidia-waveglow-ljspeech"``.

``ljspeech-mini`` is the bundled model (in the package, nothing to fetch). A remote model is
downloaded on first use into the cache (``$WAVEFLOW_CACHE``, else ``$XDG_CACHE_HOME/waveflow``,
else ``~/.cache/waveflow``), then converted and kept there as a pretrained folder
(``waveflow.interop.pretrained``), so later loads read safetensors only:

- the download goes to ``downloads/FILE.partial`` with a progress bar; an interrupted one is
  resumed where it stopped (HTTP Range) by the next call;
- the whole file's SHA-256 is checked against the publisher's where one is given (a mismatch
  deletes the file and says so); where none is given, the digest is recorded in the model
  card (``card.json``) so that it can be compared with what others fetched;
- NVIDIA's pickles are read by ``waveflow.interop.nvidia``'s restricted unpickler: nothing from the
  file is executed, and a file that asks for anything else is refused and deleted;
- the folder is written beside its final name and renamed: a killed process leaves a
  ``.partial`` download or a hidden temp folder, never a folder that loads.

``register`` adds a name or points a known one at a mirror (an in-house copy, a test server).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("waveflow")

BUNDLED = "ljspeech-mini"
CHUNK = 1 << 20
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RemoteModel:
    """A model published as one file: ``kind`` "nvidia" (an NVIDIA WaveGlow checkpoint, pickled
    module or state dict) or "waveflow" (a waveflow checkpoint)."""

    name: str
    url: str
    description: str
    sha256: str | None = None  # of the whole file, where the publisher gives one
    kind: str = "nvidia"

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1] or f"{self.name}.pt"


KNOWN: dict[str, RemoteModel] = {
    "nvidia-waveglow-ljspeech": RemoteModel(
        name="nvidia-waveglow-ljspeech",
        # NVIDIA's NGC catalog entry nvidia:waveglow_ljs_256channels, version 3 (the WaveGlow
        # that NVIDIA's Tacotron 2 repository points to). NGC publishes no checksum for it.
        url="https://api.ngc.nvidia.com/v2/models/nvidia/waveglow_ljs_256channels/versions/3/files/"
        "waveglow_256channels_ljs_v3.pt",
        description="NVIDIA's published WaveGlow, 256 channels, trained on LJSpeech (NGC, version 3)",
    ),
}


class ModelDownloadError(ValueError):
    """A named model could not be fetched, checked or converted; the message says which and why."""


def cache_dir() -> Path:
    """Where downloaded models live: ``$WAVEFLOW_CACHE``, ``$XDG_CACHE_HOME/waveflow`` or ``~/.cache/waveflow``."""
    if os.environ.get("WAVEFLOW_CACHE"):
        return Path(os.environ["WAVEFLOW_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "waveflow"


def register(name: str, url: str, sha256: str | None = None, kind: str = "nvidia", description: str = "") -> None:
    """Make ``name`` loadable by ``Vocoder.from_pretrained(name)``; a known name is pointed at
    ``url`` (a mirror), keeping its description unless one is given."""
    if kind not in ("nvidia", "waveflow"):
        raise ValueError(f"kind {kind!r}: expected 'nvidia' or 'waveflow'")
    old = KNOWN.get(name)
    description = description or (old.description if old else url)
    KNOWN[name] = RemoteModel(name, url, description, sha256.lower() if sha256 else None, kind)


def is_name(text: str) -> bool:
    return text == BUNDLED or text in KNOWN


def model_folder(name: str) -> Path:
    return cache_dir() / "models" / name


def cached(name: str) -> Path | None:
    """The pretrained folder of ``name`` when it is in the cache (complete), else None."""
    folder = model_folder(name)
    return folder if (folder / "config.yaml").is_file() and (folder / "model.safetensors").is_file() else None


def fetch(name: str, progress: bool = True) -> Path:
    """The pretrained folder of a remote model, downloading and converting it on first use."""
    if name not in KNOWN:
        raise ModelDownloadError(f"{name}: not a known model name (known: {', '.join(known_names())})")
    folder = cached(name)
    if folder is not None:
        return folder
    entry = KNOWN[name]
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    path = downloads / entry.filename
    digest = download(entry.url, path, entry.sha256, progress=progress, what=name)
    try:
        return _convert(entry, path, digest)
    finally:
        path.unlink(missing_ok=True)  # converted or refused: the raw file is not kept


def download(url: str, path: Path, sha256: str | None = None, progress: bool = True, what: str = "") -> str:
    """Fetch ``url`` to ``path`` through ``path.partial``, resuming a partial file (HTTP Range);
    returns the file's SHA-256. A checksum mismatch deletes the file and raises."""
    from tqdm import tqdm

    partial = path.with_name(path.name + ".partial")
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already whole
            response = None
        else:
            raise ModelDownloadError(f"{what or url}: download failed: HTTP {exc.code} {exc.reason} ({url})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelDownloadError(f"{what or url}: download failed: {reason} ({url})") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            if have and not resumed:
                log.info("%s: the server does not resume downloads; starting again", what or url)
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            bar = tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"downloading {what or path.name}",
                disable=not progress,
                file=sys.stderr,
            )
            try:
                with open(partial, "ab" if resumed else "wb") as handle:
                    while chunk := response.read(CHUNK):
                        handle.write(chunk)
                        bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:  # a cut connection, a reset, a short read
                raise ModelDownloadError(
                    f"{what or url}: download interrupted ({exc}); run again to resume from "
                    f"{partial.stat().st_size} bytes"
                ) from None
            finally:
                bar.close()
            if total is not None and partial.stat().st_size < total:
                raise ModelDownloadError(
                    f"{what or url}: download interrupted at {partial.stat().st_size} of {total} bytes; run again to "
                    "resume"
                )
    digest = _sha256(partial)
    if sha256 is not None and digest != sha256.lower():
        partial.unlink()
        raise ModelDownloadError(
            f"{what or url}: checksum mismatch (SHA-256 {digest}, the publisher's is {sha256}); the download was "
            "deleted"
        )
    os.replace(partial, path)
    return digest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _convert(entry: RemoteModel, path: Path, digest: str) -> Path:
    """The downloaded file -> ``models/NAME`` (config.yaml, model.safetensors, card.json), atomically."""
    from waveflow.config import config_from_dict
    from waveflow.interop.pretrained import save_pretrained
    from waveflow.nn.checkpoint import CheckpointError, make_checkpoint, read_checkpoint

    try:
        if entry.kind == "nvidia":
            from waveflow.interop.nvidia import load_nvidia

            model, cfg = load_nvidia(path)
            data = make_checkpoint(model, cfg, source=f"nvidia:{entry.filename}")
        else:
            data = read_checkpoint(path)
            config_from_dict(data["config"])
    except (CheckpointError, ValueError) as exc:
        raise ModelDownloadError(f"{entry.name}: the downloaded file was refused and deleted: {exc}") from None
    data["card"] = {"name": entry.name, "description": entry.description, "url": entry.url, "sha256": digest}
    folder = model_folder(entry.name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=folder.parent))
    try:
        import torch

        torch.save(data, work / "checkpoint.pt")
        save_pretrained(work / "checkpoint.pt", work / "model")
        if folder.exists():  # an incomplete folder from elsewhere: cached() found no model in it
            shutil.rmtree(folder)
        (work / "model").rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("%s: converted and cached in %s", entry.name, folder)
    return folder


def known_names() -> list[str]:
    return [BUNDLED, *KNOWN]


def listing() -> list[dict[str, str]]:
    """One row per known model and per other folder in the cache: name, where it is, what it is."""
    rows = [{"name": BUNDLED, "status": "bundled", "description": "the bundled model (LJSpeech, 30 clips, 11 MB)"}]
    for name, entry in KNOWN.items():
        folder = cached(name)
        rows.append(
            {
                "name": name,
                "status": f"cached in {folder}" if folder else "downloaded on first use",
                "description": entry.description,
            }
        )
    models = cache_dir() / "models"
    if models.is_dir():
        for folder in sorted(models.iterdir()):
            if folder.name not in KNOWN and not folder.name.startswith(".") and cached(folder.name):
                card = folder / "card.json"
                about = json.loads(card.read_text()).get("card", {}) if card.is_file() else {}
                rows.append(
                    {
                        "name": folder.name,
                        "status": f"cached in {folder}",
                        "description": about.get("description", "not a known name"),
                    }
                )
    return rows


def run(args) -> None:
    """``waveflow pretrained``: the known models and what is in the cache."""
    rows = listing()
    width = max(len(r["name"]) for r in rows)
    for row in rows:
        print(f"{row['name']:<{width}}  {row['status']}: {row['description']}")
    print(f"cache: {cache_dir()} (WAVEFLOW_CACHE, else XDG_CACHE_HOME/waveflow, else ~/.cache/waveflow)")

"""Atomic file writes: a temp file beside the target, then a rename over it.

A crash or an error mid-write leaves the target as it was (absent, or the old file), never
half written. The file gets the usual permissions (0666 less the umask), not the private
0600 that temp files are created with.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_open(p) as f: f.write(...)``: ``p`` appears, complete, only on success."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"{path}: folder {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        full = _disk_error(exc)
        if full is not None:
            raise WriteError(
                full.errno, f"{path}: cannot write ({full.strerror}); the previous file, if any, is intact"
            ) from None
        raise


class WriteError(OSError):
    """A file could not be written for lack of space or a read-only disk; nothing was changed."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _disk_error(exc: BaseException) -> OSError | None:
    """The out-of-space (or read-only) OSError behind ``exc``, if any: writers such as
    torch.save's zip writer re-raise it as another exception type."""
    seen = set()
    while exc is not None and id(exc) not in seen and not isinstance(exc, WriteError):
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None

"""One process at a time per run folder: ``RUN/train.lock`` holds the owner's pid under an
exclusive ``flock``.

The kernel drops a ``flock`` when its holder exits, however it exits (kill -9 included), so a
lock file left behind by a dead run is stale by construction: the next run takes it over and
says so. A live holder makes any second ``waveflow train`` on the folder (fresh, ``--force``
or ``--resume``) stop in one line naming the pid, before anything in the folder is touched.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger("waveflow")

LOCK_FILE = "train.lock"


class RunFolderBusy(ValueError):
    """Another live process owns the run folder."""


class RunLock:
    """``with RunLock(folder):`` the folder is this process's until the block ends."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.fd: int | None = None
        self.stale_pid: int | None = None  # the pid a stale lock named, if one was taken over
        self.created = False  # the folder did not exist: removed again if nothing else was written

    def acquire(self) -> RunLock:
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                owner = _read_pid(self.path)
                raise RunFolderBusy(
                    f"{self.folder}: the run folder is in use by process {owner if owner else '(unknown pid)'} "
                    f"(lock {self.path}); wait for it to stop, or stop it first"
                ) from None
            # The holder before us may have removed the file between our open and our flock:
            # then we hold a lock on a file nobody else will see; start again on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.stale_pid = _read_pid(self.path)
        if self.stale_pid == os.getpid():
            self.stale_pid = None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd
        if self.stale_pid:
            log.info(f"{self.path}: took over a stale lock of process {self.stale_pid}, which is no longer running")
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: a waiting run re-checks the inode
        finally:
            os.close(self.fd)  # drops the flock
            self.fd = None
        if self.created:
            try:
                self.folder.rmdir()  # a run that failed before writing anything leaves no folder
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text()[:32].strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None

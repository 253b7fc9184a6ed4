"""Atomic writes: all or nothing, with ordinary permissions."""

from __future__ import annotations

import os

import pytest

from waveflow.atomic import atomic_open


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write(b"new but incomplete")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_written_file_gets_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "a.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    with pytest.raises(FileNotFoundError, match="does not exist"), atomic_open(tmp_path / "no" / "b.txt"):
        pass


def test_the_data_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    """fsync of the temp file's descriptor, with everything written, before os.replace puts it
    in place: otherwise a crash after the rename can leave an empty or partial file."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_size, os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_size, os.stat(src).st_ino))
        assert target.read_bytes() == b"old"  # the target is untouched until the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic_open(target) as handle:
        handle.write(b"new contents")
    assert [e[0] for e in events] == ["fsync", "replace"]
    (_, synced_size, synced_file), (_, _, renamed_file) = events
    assert synced_size == len(b"new contents") and synced_file == renamed_file
    assert target.read_bytes() == b"new contents"


def test_a_write_that_fails_at_the_disk_keeps_the_old_file(tmp_path, monkeypatch):
    """An out-of-space error at fsync (after every byte was handed over) is one WriteError;
    the old file and nothing else is left."""
    import errno

    from waveflow.atomic import WriteError

    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match="No space left on device"), atomic_open(target) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]

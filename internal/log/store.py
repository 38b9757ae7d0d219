"""Store: the append-only file of framed records of one segment.

A store knows nothing about offsets; it appends already-framed bytes (one ``pwrite`` per
batch) and reads byte ranges back (one ``pread`` per range). Framing lives in
:mod:`raftlog.log.framing`, offsets in :mod:`raftlog.log.index`.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from raftlog.log.errors import LogClosedError


class Store:
    """One store file, opened read-write; ``size`` is the length of its valid bytes.

    ``synced_size`` is the length the last completed fsync covered (the log updates it):
    what survives a power loss. Truncation lowers it, so it never claims cut bytes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        self.size = os.fstat(self._fd).st_size
        self.synced_size = 0
        #: the smallest size a truncation left since the running fsync was prepared: that
        #: fsync vouches for no byte at or past it.
        self.cut_floor = self.size

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        if self._fd < 0:
            raise LogClosedError(f"store {self.path} is closed")
        return self._fd

    def append(self, data: bytes | memoryview) -> int:
        """Write ``data`` at the end of the store in one ``pwrite``; return its position."""
        fd = self.fileno()
        pos = self.size
        view = memoryview(data)
        try:
            written = os.pwrite(fd, view, pos)
            while written < len(view):  # short writes happen on a full disk or a signal
                written += os.pwrite(fd, view[written:], pos + written)
        except OSError:
            # Leave no partial frame behind for a later append to land after.
            try:
                os.ftruncate(fd, pos)
            except OSError:
                pass
            raise
        self.size = pos + len(view)
        return pos

    def read(self, pos: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``pos`` (fewer only at the end of the file)."""
        fd = self.fileno()
        data = os.pread(fd, length, pos)
        if len(data) == length or not data:
            return data
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(fd, length - got, pos + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def map_readonly(self) -> mmap.mmap | bytes:
        """The whole file, mapped read-only (for recovery's checks); close it after use."""
        if self.size == 0:
            return b""
        return mmap.mmap(self.fileno(), self.size, access=mmap.ACCESS_READ)

    def truncate(self, size: int) -> None:
        """Cut the file to ``size`` bytes."""
        os.ftruncate(self.fileno(), size)
        self.size = size
        self.synced_size = min(self.synced_size, size)
        self.cut_floor = min(self.cut_floor, size)

    def sync(self) -> None:
        """fsync in the calling thread (blocking; the log calls it from a worker thread)."""
        os.fdatasync(self.fileno())
        self.synced_size = self.size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

"""Snapshot stream of a whole log, and restoring a log from one.

::

    stream = | magic "RLOGSNP1" | lowest offset: u64 LE | frame bytes: u64 LE | frames... |

The frames are the stores' bytes, oldest segment first, exactly as on disk: a reader is a
sequence of ``pread`` calls, and restoring verifies every frame's checksum before it is
appended again.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from raftlog.log.config import FRAME_HEADER_BYTES, LogConfig, SyncPolicy
from raftlog.log.errors import LogError, SnapshotFormatError
from raftlog.log.framing import CHECK_MASK, crc

if TYPE_CHECKING:
    from raftlog.log.log import Log

MAGIC = b"RLOGSNP1"
_PREAMBLE = struct.Struct("<8sQQ")
_HEADER = struct.Struct("<II")
#: Default chunk size of :meth:`LogReader.chunks` (bytes).
CHUNK_BYTES = 1 << 20
#: Bytes of records restore appends at a time.
_RESTORE_BATCH_BYTES = 4 << 20


class LogReader(io.RawIOBase):
    """Read-only byte stream over the log as it was when the reader was made.

    The store files are opened at creation, so segments removed by retention meanwhile
    stay readable. Truncating the suffix while reading is not supported (a snapshot is of
    committed records, which Raft never truncates). Close it (or use ``with``).
    """

    def __init__(
        self,
        lowest_offset: int,
        stores: list[tuple[Path, int]],
        starts: list[int] | None = None,
    ) -> None:
        super().__init__()
        # ``starts``: where each store's bytes begin (a range reader starts inside the first
        # store); ``size`` is then the number of bytes read from that position.
        begin = starts if starts is not None else [0] * len(stores)
        total = sum(size for _, size in stores)
        self._preamble = _PREAMBLE.pack(MAGIC, lowest_offset, total)
        self._files: list[tuple[int, int, int]] = []
        try:
            for (path, size), start in zip(stores, begin, strict=True):
                self._files.append((os.open(path, os.O_RDONLY), start, size))
        except OSError:
            self._close_fds()
            raise
        self.lowest_offset = lowest_offset
        self.frame_bytes = total
        self._pos = 0  # position in the logical stream
        self._length = len(self._preamble) + total

    def readable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._length

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("read from a closed LogReader")
        out = memoryview(buffer).cast("B")
        written = 0
        while written < len(out) and self._pos < self._length:
            pos = self._pos
            if pos < len(self._preamble):
                piece = self._preamble[pos : pos + len(out) - written]
            else:
                piece = self._read_stores(pos - len(self._preamble), len(out) - written)
            out[written : written + len(piece)] = piece
            written += len(piece)
            self._pos += len(piece)
        return written

    def _read_stores(self, at: int, want: int) -> bytes:
        for fd, start, size in self._files:
            if at < size:
                data = os.pread(fd, min(want, size - at), start + at)
                if not data:
                    raise LogError("a store file shrank while a snapshot was being read")
                return data
            at -= size
        return b""

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The stream as consecutive chunks of at most ``size`` bytes."""
        while True:
            chunk = self.read(size)
            if not chunk:
                return
            yield chunk

    def _close_fds(self) -> None:
        for fd, _, _ in self._files:
            os.close(fd)
        self._files = []

    def close(self) -> None:
        if not self.closed:
            self._close_fds()
        super().close()


def _iter_source(source: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if read is not None:
        while True:
            chunk = read(CHUNK_BYTES)
            if not chunk:
                return
            yield bytes(chunk)
    else:
        for chunk in source:
            yield bytes(chunk)


def restore_log(
    cls: type[Log], directory: Path, source: BinaryIO | Iterable[bytes], config: LogConfig
) -> Log:
    """See :meth:`raftlog.log.log.Log.restore`."""
    if directory.exists() and any(directory.iterdir()):
        raise LogError(f"restore needs an empty directory, {directory} is not")
    chunks = _iter_source(source)
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        if len(buf) >= _PREAMBLE.size:
            break
    if len(buf) < _PREAMBLE.size:
        raise SnapshotFormatError("snapshot stream ends inside its preamble")
    magic, lowest, total = _PREAMBLE.unpack_from(buf)
    if magic != MAGIC:
        raise SnapshotFormatError(f"not a raftlog snapshot (magic {magic!r})")
    del buf[: _PREAMBLE.size]
    log = cls.open(directory, replace(config, initial_offset=lowest))
    try:
        _append_frames(log, buf, chunks, total)
        if config.sync is not SyncPolicy.NEVER:
            log.sync_blocking()
    except BaseException:
        log.remove()
        raise
    return log


def append_stream(
    log: Log,
    source: BinaryIO | Iterable[bytes],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Append the records of a :meth:`Log.range_reader` stream (or a whole-log one) to
    ``log``, which must continue exactly where the stream starts. Every frame's checksum is
    verified before its batch is appended; memory stays bounded (a few MiB of records at a
    time). ``progress(records, frame_bytes)`` is called after every appended batch.
    Returns (first offset, records appended). Nothing is fsynced here."""
    chunks = _iter_source(source)
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        if len(buf) >= _PREAMBLE.size:
            break
    if len(buf) < _PREAMBLE.size:
        raise SnapshotFormatError("record stream ends inside its preamble")
    magic, lowest, total = _PREAMBLE.unpack_from(buf)
    if magic != MAGIC:
        raise SnapshotFormatError(f"not a raftlog record stream (magic {magic!r})")
    if lowest != log.next_offset:
        raise LogError(
            f"record stream starts at offset {lowest}, the log continues at {log.next_offset}"
        )
    del buf[: _PREAMBLE.size]
    first = log.next_offset
    _append_frames(log, buf, chunks, total, progress)
    return first, log.next_offset - first


def _append_frames(
    log: Log,
    buf: bytearray,
    chunks: Iterator[bytes],
    total: int,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Parse, verify and append the frames of a stream after its preamble."""
    consumed = 0
    pending: list[bytes] = []
    pending_bytes = 0
    records = 0
    exhausted = False
    while True:
        pos = 0
        view = memoryview(buf)
        while pos + FRAME_HEADER_BYTES <= len(buf):
            length, check = _HEADER.unpack_from(buf, pos)
            end = pos + FRAME_HEADER_BYTES + length
            if end > len(buf):
                break
            payload = bytes(view[pos + FRAME_HEADER_BYTES : end])
            if crc(payload) ^ CHECK_MASK != check:
                raise SnapshotFormatError(
                    f"checksum mismatch in the snapshot's record {log.next_offset + len(pending)}"
                )
            pending.append(payload)
            pending_bytes += length
            pos = end
        view.release()
        consumed += pos
        del buf[:pos]
        if pending and (pending_bytes >= _RESTORE_BATCH_BYTES or exhausted):
            log.append_batch_nosync(pending)
            records += len(pending)
            pending, pending_bytes = [], 0
            if progress is not None:
                progress(records, consumed)
        if exhausted:
            break
        more = next(chunks, None)
        if more is None:
            exhausted = True
        else:
            buf += more
    if buf or consumed != total:
        raise SnapshotFormatError(
            f"snapshot stream is cut short or has trailing bytes: {consumed} of {total} "
            f"frame bytes parsed, {len(buf)} bytes left over"
        )

"""Index: relative offset -> store position, fixed-width entries in a memory-mapped file.

::

    entry = | relative offset: u32 LE | position: u32 LE |     (8 bytes, packed)

The file of the active segment is preallocated (sparse) to ``max_index_bytes`` and mapped
with :class:`numpy.memmap`; a batch of positions is one vectorised slice assignment. On a
clean close (or when the segment is sealed) the file is cut to ``count * 8`` bytes.
(Format before issue 12: 12-byte entries with a u64 position; such an index no longer
matches its store, so recovery rebuilds it from the store once.)

The number of entries is never read from the file's size: a crash leaves the preallocated
size behind, full of zeros. Recovery (:mod:`raftlog.log.segment`) accepts an entry only if
its relative offset equals its slot number and its position is the start of the next valid
frame in the store, so zeros and stale entries are never taken for records.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from raftlog.log.config import INDEX_ENTRY_BYTES

ENTRY_DTYPE = np.dtype([("rel", "<u4"), ("pos", "<u4")])
assert ENTRY_DTYPE.itemsize == INDEX_ENTRY_BYTES

EntryArray = np.ndarray[Any, np.dtype[np.void]]

_ENTRY = struct.Struct("<II")
_POS = struct.Struct("<I")
#: The index file's blocks are allocated ahead of the entries written into them, this many
#: bytes at a time (a multiple of the entry size and of the page size).
BACKING_STEP = INDEX_ENTRY_BYTES * 4096 * 4


class Index:
    """One index file. ``count`` is the number of valid entries (set by recovery)."""

    def __init__(self, path: Path, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        self.count = 0
        #: Bytes at the start of the file whose blocks are allocated (written, see prepare).
        self._backed = 0
        if not path.exists():
            path.touch(mode=0o644)
        self._entries: EntryArray = np.zeros(0, dtype=ENTRY_DTYPE)
        self._map(path.stat().st_size // INDEX_ENTRY_BYTES)

    def _map(self, slots: int) -> None:
        # Drop the old mapping first (both views of it).
        old = getattr(self, "_bytes", None)
        if old is not None:
            old.release()
        self._entries = np.zeros(0, dtype=ENTRY_DTYPE)
        self._bytes = memoryview(b"")
        if slots > 0:
            mapped = np.memmap(self.path, dtype=ENTRY_DTYPE, mode="r+", shape=(slots,))
            # A base-class view of the same pages: slicing a np.memmap runs Python-level
            # __array_finalize__ code on every access, a plain ndarray view does not.
            self._entries = mapped.view(np.ndarray)
            # The same mapping as bytes, for struct access to single entries (a numpy
            # scalar lookup costs ~10x a struct unpack on the hot read path).
            self._bytes = memoryview(cast(Any, self._entries.view(np.uint8)))

    @property
    def slots(self) -> int:
        """Entries the current mapping has room for (capacity when active)."""
        return len(self._entries)

    @property
    def room(self) -> int:
        return self.capacity - self.count

    def raw(self) -> EntryArray:
        """Every mapped slot, valid or not (recovery validates them against the store)."""
        return self._entries

    def reserve(self) -> None:
        """Grow the file (sparse) to full capacity and map it, ready for appends."""
        if self.slots < self.capacity:
            os.truncate(self.path, self.capacity * INDEX_ENTRY_BYTES)
            self._map(self.capacity)

    def prepare(self, k: int) -> None:
        """Make room for ``k`` more entries before anything is written: the file is sparse,
        and a store to a mapped page that the file system cannot allocate (a full disk) is
        a SIGBUS that kills the process. So the blocks are allocated first, by writing zeros
        (``BACKING_STEP`` bytes at a time), which fails with ``OSError(ENOSPC)`` instead."""
        end = (self.count + k) * INDEX_ENTRY_BYTES
        if end <= self._backed:
            return
        limit = max(self.capacity * INDEX_ENTRY_BYTES, end)
        target = min(limit, max(end, self._backed + BACKING_STEP))
        # Zeros past the valid entries, written rather than fallocated: a first store to
        # a mapped page of an fallocated (unwritten) extent cost ~3x more (1000 entries:
        # 13 us against 7.5 us here, more beside large store writes).
        start = min(max(self._backed, self.count * INDEX_ENTRY_BYTES), target)
        fd = os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        try:
            zeros = bytes(target - start)
            done = 0
            while done < len(zeros):  # a full disk raises OSError(ENOSPC) here
                done += os.pwrite(fd, memoryview(zeros)[done:], start + done)
        finally:
            os.close(fd)
        self._backed = target

    def shrink(self) -> None:
        """Cut the file to its real size (``count`` entries): a sealed or closed index."""
        self._map(0)
        os.truncate(self.path, self.count * INDEX_ENTRY_BYTES)
        self._backed = min(self._backed, self.count * INDEX_ENTRY_BYTES)
        self._map(self.count)

    def append(self, positions: npt.NDArray[np.uint64]) -> None:
        """Add one entry per position, for the next ``len(positions)`` relative offsets."""
        k = len(positions)
        start = self.count
        self.prepare(k)
        if start + k > self.slots:
            self.reserve()
        # field by field into the mapping: a temporary block copied in took 3x longer
        block = self._entries[start : start + k]
        block["rel"] = np.arange(start, start + k, dtype=np.uint32)
        block["pos"] = positions
        self.count = start + k

    def append_small(self, positions: list[int]) -> None:
        """:meth:`append` for a few entries, one ``struct.pack_into`` each."""
        start = self.count
        self.prepare(len(positions))
        if start + len(positions) > self.slots:
            self.reserve()
        buf = self._bytes
        for i, pos in enumerate(positions, start):
            _ENTRY.pack_into(buf, i * INDEX_ENTRY_BYTES, i, pos)
        self.count = start + len(positions)

    def write_all(self, positions: npt.NDArray[np.uint64]) -> None:
        """Replace the whole index with ``positions`` (a rebuild) and clear stale slots."""
        if len(positions) > self.slots:
            os.truncate(self.path, len(positions) * INDEX_ENTRY_BYTES)
            self._map(len(positions))
        self.count = 0
        self.append(positions)
        self._entries[self.count :] = np.zeros(1, dtype=ENTRY_DTYPE)

    def position(self, rel: int) -> int:
        pos: int = _POS.unpack_from(self._bytes, rel * INDEX_ENTRY_BYTES + 4)[0]
        return pos

    def positions(self, start: int, stop: int) -> npt.NDArray[np.uint64]:
        """Positions of relative offsets ``start..stop-1`` (a copy)."""
        return np.array(self._entries["pos"][start:stop], dtype=np.uint64)

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` entries; zero the rest so they cannot be misread."""
        stop = min(self.count, self.slots)
        if count < stop:
            self._entries[count:stop] = np.zeros(1, dtype=ENTRY_DTYPE)
        self.count = count

    def close(self) -> None:
        """Cut the file to its real size and unmap it."""
        self.shrink()
        self._map(0)

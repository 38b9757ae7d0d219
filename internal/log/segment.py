"""Segment: one store plus one index, holding the records ``base_offset..next_offset-1``.

Files are named by base offset, zero-padded so that names sort like numbers:
``00000000000000000000.store`` and ``00000000000000000000.index``.

Recovery (:meth:`Segment.recover`) trusts the store, never the index:

1. The index is checked against the store in one vectorised pass: entry ``i`` is accepted
   only if its relative offset is ``i`` and its position is where frame ``i-1`` ends (0 for
   the first), with a full frame inside the file. This keeps the longest valid prefix.
2. Checksums are verified over the whole active segment, and over the last records of a
   sealed one (``TAIL_VERIFY_RECORDS``); damage in the middle of a sealed segment is caught
   by the checksum check on every read instead.
3. Frames after the indexed prefix are parsed one by one until the first partial frame or
   checksum mismatch; everything from there to the end of the file is cut and logged.
4. If the index disagreed with the result (missing, short, longer, inconsistent), it is
   rewritten from the store.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from raftlog.log.config import FRAME_HEADER_BYTES, LogConfig
from raftlog.log.errors import CorruptRecordError
from raftlog.log.framing import (
    CHECK_MASK,
    bad_checksums,
    bad_payload_checksums,
    crc,
    parse_headers,
    slices,
)
from raftlog.log.index import EntryArray, Index
from raftlog.log.store import Store

logger = logging.getLogger("raftlog.log")

STORE_SUFFIX = ".store"
INDEX_SUFFIX = ".index"
#: Records at the end of a sealed segment whose checksums recovery verifies.
TAIL_VERIFY_RECORDS = 1024

_HEADER = struct.Struct("<II")


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


@dataclass
class RecoveryReport:
    """What recovery found in one segment (for logs and tests)."""

    base_offset: int
    records: int = 0
    cut_bytes: int = 0
    cut_at: int = 0
    cut_reason: str = ""
    index_rebuilt: bool = False
    #: Opened below a recovery point without verification.
    trusted: bool = False
    notes: list[str] = field(default_factory=list)


class Segment:
    """A store and its index. Not thread-safe: the owning :class:`Log` serialises calls."""

    def __init__(self, directory: Path, base_offset: int, config: LogConfig) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.config = config
        name = segment_name(base_offset)
        self.store = Store(directory / (name + STORE_SUFFIX))
        self.index = Index(directory / (name + INDEX_SUFFIX), config.max_index_entries)
        self.sealed = False

    # -- state ---------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self.index.count

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.index.count

    @property
    def is_maxed(self) -> bool:
        """True once the store reached ``max_store_bytes`` or the index is full."""
        return self.store.size >= self.config.max_store_bytes or self.index.room <= 0

    @property
    def closed(self) -> bool:
        return self.store.closed

    def __repr__(self) -> str:
        return f"Segment(base={self.base_offset}, count={self.count}, bytes={self.store.size})"

    # -- writes --------------------------------------------------------------------------

    def fit(self, frame_ends: npt.NDArray[np.uint64], consumed: int, first: int) -> int:
        """How many frames, starting at ``first`` of a batch, this segment can take.

        ``frame_ends`` is the cumulative frame size of the whole batch, ``consumed`` the
        bytes of the batch already written elsewhere. An empty segment always takes one.
        """
        room_bytes = self.config.max_store_bytes - self.store.size
        fit = int(np.searchsorted(frame_ends, consumed + room_bytes, side="right")) - first
        if self.count == 0:
            fit = max(fit, 1)
        return max(0, min(fit, self.index.room, len(frame_ends) - first))

    def append_encoded(self, data: bytes | memoryview, frame_sizes: npt.NDArray[np.uint64]) -> int:
        """Append already-framed records (one write, one index slice); return first offset."""
        first = self.next_offset
        self.index.prepare(len(frame_sizes))  # a full disk fails here, before any write
        pos = self.store.append(data)
        positions = np.empty(len(frame_sizes), dtype=np.uint64)
        positions[0] = pos
        np.cumsum(frame_sizes[:-1], out=positions[1:])
        positions[1:] += np.uint64(pos)
        self.index.append(positions)
        return first

    def append_small(self, data: bytes, frame_sizes: list[int]) -> int:
        """:meth:`append_encoded` for a few records (plain ints, no numpy)."""
        first = self.next_offset
        self.index.prepare(len(frame_sizes))  # a full disk fails here, before any write
        pos = self.store.append(data)
        positions = []
        for size in frame_sizes:
            positions.append(pos)
            pos += size
        self.index.append_small(positions)
        return first

    def seal(self) -> None:
        """No more appends: cut the index file to its real size."""
        if not self.sealed:
            self.index.shrink()
            self.sealed = True

    def unseal(self) -> None:
        """Make this the active segment again (after open or a suffix truncation)."""
        self.index.reserve()
        self.sealed = False

    def truncate_after(self, offset: int) -> None:
        """Drop every record above ``offset`` (``base_offset - 1`` empties the segment)."""
        keep = offset - self.base_offset + 1
        if keep >= self.count:
            return
        end = self.index.position(keep) if keep > 0 else 0
        self.index.truncate(keep)
        self.store.truncate(end)

    # -- reads ---------------------------------------------------------------------------

    def _frame_end(self, rel: int) -> int:
        return self.index.position(rel + 1) if rel + 1 < self.count else self.store.size

    def read(self, offset: int) -> bytes:
        rel = offset - self.base_offset
        start = self.index.position(rel)
        end = self._frame_end(rel)
        frame = self.store.read(start, end - start)
        if len(frame) < FRAME_HEADER_BYTES:
            raise CorruptRecordError(offset, f"frame at byte {start} is cut short")
        length, check = _HEADER.unpack_from(frame)
        if length != end - start - FRAME_HEADER_BYTES:
            raise CorruptRecordError(
                offset, f"header says {length} bytes, index says {end - start - 8}"
            )
        payload = frame[FRAME_HEADER_BYTES:]
        if crc(payload) ^ CHECK_MASK != check:
            raise CorruptRecordError(offset, f"checksum mismatch in frame at byte {start}")
        return payload

    def read_batch(self, offset: int, max_bytes: int, max_records: int) -> list[bytes]:
        """Consecutive records from ``offset``: one pread, split, checksums verified.

        Stops before the payload total would exceed ``max_bytes`` (but returns at least one
        record), after ``max_records``, or at the end of the segment.
        """
        rel = offset - self.base_offset
        stop = min(self.count, rel + max(1, max_records))
        starts = self.index.positions(rel, stop)
        ends = np.empty_like(starts)
        ends[:-1] = starts[1:]
        ends[-1] = self._frame_end(stop - 1)
        base = int(starts[0])
        payload_totals = (ends - np.uint64(base)) - np.arange(
            FRAME_HEADER_BYTES,
            FRAME_HEADER_BYTES * (len(starts) + 1),
            FRAME_HEADER_BYTES,
            dtype=np.uint64,
        )
        k = max(1, int(np.searchsorted(payload_totals, max_bytes, side="right")))
        starts = starts[:k] - np.uint64(base)
        ends = ends[:k] - np.uint64(base)
        total = int(ends[-1])
        buf = self.store.read(base, total)
        if len(buf) < total:
            raise CorruptRecordError(offset, f"store ends before byte {base + total}")
        arr = np.frombuffer(buf, dtype=np.uint8)
        lengths, checks = parse_headers(arr, starts)
        bad_len = np.flatnonzero(lengths != ends - starts - np.uint64(FRAME_HEADER_BYTES))
        if len(bad_len):
            first_bad = int(bad_len[0])
            if first_bad == 0:
                raise CorruptRecordError(offset, "header length disagrees")
            # serve the intact records before the damaged one; the next call raises
            starts, ends, checks = starts[:first_bad], ends[:first_bad], checks[:first_bad]
        payloads = slices(buf, (starts + np.uint64(FRAME_HEADER_BYTES)).tolist(), ends.tolist())
        bad = bad_payload_checksums(payloads, checks)
        if len(bad):
            if int(bad[0]) == 0:
                raise CorruptRecordError(offset, "checksum mismatch")
            return payloads[: int(bad[0])]
        return payloads

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        if not self.store.closed:
            self.index.close()
            self.store.close()

    def remove(self) -> None:
        self.close()
        for path in (self.store.path, self.index.path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    # -- recovery ------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base_offset: int, config: LogConfig) -> Segment:
        """A new, empty, active segment (its files are created empty first)."""
        name = segment_name(base_offset)
        for suffix in (STORE_SUFFIX, INDEX_SUFFIX):
            path = directory / (name + suffix)
            if path.exists():
                path.unlink()
        seg = cls(directory, base_offset, config)
        seg.unseal()
        return seg

    @classmethod
    def recover(
        cls,
        directory: Path,
        base_offset: int,
        config: LogConfig,
        expected: int | None,
        *,
        trusted: bool = False,
    ) -> tuple[Segment, RecoveryReport]:
        """Open an existing segment and repair it; see the module docstring.

        ``expected`` is the record count the next segment's base offset implies (``None``
        for the last segment, whose every checksum is verified). ``trusted``: the segment
        lies wholly below a durable recovery point; if its index holds exactly
        ``expected`` entries it is opened as is, without reading the store.
        """
        seg = cls(directory, base_offset, config)
        report = RecoveryReport(base_offset)
        if trusted and expected is not None and expected > 0 and seg.index.slots == expected:
            # Index files are not fsynced: check that this one was written out (entries
            # sampled on every page of it) and ends at the store's end with a good last
            # frame; no store scan, no pass over the whole index.
            raw_t = seg.store.map_readonly()
            try:
                plausible = _sampled_index_ok(seg.index.raw(), raw_t, seg.store.size, expected)
            finally:
                if isinstance(raw_t, mmap.mmap):
                    with contextlib.suppress(BufferError):
                        raw_t.close()
                del raw_t
            if plausible:
                seg.index.count = expected
                seg.sealed = True
                report.records = expected
                report.trusted = True
                return seg, report
        size = seg.store.size
        raw = seg.store.map_readonly()
        data = np.frombuffer(raw, dtype=np.uint8)
        positions, lengths, checks = _valid_index_prefix(seg.index.raw(), data, size)
        k = len(positions)
        indexed = k
        # Checksums: all of the active segment, the tail of a sealed one.
        verify_from = 0 if expected is None else max(0, k - TAIL_VERIFY_RECORDS)
        if k > verify_from:
            ends = positions[verify_from:k] + np.uint64(FRAME_HEADER_BYTES) + lengths[verify_from:k]
            bad = bad_checksums(
                raw, positions[verify_from:k].tolist(), ends.tolist(), checks[verify_from:k]
            )
            if len(bad):
                k = verify_from + int(bad[0])
                positions = positions[:k]
                report.notes.append(f"checksum mismatch in indexed record {k}")
        pos = int(positions[-1] + np.uint64(FRAME_HEADER_BYTES) + lengths[k - 1]) if k else 0
        extra, pos, reason = _scan_frames(raw, pos, size)
        if extra:
            positions = np.concatenate([positions, np.array(extra, dtype=np.uint64)])
        count = len(positions)
        if expected is not None and count < expected:
            kept = _plausible_index(seg.index.raw(), raw, size, expected)
            if kept is not None:
                report.notes.append(
                    f"record {base_offset + count} has a damaged frame in the middle of a "
                    "sealed segment; kept the index, reads of damaged records will fail"
                )
                logger.error("segment %s: %s", segment_name(base_offset), report.notes[-1])
                positions, count, pos, reason = kept, expected, size, ""
        del data
        if isinstance(raw, mmap.mmap):
            with contextlib.suppress(BufferError):
                raw.close()
        del raw
        if pos < size:
            report.cut_bytes = size - pos
            report.cut_at = pos
            report.cut_reason = reason
            logger.warning(
                "segment %s: cut %d bytes at byte %d after %d good records (%s)",
                segment_name(base_offset),
                size - pos,
                pos,
                count,
                reason,
            )
            seg.store.truncate(pos)
        if indexed == count and _slot_used(seg.index.raw(), count):
            report.notes.append("index had stale entries past the store's end; cut them")
            logger.warning("segment %s: %s", segment_name(base_offset), report.notes[-1])
        if indexed != count:
            report.index_rebuilt = True
            logger.warning(
                "segment %s: index rebuilt from the store (%d valid entries of %d records)",
                segment_name(base_offset),
                indexed,
                count,
            )
            seg.index.write_all(positions)
        else:
            seg.index.count = count
        seg.index.shrink()
        seg.sealed = True
        report.records = count
        return seg, report


def _slot_used(entries: EntryArray, count: int) -> bool:
    """Whether a slot past ``count`` holds a non-zero (stale) entry."""
    tail = entries[count:]
    return bool(len(tail)) and bool(np.any(tail["pos"]) or np.any(tail["rel"]))


def _valid_index_prefix(
    entries: EntryArray,
    data: npt.NDArray[np.uint8],
    size: int,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Positions, lengths and checks of the longest index prefix that tiles the store."""
    empty = np.zeros(0, dtype=np.uint64)
    n = len(entries)
    if n == 0 or size < FRAME_HEADER_BYTES:
        return empty, empty, empty
    rel = np.asarray(entries["rel"])
    wrong = np.flatnonzero(rel != np.arange(n, dtype=np.uint32))
    m = int(wrong[0]) if len(wrong) else n
    pos = np.array(entries["pos"][:m], dtype=np.uint64)
    outside = np.flatnonzero(pos > np.uint64(size - FRAME_HEADER_BYTES))
    if len(outside):
        pos = pos[: int(outside[0])]
    if len(pos) == 0:
        return empty, empty, empty
    lengths, checks = parse_headers(data, pos)
    ends = pos + np.uint64(FRAME_HEADER_BYTES) + lengths
    ok = ends <= np.uint64(size)
    ok[0] &= bool(pos[0] == 0)
    ok[1:] &= pos[1:] == ends[:-1]
    bad = np.flatnonzero(~ok)
    k = int(bad[0]) if len(bad) else len(pos)
    return pos[:k], lengths[:k], checks[:k]


def _scan_frames(data: mmap.mmap | bytes, pos: int, size: int) -> tuple[list[int], int, str]:
    """Parse frames one by one from ``pos``; stop at the first bad one.

    Returns the good frames' positions, where the good bytes end, and why scanning stopped
    (empty when it reached the end of the file).
    """
    found: list[int] = []
    unpack = _HEADER.unpack_from
    while pos < size:
        if pos + FRAME_HEADER_BYTES > size:
            return found, pos, f"partial header ({size - pos} of 8 bytes)"
        length, check = unpack(data, pos)
        end = pos + FRAME_HEADER_BYTES + length
        if end > size:
            return found, pos, f"torn frame: header says {length} bytes, {size - pos - 8} present"
        if crc(data[pos + FRAME_HEADER_BYTES : end]) ^ CHECK_MASK != check:
            return found, pos, f"checksum mismatch in a {length}-byte frame"
        found.append(pos)
        pos = end
    return found, pos, ""


#: Index entries per sample of :func:`_sampled_index_ok`: fewer than one 4 KiB page holds
#: (512 entries of 8 bytes), so a page that never reached the disk (zeros) is seen.
_INDEX_SAMPLE_STRIDE = 256


def _sampled_index_ok(
    entries: EntryArray, data: mmap.mmap | bytes, size: int, expected: int
) -> bool:
    """A sealed segment's index below a recovery point, checked cheaply: ``expected``
    entries, a sample on every page numbered right with increasing positions from 0, and
    a last frame that ends at the store's end with a good checksum."""
    if len(entries) != expected or expected == 0:
        return False
    picks = np.unique(
        np.append(np.arange(0, expected, _INDEX_SAMPLE_STRIDE, dtype=np.int64), expected - 1)
    )
    sample = entries[picks]
    if not np.array_equal(sample["rel"].astype(np.int64), picks):
        return False
    pos = sample["pos"].astype(np.uint64)
    gaps = np.diff(picks).astype(np.uint64) * np.uint64(FRAME_HEADER_BYTES)
    if pos[0] != 0 or np.any(np.diff(pos) < gaps):
        return False
    last = int(pos[-1])
    if last + FRAME_HEADER_BYTES > size:
        return False
    length, check = _HEADER.unpack_from(data, last)
    if last + FRAME_HEADER_BYTES + length != size:
        return False
    return bool(crc(data[last + FRAME_HEADER_BYTES : size]) ^ CHECK_MASK == check)


def _plausible_index(
    entries: EntryArray,
    data: mmap.mmap | bytes,
    size: int,
    expected: int,
) -> npt.NDArray[np.uint64] | None:
    """For a sealed segment damaged in the middle: the index, if it still tiles the file.

    Accepted only if it has exactly ``expected`` entries numbered 0.., strictly increasing
    positions from 0 at least a header apart, and a last frame that ends at the file's end
    with a good checksum. Returns the positions or ``None``.
    """
    if len(entries) < expected or expected == 0:
        return None
    head = entries[:expected]
    if not np.array_equal(head["rel"], np.arange(expected, dtype=np.uint32)):
        return None
    pos = np.array(head["pos"], dtype=np.uint64)
    if pos[0] != 0 or np.any(np.diff(pos) < FRAME_HEADER_BYTES):
        return None
    last = int(pos[-1])
    if last + FRAME_HEADER_BYTES > size:
        return None
    length, check = _HEADER.unpack_from(data, last)
    if last + FRAME_HEADER_BYTES + length != size:
        return None
    if crc(data[last + FRAME_HEADER_BYTES : size]) ^ CHECK_MASK != check:
        return None
    return pos


def remove_files(directory: Path, base_offset: int) -> None:
    """Delete both files of a segment that is not open."""
    name = segment_name(base_offset)
    for suffix in (STORE_SUFFIX, INDEX_SUFFIX):
        try:
            os.unlink(directory / (name + suffix))
        except FileNotFoundError:
            pass

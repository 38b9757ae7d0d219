"""Scrubbing and repairing records in place: the commit log's side of self-repair.

The log verifies a record's checksum whenever it is read, and recovery verifies the tail
of a segment; damage in the middle of a sealed segment that nobody reads (bit rot) would
stay unseen. A scrubber (:mod:`raftlog.distributed.scrub`) re-reads the records with the
helpers here, paced, off the event loop:

- :func:`spans_of` (on the log's thread) takes what a read of ``first..end-1`` needs: for
  every segment the records lie in, its store path and the frame positions (a copy), so
  the read itself (:func:`read_span`, in a worker thread, on descriptors of its own) never
  touches the log's objects;
- :func:`read_span` returns every record of a span, or why it is damaged (header length
  disagrees with the index, checksum mismatch, file cut short);
- :func:`range_digest` is the content hash of a run of records, defined on payloads only
  (``blake2b-128`` over ``u32 LE length | payload`` of each record in offset order), so it
  is the same on every replica whatever the segment boundaries;
- :func:`rewrite_frame` writes a verified record back over its damaged frame, in place
  (same frame length, so no other position moves), fsyncs and reads it back;
- :func:`pace_delay` is the rate limit: how long to pause so that the bytes read so far do
  not exceed the allowed rate.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from raftlog.log import framing
from raftlog.log.config import FRAME_HEADER_BYTES
from raftlog.log.errors import LogError
from raftlog.log.framing import bad_payload_checksums, checksum
from raftlog.log.log import Log

_HEADER = struct.Struct("<II")
_LENGTH = struct.Struct("<I")
#: Bytes of the content digest (blake2b).
DIGEST_BYTES = 16


@dataclass(frozen=True)
class Span:
    """Records ``first..first+len(positions)-1`` of one store file: where each frame
    starts, and where the last one ends (bytes)."""

    path: Path
    first: int
    positions: npt.NDArray[np.uint64]
    end: int

    @property
    def count(self) -> int:
        return len(self.positions)

    @property
    def nbytes(self) -> int:
        return self.end - int(self.positions[0]) if self.count else 0

    def frame(self, i: int) -> tuple[int, int]:
        """(position, length) of the ``i``-th frame of the span."""
        start = int(self.positions[i])
        stop = int(self.positions[i + 1]) if i + 1 < self.count else self.end
        return start, stop - start

    def split(self, max_bytes: int) -> list[Span]:
        """This span cut into consecutive spans of at most ``max_bytes`` (at least one
        record each)."""
        out: list[Span] = []
        i, n = 0, self.count
        while i < n:
            base = int(self.positions[i])
            ends = np.append(self.positions[i + 1 :], np.uint64(self.end))
            k = int(np.searchsorted(ends, np.uint64(base + max_bytes), side="right"))
            j = i + max(1, k)
            stop = int(self.positions[j]) if j < n else self.end
            out.append(Span(self.path, self.first + i, self.positions[i:j], stop))
            i = j
        return out


def spans_of(log: Log, first: int, end: int, *, sealed_only: bool = False) -> list[Span]:
    """The spans holding records ``first..end-1`` (call it on the log's thread).
    ``sealed_only``: only the segments that are sealed (every one but the active)."""
    segments = log.segments
    if sealed_only:
        segments = segments[:-1]
    out: list[Span] = []
    for seg in segments:
        lo, hi = max(first, seg.base_offset), min(end, seg.next_offset)
        if lo >= hi:
            continue
        rel_lo, rel_hi = lo - seg.base_offset, hi - seg.base_offset
        positions = seg.index.positions(rel_lo, rel_hi)
        stop = seg.index.position(rel_hi) if hi < seg.next_offset else seg.store.size
        out.append(Span(seg.store.path, lo, positions, stop))
    return out


@dataclass(frozen=True)
class Damage:
    """One damaged record: its offset and what is wrong with it."""

    offset: int
    reason: str


def _span_bytes(span: Span) -> bytes:
    """The bytes of ``span``'s frames (fewer if the file ends first): one ``pread`` on a
    descriptor of its own. Blocking. OSError if the file is gone."""
    base = int(span.positions[0])
    fd = os.open(span.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return os.pread(fd, span.end - base, base)
    finally:
        os.close(fd)


def read_span(span: Span) -> tuple[list[bytes | None], list[Damage]]:
    """Every record of ``span`` (None for a damaged one) and the damage found. Blocking
    (a worker thread): one ``pread`` on a descriptor of its own. OSError if the file is
    gone (retention deleted it meanwhile)."""
    if span.count == 0:
        return [], []
    base = int(span.positions[0])
    buf = _span_bytes(span)
    records: list[bytes | None] = []
    damage: list[Damage] = []
    view = memoryview(buf)
    for i in range(span.count):
        start, size = span.frame(i)
        start -= base
        offset = span.first + i
        if start + size > len(buf) or size < FRAME_HEADER_BYTES:
            records.append(None)
            damage.append(Damage(offset, f"frame at byte {start + base} is cut short"))
            continue
        length, check = _HEADER.unpack_from(buf, start)
        if length != size - FRAME_HEADER_BYTES:
            records.append(None)
            damage.append(
                Damage(offset, f"header says {length} bytes, the index {size - FRAME_HEADER_BYTES}")
            )
            continue
        payload = view[start + FRAME_HEADER_BYTES : start + size]
        if checksum(payload) != check:
            records.append(None)
            damage.append(Damage(offset, f"checksum mismatch in frame at byte {start + base}"))
            continue
        records.append(bytes(payload))
    return records, damage


def new_digest() -> hashlib.blake2b:
    """An empty content hash (feed it with :func:`digest_update`)."""
    return hashlib.blake2b(digest_size=DIGEST_BYTES)


def digest_update(h: hashlib.blake2b, records: Iterable[bytes]) -> None:
    """Add consecutive records to the content hash ``h``."""
    pack = _LENGTH.pack
    for record in records:
        h.update(pack(len(record)))
        h.update(record)


def range_digest(records: Iterable[bytes]) -> bytes:
    """The content hash of consecutive records (see the module docs)."""
    h = new_digest()
    digest_update(h, records)
    return h.digest()


def hash_span(span: Span, h: hashlib.blake2b) -> list[Damage]:
    """Read ``span`` and add its records to ``h`` (what :func:`digest_update` adds); the
    damage found (then ``h`` is left as it was). Blocking: a worker thread.

    Checked and hashed a span at a time, not a record at a time: frames are consecutive
    in the store and a frame's header begins with the record's length in the digest's own
    encoding (little-endian u32), so the digest's input is the span's bytes without each
    header's 4 check bytes. With the native helper one call checks every frame and strips
    the check bytes (``_frames.strip``); without it numpy does (about 2x the per-record
    path). This matters because every replica hashes every record it holds once
    (checkpoint hashes). A span with any damage goes through
    :func:`hash_span_per_record`, which names each one.
    """
    n = span.count
    if n == 0:
        return []
    base = int(span.positions[0])
    buf = _span_bytes(span)
    if len(buf) != span.end - base:  # the file ends before the span: cut short
        return hash_span_per_record(span, h)
    native = framing.native_module()
    if native is not None:
        stripped, _bad = native.strip(buf, (span.positions - np.uint64(base)).tobytes())
        if stripped is None:
            return hash_span_per_record(span, h)
        h.update(stripped)
        return []
    starts = span.positions.astype(np.int64) - base
    ends = np.empty(n, dtype=np.int64)
    ends[:-1] = starts[1:]
    ends[-1] = span.end - base
    sizes = ends - starts
    if int(sizes.min()) < FRAME_HEADER_BYTES:
        return hash_span_per_record(span, h)
    raw = np.frombuffer(buf, dtype=np.uint8)
    header = raw[starts[:, None] + np.arange(FRAME_HEADER_BYTES)].view("<u4")
    lengths, checks = header[:, 0].astype(np.int64), header[:, 1].astype(np.uint64)
    if not np.array_equal(lengths, sizes - FRAME_HEADER_BYTES):
        return hash_span_per_record(span, h)
    view = memoryview(buf)
    bounds = zip(starts.tolist(), ends.tolist(), strict=True)
    payloads = [view[a + FRAME_HEADER_BYTES : b] for a, b in bounds]
    if len(bad_payload_checksums(payloads, checks)):
        return hash_span_per_record(span, h)
    keep = np.ones(len(raw), dtype=bool)
    keep[(starts[:, None] + np.arange(4, FRAME_HEADER_BYTES)).ravel()] = False
    h.update(raw[keep].tobytes())
    return []


def hash_span_per_record(span: Span, h: hashlib.blake2b) -> list[Damage]:
    """:func:`hash_span` a record at a time (:func:`read_span`): the reference, and the
    path of a span with damage, which it names record by record."""
    records, damage = read_span(span)
    if not damage:
        digest_update(h, [r for r in records if r is not None])
    return damage


def rewrite_frame(path: Path, position: int, frame_bytes: int, payload: bytes) -> None:
    """Write ``payload`` as the frame of ``frame_bytes`` bytes at ``position`` of the store
    ``path`` (in place), fsync it and read it back. Blocking (a worker thread). LogError if
    the record does not fit the frame exactly or the file does not hold it; OSError from
    the file system."""
    if len(payload) + FRAME_HEADER_BYTES != frame_bytes:
        raise LogError(
            f"a {len(payload)}-byte record does not fit the {frame_bytes}-byte frame at byte "
            f"{position} of {path.name} (frames are rewritten in place only)"
        )
    frame = _HEADER.pack(len(payload), checksum(payload)) + payload
    fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        if os.fstat(fd).st_size < position + frame_bytes:
            raise LogError(f"{path.name} ends before byte {position + frame_bytes}")
        written = os.pwrite(fd, frame, position)
        while written < len(frame):
            written += os.pwrite(fd, frame[written:], position + written)
        os.fdatasync(fd)
        if os.pread(fd, len(frame), position) != frame:
            raise LogError(f"frame rewritten at byte {position} of {path.name} reads back wrong")
    finally:
        os.close(fd)


def pace_delay(done_bytes: int, elapsed_s: float, rate_bytes_s: float) -> float:
    """Seconds to wait so that ``done_bytes`` read in ``elapsed_s`` stay within
    ``rate_bytes_s`` (0 when already slower)."""
    if rate_bytes_s <= 0:
        return 0.0
    return max(0.0, done_bytes / rate_bytes_s - elapsed_s)

"""Record framing: how one record is laid out in a store file, encoded a batch at a time.

::

    frame = | length: u32 LE | check: u32 LE | payload: length bytes |
    check = crc32c(payload) XOR 0xFFFFFFFF

The checksum is the CRC-32C (Castagnoli) of the payload, computed by the ``crc32c``
package with the CPU's CRC instruction where there is one (about 2.3x faster than zlib's
CRC-32 on 1 KiB records here, which is what bounded batched appends). It is inverted so
that an all-zero header (what a preallocated or zero-filled tail looks like after a crash)
is never a valid frame: the empty payload's CRC is 0, its stored check is 0xFFFFFFFF.

Per-record Python work bounds the throughput of a batch. Where the native helper
:mod:`raftlog.log._frames` is built and the CPU has a CRC-32C instruction (x86-64 with
SSE 4.2), a batch is framed and checksummed in one C call (1000 x 1 KiB: about 110 us,
against about 350 us below) and many payloads are checked in one call on reads and
recovery. Otherwise a batch is encoded with one ``map`` per column (lengths, checksums), one
numpy array for all headers, one list interleave and one ``bytes.join``: no Python loop body
runs per record. Both paths write the same bytes (tests/log/test_native_frames.py).
"""

from __future__ import annotations

import mmap
import struct
import threading
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import numpy.typing as npt
from crc32c import crc32c as crc

from raftlog.log.config import FRAME_HEADER_BYTES
from raftlog.log.errors import RecordTooLargeError

_frames: ModuleType | None
try:
    from raftlog.log import _frames
except ImportError:  # not built (no compiler at install time): the numpy path below
    _frames = None

#: True when batches are framed and checked by the native helper (see the module doc).
NATIVE = _frames is not None and bool(_frames.HARDWARE)

#: XOR mask applied to the CRC so that a zeroed header never validates.
CHECK_MASK = 0xFFFFFFFF
#: Largest payload a frame can describe (bytes).
MAX_RECORD_BYTES = (1 << 32) - 1


U64Array = npt.NDArray[np.uint64]
U32Array = npt.NDArray[np.uint32]


__all__ = ["CHECK_MASK", "crc"]


def checksum(payload: bytes | memoryview) -> int:
    """The stored check value of one payload."""
    return crc(payload) ^ CHECK_MASK


def encode_batch(records: Sequence[bytes]) -> tuple[bytes, U64Array]:
    """Frame ``records`` into one buffer; return it and each frame's size in bytes.

    Raises :class:`RecordTooLargeError` if a record does not fit a u32 length.
    """
    if _frames is not None and NATIVE:
        try:
            data, sizes = _frames.encode(records)
        except OverflowError as exc:
            raise RecordTooLargeError(str(exc)) from None
        return data, np.frombuffer(sizes, dtype=np.uint64)
    return encode_batch_numpy(records)


class FrameBuffer:
    """A reusable output buffer for framing batches (one per log; not thread-safe).

    Why: a fresh ``bytes`` of 1 MiB per batch costs its page faults again on every batch.
    Here, 1000 x 1 KiB: ``bytes.join`` + ``pwrite`` 270 us, ``pwrite`` from a buffer that is
    reused 175 us. The buffer grows (doubling) up to ``MAX_BYTES``; a larger batch is
    framed into a fresh object instead, so one huge batch does not pin its size for good.

    :meth:`encode` returns a view of the buffer, valid until the next call: write it out
    and drop it. Without the native helper it is :func:`encode_batch`.
    """

    #: Largest batch framed into the reused buffer, in bytes (default 8 MiB).
    MAX_BYTES = 8 << 20

    def __init__(self) -> None:
        self._buf = bytearray()

    def encode(self, records: Sequence[bytes]) -> tuple[bytes | memoryview, U64Array]:
        if _frames is None or not NATIVE:
            return encode_batch(records)
        try:
            n, sizes = _frames.encode_into(self._buf, records)
            if sizes is None:
                if n > self.MAX_BYTES:
                    return encode_batch(records)
                # a new object, never a resize: a view of the old one may still be alive
                self._buf = bytearray(min(self.MAX_BYTES, max(n, 2 * len(self._buf))))
                n, sizes = _frames.encode_into(self._buf, records)
        except OverflowError as exc:
            raise RecordTooLargeError(str(exc)) from None
        return memoryview(self._buf)[:n], np.frombuffer(sizes, dtype=np.uint64)


def native_module() -> ModuleType | None:
    """The native helper when it is in use (built, and :data:`NATIVE`), else None."""
    return _frames if NATIVE else None


_THREAD = threading.local()


def thread_frame_buffer() -> FrameBuffer:
    """The :class:`FrameBuffer` of the calling thread, shared by every log appended to in
    it.

    Why shared: one buffer per log grew to ``MAX_BYTES`` (8 MiB) for each log that once got
    a large batch, and a node hosting many partitions has two logs per replica (the commit
    log and the Raft log): 117 partitions could pin 1.9 GB. A log frames a batch and writes
    it in one synchronous call, never across an ``await`` or a thread switch, so the logs
    of one thread never need the buffer at the same time; the memory held is at most
    ``MAX_BYTES`` per thread that appends (the event loop and the few worker threads).
    """
    buf: FrameBuffer | None = getattr(_THREAD, "frame_buffer", None)
    if buf is None:
        buf = _THREAD.frame_buffer = FrameBuffer()
    return buf


def encode_batch_numpy(records: Sequence[bytes]) -> tuple[bytes, U64Array]:
    """:func:`encode_batch` without the native helper (and the reference it is tested on)."""
    n = len(records)
    lengths = np.fromiter(map(len, records), dtype=np.uint64, count=n)
    if n and int(lengths.max()) > MAX_RECORD_BYTES:
        raise RecordTooLargeError(
            f"a record of {int(lengths.max())} bytes exceeds the frame limit of "
            f"{MAX_RECORD_BYTES} bytes"
        )
    headers = np.empty((n, 2), dtype="<u4")
    headers[:, 0] = lengths
    headers[:, 1] = np.fromiter(map(crc, records), dtype=np.uint32, count=n)
    headers[:, 1] ^= CHECK_MASK
    parts: list[bytes] = [b""] * (2 * n)
    parts[0::2] = headers.view("V8").ravel().tolist()
    parts[1::2] = records
    return b"".join(parts), lengths + FRAME_HEADER_BYTES


_PACK_HEADER = struct.Struct("<II").pack
#: Batches up to this many records take the pure-Python path (numpy's fixed cost per call
#: is larger than its per-record savings on a handful of records).
SMALL_BATCH = 64


def encode_small(records: Sequence[bytes]) -> tuple[bytes, list[int]]:
    """:func:`encode_batch` for a few records, without numpy; sizes as a list."""
    parts: list[bytes] = []
    sizes: list[int] = []
    for record in records:
        length = len(record)
        if length > MAX_RECORD_BYTES:
            raise RecordTooLargeError(
                f"a record of {length} bytes exceeds the frame limit of {MAX_RECORD_BYTES} bytes"
            )
        parts.append(_PACK_HEADER(length, crc(record) ^ CHECK_MASK))
        parts.append(record)
        sizes.append(length + FRAME_HEADER_BYTES)
    return b"".join(parts), sizes


def slices(buf: bytes, starts: list[int], ends: list[int]) -> list[bytes]:
    """``[buf[s:e] for s, e in zip(starts, ends)]``, looped in C."""
    return list(map(buf.__getitem__, map(slice, starts, ends)))


def parse_headers(buf: npt.NDArray[np.uint8], starts: U64Array) -> tuple[U64Array, U64Array]:
    """Gather the (length, check) header of every frame starting at ``starts`` in ``buf``.

    Vectorised: one fancy-index gather of 8 bytes per frame. ``starts`` must leave room for
    a full header inside ``buf``.
    """
    idx = starts.astype(np.int64)[:, None] + np.arange(FRAME_HEADER_BYTES, dtype=np.int64)
    raw = np.ascontiguousarray(buf[idx]).view("<u4").reshape(-1, 2)
    return raw[:, 0].astype(np.uint64), raw[:, 1].astype(np.uint64)


def bad_checksums(
    buf: bytes | memoryview | mmap.mmap, starts: list[int], ends: list[int], checks: U64Array
) -> npt.NDArray[np.intp]:
    """Indices of the frames whose payload ``buf[start+8:end]`` does not match its check."""
    view = memoryview(buf)
    payload_starts = [s + FRAME_HEADER_BYTES for s in starts]
    payloads = list(map(view.__getitem__, map(slice, payload_starts, ends)))
    return bad_payload_checksums(payloads, checks)


def stored_checks(payloads: Sequence[bytes | memoryview]) -> U64Array:
    """The stored check value of every payload (one native call where there is one)."""
    if _frames is not None and NATIVE:
        return np.frombuffer(_frames.checks(payloads), dtype=np.uint32).astype(np.uint64)
    got = np.fromiter(map(crc, payloads), dtype=np.uint64, count=len(payloads))
    got ^= CHECK_MASK
    return got


def bad_payload_checksums(
    payloads: Sequence[bytes | memoryview], checks: U64Array
) -> npt.NDArray[np.intp]:
    """Indices of the payloads whose checksum differs from ``checks``."""
    return np.flatnonzero(stored_checks(payloads) != checks)

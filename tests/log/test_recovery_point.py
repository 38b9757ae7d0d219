"""The recovery point (``Log.open(trusted_below=...)``) and record-range streams.

Segments wholly below a durable checkpoint are opened without reading their stores; the
tail after the checkpoint is still verified, so a torn tail is still cut. A range reader
streams only the records a follower lacks, and ``append_stream`` appends them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raftlog.log import Log, LogConfig, SyncPolicy
from raftlog.log.errors import SnapshotFormatError

CFG = LogConfig(max_store_bytes=4000, max_index_bytes=8 * 256, sync=SyncPolicy.NEVER)


def rec(offset: int) -> bytes:
    return b"record-%06d-" % offset + bytes([offset % 251]) * (offset % 40)


def build(directory: Path, n: int) -> None:
    log = Log.open(directory, CFG)
    while log.next_offset < n:
        at = log.next_offset
        log.append_batch_nosync([rec(at + i) for i in range(min(17, n - at))])
    log.sync_blocking()
    log.close_sync()


def test_segments_below_the_recovery_point_are_trusted_and_the_torn_tail_is_cut(
    tmp_path: Path,
) -> None:
    build(tmp_path, 600)
    log = Log.open(tmp_path, CFG)
    segments = [(s.base_offset, s.next_offset) for s in log.segments]
    assert len(segments) > 4
    log.close_sync()
    checkpoint = segments[-2][1]  # the recovery point: the start of the active segment
    # a torn tail after the checkpoint: the active segment's store loses half a frame
    active = tmp_path / f"{segments[-1][0]:020d}.store"
    os.truncate(active, active.stat().st_size - 5)

    log = Log.open(tmp_path, CFG, trusted_below=checkpoint)
    reports = log.recovery
    assert all(r.trusted for r in reports[:-1]), reports
    assert not reports[-1].trusted
    assert reports[-1].cut_bytes > 0  # the torn tail after the checkpoint is still cut
    assert log.next_offset == 599
    for offset in range(0, 599, 7):
        assert log.read(offset) == rec(offset)
    log.close_sync()


def test_a_damaged_index_below_the_recovery_point_is_not_trusted(tmp_path: Path) -> None:
    build(tmp_path, 300)
    log = Log.open(tmp_path, CFG)
    first = log.segments[0]
    index_path = first.index.path
    checkpoint = log.segments[-1].base_offset
    log.close_sync()
    # an index whose pages never reached the disk (index files are not fsynced): zeros
    size = index_path.stat().st_size
    with open(index_path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\0" * (size - size // 2))
    log = Log.open(tmp_path, CFG, trusted_below=checkpoint)
    assert not log.recovery[0].trusted
    assert log.recovery[0].index_rebuilt
    assert all(log.read(o) == rec(o) for o in range(log.lowest_offset, log.next_offset))
    log.close_sync()


def test_range_reader_streams_only_what_a_follower_lacks(tmp_path: Path) -> None:
    build(tmp_path / "leader", 500)
    leader = Log.open(tmp_path / "leader", CFG)
    follower = Log.open(tmp_path / "follower", CFG)
    follower.append_batch_nosync([rec(i) for i in range(123)])
    reader = leader.range_reader(follower.next_offset, 480)
    lacked = sum(len(rec(o)) + 8 for o in range(123, 480))
    assert reader.frame_bytes == lacked
    seen: list[tuple[int, int]] = []
    with reader:
        first, n = follower.append_stream(reader.chunks(1000), lambda r, b: seen.append((r, b)))
    assert (first, n) == (123, 480 - 123)
    assert seen[-1] == (n, lacked)
    assert [follower.read(o) for o in range(480)] == [rec(o) for o in range(480)]
    # a stream that does not continue the log is refused
    with leader.range_reader(10, 20) as other, pytest.raises(Exception, match="starts at"):
        follower.append_stream(other.chunks())
    leader.close_sync()
    follower.close_sync()


def test_append_stream_refuses_a_corrupt_frame(tmp_path: Path) -> None:
    build(tmp_path / "leader", 50)
    leader = Log.open(tmp_path / "leader", CFG)
    with leader.range_reader(0, 50) as reader:
        data = bytearray(reader.read())
    data[-3] ^= 0xFF
    follower = Log.open(tmp_path / "follower", CFG)
    with pytest.raises(SnapshotFormatError):
        follower.append_stream([bytes(data)])
    leader.close_sync()
    follower.close_sync()


def test_an_index_of_the_old_12_byte_format_is_rebuilt(tmp_path: Path) -> None:
    import numpy as np

    build(tmp_path, 300)
    log = Log.open(tmp_path, CFG)
    checkpoint = log.segments[-1].base_offset
    indexes = [(s.index.path, s.index.positions(0, s.count)) for s in log.segments]
    log.close_sync()
    old = np.dtype([("rel", "<u4"), ("pos", "<u8")])  # the format before issue 12
    for path, positions in indexes:
        entries = np.zeros(len(positions), dtype=old)
        entries["rel"] = np.arange(len(positions))
        entries["pos"] = positions
        path.write_bytes(entries.tobytes())
    log = Log.open(tmp_path, CFG, trusted_below=checkpoint)
    assert not any(r.trusted for r in log.recovery)  # never trusted: rebuilt from the stores
    assert log.next_offset == 300
    assert all(log.read(o) == rec(o) for o in range(300))
    log.close_sync()
    log = Log.open(tmp_path, CFG, trusted_below=checkpoint)  # the rebuilt index is trusted
    assert all(r.trusted for r in log.recovery[:-1])
    log.close_sync()

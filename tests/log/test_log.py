"""Unit tests of Log: rollover, reopen, truncation, durability, snapshots, lifecycle."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from raftlog.log import (
    ConfigError,
    DurabilityError,
    Log,
    LogClosedError,
    LogConfig,
    LogError,
    OffsetOutOfRangeError,
    SnapshotFormatError,
    SyncPolicy,
)
from raftlog.log import log as log_module
from support.wait import wait_until

SMALL = LogConfig(max_store_bytes=200, max_index_bytes=8 * 16)


def recs(n: int, start: int = 0) -> list[bytes]:
    return [b"record-%05d" % i for i in range(start, start + n)]


async def test_a_batch_that_fails_in_its_second_segment_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is all or nothing even when it spans segments: a write error in the new
    segment (a full disk) takes back the frames already written to the old one."""
    log = Log.open(tmp_path, SMALL)
    assert await log.append_batch(recs(3)) == 0
    segments_before = len(log.segments)
    real = log_module.Segment.append_encoded
    calls = 0

    def second_write_fails(self: object, data: object, sizes: object) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")
        return real(self, data, sizes)  # type: ignore[arg-type]

    monkeypatch.setattr(log_module.Segment, "append_encoded", second_write_fails)
    with pytest.raises(OSError, match="No space"):
        await log.append_batch(recs(12, 3))  # ~250 bytes: more than one 200-byte segment
    assert calls == 2
    assert log.highest_offset == 2 and log.next_offset == 3
    assert len(log.segments) == segments_before
    with pytest.raises(OffsetOutOfRangeError):
        log.read(3)
    monkeypatch.undo()
    assert await log.append_batch(recs(12, 3)) == 3  # appends go on at the same offsets
    assert [log.read(i) for i in range(15)] == recs(15)
    await log.close()
    reopened = Log.open(tmp_path, SMALL)
    assert [reopened.read(i) for i in range(15)] == recs(15)
    await reopened.close()


async def test_rollover_across_many_segments_and_reopen(tmp_path: Path) -> None:
    log = Log.open(tmp_path, SMALL)
    want: list[bytes] = []
    for i in range(40):
        batch = recs(i % 7 + 1, len(want))
        assert await log.append_batch(batch) == len(want)
        want.extend(batch)
    assert len(log.segments) > 10
    for seg in log.segments[:-1]:
        assert seg.is_maxed and seg.sealed
        assert seg.index.path.stat().st_size == seg.count * 8  # sealed index cut to size
    await log.close()
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".store", ".index"))
    assert len(names) == 2 * len(log.segments)
    log = Log.open(tmp_path, SMALL)
    assert not any(r.cut_bytes or r.index_rebuilt for r in log.recovery)
    assert [log.read(i) for i in range(len(want))] == want
    assert await log.append(b"after") == len(want)
    await log.close()


async def test_one_batch_spanning_many_segments(tmp_path: Path) -> None:
    log = Log.open(tmp_path, SMALL)
    batch = recs(100)
    assert await log.append_batch(batch) == 0
    assert len(log.segments) >= 100 // 16
    got: list[bytes] = []
    while len(got) < 100:
        got.extend(log.read_batch(len(got), 10**6))
    assert got == batch
    await log.close()


async def test_record_larger_than_a_segment_gets_its_own(tmp_path: Path) -> None:
    log = Log.open(tmp_path, SMALL)
    await log.append_batch([b"a", b"x" * 1000, b"b"])
    assert log.read(1) == b"x" * 1000
    assert log.read(2) == b"b"
    await log.close()


async def test_truncate_after_across_segments_then_reopen(tmp_path: Path) -> None:
    log = Log.open(tmp_path, SMALL)
    await log.append_batch(recs(100))
    nseg = len(log.segments)
    log.truncate_after(20)
    assert len(log.segments) < nseg
    assert log.next_offset == 21
    await log.append_batch([b"new-21", b"new-22"])
    await log.close()
    log = Log.open(tmp_path, SMALL)
    assert log.next_offset == 23
    assert log.read(20) == recs(1, 20)[0]
    assert log.read(22) == b"new-22"
    with pytest.raises(OffsetOutOfRangeError):
        log.truncate_after(-5)
    await log.close()


async def test_retention_then_reopen_keeps_lowest(tmp_path: Path) -> None:
    log = Log.open(tmp_path, SMALL)
    await log.append_batch(recs(100))
    log.truncate(50)
    lowest = log.lowest_offset
    assert 30 < lowest <= 50
    await log.close()
    log = Log.open(tmp_path, SMALL)
    assert log.lowest_offset == lowest
    assert log.read(99) == recs(1, 99)[0]
    await log.close()


async def test_group_commit_shares_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    threads: set[int] = set()
    real = log_module._fsync_job

    def counting(fds: list[int], dir_fd: int) -> None:
        calls.append(len(fds))
        threads.add(threading.get_ident())
        time.sleep(0.01)  # a slow disk: appenders pile up behind the running fsync
        real(fds, dir_fd)

    monkeypatch.setattr(log_module, "_fsync_job", counting)
    log = Log.open(tmp_path, LogConfig(sync=SyncPolicy.ALWAYS))
    firsts = await asyncio.gather(*(log.append(b"r%d" % i) for i in range(200)))
    assert sorted(firsts) == list(range(200))
    assert log.durable_offset == 200
    assert 1 <= len(calls) <= 10, calls  # 200 appenders, a handful of fsyncs
    assert threading.get_ident() not in threads  # never on the event loop's thread
    await log.close()


async def test_sync_never_does_not_fsync_until_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = log_module._fsync_job
    monkeypatch.setattr(log_module, "_fsync_job", lambda fds, d: (calls.append(1), real(fds, d))[1])
    log = Log.open(tmp_path, LogConfig(sync=SyncPolicy.NEVER))
    await log.append_batch(recs(10))
    assert calls == [] and log.durable_offset == 0
    await log.sync()
    assert calls == [1] and log.durable_offset == 10
    await log.close()


async def test_interval_policy_syncs_within_the_interval(tmp_path: Path) -> None:
    log = Log.open(tmp_path, LogConfig(sync=SyncPolicy.INTERVAL, sync_interval_s=0.05))
    await log.append_batch(recs(10))
    assert log.durable_offset == 0
    await wait_until(lambda: log.durable_offset >= 10, 5, "the interval sync")
    sizes = log.durable_lengths()
    assert list(sizes.values()) == [log.segments[0].store.size]
    await log.close()


async def test_durable_lengths_track_fsyncs_and_new_files(tmp_path: Path) -> None:
    log = Log.open(tmp_path, LogConfig(sync=SyncPolicy.NEVER, max_store_bytes=100))
    await log.append_batch([b"x" * 60])
    await log.sync()
    first = log.segments[0].store.path
    assert log.durable_lengths() == {first: 68}
    await log.append_batch([b"y" * 60])  # rolls over: new file, not yet durable
    assert len(log.segments) == 2
    assert log.durable_lengths() == {first: 68}
    await log.sync()
    assert log.durable_lengths() == {first: 68, log.segments[1].store.path: 68}
    log.truncate_after(0)
    assert log.durable_lengths() == {first: 68}
    await log.close()


async def test_truncate_after_fails_appenders_waiting_for_removed_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real = log_module._fsync_job

    def slow(fds: list[int], dir_fd: int) -> None:
        gate.wait(5)
        real(fds, dir_fd)

    monkeypatch.setattr(log_module, "_fsync_job", slow)
    log = Log.open(tmp_path, LogConfig())
    task = asyncio.ensure_future(log.append_batch(recs(5)))
    await asyncio.sleep(0)
    log.truncate_after(1)
    gate.set()
    with pytest.raises(DurabilityError):
        await asyncio.wait_for(task, 5)
    await log.close()


async def test_snapshot_reader_and_restore_roundtrip(tmp_path: Path) -> None:
    log = Log.open(tmp_path / "a", SMALL)
    await log.append_batch(recs(80))
    log.truncate(30)
    with log.reader() as reader:
        chunks = list(reader.chunks(37))
    assert all(len(c) <= 37 for c in chunks)
    restored = Log.restore(tmp_path / "b", chunks, SMALL)
    assert restored.lowest_offset == log.lowest_offset
    assert restored.next_offset == 80
    for i in range(log.lowest_offset, 80):
        assert restored.read(i) == log.read(i)
    # A file-like source works too; a damaged stream is refused and leaves nothing.
    with log.reader() as reader:
        data = bytearray(reader.read())
    data[40] ^= 1
    with pytest.raises(SnapshotFormatError):
        Log.restore(tmp_path / "c", [bytes(data)], SMALL)
    assert not (tmp_path / "c").exists()
    with pytest.raises(SnapshotFormatError):
        Log.restore(tmp_path / "d", [bytes(data[:-3])], SMALL)
    await log.close()
    await restored.close()


async def test_closed_log_refuses_calls_and_reset_reopens(tmp_path: Path) -> None:
    log = Log.open(tmp_path, SMALL)
    await log.append_batch(recs(30))
    await log.close()
    with pytest.raises(LogClosedError):
        log.read(0)
    with pytest.raises(LogClosedError):
        await log.append(b"x")
    log.reset(7)
    assert (log.lowest_offset, log.next_offset) == (7, 7)
    assert await log.append(b"x") == 7
    assert sorted(p.suffix for p in tmp_path.iterdir()) == ["", ".index", ".store"]  # + LOCK
    log.remove()
    assert not tmp_path.exists()


def test_close_sync_without_event_loop(tmp_path: Path) -> None:
    log = Log.open(tmp_path, SMALL)
    log.append_batch_nosync(recs(50))
    log.close_sync()
    log = Log.open(tmp_path, SMALL)
    assert log.next_offset == 50
    log.close_sync()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_store_bytes": 0}, "max_store_bytes"),
        ({"max_index_bytes": 13}, "max_index_bytes"),
        ({"max_index_bytes": 6}, "max_index_bytes"),
        ({"initial_offset": -1}, "initial_offset"),
        ({"sync": "always"}, "sync"),
        ({"sync_interval_s": 0}, "sync_interval_s"),
        ({"sync_timeout_s": float("nan")}, "sync_timeout_s"),
    ],
)
def test_config_validation_names_the_field(
    tmp_path: Path, kwargs: dict[str, object], field: str
) -> None:
    config = LogConfig(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=field):
        config.validate()
    with pytest.raises(ConfigError):
        Log.open(tmp_path, config)


def test_unrelated_files_are_left_alone_and_orphan_index_removed(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "00000000000000000099.index").write_bytes(bytes(24))
    log = Log.open(tmp_path, SMALL)
    assert (tmp_path / "notes.txt").exists()
    assert not (tmp_path / "00000000000000000099.index").exists()
    log.close_sync()
    assert os.path.exists(tmp_path / "00000000000000000000.store")


async def test_fsync_started_before_a_suffix_cut_does_not_vouch_for_rewritten_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    calls: list[int] = []
    real = log_module._fsync_job

    def first_is_slow(fds: list[int], dir_fd: int) -> None:
        calls.append(1)
        if len(calls) == 1:
            gate.wait(5)
        real(fds, dir_fd)

    monkeypatch.setattr(log_module, "_fsync_job", first_is_slow)
    log = Log.open(tmp_path, LogConfig())
    old = asyncio.ensure_future(log.append_batch(recs(10)))
    await wait_until(lambda: bool(calls), 5, "the first fsync to start")
    log.truncate_after(4)  # while the first fsync (covering offsets 0..9) is running
    new = asyncio.ensure_future(log.append_batch([b"new-5", b"new-6", b"new-7"]))
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.wait_for(new, 5) == 5
    assert len(calls) >= 2  # the rewritten records needed an fsync of their own
    with pytest.raises(DurabilityError):
        await old
    store = log.segments[0].store
    assert log.durable_lengths() == {store.path: store.size}
    await log.close()


def test_one_open_log_per_directory(tmp_path: Path) -> None:
    log = Log.open(tmp_path, SMALL)
    with pytest.raises(LogError, match="in use"):
        Log.open(tmp_path, SMALL)
    log.close_sync()
    Log.open(tmp_path, SMALL).close_sync()  # the lock goes with the close


def test_failed_write_leaves_no_partial_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Log.open(tmp_path, SMALL)
    log.append_batch_nosync([b"kept"])
    store = log.segments[-1].store
    real_pwrite = os.pwrite

    def half_then_full(fd: int, data: bytes, pos: int) -> int:
        real_pwrite(fd, bytes(memoryview(data)[: len(data) // 2]), pos)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half_then_full)
    with pytest.raises(OSError):
        log.append_batch_nosync([b"x" * 50])
    monkeypatch.undo()
    assert os.path.getsize(store.path) == store.size == 12
    assert log.append_batch_nosync([b"next"]) == 1
    log.close_sync()
    log = Log.open(tmp_path, SMALL)
    assert [log.read(0), log.read(1)] == [b"kept", b"next"]
    log.close_sync()

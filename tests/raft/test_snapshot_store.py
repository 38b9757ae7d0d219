"""Snapshot store: atomic finalize, retention, crash leftovers, corruption detection."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from raftlog.raft.snapshot_store import (
    CorruptSnapshotError,
    SnapshotNotFoundError,
    SnapshotSinkClosedError,
    SnapshotStore,
    StoredSnapshot,
)

pytestmark = pytest.mark.timeout(20)


def make(
    store: SnapshotStore, index: int, term: int, data: bytes, meta: bytes = b""
) -> StoredSnapshot:
    sink = store.create(index, term, meta)
    for i in range(0, len(data), 1000):
        sink.write(data[i : i + 1000])
    return sink.commit_sync()


def read_all(store: SnapshotStore, snapshot_id: str) -> bytes:
    _, reader = store.open(snapshot_id)
    with reader:
        out = b""
        while chunk := reader.read(4096):
            out += chunk
        assert reader.verified
        return out


async def test_create_commit_list_open_round_trip(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    assert store.list() == [] and store.latest() is None
    data = os.urandom(300_000)
    sink = store.create(120, 5, b"\x00membership\xff")
    await sink.write_async(data[:100_000])
    sink.write(data[100_000:])
    assert sink.size == len(data)
    meta = await sink.commit()
    assert (meta.index, meta.term, meta.size, meta.metadata) == (
        120,
        5,
        300_000,
        b"\x00membership\xff",
    )
    assert store.list() == [meta]
    assert read_all(store, meta.id) == data
    opened, reader = store.open(meta.id)
    reader.close()
    assert opened == meta
    # A fresh store object on the same directory sees the same snapshot.
    assert SnapshotStore(tmp_path / "snaps").list() == [meta]
    with pytest.raises(SnapshotSinkClosedError):
        sink.write(b"late")
    with pytest.raises(SnapshotSinkClosedError):
        sink.commit_sync()


def test_list_is_newest_first_and_retention_keeps_last_n(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, retain=2)
    a = make(store, 10, 1, b"a")
    b = make(store, 20, 1, b"b")
    assert [s.id for s in store.list()] == [b.id, a.id]
    c = make(store, 30, 2, b"c")
    assert [s.id for s in store.list()] == [c.id, b.id]
    assert not (tmp_path / a.id).exists()
    with pytest.raises(SnapshotNotFoundError):
        store.open(a.id)
    # Same index, higher term is newer; retention counts complete snapshots only.
    d = make(store, 30, 3, b"d")
    assert [s.id for s in store.list()] == [d.id, c.id]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([c.id, d.id])


def test_retain_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retain"):
        SnapshotStore(tmp_path, retain=0)
    with pytest.raises(ValueError, match="index"):
        SnapshotStore(tmp_path).create(-1, 0)


def test_abort_and_context_manager_leave_nothing(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    sink = store.create(5, 1)
    sink.write(b"partial")
    sink.abort()
    sink.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), store.create(6, 1) as sink2:
        sink2.write(b"x")
        raise RuntimeError("state machine failed mid-snapshot")
    assert list(tmp_path.iterdir()) == []
    assert store.list() == []


def test_uncommitted_snapshot_is_invisible_and_crash_leftovers_are_cleaned(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    good = make(store, 7, 1, b"good")
    sink = store.create(9, 2)
    sink.write(b"in progress")
    assert [s.id for s in store.list()] == [good.id]
    with pytest.raises(SnapshotNotFoundError):
        store.open(sink.id)
    # Simulate a crash: the process dies with the temp dir (and a half-deleted one) on disk.
    (tmp_path / f"{good.id}.deleting.tmp").mkdir()
    reopened = SnapshotStore(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.id]
    assert [s.id for s in reopened.list()] == [good.id]


def test_commit_order_fsync_then_rename_then_dir_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(tmp_path)
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        assert store.list() == [], "nothing may be visible before the rename"
        events.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    make(store, 1, 1, b"data")
    # data file, meta file, temp dir (its entries), rename, parent dir.
    assert events == ["fsync-file", "fsync-file", "fsync-dir", "rename", "fsync-dir"]


def test_corrupt_meta_is_detected_and_skipped(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, retain=5)
    old = make(store, 1, 1, b"old")
    new = make(store, 2, 1, b"new")
    meta_path = tmp_path / new.id / "meta.json"
    raw = bytearray(meta_path.read_bytes())
    raw[-5] ^= 0x20
    meta_path.write_bytes(bytes(raw))
    assert [s.id for s in store.list()] == [old.id], "the corrupt one is skipped"
    with pytest.raises(CorruptSnapshotError, match="checksum"):
        store.open(new.id)
    (tmp_path / old.id / "meta.json").unlink()
    with pytest.raises(CorruptSnapshotError, match=r"no meta\.json"):
        store.open(old.id)
    assert store.list() == []


def test_corrupt_or_truncated_data_is_detected(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, retain=5)
    flipped = make(store, 1, 1, b"0123456789" * 1000)
    truncated = make(store, 2, 1, b"abcdefghij" * 1000)
    data_path = tmp_path / flipped.id / "data"
    raw = bytearray(data_path.read_bytes())
    raw[5000] ^= 0x01
    data_path.write_bytes(bytes(raw))
    with pytest.raises(CorruptSnapshotError, match="does not match"):
        store.verify(flipped.id)
    _, reader = store.open(flipped.id)
    with reader, pytest.raises(CorruptSnapshotError):
        reader.read()
    with (tmp_path / truncated.id / "data").open("r+b") as f:
        f.truncate(10)
    with pytest.raises(CorruptSnapshotError, match="10 bytes"):
        store.open(truncated.id)


def test_open_rejects_bad_ids(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    for bad in ("", "../x", ".hidden", "nope", "1-1-1.tmp"):
        with pytest.raises(SnapshotNotFoundError):
            store.open(bad)


async def test_async_commit_runs_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(tmp_path)
    sink = store.create(3, 1)
    sink.write(b"x" * 10)
    loop_thread = threading.get_ident()
    seen: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(threading.get_ident())
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    meta = await sink.commit()
    assert seen and all(t != loop_thread for t in seen)
    assert store.verify(meta.id) == meta

"""The on-disk stores of a :class:`~raftlog.raft.node.RaftNode`, under one ``data_dir``::

    <data_dir>/raft-log/     the log store (:class:`raftlog.raft.logstore.RaftLogStore`)
    <data_dir>/stable/       term, vote and commit (:class:`raftlog.raft.stable.StableStore`)
    <data_dir>/snapshots/    snapshots (:class:`DiskSnapshotStore` over
                             :class:`raftlog.raft.snapshot_store.SnapshotStore`)

:func:`open_disk_stores` opens all three in a worker thread (the log engine verifies its
tail on open). :class:`DiskSnapshotStore` runs every blocking file operation of the
snapshot store in a worker thread, so that the node's event loop never waits on a disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from raftlog.log import LogConfig
from raftlog.raft.fsm import SnapshotSource
from raftlog.raft.logstore import RaftLogStore
from raftlog.raft.snapshot_store import (
    DEFAULT_RETAIN,
    SnapshotReader,
    SnapshotSink,
    SnapshotStore,
    StoredSnapshot,
)
from raftlog.raft.stable import StableStore


class _DiskChunks:
    def __init__(self, reader: SnapshotReader) -> None:
        self._reader = reader

    async def read(self, n: int) -> bytes:
        return await asyncio.to_thread(self._reader.read, n)

    async def close(self) -> None:
        await asyncio.to_thread(self._reader.close)


class _DiskIncoming:
    def __init__(self, sink: SnapshotSink) -> None:
        self._sink = sink

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._sink.write, data)

    async def commit(self) -> StoredSnapshot:
        return await self._sink.commit()

    def abort(self) -> None:
        self._sink.abort()


class DiskSnapshotStore:
    """:class:`raftlog.raft.storage.SnapshotStorage` over a :class:`SnapshotStore`."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store

    async def latest(self) -> StoredSnapshot | None:
        return await asyncio.to_thread(self.store.latest)

    def _find(self, index: int, term: int) -> StoredSnapshot | None:
        for s in self.store.list():
            if (s.index, s.term) == (index, term):
                return s
        return None

    async def find(self, index: int, term: int) -> StoredSnapshot | None:
        return await asyncio.to_thread(self._find, index, term)

    async def save(
        self, index: int, term: int, metadata: bytes, chunks: Iterable[bytes]
    ) -> StoredSnapshot:
        store = self.store

        def work() -> StoredSnapshot:
            sink = store.create(index, term, metadata)
            with sink:
                for chunk in chunks:
                    sink.write(chunk)
                return sink.commit_sync()

        return await asyncio.to_thread(work)

    async def restore(self, snapshot_id: str, into: Callable[[SnapshotSource], None]) -> None:
        store = self.store

        def work() -> None:
            _, reader = store.open(snapshot_id)
            with reader:
                into(reader)
                while reader.read(1 << 20):
                    pass  # reach the end so that the checksum is verified

        await asyncio.to_thread(work)

    async def open_chunks(self, snapshot_id: str) -> _DiskChunks:
        _, reader = await asyncio.to_thread(self.store.open, snapshot_id)
        return _DiskChunks(reader)

    async def create(self, index: int, term: int, metadata: bytes) -> _DiskIncoming:
        sink = await asyncio.to_thread(self.store.create, index, term, metadata)
        return _DiskIncoming(sink)


@dataclass(frozen=True, slots=True)
class DiskStores:
    """The three stores of one node's ``data_dir``."""

    log: RaftLogStore
    stable: StableStore
    snapshots: DiskSnapshotStore


def open_disk_stores_sync(
    data_dir: Path,
    *,
    fsync: bool = True,
    snapshot_retain: int = DEFAULT_RETAIN,
    log_config: LogConfig | None = None,
) -> DiskStores:
    """Blocking: create ``data_dir`` if needed and open the three stores in it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    stable = StableStore(data_dir / "stable", fsync=fsync)
    snapshots = SnapshotStore(data_dir / "snapshots", retain=snapshot_retain, fsync=fsync)
    log = RaftLogStore.open(data_dir / "raft-log", fsync=fsync, config=log_config)
    return DiskStores(log, stable, DiskSnapshotStore(snapshots))


async def open_disk_stores(
    data_dir: Path,
    *,
    fsync: bool = True,
    snapshot_retain: int = DEFAULT_RETAIN,
    log_config: LogConfig | None = None,
) -> DiskStores:
    """:func:`open_disk_stores_sync` in a worker thread."""
    return await asyncio.to_thread(
        open_disk_stores_sync,
        data_dir,
        fsync=fsync,
        snapshot_retain=snapshot_retain,
        log_config=log_config,
    )


__all__ = ["DiskSnapshotStore", "DiskStores", "open_disk_stores", "open_disk_stores_sync"]

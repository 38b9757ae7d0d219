"""In-memory stores for a :class:`~raftlog.raft.node.RaftNode` (tests and simulations).

Like hashicorp/raft's ``InmemStore`` and ``InmemSnapshotStore``: the same contracts as the
disk stores (:mod:`raftlog.raft.storage`), no file and no thread. Every coroutine answers
without awaiting anything, so nodes on these stores, the in-memory network and a
virtual-time loop (:mod:`raftlog.raft.simloop`) run the same way from the same seed.

A store object stands for one node's disk: keep it and hand it to the next ``RaftNode``
of the same id to model a restart. The log store tracks what was synced
(:attr:`InmemLogStore.durable_index`), so the persist-before-send rule stays checkable.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Callable, Iterable, Sequence

from raftlog.raft.fsm import SnapshotSource
from raftlog.raft.logstore import LogStoreError
from raftlog.raft.snapshot_store import (
    DEFAULT_RETAIN,
    CorruptSnapshotError,
    SnapshotNotFoundError,
    SnapshotSinkClosedError,
    StoredSnapshot,
)
from raftlog.raft.stable import StableState
from raftlog.raft.types import Entry


class InmemLogStore:
    """The Raft log in a list; ``sync`` marks every write durable."""

    def __init__(self, first_index: int = 1) -> None:
        if first_index < 1:
            raise ValueError(f"first_index must be at least 1, got {first_index}")
        self._entries: list[Entry] = []
        self._first = first_index
        self._durable = first_index
        self.syncs = 0

    @property
    def first_index(self) -> int:
        return self._first

    @property
    def last_index(self) -> int:
        return self._first + len(self._entries) - 1

    @property
    def next_index(self) -> int:
        return self._first + len(self._entries)

    @property
    def durable_index(self) -> int:
        return min(self._durable, self.next_index)

    def is_empty(self) -> bool:
        return not self._entries

    def describe(self) -> str:
        return "memory"

    def store(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        if first > self.next_index:
            raise LogStoreError(
                f"entries start at index {first}, leaving a gap after {self.last_index}"
            )
        if first < self._first:
            raise LogStoreError(
                f"entries start at index {first}, below the first stored index {self._first}"
            )
        for a, b in itertools.pairwise(entries):
            if b.index != a.index + 1:
                raise LogStoreError(f"entries are not contiguous at {a.index} -> {b.index}")
        del self._entries[first - self._first :]
        self._durable = min(self._durable, first)
        self._entries.extend(entries)

    async def sync(self) -> None:
        self._durable = self.next_index
        self.syncs += 1

    async def sync_exclusive(self) -> None:
        await self.sync()

    async def flush(self) -> None:
        await self.sync()

    def compact(self, through: int) -> None:
        drop = min(through + 1, self.next_index) - self._first
        if drop > 0:
            del self._entries[:drop]
            self._first += drop

    def reset(self, next_index: int) -> None:
        self._entries = []
        self._first = next_index
        self._durable = next_index

    def entry(self, index: int) -> Entry:
        if not self._first <= index <= self.last_index:
            raise LogStoreError(f"index {index} is not held ({self._first}..{self.last_index})")
        return self._entries[index - self._first]

    async def load_after(self, after: int) -> list[Entry]:
        return list(self._entries[max(0, after - self._first) :])

    async def close(self) -> None:
        # Closing syncs, as the disk store does; the store stays usable for a restart.
        await self.sync()


class InmemStableStore:
    """The hard state in an attribute; every save is durable at once."""

    def __init__(self) -> None:
        self.state: StableState | None = None
        self.saves = 0

    async def load(self) -> StableState | None:
        return self.state

    async def save(self, state: StableState) -> None:
        self.state = state
        self.saves += 1


class _Chunks:
    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    async def read(self, n: int) -> bytes:
        return self._buf.read(n)

    async def close(self) -> None:
        self._buf.close()


class _Incoming:
    def __init__(self, store: InmemSnapshotStore, index: int, term: int, metadata: bytes):
        self._store = store
        self._key = (index, term, bytes(metadata))
        self._parts: list[bytes] = []
        self._done = False

    async def write(self, data: bytes) -> None:
        if self._done:
            raise SnapshotSinkClosedError("snapshot sink is closed")
        self._parts.append(bytes(data))

    async def commit(self) -> StoredSnapshot:
        if self._done:
            raise SnapshotSinkClosedError("snapshot sink is closed")
        self._done = True
        index, term, metadata = self._key
        return self._store.put(index, term, metadata, b"".join(self._parts))

    def abort(self) -> None:
        self._done = True
        self._parts = []


class InmemSnapshotStore:
    """Complete snapshots in a dict, newest ``retain`` (default 2) kept."""

    def __init__(self, *, retain: int = DEFAULT_RETAIN) -> None:
        if retain < 1:
            raise ValueError(f"snapshot retain must be an integer >= 1, got {retain!r}")
        self.retain = retain
        self._snapshots: dict[str, tuple[StoredSnapshot, bytes]] = {}
        self._seq = itertools.count(1)

    def put(self, index: int, term: int, metadata: bytes, data: bytes) -> StoredSnapshot:
        """Store a complete snapshot (commit of a taken or received one) and apply the
        retention."""
        seq = next(self._seq)  # a counter, not a wall clock: runs replay exactly
        meta = StoredSnapshot(
            id=f"{term}-{index}-{seq}",
            index=index,
            term=term,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            metadata=metadata,
            created_ns=seq,
        )
        self._snapshots[meta.id] = (meta, data)
        keep = sorted(self._snapshots.values(), key=lambda s: s[0].sort_key(), reverse=True)
        for old, _ in keep[self.retain :]:
            del self._snapshots[old.id]
        return meta

    def list(self) -> list[StoredSnapshot]:
        """Complete snapshots, newest first."""
        return sorted((m for m, _ in self._snapshots.values()), key=StoredSnapshot.sort_key)[::-1]

    def _data(self, snapshot_id: str) -> bytes:
        held = self._snapshots.get(snapshot_id)
        if held is None:
            raise SnapshotNotFoundError(f"no snapshot {snapshot_id!r}")
        meta, data = held
        if hashlib.sha256(data).hexdigest() != meta.sha256:
            raise CorruptSnapshotError(f"snapshot {snapshot_id}: checksum mismatch")
        return data

    async def latest(self) -> StoredSnapshot | None:
        snaps = self.list()
        return snaps[0] if snaps else None

    async def find(self, index: int, term: int) -> StoredSnapshot | None:
        for s in self.list():
            if (s.index, s.term) == (index, term):
                return s
        return None

    async def save(
        self, index: int, term: int, metadata: bytes, chunks: Iterable[bytes]
    ) -> StoredSnapshot:
        return self.put(index, term, metadata, b"".join(chunks))

    async def restore(self, snapshot_id: str, into: Callable[[SnapshotSource], None]) -> None:
        into(io.BytesIO(self._data(snapshot_id)))

    async def open_chunks(self, snapshot_id: str) -> _Chunks:
        return _Chunks(self._data(snapshot_id))

    async def create(self, index: int, term: int, metadata: bytes) -> _Incoming:
        return _Incoming(self, index, term, metadata)


__all__ = ["InmemLogStore", "InmemSnapshotStore", "InmemStableStore"]

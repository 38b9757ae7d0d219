"""What a :class:`~raftlog.raft.node.RaftNode` needs from its stores (declared by their user).

Three stores, in the manner of hashicorp/raft's LogStore, StableStore and SnapshotStore:

- :class:`LogStorage`: the Raft log. Writes land in memory or the page cache; ``sync``
  makes them durable. The disk store is :class:`raftlog.raft.logstore.RaftLogStore`.
- :class:`StableStorage`: the hard state (term, vote, commit), saved atomically and
  durably. On disk: :class:`raftlog.raft.stable.StableStore`.
- :class:`SnapshotStorage`: complete snapshots, and snapshots being received. On disk:
  :class:`raftlog.raft.disk.DiskSnapshotStore`.

Every method that may block on a disk is a coroutine, so a disk store can run it in a
worker thread while an in-memory store (:mod:`raftlog.raft.inmem`) answers at once, with
no thread: that keeps a run of in-memory nodes deterministic on a virtual-time loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from raftlog.raft.fsm import SnapshotSource
from raftlog.raft.snapshot_store import StoredSnapshot
from raftlog.raft.stable import StableState
from raftlog.raft.types import Entry


class LogStorage(Protocol):
    """The Raft log of one node; the node's driver is its only writer."""

    @property
    def first_index(self) -> int:
        """Index of the oldest entry held (``last_index + 1`` when empty)."""

    @property
    def last_index(self) -> int:
        """Index of the newest entry held (``first_index - 1`` when empty)."""

    @property
    def durable_index(self) -> int:
        """Every entry below this index is durable (what persist-before-send checks)."""

    def is_empty(self) -> bool: ...

    def describe(self) -> str:
        """Where the log lives, for messages (a directory, or "memory")."""

    def store(self, entries: Sequence[Entry]) -> None:
        """Raft's append: drop every entry at or after ``entries[0].index``, then write
        ``entries`` (not yet durable)."""

    async def sync(self) -> None:
        """Make every write so far durable."""

    async def sync_exclusive(self) -> None:
        """:meth:`sync` for a caller that does not touch the store until it returns."""

    async def flush(self) -> None:
        """Make every write durable now, even when the store was opened to skip fsyncs
        (``NodeConfig.fsync`` False): the agent's interval sync calls it."""

    def compact(self, through: int) -> None:
        """Entries up to ``through`` are in a durable snapshot: they may be dropped."""

    def reset(self, next_index: int) -> None:
        """Drop every entry; the log continues at ``next_index``."""

    async def load_after(self, after: int) -> list[Entry]:
        """Every entry from ``max(after, first_index)`` to the end (startup)."""

    async def close(self) -> None:
        """Sync and close. Idempotent."""


class StableStorage(Protocol):
    """The hard state of one node."""

    async def load(self) -> StableState | None:
        """The saved state, or None if nothing was ever saved."""

    async def save(self, state: StableState) -> None:
        """Replace the state atomically and durably."""


class SnapshotChunks(Protocol):
    """Reads one stored snapshot's data in chunks (streaming it to a follower)."""

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" at the end."""

    async def close(self) -> None: ...


class IncomingSnapshot(Protocol):
    """A snapshot being received: written chunk by chunk, then committed or aborted."""

    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> StoredSnapshot:
        """Make the snapshot complete, durable and visible; return its description."""

    def abort(self) -> None:
        """Drop what was written (idempotent, also after commit)."""


class SnapshotStorage(Protocol):
    """The snapshots of one node."""

    async def latest(self) -> StoredSnapshot | None:
        """The newest complete snapshot, or None."""

    async def find(self, index: int, term: int) -> StoredSnapshot | None:
        """The complete snapshot at (``index``, ``term``), or None."""

    async def save(
        self, index: int, term: int, metadata: bytes, chunks: Iterable[bytes]
    ) -> StoredSnapshot:
        """Write a snapshot taken locally from ``chunks`` (the state machine's iterator,
        which a disk store consumes in its worker thread) and make it durable."""

    async def restore(self, snapshot_id: str, into: Callable[[SnapshotSource], None]) -> None:
        """Call ``into`` with a reader of the snapshot's data, then read to the end so that
        the data's checksum is verified (a disk store runs both in a worker thread)."""

    async def open_chunks(self, snapshot_id: str) -> SnapshotChunks:
        """A reader of the snapshot's data, to stream it."""

    async def create(self, index: int, term: int, metadata: bytes) -> IncomingSnapshot:
        """Start receiving the snapshot at (``index``, ``term``)."""


__all__ = [
    "IncomingSnapshot",
    "LogStorage",
    "SnapshotChunks",
    "SnapshotStorage",
    "StableStorage",
]

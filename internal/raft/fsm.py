"""The state machine a :class:`~raftlog.raft.node.RaftNode` replicates (the user's FSM).

The node calls these methods from one place only (its driver), never concurrently with
each other, in log order. What runs where:

- :meth:`StateMachine.apply` runs **on the event loop**, between two Raft rounds: keep it
  quick (page-cache writes, dictionary updates); never wait on the network or on fsync
  there. Durability of what the state machine writes is not required: after a crash the
  node restores the newest snapshot and applies the committed entries after it again,
  starting right after :meth:`StateMachine.applied_index`.
- :meth:`StateMachine.snapshot` runs on the event loop and must capture a point-in-time
  view at once; the chunks it returns are read later **in a worker thread**, while
  :meth:`apply` goes on with newer entries. The chunks must therefore not change when later
  entries are applied (a copy, or a reader bounded to the current end of an append-only
  file, as :meth:`raftlog.log.Log.reader` is).
- :meth:`StateMachine.restore` runs **in a worker thread** (it may block: rebuild files,
  fsync). It replaces the whole state with the snapshot's. Nothing else of the state machine
  is called meanwhile; readers outside Raft that touch the state machine concurrently must
  synchronise with it themselves.

An exception from any of these is fatal for the node: a replica whose state machine
diverged must not keep acknowledging writes. The node stops and fails every pending request
with :class:`~raftlog.raft.node.NodeFailedError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from raftlog.raft.types import Entry, SnapshotMeta


@runtime_checkable
class SnapshotSource(Protocol):
    """What :meth:`StateMachine.restore` reads: a file-like object over the snapshot data.

    ``read(n)`` returns up to ``n`` bytes (``b""`` at the end; ``n < 0`` reads the rest).
    The node hands a :class:`raftlog.raft.snapshot_store.SnapshotReader`, which verifies the
    data's SHA-256 when the end is reached and raises on a mismatch: read it to the end.
    """

    def read(self, n: int = -1) -> bytes: ...


@runtime_checkable
class StateMachine(Protocol):
    """A deterministic state machine fed with committed log entries. See the module docs."""

    def applied_index(self) -> int:
        """Highest Raft index whose effects this state machine keeps across a restart.

        Called once when the node starts. A machine kept in memory returns 0 (the node then
        restores the newest snapshot and replays the log after it); a machine with durable
        state returns the index of the last entry it holds, and the node resumes after it
        (restoring the snapshot only if the snapshot is newer).
        """
        ...

    def apply(self, entries: Sequence[Entry]) -> Sequence[Any]:
        """Apply committed application entries, in index order; return one result each.

        Only ``EntryType.NORMAL`` entries are passed (no-ops and membership changes are
        Raft's own business). ``entries`` is never empty. Each result is handed to the
        proposer of that entry (``ApplyResult.result``); return ``None`` where there is
        nothing to say. Runs on the event loop: keep it quick.
        """
        ...

    def snapshot(self) -> Iterable[bytes]:
        """Capture the current state (everything applied so far) and return its bytes in
        chunks. Capture now, on the event loop; the chunks are read later in a worker thread
        while newer entries are applied, so they must not see those entries."""
        ...

    def restore(self, source: SnapshotSource, meta: SnapshotMeta) -> None:
        """Replace the whole state with the snapshot in ``source`` (covering the log up to
        ``meta.index``). Runs in a worker thread; may block."""
        ...


@runtime_checkable
class CatchUpStateMachine(Protocol):
    """Optional: a state machine whose snapshots reference durable state it already holds
    (the commit log), so that a follower receives only what it lacks.

    - :meth:`resume_point` (follower side, on the loop): how much this replica holds,
      made durable first; sent back in the acknowledgement of a snapshot's first chunk.
    - :meth:`snapshot_stream` (leader side, on the loop): the bytes to send for the stored
      snapshot whose data starts with ``head`` to a follower at ``resume``; iterated in a
      worker thread. None: send the stored data as it is.
    """

    async def resume_point(self) -> int: ...

    def snapshot_stream(
        self, head: bytes, resume: int, peer: str = ""
    ) -> Iterator[bytes] | None: ...

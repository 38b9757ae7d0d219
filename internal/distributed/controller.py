"""The controller: a small Raft group whose state machine is the cluster's metadata.

Topics, their settings and the assignment of every partition replica
(:class:`raftlog.partitions.ClusterMetadata`) live in one Raft group of their own, the
controller (group id :data:`CONTROLLER_GROUP` on the node's GroupRouter), whose voters
are the first few nodes (3 or 5) and whose learners are all the others: so every node
holds the metadata, and learns each change as the log reaches it.

::

    submit(CreateTopic(...))                     every node (voter or learner)
        -> entry {"command", "fields", "now"}     ControllerFSM.apply(entry)
        -> controller log, committed              -> ClusterMetadata.apply(command, now)
        -> ApplyResult.result: Applied/Rejected   -> watchers woken (metadata changed)

``now`` is the proposer's clock, written into the entry (apply never reads a clock). An
entry that does not decode is applied as a rejection (``UNKNOWN_COMMAND``), never raised:
a state machine must apply every committed entry the same way on every node. Snapshots are
the metadata's own sorted-key JSON (:meth:`ClusterMetadata.encode`).

Not here yet: who feeds Serf's member events in (``NodeUp``/``NodeDown``), the planner
loop that carries out replica moves, and the agent's wiring (docs/partitions.md, Status).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence

from raftlog.partitions import (
    Applied,
    ClusterMetadata,
    Command,
    CommandDecodeError,
    MetadataDecodeError,
    Reason,
    Rejected,
    Result,
    decode_command,
    encode_command,
)
from raftlog.raft import Entry, SnapshotMeta
from raftlog.raft.fsm import SnapshotSource
from raftlog.raft.node import RaftNode

#: The controller group's id on a node's GroupRouter (partition groups are "<topic>/<p>",
#: and topic names never contain "/", nor start with "_").
CONTROLLER_GROUP = "_controller"
#: How soon :meth:`ControllerFSM.wait_until` sees a restored snapshot, in seconds.
RESTORE_POLL_S = 0.05
#: Longest wait of :meth:`Controller.submit` by default, in seconds.
DEFAULT_SUBMIT_TIMEOUT_S = 10.0


class ControllerFSM:
    """The controller group's state machine (a :class:`raftlog.raft.fsm.StateMachine`):
    :class:`ClusterMetadata` in memory, rebuilt from the newest snapshot and the log after
    it on every start. ``metadata`` is replaced, never mutated in place, on restore."""

    def __init__(self) -> None:
        self.metadata = ClusterMetadata()
        #: Raft index of the last entry applied (0 before any).
        self.applied = 0
        self._watchers: list[Callable[[ClusterMetadata], None]] = []
        self._changed = asyncio.Event()

    def watch(self, watcher: Callable[[ClusterMetadata], None]) -> None:
        """Call ``watcher(metadata)`` on the event loop after each applied batch (not
        after a restore, which runs in a worker thread: the next batch reports it)."""
        self._watchers.append(watcher)

    # -- StateMachine ---------------------------------------------------------------------

    def applied_index(self) -> int:
        return 0  # in memory: the node restores the snapshot and replays the log after it

    def apply(self, entries: Sequence[Entry]) -> Sequence[Result]:
        results: list[Result] = []
        for entry in entries:
            try:
                command, now = decode_command(entry.data)
            except CommandDecodeError as exc:
                results.append(Rejected(Reason.UNKNOWN_COMMAND, str(exc)))
            else:
                results.append(self.metadata.apply(command, now))
            self.applied = entry.index
        self._changed.set()
        for watcher in list(self._watchers):
            watcher(self.metadata)
        return results

    def snapshot(self) -> Iterable[bytes]:
        return [self.metadata.encode()]

    def restore(self, source: SnapshotSource, meta: SnapshotMeta) -> None:
        data = source.read()
        try:
            metadata = ClusterMetadata.decode(data)
        except MetadataDecodeError as exc:
            raise ValueError(f"controller snapshot at index {meta.index}: {exc}") from exc
        self.metadata = metadata
        self.applied = meta.index

    # -- waiting --------------------------------------------------------------------------

    async def wait_until(
        self, condition: Callable[[ClusterMetadata], bool], timeout_s: float
    ) -> ClusterMetadata:
        """Return the metadata once ``condition`` holds for it; TimeoutError after
        ``timeout_s`` seconds. Woken by each applied batch; a restore (which runs in a
        worker thread, where the loop's event cannot be set) is seen within
        ``RESTORE_POLL_S``."""
        async with asyncio.timeout(timeout_s):
            while not condition(self.metadata):
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RESTORE_POLL_S):
                        await self._changed.wait()
        return self.metadata


class Controller:
    """Submits commands to the controller group through this node's replica of it.

    ``clock``: seconds since the epoch stamped into each entry (default ``time.time``).
    """

    def __init__(
        self, node: RaftNode, fsm: ControllerFSM, clock: Callable[[], float] = time.time
    ) -> None:
        self.node = node
        self.fsm = fsm
        self._clock = clock

    @property
    def metadata(self) -> ClusterMetadata:
        """This node's copy of the metadata (as far as its log has been applied)."""
        return self.fsm.metadata

    async def submit(self, command: Command, timeout_s: float = DEFAULT_SUBMIT_TIMEOUT_S) -> Result:
        """Commit ``command`` and return what applying it gave (:class:`Applied` or
        :class:`Rejected`). Must run on the controller's leader: raises the node's
        NotLeaderError (naming the leader) elsewhere, ProposalTimeoutError after
        ``timeout_s`` seconds."""
        applied = await self.node.propose(encode_command(command, self._clock()), timeout=timeout_s)
        result = applied.result
        assert isinstance(result, Applied | Rejected), result
        return result

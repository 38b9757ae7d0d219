"""Named errors of the Raft core and of its asyncio runtime (:class:`RaftNode`).

Each error says whether retrying may help (``retriable``) and whether the caller should
refresh its idea of who the leader is (``refresh_leader``), so that the runtime and the gRPC
layer can map them to status codes without guessing.
"""

from __future__ import annotations

from raftlog.raft.types import NO_NODE, NodeId


class RaftError(Exception):
    """Base class of every error raised by the Raft package."""

    retriable: bool = False
    refresh_leader: bool = False


class NotLeaderError(RaftError):
    """This node cannot accept the request because it is not the leader.

    ``leader_id``/``leader_address`` name the leader this node knows of (empty if none):
    forward the request there, or retry after a leader is elected.
    """

    retriable = True
    refresh_leader = True

    def __init__(self, leader_id: NodeId = NO_NODE, leader_address: str = "") -> None:
        self.leader_id = leader_id
        self.leader_address = leader_address
        hint = f"leader is {leader_id!r} at {leader_address!r}" if leader_id else "no known leader"
        super().__init__(f"not the leader ({hint})")


class LeadershipTransferInProgressError(RaftError):
    """The leader is handing over leadership and refuses new proposals until that ends."""

    retriable = True
    refresh_leader = True


class ConfChangeError(RaftError):
    """A membership change is invalid for the current membership (not retriable as is)."""


class ConfChangeInProgressError(RaftError):
    """Another membership change is not yet committed, or the new leader has not yet
    committed an entry of its term; only one change may be in flight at a time."""

    retriable = True


class ReadyOutstandingError(RaftError):
    """``ready()`` was called again before ``advance()`` acknowledged the previous Ready."""


class ConfigError(RaftError, ValueError):
    """A RaftConfig field is invalid on its own or against another field."""


class CodecError(RaftError, ValueError):
    """Bytes from the wire or disk do not decode to a valid Raft value."""


class SnapshotError(RaftError):
    """A snapshot request does not fit the log (index not applied, or already compacted)."""


class BootstrapError(RaftError):
    """A node with existing Raft state was asked to bootstrap (it must restart instead)."""


class TransferError(RaftError):
    """A leadership transfer cannot start (no other voter, or the target is not a voter)."""


# -- raised by the runtime (RaftNode) -------------------------------------------------


class NodeClosedError(RaftError):
    """The node was closed (or is closing) before the request finished. Try another node."""

    retriable = True
    refresh_leader = True


class NodeFailedError(RaftError):
    """The node stopped after a fatal error (storage or state machine); see the cause.

    A replica that cannot persist or apply must not go on acknowledging: every pending and
    later request fails with this error until the node is closed and restarted.
    """

    retriable = True
    refresh_leader = True


class DiskFullError(RaftError):
    """The node's disk has no space left (ENOSPC on a write or an fsync): it refuses new
    writes until a retry of the failed write succeeds, and keeps serving what it holds.

    ``node_id`` and ``directory`` name where space must be freed. Retriable: on another
    node at once, or on this one once there is room (nothing is lost or half-written: the
    failed write is cut back and written again from memory).
    """

    retriable = True

    def __init__(self, node_id: NodeId, directory: str, cause: BaseException | None = None) -> None:
        self.node_id = node_id
        self.directory = directory
        why = f" ({cause})" if cause is not None else ""
        super().__init__(
            f"node {node_id!r} has no space left in its data directory {directory}{why}: "
            "writes are refused until space is freed"
        )


class OutcomeUnknownError(RaftError):
    """The request may or may not have taken effect (timeout, or its entry was folded into
    an installed snapshot before this node saw it). Retrying may apply it twice; readers
    can check the log. Not retriable as is."""


class ProposalTimeoutError(OutcomeUnknownError, TimeoutError):
    """The proposal did not commit and apply within its timeout; it may still commit."""


class ReadBarrierTimeoutError(RaftError, TimeoutError):
    """The read barrier could not confirm leadership within its timeout (safe to retry)."""

    retriable = True
    refresh_leader = True


class WaitTimeoutError(RaftError, TimeoutError):
    """A condition awaited on the node (leader known, index applied) did not hold in time."""

    retriable = True

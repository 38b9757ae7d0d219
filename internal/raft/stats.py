"""Counters of one :class:`~raftlog.raft.node.RaftNode` (metrics, tests, the benchmark)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NodeStats:
    """Counters of one node, for metrics, tests and the benchmark."""

    #: Ready rounds handled.
    rounds: int = 0
    #: Rounds that fsynced the log (and/or the hard state).
    syncs: int = 0
    #: Entries written to the log store, and committed entries applied.
    entries_persisted: int = 0
    entries_applied: int = 0
    #: Messages sent before the local fsync (leader optimisation) and after it.
    sent_early: int = 0
    sent_late: int = 0
    #: Inbound payloads that did not decode, or were addressed to another node.
    bad_payloads: int = 0
    #: Snapshots taken locally, streamed to followers, received from a leader.
    snapshots_taken: int = 0
    snapshots_sent: int = 0
    snapshots_received: int = 0
    #: Snapshot streams that failed (sender side).
    snapshot_send_failures: int = 0
    #: Bytes of snapshot data sent to followers and received from leaders (chunk data).
    snapshot_bytes_sent: int = 0
    snapshot_bytes_received: int = 0
    #: Commit indexes sent by the deferred-commit timer (``commit_broadcast_delay``), not
    #: by an append or a heartbeat that happened to go first.
    commit_broadcasts: int = 0


__all__ = ["NodeStats"]

"""What the core hands the runtime: :class:`Ready` (the work of one round, and which of
its messages may leave before the fsync), and the read-only :class:`Status`."""

from __future__ import annotations

from dataclasses import dataclass

from raftlog.raft.types import (
    Entry,
    HardState,
    Membership,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Role,
    SnapshotMeta,
    SoftState,
)


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the runtime must do now, in this order: persist, send, apply.

    Attributes:
        hard_state: persist it (term, vote, commit) if not None, before sending ``messages``.
        entries: append these to the log store, first deleting any stored entry with an index
            >= ``entries[0].index`` (a new leader may have overwritten an uncommitted suffix).
        snapshot: a snapshot received from the leader (its data is already in the snapshot
            store): record it as the newest snapshot, delete the whole log store (the log now
            starts after ``snapshot.index``), and restore the state machine from it before
            applying ``committed_entries``.
        messages_before_persist: messages that may be sent before (or while) the above
            is persisted: a leader's APPEND, HEARTBEAT and TIMEOUT_NOW of the term already
            durable before this Ready (never with a snapshot). See the module docstring.
        messages_after_persist: every other message: send only once the above is durable
            (persist-before-send). A SNAPSHOT message asks the runtime to stream the stored
            snapshot ``msg.snapshot`` to ``msg.dst`` in chunks, then to call
            ``report_snapshot``. ``messages`` is both lists, early ones first.
        committed_entries: apply to the state machine in order (NOOP and CONF_CHANGE entries
            included: the state machine may skip them, but they advance the applied index).
        read_states: ReadIndex answers; serve each read once ``applied >= index``.
        must_sync: True if the term, the vote or log entries changed: fsync before sending.
        soft_state: current leader, role and term (compare with the previous one to notice a
            leadership change; on losing leadership fail pending reads and proposals).
    """

    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: SnapshotMeta | None
    messages_before_persist: tuple[Message, ...]
    messages_after_persist: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    must_sync: bool
    soft_state: SoftState

    @property
    def messages(self) -> tuple[Message, ...]:
        """Every message of this Ready: those that may go early, then the others."""
        return self.messages_before_persist + self.messages_after_persist


#: Message types a leader may send before its own write of the same Ready is durable.
EARLY_TYPES = frozenset(
    {MessageType.APPEND, MessageType.HEARTBEAT, MessageType.TIMEOUT_NOW, MessageType.QUIESCE}
)


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """A follower's replication progress as the leader sees it."""

    match: int
    next: int
    state: str
    recent_active: bool
    voter: bool


@dataclass(frozen=True, slots=True)
class Status:
    """A read-only summary of the core, for logs, metrics and tests."""

    id: NodeId
    term: int
    vote: NodeId
    role: Role
    leader: NodeId
    commit: int
    applied: int
    first_index: int
    last_index: int
    snapshot_index: int
    membership: Membership
    progress: dict[NodeId, PeerStatus]
    transferee: NodeId


__all__ = ["EARLY_TYPES", "PeerStatus", "Ready", "Status"]

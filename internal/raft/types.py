"""Plain data of the Raft core: entries, messages, hard state, membership, snapshot metadata.

Everything here is immutable and free of I/O, so the core can hand these objects to the
runtime (and the runtime to the transport or the disk) without copying. Node ids are
non-empty strings (the node's name, as Serf knows it); the empty string means "nobody"
(no vote, no known leader). Addresses are opaque strings the runtime dials; the core never
looks inside them and never identifies a node by its address.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

NodeId = str
"""A server's stable identity (never its address)."""

NO_NODE: NodeId = ""
"""The "nobody" id: no vote cast, no leader known."""


class EntryType(enum.IntEnum):
    """What a log entry carries."""

    NORMAL = 0
    """Application data, handed to the state machine."""
    NOOP = 1
    """Appended by every new leader so that it can commit entries of earlier terms."""
    CONF_CHANGE = 2
    """A membership change; ``data`` is an encoded :class:`ConfChangeRecord`."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: its position (``index``), the leader term that created it, its payload."""

    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate wire size in bytes, used for the per-message byte budget."""
        return len(self.data) + 16


class Suffrage(enum.IntEnum):
    """Whether a server votes and counts towards quorums."""

    VOTER = 0
    LEARNER = 1
    """Receives the log but neither votes nor counts for commit (a non-voter)."""


@dataclass(frozen=True, slots=True)
class Server:
    """A member of the cluster: id (identity), address (how to reach it), suffrage."""

    id: NodeId
    address: str
    suffrage: Suffrage = Suffrage.VOTER

    @property
    def is_voter(self) -> bool:
        return self.suffrage is Suffrage.VOTER


class ConfChangeType(enum.IntEnum):
    """The single-server membership changes the core accepts (one at a time)."""

    ADD_VOTER = 0
    """Add a new voting server (prefer ADD_LEARNER, then PROMOTE_LEARNER once caught up)."""
    ADD_LEARNER = 1
    """Add a non-voting server that receives the log."""
    PROMOTE_LEARNER = 2
    """Turn an existing learner into a voter."""
    REMOVE = 3
    """Remove a server (voter or learner); a removed leader steps down once it commits."""


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A requested membership change. ``address`` is needed for the two ADD kinds only."""

    type: ConfChangeType
    node_id: NodeId
    address: str = ""


@dataclass(frozen=True, slots=True)
class Membership:
    """The set of servers, sorted by id. Immutable; changes produce a new value."""

    servers: tuple[Server, ...] = ()

    @staticmethod
    def of(servers: Iterable[Server]) -> Membership:
        """Build a membership from servers in any order (sorted by id, ids unique)."""
        ordered = tuple(sorted(servers, key=lambda s: s.id))
        ids = [s.id for s in ordered]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate server ids in membership: {ids}")
        if any(not i for i in ids):
            raise ValueError("a server id must be a non-empty string")
        return Membership(ordered)

    def __iter__(self) -> Iterator[Server]:
        return iter(self.servers)

    def __len__(self) -> int:
        return len(self.servers)

    def get(self, node_id: NodeId) -> Server | None:
        for s in self.servers:
            if s.id == node_id:
                return s
        return None

    def __contains__(self, node_id: object) -> bool:
        return any(s.id == node_id for s in self.servers)

    @property
    def ids(self) -> tuple[NodeId, ...]:
        return tuple(s.id for s in self.servers)

    @property
    def voters(self) -> tuple[NodeId, ...]:
        return tuple(s.id for s in self.servers if s.is_voter)

    @property
    def learners(self) -> tuple[NodeId, ...]:
        return tuple(s.id for s in self.servers if not s.is_voter)

    def is_voter(self, node_id: NodeId) -> bool:
        s = self.get(node_id)
        return s is not None and s.is_voter

    def address_of(self, node_id: NodeId) -> str | None:
        s = self.get(node_id)
        return None if s is None else s.address


@dataclass(frozen=True, slots=True)
class ConfChangeRecord:
    """The payload of a CONF_CHANGE entry: the change (None for bootstrap) and the result.

    Storing the whole resulting membership (as hashicorp/raft does) lets any node know the
    membership at an index by reading the latest CONF_CHANGE entry up to it.
    """

    change: ConfChange | None
    membership: Membership


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message of the same Ready is sent.

    ``term`` is the current term, ``vote`` the id voted for in that term (NO_NODE if none),
    ``commit`` the highest index known committed (persisting it is an optimisation only).
    """

    term: int = 0
    vote: NodeId = NO_NODE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Describes a snapshot: the last index and term it covers and the membership there."""

    index: int
    term: int
    membership: Membership


class MessageType(enum.IntEnum):
    """Kinds of peer messages (one wire format for all, as in etcd-io/raft)."""

    APPEND = 1
    """AppendEntries: ``index``/``log_term`` locate the previous entry, then ``entries``."""
    APPEND_RESP = 2
    """``index`` = last matching index (or rejected index if ``reject``, with hints)."""
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    """Asks "would you vote for me in term ``term``?" without anyone changing term."""
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    """Keeps followers quiet; carries ``commit`` and an optional ReadIndex ``context``."""
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9
    """Leader -> runtime: "stream snapshot ``snapshot`` to ``to``". Runtime -> receiving core:
    "the snapshot with this metadata has been fully received and stored"."""
    TIMEOUT_NOW = 10
    """Leadership transfer: the receiver campaigns at once, bypassing pre-vote and leases."""
    QUIESCE = 11
    """A heartbeat that also says "the group is idle: stop counting election time until you
    hear from anyone again" (``RaftConfig.quiesce_after_ticks``); carries ``commit``."""


@dataclass(frozen=True, slots=True)
class Message:
    """One peer message. Fields a type does not use keep their defaults.

    ``src`` sent it to ``dst`` in the sender's ``term``. For APPEND: ``index`` and
    ``log_term`` identify the entry preceding ``entries``; ``commit`` is the leader's commit.
    For APPEND_RESP: ``index`` is the last index the follower now matches, or (``reject``)
    the rejected previous index, with ``hint_index``/``hint_term`` pointing the leader at the
    follower's last entry that might match (fast backtracking). For (PRE_)VOTE: ``index`` and
    ``log_term`` are the candidate's last entry. ``context`` carries ReadIndex ids on
    heartbeats and the transfer marker on forced votes.
    """

    type: MessageType
    src: NodeId
    dst: NodeId
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0
    context: bytes = b""
    snapshot: SnapshotMeta | None = None


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """A piece of snapshot data streamed by the runtime (the core never sees chunks).

    The sending runtime reads the stored snapshot named by a SNAPSHOT message and sends it in
    chunks of at most ``RaftConfig.snapshot_chunk_bytes``; ``offset`` is the byte offset of
    ``data``; ``done`` marks the last chunk. When the receiver has stored all of it, it steps
    the SNAPSHOT message (``meta``) into its core.
    """

    src: NodeId
    dst: NodeId
    term: int
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool

    def install_message(self) -> Message:
        """The SNAPSHOT message the receiving runtime steps into its core once every chunk
        of this snapshot is stored."""
        return Message(
            type=MessageType.SNAPSHOT,
            src=self.src,
            dst=self.dst,
            term=self.term,
            snapshot=self.meta,
        )


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the runtime may want to show or react to (not persisted)."""

    leader: NodeId
    role: Role
    term: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex answer: once ``applied >= index``, a read tagged ``context`` is linearizable."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class ProposalTicket:
    """Where a proposal landed: entries ``first_index..last_index`` of leader term ``term``.

    The proposal succeeded iff the entries applied at those indexes carry that term; if an
    entry of another term is applied at ``first_index``, the proposal was lost (leader change).
    """

    term: int
    first_index: int
    last_index: int


@dataclass(frozen=True, slots=True)
class PersistentState:
    """What a restarting node reads back from its stores to rebuild its core.

    ``entries`` are the log entries after the log store's first index (contiguous);
    ``applied`` is the index the state machine already reflects (at least the snapshot's
    index if a snapshot was restored); committed entries after it are delivered again.
    """

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    entries: tuple[Entry, ...] = ()
    applied: int = 0

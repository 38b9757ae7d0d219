"""raftlog's Raft: a pure consensus core (no I/O, no clock) and what surrounds it.

The core (:class:`RaftCore`) is driven by a runtime through the Ready/advance cycle; see
``docs/raft.md`` for the manual. Public names are re-exported here.
"""

from raftlog.raft.codec import (
    decode_conf_change_record,
    decode_entry,
    decode_hard_state,
    decode_membership,
    decode_message,
    decode_snapshot_chunk,
    decode_snapshot_meta,
    encode_conf_change_record,
    encode_entry,
    encode_hard_state,
    encode_membership,
    encode_message,
    encode_snapshot_chunk,
    encode_snapshot_meta,
)
from raftlog.raft.config import RaftConfig
from raftlog.raft.core import (
    TRANSFER_CONTEXT,
    PeerStatus,
    RaftCore,
    Ready,
    Status,
    bootstrap_state,
    check_can_bootstrap,
)
from raftlog.raft.errors import (
    BootstrapError,
    CodecError,
    ConfChangeError,
    ConfChangeInProgressError,
    ConfigError,
    LeadershipTransferInProgressError,
    NotLeaderError,
    RaftError,
    ReadyOutstandingError,
    SnapshotError,
    TransferError,
)
from raftlog.raft.types import (
    NO_NODE,
    ConfChange,
    ConfChangeRecord,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Membership,
    Message,
    MessageType,
    NodeId,
    PersistentState,
    ProposalTicket,
    ReadState,
    Role,
    Server,
    SnapshotChunk,
    SnapshotMeta,
    SoftState,
    Suffrage,
)

__all__ = [
    "NO_NODE",
    "TRANSFER_CONTEXT",
    "BootstrapError",
    "CodecError",
    "ConfChange",
    "ConfChangeError",
    "ConfChangeInProgressError",
    "ConfChangeRecord",
    "ConfChangeType",
    "ConfigError",
    "Entry",
    "EntryType",
    "HardState",
    "LeadershipTransferInProgressError",
    "Membership",
    "Message",
    "MessageType",
    "NodeId",
    "NotLeaderError",
    "PeerStatus",
    "PersistentState",
    "ProposalTicket",
    "RaftConfig",
    "RaftCore",
    "RaftError",
    "ReadState",
    "Ready",
    "ReadyOutstandingError",
    "Role",
    "Server",
    "SnapshotChunk",
    "SnapshotError",
    "SnapshotMeta",
    "SoftState",
    "Status",
    "Suffrage",
    "TransferError",
    "bootstrap_state",
    "check_can_bootstrap",
    "decode_conf_change_record",
    "decode_entry",
    "decode_hard_state",
    "decode_membership",
    "decode_message",
    "decode_snapshot_chunk",
    "decode_snapshot_meta",
    "encode_conf_change_record",
    "encode_entry",
    "encode_hard_state",
    "encode_membership",
    "encode_message",
    "encode_snapshot_chunk",
    "encode_snapshot_meta",
]

# The asyncio runtime (docs/raft-runtime.md): node, its stores, clock and state machine.
from raftlog.raft.clock import Clock, ManualClock, MonotonicClock
from raftlog.raft.config import NodeConfig
from raftlog.raft.errors import (
    DiskFullError,
    NodeClosedError,
    NodeFailedError,
    OutcomeUnknownError,
    ProposalTimeoutError,
    ReadBarrierTimeoutError,
    WaitTimeoutError,
)
from raftlog.raft.fsm import SnapshotSource, StateMachine
from raftlog.raft.inmem import InmemLogStore, InmemSnapshotStore, InmemStableStore
from raftlog.raft.logstore import RaftLogStore
from raftlog.raft.node import RaftNode
from raftlog.raft.observer import NO_METRICS, NoMetrics, RaftMetrics
from raftlog.raft.proposals import ApplyResult
from raftlog.raft.storage import LogStorage, SnapshotStorage, StableStorage

__all__ += [
    "NO_METRICS",
    "ApplyResult",
    "Clock",
    "DiskFullError",
    "InmemLogStore",
    "InmemSnapshotStore",
    "InmemStableStore",
    "LogStorage",
    "ManualClock",
    "MonotonicClock",
    "NoMetrics",
    "NodeClosedError",
    "NodeConfig",
    "NodeFailedError",
    "OutcomeUnknownError",
    "ProposalTimeoutError",
    "RaftLogStore",
    "RaftMetrics",
    "RaftNode",
    "ReadBarrierTimeoutError",
    "SnapshotSource",
    "SnapshotStorage",
    "StableStorage",
    "StateMachine",
    "WaitTimeoutError",
]

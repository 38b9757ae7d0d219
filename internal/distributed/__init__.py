"""raftlog.distributed: the commit log replicated by Raft (issue 5), see ``docs/cluster.md``.

- :class:`DistributedLog`: the server's CommitLog and ServerLister over a RaftNode, and the
  membership handler (join as learner, promote when caught up, leave).
- :class:`CommitLogFSM`: the Raft state machine that appends committed batches to the
  commit log (deduplicating idempotent producers' retries); snapshots stream the log and
  the producer table.
- :class:`Forwarder` (a protocol), :class:`ForwardError`, :data:`forwarded_call`: what a
  follower needs to forward Produce to the leader; the gRPC implementation and the
  interceptor that marks forwarded calls are in :mod:`raftlog.server.forward`.

Nothing here imports grpc or :mod:`raftlog.server` (the layers run ``log`` -> ``raft`` ->
``distributed`` -> ``server``); errors and protocols come from :mod:`raftlog.domain`.
"""

from raftlog.distributed.distributed_log import (
    DistributedConfig,
    DistributedConfigError,
    DistributedLog,
)
from raftlog.distributed.forwarding import Forwarder, ForwardError, forwarded_call
from raftlog.distributed.fsm import (
    Batch,
    CommitLogFSM,
    FSMError,
    RestoringError,
    Retention,
    decode_batch,
    decode_entry,
    encode_batch,
    encode_idempotent_batch,
    encode_retention,
)

__all__ = [
    "Batch",
    "CommitLogFSM",
    "DistributedConfig",
    "DistributedConfigError",
    "DistributedLog",
    "FSMError",
    "ForwardError",
    "Forwarder",
    "RestoringError",
    "Retention",
    "decode_batch",
    "decode_entry",
    "encode_batch",
    "encode_idempotent_batch",
    "encode_retention",
    "forwarded_call",
]

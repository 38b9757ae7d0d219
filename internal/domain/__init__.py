"""raftlog.domain: what the log is, below every layer that serves it.

The layers run ``log`` -> ``raft`` -> ``distributed`` -> ``server``/``mux``/``discovery`` ->
``agent`` -> ``cmd``; this package sits below ``distributed`` so that the replicated state
machine and the server share one vocabulary without the state machine importing the server
(or grpc):

- :mod:`~raftlog.domain.errors`: the domain errors, each with its ErrorInfo reason and
  metadata and its retry advice (``retriable``, ``refresh_leader``), without status codes
  (:mod:`raftlog.server.errors` maps them to gRPC codes).
- :mod:`~raftlog.domain.producers`: the idempotent producer's table (producer id ->
  recent sequences and their offsets), the same object in the single node's log and in
  every replica's state machine.
- :mod:`~raftlog.domain.protocols`: what the server needs from a log (``CommitLog``,
  ``IdempotentLog``, ``ServerLister``, ``Authorizer``) and what a log answers with
  (``Appended``, ``ServerInfo``).

Imports allowed here: the standard library and :mod:`raftlog.api.contract` (pure wire
names). Nothing else of raftlog, and no third-party package, so any layer may import it.
"""

from raftlog.domain.errors import (
    DeadlineError,
    DiskFailedError,
    DomainError,
    InvalidArgumentError,
    NoSpaceError,
    NotLeaderError,
    OffsetOutOfRangeError,
    PermissionDeniedError,
    RecordTooLargeError,
    SequenceTooOldError,
    StorageError,
    UnauthenticatedError,
    UnavailableError,
    UnsupportedError,
)
from raftlog.domain.producers import ProducerConfig, ProducerConfigError, ProducerTable
from raftlog.domain.protocols import (
    Appended,
    Authorizer,
    CommitLog,
    IdempotentLog,
    ServerInfo,
    ServerLister,
)

__all__ = [
    "Appended",
    "Authorizer",
    "CommitLog",
    "DeadlineError",
    "DiskFailedError",
    "DomainError",
    "IdempotentLog",
    "InvalidArgumentError",
    "NoSpaceError",
    "NotLeaderError",
    "OffsetOutOfRangeError",
    "PermissionDeniedError",
    "ProducerConfig",
    "ProducerConfigError",
    "ProducerTable",
    "RecordTooLargeError",
    "SequenceTooOldError",
    "ServerInfo",
    "ServerLister",
    "StorageError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnsupportedError",
]

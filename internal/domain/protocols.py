"""What the gRPC server needs from a log, and what a log answers with.

The single node plugs in :class:`~raftlog.server.local.LocalLog`; the cluster plugs in a
``DistributedLog`` implementing the same :class:`CommitLog` and :class:`ServerLister`, and its
own :class:`Authorizer` if it likes. Nothing in :mod:`raftlog.server` imports either.

These sit in :mod:`raftlog.domain`, below both the server and ``raftlog.distributed``: the
replicated state machine returns :class:`Appended` and the cluster reports
:class:`ServerInfo`, so declaring them in the server would make the lower layer import the
higher one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class CommitLog(Protocol):
    """An append-only log of opaque records addressed by dense offsets.

    Errors: reads raise :class:`raftlog.log.OffsetOutOfRangeError` (or any
    :class:`raftlog.domain.errors.DomainError`, for example ``NotLeaderError``); the servicer maps
    :mod:`raftlog.log` errors to status codes in one place.
    """

    async def append(self, records: Sequence[bytes]) -> tuple[int, int]:
        """Append ``records`` atomically at consecutive offsets; return (first, last).

        Returns once the records are durable per the node's policy (committed, in a cluster).
        An empty ``records`` is never passed.
        """
        ...

    def read(self, offset: int) -> bytes:
        """The record at ``offset`` (committed records only)."""
        ...

    def read_batch(self, offset: int, max_bytes: int, max_records: int) -> list[bytes]:
        """Consecutive records from ``offset``: at least one when ``offset`` is readable, at
        most ``max_records``, payload at most ``max_bytes`` unless the first alone is larger.
        """
        ...

    @property
    def lowest_offset(self) -> int:
        """The lowest readable offset."""
        ...

    @property
    def highest_offset(self) -> int:
        """The highest readable offset (``lowest_offset - 1`` when the log is empty)."""
        ...

    async def wait_for(self, offset: int, timeout_s: float) -> bool:
        """Wait until ``offset`` is readable; True if it is, False after ``timeout_s`` seconds
        or when the log is closing. Implementations wake waiters on append (no polling).
        """
        ...

    async def read_barrier(self, timeout_s: float | None = None) -> object:
        """Return once every write acknowledged before the call is readable here (a
        linearizable read follows). Raises ``NotLeaderError`` (naming the leader) where
        this node cannot promise it, and ``DeadlineError`` after ``timeout_s`` seconds.
        The value returned is the implementation's own (a Raft index, an offset).
        """
        ...


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an idempotent request's records are: first..last, and whether this answer
    repeats an earlier append of the same (producer id, sequence) (nothing appended now)."""

    first: int
    last: int
    duplicate: bool = False


@runtime_checkable
class IdempotentLog(Protocol):
    """A :class:`CommitLog` that also remembers producers' sequences (the idempotent
    producer, see :mod:`raftlog.domain.producers`). Both LocalLog and DistributedLog are
    one; the servicer refuses idempotent requests (UNIMPLEMENTED) on a log that is not."""

    async def append_idempotent(
        self, records: Sequence[bytes], producer_id: str, sequence: int
    ) -> Appended:
        """Append ``records`` unless this (producer_id, sequence) was appended already; then
        return the first append's offsets with ``duplicate=True``. Raises
        :class:`raftlog.domain.errors.SequenceTooOldError` for a sequence below the
        producer's remembered window. The pair was validated by the caller."""
        ...


@dataclass(frozen=True)
class ServerInfo:
    """One member of the cluster, as GetServers reports it."""

    id: str
    rpc_addr: str
    is_leader: bool
    #: A non-voting member (learner): serves reads of what it has, never counts for quorum.
    is_learner: bool = False


@runtime_checkable
class ServerLister(Protocol):
    """Lists the cluster's members (the single node lists itself, as leader)."""

    async def get_servers(self) -> Sequence[ServerInfo]:
        """The members now, leader flagged."""
        ...


@runtime_checkable
class Authorizer(Protocol):
    """Decides whether ``subject`` may do ``action`` on ``obj`` (Casbin in production)."""

    def authorize(self, subject: str, obj: str, action: str) -> bool:
        """True when the policy allows it."""
        ...

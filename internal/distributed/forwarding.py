"""What DistributedLog needs to forward a follower's write to the leader, declared here.

A follower that receives a write hands the whole batch (and an idempotent producer's
``producer_id`` and ``sequence``) to a :class:`Forwarder`, which produces it on the leader
and returns where it landed. The gRPC implementation, with the peer certificate and the
forwarded-call mark, is :class:`raftlog.server.forward.GrpcForwarder`, injected by the
agent: this layer stays free of grpc and of the server.

:data:`forwarded_call` is how the mark of an incoming forwarded call reaches
:class:`~raftlog.distributed.distributed_log.DistributedLog` (the server's interceptor sets
it inside the call; the servicer only passes the records): a node never forwards a
forwarded call again, so a stale view of the leader cannot make a request bounce around
the cluster.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import Protocol

from raftlog.domain.protocols import Appended

#: True inside a call that another node forwarded to this one.
forwarded_call: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "raftlog_forwarded_call", default=False
)


class ForwardError(Exception):
    """A forwarded Produce failed.

    Attributes:
        not_applied: the leader surely did not append it (safe to retry).
        deadline_exceeded: the call ran out of time: the outcome is unknown.
        leader_id: the leader the other side knows of ("" if none).
        reason, metadata: the other side's ErrorInfo (empty without one).
    """

    def __init__(
        self,
        message: str,
        *,
        not_applied: bool,
        deadline_exceeded: bool = False,
        leader_id: str = "",
        reason: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.not_applied = not_applied
        self.deadline_exceeded = deadline_exceeded
        self.leader_id = leader_id
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class Forwarder(Protocol):
    """Produces a batch on another node (the leader), bounded in time."""

    async def produce(
        self,
        address: str,
        records: Sequence[bytes],
        *,
        timeout_s: float,
        producer_id: str = "",
        sequence: int = 0,
    ) -> Appended:
        """Produce ``records`` on the node at ``address`` (with the idempotent producer's
        pair when ``producer_id`` is set); the offsets and whether it was a duplicate.
        Raises :class:`ForwardError` when it fails, within ``timeout_s`` seconds."""
        ...

    def forget(self, address: str) -> None:
        """Drop what is kept for ``address`` (a node that left the cluster)."""
        ...

    async def close(self) -> None:
        """Release every connection. Idempotent; later produces fail with ForwardError."""
        ...

"""Bookkeeping for ReadIndex requests on the leader (linearizable reads without a log write).

A read request records the commit index at the time it arrived and is broadcast in a
heartbeat round tagged with its context. Once a quorum of voters answered that round, the
leader knows it still led when the request arrived, so any state machine that has applied up
to the recorded index can serve the read (Raft thesis §6.4). Requests are answered in order:
an acknowledgement of a later round also confirms every earlier pending request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raftlog.raft.types import NodeId


@dataclass(slots=True)
class ReadRequest:
    index: int
    context: bytes
    acks: set[NodeId] = field(default_factory=set)


class ReadOnlyQueue:
    """Pending ReadIndex requests of the current leader term, oldest first."""

    def __init__(self) -> None:
        self._pending: dict[bytes, ReadRequest] = {}
        self._queue: list[bytes] = []

    def __contains__(self, context: object) -> bool:
        return context in self._pending

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, index: int, context: bytes, self_id: NodeId) -> None:
        self._pending[context] = ReadRequest(index, context, {self_id})
        self._queue.append(context)

    def recv_ack(self, node_id: NodeId, context: bytes) -> set[NodeId] | None:
        """Record ``node_id``'s answer to the round tagged ``context``; return its acks."""
        req = self._pending.get(context)
        if req is None:
            return None
        req.acks.add(node_id)
        return req.acks

    def release_through(self, context: bytes) -> list[ReadRequest]:
        """Remove and return every request up to and including ``context``."""
        if context not in self._pending:
            return []
        n = self._queue.index(context) + 1
        done = [self._pending.pop(c) for c in self._queue[:n]]
        del self._queue[:n]
        return done

    def last_context(self) -> bytes:
        return self._queue[-1] if self._queue else b""

    def reset(self) -> None:
        self._pending.clear()
        self._queue.clear()

"""Read barriers of a :class:`RaftNode` (the runtime side of ReadIndex).

A barrier goes through two stages: it waits for the core to confirm leadership (a
:class:`ReadState` with its context comes back in a Ready), then for the state machine to
apply the index that ReadState names. Losing leadership, or closing the node, fails every
barrier at once. The core's side (quorum rounds) is in :mod:`raftlog.raft.readindex`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable

from raftlog.raft.types import ReadState


class ReadBarriers:
    """Barriers waiting for confirmation (by context) and for their index to apply."""

    def __init__(self) -> None:
        self._confirming: dict[bytes, asyncio.Future[int]] = {}
        self._applying: list[tuple[int, asyncio.Future[int]]] = []
        self._ids = itertools.count(1)

    def start(self, fut: asyncio.Future[int]) -> bytes:
        """Register ``fut`` and return the context to hand to ``core.read_index``; ``fut``
        gets the applied index once the barrier holds."""
        ctx = b"r%d" % next(self._ids)
        self._confirming[ctx] = fut
        return ctx

    def forget(self, ctx: bytes) -> None:
        """The caller gave up (timeout): stop tracking ``ctx``."""
        self._confirming.pop(ctx, None)

    @property
    def applying(self) -> bool:
        """Confirmed barriers wait for the state machine."""
        return bool(self._applying)

    def confirmed(self, states: Iterable[ReadState]) -> None:
        """The core confirmed these reads: each now waits for its index to apply."""
        for rs in states:
            fut = self._confirming.pop(rs.context, None)
            if fut is not None and not fut.done():
                self._applying.append((rs.index, fut))

    def release(self, applied: int) -> None:
        """Answer every confirmed barrier whose index is at or below ``applied``."""
        keep = []
        for index, fut in self._applying:
            if fut.done():
                continue
            if index <= applied:
                fut.set_result(applied)
            else:
                keep.append((index, fut))
        self._applying = keep

    def fail_all(self, exc: BaseException) -> None:
        """Fail every barrier (leadership lost, node closed or failed)."""
        for fut in [*self._confirming.values(), *(f for _, f in self._applying)]:
            if not fut.done():
                fut.set_exception(exc)
        self._confirming.clear()
        self._applying = []


__all__ = ["ReadBarriers"]

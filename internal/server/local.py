"""The single-node :class:`~raftlog.server.protocols.CommitLog`: the commit log itself.

:class:`LocalLog` wraps :class:`raftlog.log.Log` and adds what the API needs on top of it:
appends return (first, last) and wake every ``wait_for`` waiter, so ConsumeStream followers
sleep until a record arrives instead of polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from raftlog.log import Log
from raftlog.server.protocols import ServerInfo


class LocalLog:
    """A one-node log: every append is committed once the log says it is durable."""

    def __init__(self, log: Log, *, node_id: str = "node-0", rpc_addr: str = "") -> None:
        self._log = log
        self.node_id = node_id
        #: The address clients dial; the agent sets it once the server is bound.
        self.rpc_addr = rpc_addr
        self._closing = False
        # One future per "generation" of the log: set (and replaced) on every append, so a
        # waiter wakes once per append batch, whatever the number of records.
        self._changed: asyncio.Future[None] | None = None

    @property
    def log(self) -> Log:
        """The wrapped commit log."""
        return self._log

    def _notify(self) -> None:
        fut, self._changed = self._changed, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def append(self, records: Sequence[bytes]) -> tuple[int, int]:
        """Append a batch and wake the followers; returns (first, last) offsets."""
        first = await self._log.append_batch(records)
        self._notify()
        return first, first + len(records) - 1

    def read(self, offset: int) -> bytes:
        """The record at ``offset``; :class:`raftlog.log.OffsetOutOfRangeError` if absent."""
        return self._log.read(offset)

    def read_batch(self, offset: int, max_bytes: int, max_records: int) -> list[bytes]:
        """Consecutive records from ``offset`` (see :meth:`raftlog.log.Log.read_batch`)."""
        return self._log.read_batch(offset, max_bytes, max_records)

    @property
    def lowest_offset(self) -> int:
        """The lowest offset the log holds."""
        return self._log.lowest_offset

    @property
    def highest_offset(self) -> int:
        """The highest offset the log holds (``lowest_offset - 1`` when empty)."""
        return self._log.highest_offset

    async def wait_for(self, offset: int, timeout_s: float) -> bool:
        """True once ``offset`` is readable; False after ``timeout_s`` seconds or on close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while offset > self._log.highest_offset:
            remaining = deadline - loop.time()
            if self._closing or remaining <= 0:
                return False
            if self._changed is None:
                self._changed = loop.create_future()
            try:
                # shield: a waiter that times out must not cancel the shared future.
                await asyncio.wait_for(asyncio.shield(self._changed), remaining)
            except TimeoutError:
                return offset <= self._log.highest_offset
        return True

    async def get_servers(self) -> list[ServerInfo]:
        """This node, as the leader of a cluster of one."""
        return [ServerInfo(id=self.node_id, rpc_addr=self.rpc_addr, is_leader=True)]

    def begin_close(self) -> None:
        """Wake every waiter with False: the node is shutting down."""
        self._closing = True
        self._notify()

    async def close(self) -> None:
        """Wake waiters, then sync and close the commit log."""
        self.begin_close()
        await self._log.close()

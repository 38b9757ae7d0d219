"""A Raft transport that hands everything to another one: the base of test wrappers that
watch or alter what a node sends (override :meth:`TransportWrapper.send`)."""

from __future__ import annotations

from collections.abc import Mapping

from raftlog.raft.transport import Handler, Transport, TransportStats


class TransportWrapper:
    """Delegates every :class:`Transport` method to ``inner``; subclasses override
    ``send`` (call ``self.inner.send`` to pass a payload on)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    @property
    def node_id(self) -> str:
        return self.inner.node_id

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def set_handler(self, handler: Handler) -> None:
        self.inner.set_handler(handler)

    def update_peers(self, addresses: Mapping[str, str]) -> None:
        self.inner.update_peers(addresses)

    def stats(self) -> TransportStats:
        return self.inner.stats()

    def send(self, to: str, payload: bytes) -> None:
        self.inner.send(to, payload)

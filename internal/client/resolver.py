"""The resolver: which servers make up the cluster, who leads, and one channel to each.

grpcio's Python API has no resolver or balancer plug-in, so the client keeps its own view::

    bootstrap addrs ──GetServers──> members (id, rpc_addr, is_leader) ──> picker
          ^                               │ one long-lived grpc.aio channel per member;
          │ refresh: every refresh_interval_s, and soon after an error that asks for it
          └───────────────────────────────┘ channels of servers that left are closed

A refresh asks the members it knows (those not marked down first), then the bootstrap
addresses, one at a time, each bounded by ``refresh_timeout_s``; the first answer wins.
Refreshes are single-flight: callers that ask while one runs share it. Error-triggered
refreshes are at least ``min_refresh_interval_s`` apart.

Besides the member list the resolver remembers two hints that are fresher than the last
refresh: the leader named by a NOT_LEADER answer (``note_leader``), and servers whose last
call failed to connect (``mark_down``, avoided for ``down_cooldown_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.client.config import ClientConfig
from raftlog.client.errors import ClientError, NoServersError, describe, from_rpc_error

logger = logging.getLogger("raftlog.client")

#: Makes the channel to one address (the client decides TLS and options).
ChannelFactory = Callable[[str], grpc.aio.Channel]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """One member of the cluster as GetServers reports it."""

    id: str
    rpc_addr: str
    is_leader: bool
    #: A non-voting member still catching up; consume avoids it while voters are live.
    is_learner: bool = False


class Resolver:
    """The client's view of the cluster and its channels; owned by one ``LogClient``.

    Must be used from one event loop. ``start()`` learns the cluster (raises
    :class:`NoServersError` when no bootstrap address answers) and starts the periodic
    refresh; ``close()`` stops it and closes every channel.
    """

    def __init__(
        self,
        bootstrap: Sequence[str],
        channel_factory: ChannelFactory,
        config: ClientConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        addrs = tuple(dict.fromkeys(a.strip() for a in bootstrap if a.strip()))
        if not addrs:
            raise ValueError("the client needs at least one bootstrap address (HOST:PORT)")
        self.bootstrap = addrs
        self._factory = channel_factory
        self._config = config
        self._clock = clock
        self._servers: tuple[ServerInfo, ...] = ()
        self._leader_hint = ""
        self._down: dict[str, float] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, log_pb2_grpc.LogStub] = {}
        self._refresh_task: asyncio.Task[tuple[ServerInfo, ...]] | None = None
        self._soon: asyncio.TimerHandle | None = None
        self._periodic: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._last_refresh = -float("inf")
        self._closed = False
        #: Completed refreshes (successful GetServers answers applied), for tests and stats.
        self.refreshes = 0

    # -- the view --------------------------------------------------------------------------

    @property
    def servers(self) -> tuple[ServerInfo, ...]:
        """The members as last learned."""
        return self._servers

    @property
    def leader(self) -> str:
        """The leader's address: a fresh NOT_LEADER hint, else the last refresh's ('' if none)."""
        if self._leader_hint:
            return self._leader_hint
        for server in self._servers:
            if server.is_leader:
                return server.rpc_addr
        return ""

    def is_down(self, addr: str) -> bool:
        """True while ``addr`` is avoided after a failed connection."""
        until = self._down.get(addr)
        if until is None:
            return False
        if self._clock() >= until:
            del self._down[addr]
            return False
        return True

    def mark_down(self, addr: str) -> None:
        """Avoid ``addr`` for ``down_cooldown_s``; forget it as leader hint."""
        self._down[addr] = self._clock() + self._config.down_cooldown_s
        if self._leader_hint == addr:
            self._leader_hint = ""

    def mark_up(self, addr: str) -> None:
        """``addr`` answered: stop avoiding it."""
        self._down.pop(addr, None)

    def note_leader(self, addr: str) -> None:
        """A server named ``addr`` as the leader; prefer it until the next refresh."""
        self._leader_hint = addr
        self._down.pop(addr, None)

    def stub(self, addr: str) -> log_pb2_grpc.LogStub:
        """The stub on the long-lived channel to ``addr`` (made on first use)."""
        stub = self._stubs.get(addr)
        if stub is None:
            if self._closed:
                raise RuntimeError("the resolver is closed")
            channel = self._factory(addr)
            self._channels[addr] = channel
            stub = log_pb2_grpc.LogStub(channel)  # type: ignore[no-untyped-call]
            self._stubs[addr] = stub
        return stub

    @property
    def channel_addrs(self) -> frozenset[str]:
        """Addresses that have an open channel now."""
        return frozenset(self._channels)

    # -- refresh ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Learn the cluster from the bootstrap addresses; start the periodic refresh.

        Tries for ``bootstrap_timeout_s`` (0 = one pass), with the configured backoff.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.bootstrap_timeout_s
        delay = self._config.backoff_initial_s
        while True:
            try:
                await self.refresh()
                break
            except NoServersError:
                if loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * self._config.backoff_multiplier, self._config.backoff_max_s)
        self._periodic = asyncio.create_task(self._refresh_periodically(), name="raftlog-refresh")

    async def refresh(self) -> tuple[ServerInfo, ...]:
        """Ask the cluster for its members now (sharing a refresh already running)."""
        if self._closed:
            raise NoServersError("the client is closed")
        task = self._refresh_task
        if task is None or task.done():
            task = asyncio.create_task(self._refresh_once(), name="raftlog-refresh-once")
            self._refresh_task = task
        # shield: one caller giving up must not cancel the refresh the others wait on
        return await asyncio.shield(task)

    def invalidate(self) -> None:
        """Refresh soon, in the background (rate-limited by ``min_refresh_interval_s``)."""
        if self._closed or self._soon is not None:
            return
        if self._refresh_task is not None and not self._refresh_task.done():
            return
        loop = asyncio.get_running_loop()
        wait = max(0.0, self._last_refresh + self._config.min_refresh_interval_s - self._clock())
        self._soon = loop.call_later(wait, self._refresh_in_background)

    def _refresh_in_background(self) -> None:
        self._soon = None
        if self._closed:
            return
        task = self._refresh_task
        if task is None or task.done():
            task = asyncio.create_task(self._refresh_once(), name="raftlog-refresh-once")
            self._refresh_task = task
        task.add_done_callback(_swallow)

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._config.refresh_interval_s)
            try:
                await self.refresh()
            except ClientError as exc:
                logger.info("periodic refresh failed: %s", exc)

    def _candidates(self) -> list[str]:
        members = [s.rpc_addr for s in self._servers]
        up = [a for a in members if not self.is_down(a)]
        down = [a for a in members if a not in up]
        first = [self._leader_hint] if self._leader_hint and self._leader_hint not in up else []
        rest = [a for a in self.bootstrap if a not in members]
        return list(dict.fromkeys([*first, *up, *down, *rest]))

    async def _refresh_once(self) -> tuple[ServerInfo, ...]:
        self._last_refresh = self._clock()
        errors: list[str] = []
        for addr in self._candidates():
            if self._closed:
                break
            try:
                response = await self.stub(addr).GetServers(
                    log_pb2.GetServersRequest(), timeout=self._config.refresh_timeout_s
                )
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, addr)
                errors.append(describe(error))
                if error.retriable:
                    self.mark_down(addr)
                continue
            if not response.servers:
                errors.append(f"{addr} listed no servers")
                continue
            self.mark_up(addr)
            servers = tuple(
                ServerInfo(
                    id=s.id, rpc_addr=s.rpc_addr, is_leader=s.is_leader, is_learner=s.is_learner
                )
                for s in response.servers
            )
            self._apply(servers)
            self._last_refresh = self._clock()
            return servers
        self._last_refresh = self._clock()
        raise NoServersError(
            "no server answered GetServers: " + ("; ".join(errors) or "no address to ask"),
            addr=", ".join(self._candidates()),
        )

    def _apply(self, servers: tuple[ServerInfo, ...]) -> None:
        before = {s.rpc_addr for s in self._servers}
        self._servers = servers
        self.refreshes += 1
        members = {s.rpc_addr for s in servers}
        if any(s.is_leader for s in servers) or self._leader_hint not in members:
            self._leader_hint = ""
        if members != before:
            logger.info("cluster members: %s", ", ".join(sorted(members)))
        for addr in list(self._channels):
            if addr not in members:
                self._close_channel(addr)

    def _close_channel(self, addr: str) -> None:
        channel = self._channels.pop(addr)
        self._stubs.pop(addr, None)
        self._down.pop(addr, None)
        # Calls still on it end with CANCELLED, which the client retries elsewhere.
        task = asyncio.create_task(channel.close(), name=f"raftlog-close-{addr}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Stop refreshing and close every channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        for task in (self._periodic, self._refresh_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ClientError):
                    await task
        channels = list(self._channels.values())
        self._channels.clear()
        self._stubs.clear()
        await asyncio.gather(*(ch.close() for ch in channels), *self._closing)


def _swallow(task: asyncio.Task[tuple[ServerInfo, ...]]) -> None:
    """A background refresh that failed is logged, not raised (the next call retries)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.info("background refresh failed: %s", exc)

"""Turn cluster membership (Serf events, or a static peer list) into Raft membership calls.

The node that runs Raft implements :class:`Handler` (DistributedLog does). Only the leader
acts (``handler.is_leader()``); every node keeps the latest membership view so that a node
that becomes leader can :meth:`Membership.reconcile` at once (the Agent calls it on a
leadership change; a periodic reconcile covers it anyway).

Rules (per member, the local node always excluded):

- ``member-join`` / ``member-update`` (status alive): ``handler.join(id, rpc_addr)`` unless
  the handler already lists the id with that address. ``rpc_addr`` is the member's Serf tag
  :data:`~raftlog.discovery.serf_agent.RPC_ADDR_TAG`; a member without it is ignored (logged).
  With :attr:`Membership.authenticate` set (the agent sets it), the member must pass that
  check first: a refused member is never joined; it is logged, audited and counted, and
  tried again once ``reconcile_interval`` has passed (docs/security.md).
- ``member-leave`` (graceful) and ``member-reap``: ``handler.leave(id)`` if the handler lists
  it.
- ``member-failed``: ``handler.leave(id)`` once the member has stayed failed for
  ``failed_grace`` seconds (default 30.0); a member that comes back alive before that keeps
  its place (a node that restarts quickly is not removed and re-added).

Every decision is level-triggered: it compares the member's latest status with what the
handler reports now, so duplicate and out-of-order events are harmless. A handler error is
logged and retried by the next reconcile (every ``reconcile_interval`` seconds); it never
stops the event loop. A lost event stream (the agent restarted) is resubscribed with a
bounded backoff, and a fresh member list replaces the view.
"""

# Every call here takes an explicit bound (`timeout`, in seconds) by design.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from raftlog.discovery.serf_agent import RPC_ADDR_TAG
from raftlog.discovery.serf_rpc import (
    EventStream,
    Member,
    MemberEvent,
    SerfRPCClient,
    SerfRPCError,
)
from raftlog.telemetry.audit import NO_AUDIT, AuditSink

__all__ = [
    "Authenticate",
    "Handler",
    "MemberSource",
    "Membership",
    "MembershipConfig",
    "MembershipConfigError",
    "SerfMemberSource",
    "StaticMembership",
    "Subscription",
    "parse_static_peers",
]

log = logging.getLogger("raftlog.discovery.membership")

_T = TypeVar("_T")

#: Member status after each event type.
_STATUS_AFTER: Mapping[str, str] = {
    "member-join": "alive",
    "member-update": "alive",
    "member-leave": "left",
    "member-failed": "failed",
    "member-reap": "reaped",
}
#: Statuses in Serf's member list that settle a member (``leaving`` is transient).
_SETTLED = frozenset({"alive", "left", "failed"})


class MembershipConfigError(ValueError):
    """A membership setting is invalid; the message names the field and the reason."""


class Handler(Protocol):
    """What membership drives: DistributedLog on each node (only the leader acts).

    ``join`` and ``leave`` must be idempotent and may raise (the call is retried by the next
    reconcile). ``join`` with a known id and a new address must move that id to the address.
    ``members`` reports the current cluster as the handler sees it: node id -> rpc address,
    the local node included (it is ignored here).
    """

    async def join(self, node_id: str, rpc_addr: str) -> None: ...

    async def leave(self, node_id: str) -> None: ...

    def is_leader(self) -> bool: ...

    async def members(self) -> Mapping[str, str]: ...


#: The membership check: ``await authenticate(node_id, rpc_addr)`` returns when the node
#: at ``rpc_addr`` proved it is ``node_id``, and raises (its message says why) otherwise.
Authenticate = Callable[[str, str], Awaitable[None]]


class Subscription(Protocol):
    """An open stream of member events."""

    def __aiter__(self) -> AsyncIterator[object]: ...

    async def close(self, timeout: float | None = None) -> None: ...


class MemberSource(Protocol):
    """Where membership comes from: :class:`SerfMemberSource`, or a fake in tests."""

    async def subscribe(self) -> Subscription: ...

    async def members(self) -> Sequence[Member]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class MembershipConfig:
    """Settings of :class:`Membership` and :class:`StaticMembership`.

    - ``node_name``: the local node id (its own events are ignored). Required.
    - ``failed_grace``: seconds a failed member may stay failed before it is removed
      (default 30.0; 0 removes at once).
    - ``reconcile_interval``: seconds between full reconciles on the leader (default 10.0).
    - ``handler_timeout``: seconds bounding each handler call (default 10.0).
    - ``rpc_addr_tag``: the Serf tag carrying a member's rpc address (default ``rpc_addr``).
    - ``resubscribe_backoff`` / ``resubscribe_backoff_max``: seconds to wait before
      resubscribing after the event stream was lost, doubling up to the max (defaults 0.5
      and 5.0).
    """

    node_name: str
    failed_grace: float = 30.0
    reconcile_interval: float = 10.0
    handler_timeout: float = 10.0
    rpc_addr_tag: str = RPC_ADDR_TAG
    resubscribe_backoff: float = 0.5
    resubscribe_backoff_max: float = 5.0

    def validate(self) -> None:
        """Raise :class:`MembershipConfigError` naming the first invalid field."""
        if not self.node_name:
            raise MembershipConfigError("node_name: must not be empty")
        if self.failed_grace < 0:
            raise MembershipConfigError(
                f"failed_grace: must be >= 0 seconds, got {self.failed_grace}"
            )
        for name in ("reconcile_interval", "handler_timeout"):
            if getattr(self, name) <= 0:
                raise MembershipConfigError(
                    f"{name}: must be > 0 seconds, got {getattr(self, name)}"
                )
        if not self.rpc_addr_tag:
            raise MembershipConfigError("rpc_addr_tag: must not be empty")
        if not 0 < self.resubscribe_backoff <= self.resubscribe_backoff_max:
            raise MembershipConfigError(
                "resubscribe_backoff: must be > 0 and <= resubscribe_backoff_max, got "
                f"{self.resubscribe_backoff} and {self.resubscribe_backoff_max}"
            )


def parse_static_peers(items: Iterable[str]) -> dict[str, str]:
    """Parse ``id=host:port`` strings into ``{id: rpc_addr}`` (static join mode)."""
    peers: dict[str, str] = {}
    for item in items:
        node_id, sep, addr = item.partition("=")
        node_id, addr = node_id.strip(), addr.strip()
        host, colon, port = addr.rpartition(":")
        if not sep or not node_id or not colon or not host or not port.isdigit():
            raise MembershipConfigError(f"static peer: expected id=host:port, got {item!r}")
        if node_id in peers and peers[node_id] != addr:
            raise MembershipConfigError(
                f"static peer: id {node_id!r} given twice ({peers[node_id]} and {addr})"
            )
        peers[node_id] = addr
    return peers


class SerfMemberSource:
    """A :class:`MemberSource` over a Serf agent's RPC; reconnects after connection loss.

    ``connect`` makes a new connected client (``SerfAgent.connect`` fits);
    ``timeout`` bounds each RPC call (seconds, default 5.0).
    """

    def __init__(
        self, connect: Callable[[], Awaitable[SerfRPCClient]], *, timeout: float = 5.0
    ) -> None:
        self._connect = connect
        self._timeout = timeout
        self._client: SerfRPCClient | None = None

    async def _get_client(self) -> SerfRPCClient:
        if self._client is not None and not self._client.connected:
            await self._client.close()
            self._client = None
        if self._client is None:
            self._client = await self._connect()
        return self._client

    async def subscribe(self) -> Subscription:
        client = await self._get_client()
        stream: EventStream = await client.stream(timeout=self._timeout)
        return stream

    async def members(self) -> Sequence[Member]:
        client = await self._get_client()
        return await client.members(timeout=self._timeout)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class _Base:
    """Shared machinery: bounded handler calls and the periodic reconcile task."""

    def __init__(self, config: MembershipConfig, handler: Handler) -> None:
        config.validate()
        self.config = config
        self.handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # one handler action at a time
        self._closed = False
        #: Handler calls that raised (retried by the next reconcile).
        self.errors = 0

    async def _bounded(self, what: str, call: Awaitable[_T]) -> _T:
        async with asyncio.timeout(self.config.handler_timeout):
            return await call

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        async def run() -> None:
            await coro

        task = asyncio.create_task(run(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval)
            try:
                await self.reconcile()
            except Exception:
                log.exception(
                    "membership reconcile failed; retrying in %.1f s",
                    self.config.reconcile_interval,
                )

    async def reconcile(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Cancel every task this object owns; idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class Membership(_Base):
    """Serf-driven membership: events from ``source`` -> calls on ``handler``."""

    def __init__(self, config: MembershipConfig, handler: Handler, source: MemberSource) -> None:
        super().__init__(config, handler)
        self.source = source
        self._view: dict[str, Member] = {}
        self._failed_at: dict[str, float] = {}
        self._grace_tasks: dict[str, asyncio.Task[None]] = {}
        self._subscribed = asyncio.Event()
        #: This node's cluster id (None while unknown): a member whose ``cluster_tag``
        #: names another cluster is never added (it belongs to another cluster).
        self.cluster_id: str | None = None
        self.cluster_tag = "cluster_id"
        #: Member events the event loop has finished applying (observable progress: a
        #: caller can tell an event that changed nothing from one not yet processed).
        self.events_handled = 0
        #: The membership check (docs/security.md): ``authenticate(id, rpc_addr)`` must
        #: return before a member is added, and raise (saying why) when the member at that
        #: address cannot prove it is that node. None: no check (tests of the event logic).
        self.authenticate: Authenticate | None = None
        #: Members refused by the check, counted at every attempt (observable by tests).
        self.refused = 0
        #: The last refusal per member: (rpc_addr, reason); logged and audited once each.
        self.refusals: dict[str, tuple[str, str]] = {}
        #: When each member was last refused, at which address: a refused member is not
        #: probed again at that address within ``reconcile_interval`` (a rogue's events
        #: cannot keep the leader busy dialling it).
        self._refused_at: dict[str, tuple[str, float]] = {}
        #: Where membership changes and refusals are audited (off: NO_AUDIT).
        self.audit: AuditSink = NO_AUDIT

    @property
    def view(self) -> Mapping[str, Member]:
        """The latest status of every member seen (local node excluded), by node id."""
        return dict(self._view)

    async def start(self) -> None:
        """Start following events (and reconciling); returns at once."""
        self._spawn(self._follow(), "membership-events")
        self._spawn(self._reconcile_loop(), "membership-reconcile")

    async def wait_subscribed(self, timeout: float) -> None:
        """Wait until the event stream is open and the initial member list was read."""
        async with asyncio.timeout(timeout):
            await self._subscribed.wait()

    async def close(self) -> None:
        await super().close()
        for task in self._grace_tasks.values():
            task.cancel()
        self._grace_tasks.clear()
        await self.source.close()

    # --- the event loop ---------------------------------------------------------------
    async def _follow(self) -> None:
        backoff = self.config.resubscribe_backoff
        while True:
            try:
                sub = await self.source.subscribe()
                try:
                    # Subscribed first, then the list: no change falls between the two.
                    await self._refresh_view(await self.source.members())
                    self._subscribed.set()
                    backoff = self.config.resubscribe_backoff
                    await self.reconcile()
                    async for event in sub:
                        if isinstance(event, MemberEvent):
                            await self.handle_event(event)
                            self.events_handled += 1
                finally:
                    self._subscribed.clear()
                    with contextlib.suppress(Exception):
                        await sub.close(timeout=1.0)
                log.warning("member event stream ended; resubscribing")
            except Exception as exc:  # never let the loop die: resubscribe
                log.warning("member event stream lost (%r); resubscribing in %.1f s", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.resubscribe_backoff_max)

    async def handle_event(self, event: MemberEvent) -> None:
        """Apply one member event (public so tests and other sources can feed events)."""
        status = _STATUS_AFTER.get(event.event)
        if status is None:
            return
        others = [m for m in event.members if m.name != self.config.node_name]
        if not others:
            return
        # An event may come late, twice or out of order (a join delivered after the leave
        # that followed it). The agent's member list is its state now, so decide from it;
        # the event's own status stands in only when the list cannot be read or does not
        # settle the member (gone from the list, or a transient "leaving").
        try:
            listed = await self._bounded("serf members", self.source.members())
            now = {m.name: m for m in listed}
        except (SerfRPCError, OSError, TimeoutError) as exc:
            log.debug("member list unavailable (%s); trusting the %s event", exc, event.event)
            now = {}
        for member in others:
            current = now.get(member.name)
            if current is not None and current.status in _SETTLED:
                self._set_status(current)
            else:
                self._set_status(replace(member, status=status))
            await self._apply(member.name)

    def _set_status(self, member: Member) -> None:
        name = member.name
        self._view[name] = member
        if member.status == "failed":
            if name not in self._failed_at:
                self._failed_at[name] = asyncio.get_running_loop().time()
                self._schedule_grace(name)
        else:
            self._failed_at.pop(name, None)
            task = self._grace_tasks.pop(name, None)
            if task is not None:
                task.cancel()

    def _schedule_grace(self, name: str) -> None:
        if self._closed:
            return

        async def expire() -> None:
            await asyncio.sleep(self.config.failed_grace)
            if self._grace_tasks.get(name) is asyncio.current_task():
                del self._grace_tasks[name]
            await self._apply(name)

        old = self._grace_tasks.pop(name, None)
        if old is not None:
            old.cancel()
        self._grace_tasks[name] = self._spawn(expire(), f"membership-grace:{name}")

    async def _refresh_view(self, members: Sequence[Member]) -> None:
        seen = set()
        for member in members:
            if member.name == self.config.node_name:
                continue
            seen.add(member.name)
            status = member.status if member.status in _SETTLED else None
            if status is None:  # leaving: transient, wait for the leave event
                continue
            self._set_status(member)
        # A member missing from a fresh list is not proof that it left: a restarted Serf
        # agent knows only itself until its (asynchronous) rejoin. An alive member that
        # is missing counts as failed, so it is removed only if it is still missing after
        # the failed grace period; one that had left or failed keeps that status.
        for name, member in list(self._view.items()):
            if name not in seen and member.status == "alive":
                self._set_status(replace(member, status="failed"))

    # --- decisions --------------------------------------------------------------------
    def _desired(self, name: str) -> tuple[str, str] | None:
        """("join", addr), ("leave", "") or None (nothing to do yet) for a member."""
        member = self._view.get(name)
        if member is None:
            return None
        if member.status == "alive":
            theirs = member.tags.get(self.cluster_tag, "")
            if self.cluster_id and theirs and theirs != self.cluster_id:
                log.warning(
                    "member %s belongs to cluster %s, not to this cluster (%s): not adding it",
                    name,
                    theirs,
                    self.cluster_id,
                )
                return None
            addr = member.tags.get(self.config.rpc_addr_tag, "")
            if not addr:
                log.warning(
                    "member %s has no %r tag; cannot add it", name, self.config.rpc_addr_tag
                )
                return None
            return ("join", addr)
        if member.status in ("left", "reaped"):
            return ("leave", "")
        if member.status == "failed":
            since = self._failed_at.get(name)
            now = asyncio.get_running_loop().time()
            if since is not None and now - since >= self.config.failed_grace:
                return ("leave", "")
        return None

    async def _apply(self, name: str, current: Mapping[str, str] | None = None) -> bool:
        """Bring the handler in line with the member's status; False if the handler failed."""
        if not self.handler.is_leader():
            return True
        desired = self._desired(name)
        if desired is None:
            return True
        async with self._lock:
            try:
                if current is None:
                    current = await self._bounded("members", self.handler.members())
                action, addr = desired
                if action == "join" and current.get(name) != addr:
                    if not await self._authenticated(name, addr):
                        return True  # refused: not a handler failure, nothing to retry now
                    log.info("membership: adding %s at %s", name, addr)
                    await self._bounded("join", self.handler.join(name, addr))
                    self._audit(name, addr, "join", "added")
                elif action == "leave" and name in current:
                    log.info("membership: removing %s (%s)", name, self._view[name].status)
                    await self._bounded("leave", self.handler.leave(name))
                    self._audit(name, current.get(name, ""), "leave", "removed")
            except Exception as exc:
                self.errors += 1
                log.warning(
                    "membership: %s of %s failed (%r); retried at the next reconcile",
                    desired[0],
                    name,
                    exc,
                )
                return False
        return True

    async def _authenticated(self, name: str, addr: str) -> bool:
        """Run the membership check; a refusal is counted, logged and audited (once per
        member, address and reason; repeats at DEBUG) and the member is not added."""
        if self.authenticate is None:
            return True
        now = asyncio.get_running_loop().time()
        last = self._refused_at.get(name)
        if last is not None and last[0] == addr and now - last[1] < self.config.reconcile_interval:
            return False
        try:
            await self._bounded("authenticate", self.authenticate(name, addr))
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            self.refused += 1
            self._refused_at[name] = (addr, asyncio.get_running_loop().time())
            if self.refusals.get(name) != (addr, reason):
                self.refusals[name] = (addr, reason)
                log.warning(
                    "membership: refused member %s at %s: %s (it is not added to Raft)",
                    name,
                    addr,
                    reason,
                    extra={"peer": name},
                )
                self._audit(name, addr, "join", "refused", reason=reason)
            else:
                log.debug("membership: %s at %s still refused: %s", name, addr, reason)
            return False
        self._refused_at.pop(name, None)
        if self.refusals.pop(name, None) is not None:
            log.info("membership: %s at %s is now authenticated", name, addr)
        return True

    def _audit(self, name: str, addr: str, method: str, decision: str, **details: str) -> None:
        member = self._view.get(name)
        gossip = f"{member.addr}:{member.port}" if member is not None else ""
        self.audit.record(
            "membership",
            subject=name,
            peer=addr or "-",
            method=method,
            decision=decision,
            gossip_addr=gossip,
            **details,
        )

    async def reconcile(self) -> None:
        """Compare Serf's members with the handler's and fix differences (leader only).

        Reads a fresh member list from the source when it can (falls back to the view).
        Handler members unknown to Serf are left alone: a new agent may not know everyone
        yet, and removing on ignorance would be unsafe.
        """
        if not self.handler.is_leader():
            return
        try:
            await self._refresh_view(await self.source.members())
        except (SerfRPCError, OSError, TimeoutError) as exc:
            log.debug("reconcile: member list unavailable (%s); using the last view", exc)
        try:
            current = await self._bounded("members", self.handler.members())
        except Exception as exc:
            self.errors += 1
            log.warning("reconcile: handler.members() failed: %r", exc)
            return
        for name in sorted(self._view):
            await self._apply(name, current)
            if not self.handler.is_leader():
                return
        for name in set(current) - set(self._view) - {self.config.node_name}:
            log.debug("reconcile: %s is in the cluster but unknown to serf; left alone", name)


class StaticMembership(_Base):
    """Static join mode: a fixed ``{id: rpc_addr}`` peer list fed to the same handler.

    On the leader every listed peer (the local node excluded) that the handler does not
    list with that address is joined, at start and every ``reconcile_interval`` seconds.
    Peers are never removed automatically in this mode.
    """

    def __init__(
        self, config: MembershipConfig, handler: Handler, peers: Mapping[str, str]
    ) -> None:
        super().__init__(config, handler)
        self.peers = {k: v for k, v in peers.items() if k != config.node_name}

    async def start(self) -> None:
        """Reconcile once in the background at once, then periodically."""

        async def first_then_loop() -> None:
            try:
                await self.reconcile()
            except Exception:
                log.exception("static membership reconcile failed")
            await self._reconcile_loop()

        self._spawn(first_then_loop(), "static-membership")

    async def reconcile(self) -> None:
        """Join every configured peer missing from the handler (leader only)."""
        if not self.handler.is_leader():
            return
        async with self._lock:
            try:
                current = await self._bounded("members", self.handler.members())
            except Exception as exc:
                self.errors += 1
                log.warning("static membership: handler.members() failed: %r", exc)
                return
            for node_id, addr in sorted(self.peers.items()):
                if current.get(node_id) == addr:
                    continue
                if not self.handler.is_leader():
                    return
                try:
                    log.info("static membership: adding %s at %s", node_id, addr)
                    await self._bounded("join", self.handler.join(node_id, addr))
                except Exception as exc:
                    self.errors += 1
                    log.warning("static membership: join of %s failed: %r", node_id, exc)

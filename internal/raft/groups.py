"""Many Raft groups on one transport: one connection per peer, payloads tagged by group.

A node that hosts several partitions runs one Raft group per partition. They must not open
a connection (and a TLS session, and a writer task) each per peer: the node keeps one
physical :class:`~raftlog.raft.transport.Transport` and a :class:`GroupRouter` on it, and
every group gets a :class:`GroupTransport`, which is a whole ``Transport`` to the
:class:`~raftlog.raft.node.RaftNode` that owns it. Frames of all groups to one peer share
that peer's connection, so they are also written together: the TCP transport coalesces
whatever is queued for a peer into one write.

Wire format (documented in docs/raft-transport.md)::

    default group ("")  : the payload as it is, exactly what a node with one group sends
    any other group     : | 'G' | n: u8 | group id: n bytes of UTF-8 | payload |

Raft payloads start with ``M``, ``C`` or ``K`` (their kind, see ``raftlog.raft.codec``), so
``G`` cannot be confused with one. The default group needs no envelope: a node of today's
single-group version talks to the default group of a node with a router, and the other way
round (tests/raft/test_transport_groups.py runs such a pair).

Inbound payloads for a group this node does not host (a replica just moved away, or not yet
created) are dropped and counted: Raft retransmits what matters, and a group that starts
later gets the next heartbeat.

The peer table of the physical transport is the union of the groups' tables: a peer stays
connected while any group needs it. If two groups name different addresses for one node
id (an address change seen by one group first), the group that updated last wins.

Node liveness (optional, ``liveness_interval``): groups that quiesce
(``RaftConfig.quiesce_after_ticks``) stop heartbeating, so their followers cannot notice a
dead leader by themselves. The router pings every peer once per interval, one small
payload per node pair whatever the number of groups (``| 'L' | sender id |``), and reports
a peer silent for ``liveness_timeout`` to its listeners (``add_down_listener``): the node
wires them to ``RaftNode.peer_unreachable``, which wakes the groups that peer led. Off by
default: a node of the one-group version counts a ping as a bad payload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from raftlog.raft.transport import Handler, Transport, TransportStats, deliver

log = logging.getLogger(__name__)

#: The group whose payloads travel without an envelope (what a one-group node sends).
DEFAULT_GROUP = ""
#: First byte of an enveloped payload.
GROUP_KIND = b"G"[0]
#: Longest group id, in bytes of UTF-8 (the envelope's length field is one byte).
MAX_GROUP_ID_BYTES = 255
#: First byte of a liveness ping (then the sender's node id in UTF-8).
PING_KIND = b"L"[0]
#: Default liveness ping interval and the silence that makes a peer down, in seconds.
#: The timeout spans four pings; with 50 ms ticks and an election timeout of 10-19 ticks,
#: a quiesced group's failover then takes about 2.5-3 s instead of 0.5-1 s.
DEFAULT_LIVENESS_INTERVAL_S = 0.5
DEFAULT_LIVENESS_TIMEOUT_S = 2.0


class GroupIdError(ValueError):
    """A group id that cannot be put in an envelope (empty is the default group's)."""


def encode_group_id(group: str) -> bytes:
    """The envelope prefix of ``group`` (``b""`` for the default group)."""
    if group == DEFAULT_GROUP:
        return b""
    raw = group.encode("utf-8")
    if len(raw) > MAX_GROUP_ID_BYTES:
        raise GroupIdError(f"group id is {len(raw)} bytes of UTF-8, at most {MAX_GROUP_ID_BYTES}")
    return bytes((GROUP_KIND, len(raw))) + raw


def decode_envelope(payload: bytes) -> tuple[str, bytes] | None:
    """``(group, inner payload)`` of an inbound payload; ``None`` if the envelope is
    malformed (cut short, or a group id that is not UTF-8)."""
    if not payload or payload[0] != GROUP_KIND:
        return DEFAULT_GROUP, payload
    if len(payload) < 2:
        return None
    end = 2 + payload[1]
    if len(payload) < end or end == 2:
        return None
    try:
        group = payload[2:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return group, payload[end:]


class GroupRouter:
    """Shares one physical transport between the Raft groups of one node.

    Lifecycle: ``router = GroupRouter(transport)``; ``router.group(id)`` for each group
    (before or after ``await router.start()``; a group's own ``start()`` starts the router
    too); ``await router.close()`` at the end closes the physical transport. Closing a
    group only detaches it: the others go on.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        liveness_interval: float | None = None,
        liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT_S,
    ) -> None:
        """``liveness_interval``: seconds between pings to each peer (None: no pings, no
        failure reports); ``liveness_timeout``: silence after which a peer is reported
        down (seconds, more than the interval)."""
        if liveness_interval is not None and not 0 < liveness_interval < liveness_timeout:
            raise ValueError(
                f"liveness_interval must be > 0 and below liveness_timeout "
                f"({liveness_timeout} s), got {liveness_interval}"
            )
        self.transport = transport
        self.liveness_interval = liveness_interval
        self.liveness_timeout = liveness_timeout
        self._ping = b"L" + transport.node_id.encode("utf-8")
        self._heard: dict[str, float] = {}
        #: peers reported down and not heard from since
        self.down: set[str] = set()
        self._down_listeners: list[Callable[[str], None]] = []
        self._liveness_task: asyncio.Task[None] | None = None
        #: liveness pings sent (all peers), for tests and metrics
        self.pings_sent = 0
        self._peers: dict[str, str] = {}
        self._groups: dict[str, GroupTransport] = {}
        #: each group's peer table, the group that updated last at the end
        self._tables: dict[str, dict[str, str]] = {}
        self._started = False
        self._closed = False
        #: inbound payloads for a group this node does not host
        self.dropped_unknown_group = 0
        #: inbound payloads whose envelope is malformed
        self.bad_envelopes = 0
        transport.set_handler(self._dispatch)

    @property
    def node_id(self) -> str:
        return self.transport.node_id

    @property
    def groups(self) -> list[str]:
        """The ids of the groups attached now."""
        return list(self._groups)

    def group(self, group: str) -> GroupTransport:
        """The transport of ``group``: a new one, or the one attached already."""
        existing = self._groups.get(group)
        if existing is not None:
            return existing
        if self._closed:
            raise RuntimeError("the group router is closed")
        gt = GroupTransport(self, group, encode_group_id(group))
        self._groups[group] = gt
        return gt

    async def start(self) -> None:
        """Start the physical transport once (idempotent), and the liveness pings."""
        if not self._started and not self._closed:
            self._started = True
            await self.transport.start()
            if self.liveness_interval is not None:
                self._liveness_task = asyncio.create_task(
                    self._liveness(self.liveness_interval), name="raft-group-liveness"
                )

    def add_down_listener(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(peer)`` on the event loop each time a peer is reported down;
        returns the function that removes it."""
        self._down_listeners.append(listener)

        def remove() -> None:
            if listener in self._down_listeners:
                self._down_listeners.remove(listener)

        return remove

    async def _liveness(self, interval: float) -> None:
        """Ping every peer each ``interval`` seconds; report the silent ones."""
        started = time.monotonic()
        while True:
            now = time.monotonic()
            for peer in list(self._peers):
                self.transport.send(peer, self._ping)
                self.pings_sent += 1
                silent = now - self._heard.get(peer, started)
                if silent > self.liveness_timeout and peer not in self.down:
                    self.down.add(peer)
                    log.warning("raft groups: peer %s silent for %.1f s: down", peer, silent)
                    for listener in list(self._down_listeners):
                        try:
                            listener(peer)
                        except Exception:
                            log.exception("raft groups: a down listener failed for %s", peer)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Detach every group and close the physical transport (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._liveness_task is not None:
            self._liveness_task.cancel()
            await asyncio.gather(self._liveness_task, return_exceptions=True)
        for gt in list(self._groups.values()):
            gt.detach()
        self._groups.clear()
        self._tables.clear()
        await self.transport.close()

    def stats(self) -> TransportStats:
        """The physical transport's counters (every group's traffic together)."""
        return self.transport.stats()

    # -- for GroupTransport --------------------------------------------------------------

    def _set_peers(self, group: str, addresses: Mapping[str, str]) -> None:
        self._tables.pop(group, None)
        self._tables[group] = dict(addresses)
        self._push_peers()

    def _detach(self, group: str) -> None:
        self._groups.pop(group, None)
        if self._tables.pop(group, None) is not None and not self._closed:
            self._push_peers()

    def _push_peers(self) -> None:
        union: dict[str, str] = {}
        for table in self._tables.values():  # oldest update first: the newest wins
            union.update(table)
        union.pop(self.transport.node_id, None)
        self._peers = union
        self.transport.update_peers(union)

    def _dispatch(self, payload: bytes) -> None:
        if payload and payload[0] == PING_KIND:
            peer = payload[1:].decode("utf-8", "replace")
            self._heard[peer] = time.monotonic()
            if peer in self.down:
                self.down.discard(peer)
                log.info("raft groups: peer %s heard again: up", peer)
            return
        decoded = decode_envelope(payload)
        if decoded is None:
            self.bad_envelopes += 1
            return
        group, inner = decoded
        gt = self._groups.get(group)
        if gt is None:
            self.dropped_unknown_group += 1
            return
        gt._deliver(inner)


class GroupTransport:
    """One group's view of the shared transport; a :class:`Transport` for its RaftNode.

    ``stats()`` counts this group's own traffic (``enqueued``, ``delivered``,
    ``dropped_closed``, ``dropped_no_handler``, ``handler_errors``); the connection
    counters are the router's (:meth:`GroupRouter.stats`).
    """

    def __init__(self, router: GroupRouter, group: str, prefix: bytes) -> None:
        self._router = router
        self.group = group
        self._prefix = prefix
        self._handler: Handler | None = None
        self._stats = TransportStats()
        self._attached = True
        #: how a failing handler is named in the log (built once, not per payload)
        self._who = f"{router.node_id} group {group!r}"

    @property
    def node_id(self) -> str:
        return self._router.node_id

    async def start(self) -> None:
        await self._router.start()

    async def close(self) -> None:
        """Detach from the router (the physical transport stays up for the others)."""
        self.detach()

    def detach(self) -> None:
        if self._attached:
            self._attached = False
            self._router._detach(self.group)

    def send(self, to: str, payload: bytes) -> None:
        if not self._attached:
            self._stats.dropped_closed += 1
            return
        self._stats.enqueued += 1
        self._router.transport.send(to, self._prefix + payload if self._prefix else payload)

    def set_handler(self, handler: Handler) -> None:
        self._handler = handler

    def update_peers(self, addresses: Mapping[str, str]) -> None:
        if self._attached:
            self._router._set_peers(self.group, addresses)

    def stats(self) -> TransportStats:
        return self._stats.copy()

    def _deliver(self, payload: bytes) -> None:
        deliver(self._handler, payload, self._stats, self._who)

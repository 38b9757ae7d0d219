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
"""

from __future__ import annotations

from collections.abc import Mapping

from raftlog.raft.transport import Handler, Transport, TransportStats, deliver

#: The group whose payloads travel without an envelope (what a one-group node sends).
DEFAULT_GROUP = ""
#: First byte of an enveloped payload.
GROUP_KIND = b"G"[0]
#: Longest group id, in bytes of UTF-8 (the envelope's length field is one byte).
MAX_GROUP_ID_BYTES = 255


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

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
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
        """Start the physical transport once (idempotent)."""
        if not self._started and not self._closed:
            self._started = True
            await self.transport.start()

    async def close(self) -> None:
        """Detach every group and close the physical transport (idempotent)."""
        if self._closed:
            return
        self._closed = True
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
        if self._groups.get(group) is not None:
            del self._groups[group]
        if self._tables.pop(group, None) is not None and not self._closed:
            self._push_peers()

    def _push_peers(self) -> None:
        union: dict[str, str] = {}
        for table in self._tables.values():  # oldest update first: the newest wins
            union.update(table)
        union.pop(self.transport.node_id, None)
        self.transport.update_peers(union)

    def _dispatch(self, payload: bytes) -> None:
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
        deliver(self._handler, payload, self._stats, f"{self.node_id} group {self.group!r}")

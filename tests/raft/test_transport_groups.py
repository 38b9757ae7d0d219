"""Many Raft groups on one transport (raftlog.raft.groups): real RaftNodes over TCP+TLS on
127.0.0.1, several groups per node, one connection per peer; the default group speaks the
wire of a one-group node; the router's bookkeeping (peer union, unknown groups, bad
envelopes, detached groups)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping

import pytest

from raftlog.raft import RaftConfig, Server
from raftlog.raft.config import NodeConfig
from raftlog.raft.groups import (
    DEFAULT_GROUP,
    GroupIdError,
    GroupRouter,
    decode_envelope,
    encode_group_id,
)
from raftlog.raft.inmem import InmemLogStore, InmemSnapshotStore, InmemStableStore
from raftlog.raft.node import RaftNode
from raftlog.raft.testing import ListFSM
from raftlog.raft.transport import Handler, Transport, TransportStats
from raftlog.raft.transport_tcp import TcpTransport
from raftlog.security import CertFiles
from support.raft_peers import peer_tls, serving_transport
from support.wait import wait_until

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0


#: each node's state machine (RaftNode keeps its own private)
FSMS: weakref.WeakKeyDictionary[RaftNode, ListFSM] = weakref.WeakKeyDictionary()


def _node(
    node_id: str, transport: Transport, peers: Mapping[str, str], quiesce_after_ticks: int = 0
) -> RaftNode:
    fsm = ListFSM()
    node = RaftNode(
        NodeConfig(
            raft=RaftConfig(id=node_id, quiesce_after_ticks=quiesce_after_ticks),
            tick_interval=0.03,
            close_timeout=2.0,
            seed=hash(node_id) & 0xFFFF,
        ),
        fsm,
        transport,
        log_store=InmemLogStore(),
        stable_store=InmemStableStore(),
        snapshot_store=InmemSnapshotStore(),
        peers=peers,
    )
    FSMS[node] = fsm
    return node


async def _leader(nodes: list[RaftNode]) -> RaftNode:
    found: list[RaftNode] = []

    def agreed() -> bool:
        leaders = [n for n in nodes if n.is_leader]
        if len(leaders) == 1 and all(n.leader_id == leaders[0].id for n in nodes):
            found[:] = leaders
            return True
        return False

    await wait_until(agreed, WAIT, f"one leader among {[n.id for n in nodes]}")
    return found[0]


def _items(node: RaftNode) -> list[bytes]:
    return list(FSMS[node].items)


async def test_three_groups_on_three_nodes_share_one_connection_per_peer(
    dev_certs: dict[str, CertFiles],
) -> None:
    """Each group elects, replicates and applies only its own entries; each node dials
    each peer once, whatever the number of groups."""
    tls = peer_tls(dev_certs)
    ids = ["a", "b", "c"]
    groups = [DEFAULT_GROUP, "orders/0", "orders/1"]
    physical: dict[str, TcpTransport] = {}
    addresses: dict[str, str] = {}
    for i in ids:
        physical[i], addresses[i] = await serving_transport(i, tls)
    routers = {i: GroupRouter(physical[i]) for i in ids}
    nodes: dict[str, list[RaftNode]] = {g: [] for g in groups}
    try:
        for g in groups:
            for i in ids:
                node = _node(i, routers[i].group(g), addresses)
                await node.start()
                nodes[g].append(node)
        servers = [Server(i, addresses[i]) for i in ids]
        for g in groups:
            for node in nodes[g]:
                await node.bootstrap(servers)
        for g in groups:
            lead = await _leader(nodes[g])
            await asyncio.gather(*(lead.propose(b"%s-%d" % (g.encode(), k)) for k in range(20)))
        for g in groups:
            want = {b"%s-%d" % (g.encode(), k) for k in range(20)}

            def applied(g: str = g, want: set[bytes] = want) -> bool:
                return all(set(_items(n)) == want for n in nodes[g])

            await wait_until(applied, WAIT, f"group {g!r} applied on every node")
        for i in ids:
            s = routers[i].stats()
            # at most one outbound and one inbound connection per peer (dialed lazily: a
            # follower that never sends to the other follower never dials it)
            assert s.connects <= len(ids) - 1 and s.accepted <= len(ids) - 1, (i, s)
            assert routers[i].dropped_unknown_group == 0
            assert routers[i].bad_envelopes == 0
        # a group's close leaves the others running on the shared connection
        for node in nodes["orders/0"]:
            await node.close()
        lead = await _leader(nodes["orders/1"])
        await lead.propose(b"after")
        await wait_until(
            lambda: all(b"after" in _items(n) for n in nodes["orders/1"]),
            WAIT,
            "orders/1 applied after orders/0 closed",
        )
    finally:
        for g in groups:
            for node in nodes[g]:
                await node.close()
        for r in routers.values():
            await r.close()


async def test_default_group_talks_to_a_one_group_node(dev_certs: dict[str, CertFiles]) -> None:
    """A node with a router (its default group, plus another group of its own) and a node
    of the one-group kind (a bare transport) form one Raft group: the default group's
    payloads carry no envelope."""
    tls = peer_tls(dev_certs)
    t_new, addr_new = await serving_transport("new", tls)
    t_old, addr_old = await serving_transport("old", tls)
    addresses = {"new": addr_new, "old": addr_old}
    router = GroupRouter(t_new)
    new = _node("new", router.group(DEFAULT_GROUP), addresses)
    solo = _node("new", router.group("solo"), {})
    old = _node("old", t_old, addresses)
    try:
        for node in (new, solo, old):
            await node.start()
        servers = [Server("new", addr_new), Server("old", addr_old)]
        await new.bootstrap(servers)
        await old.bootstrap(servers)
        await solo.bootstrap([Server("new", addr_new)])
        lead = await _leader([new, old])
        await asyncio.gather(*(lead.propose(b"x%d" % k) for k in range(10)))
        await (await _leader([solo])).propose(b"solo")
        want = {b"x%d" % k for k in range(10)}
        await wait_until(
            lambda: set(_items(new)) == want and set(_items(old)) == want,
            WAIT,
            "both nodes applied the default group's entries",
        )
        assert _items(solo) == [b"solo"]
        assert old.stats.bad_payloads == 0
    finally:
        for node in (new, solo, old):
            await node.close()
        await router.close()
        await t_old.close()


class RecordingTransport:
    """A physical transport that records what the router asks of it (no network)."""

    def __init__(self, node_id: str = "me") -> None:
        self._id = node_id
        self.handler: Handler | None = None
        self.peers: dict[str, str] = {}
        self.sent: list[tuple[str, bytes]] = []
        self.starts = 0
        self.closes = 0

    @property
    def node_id(self) -> str:
        return self._id

    async def start(self) -> None:
        self.starts += 1

    async def close(self) -> None:
        self.closes += 1

    def send(self, to: str, payload: bytes) -> None:
        self.sent.append((to, payload))

    def set_handler(self, handler: Handler) -> None:
        self.handler = handler

    def update_peers(self, addresses: Mapping[str, str]) -> None:
        self.peers = dict(addresses)

    def stats(self) -> TransportStats:
        return TransportStats()


def test_envelopes_round_trip_and_malformed_ones_are_refused() -> None:
    assert encode_group_id(DEFAULT_GROUP) == b""
    assert decode_envelope(b"M\x01\x02") == (DEFAULT_GROUP, b"M\x01\x02")
    env = encode_group_id("topic/3") + b"Mpayload"
    assert decode_envelope(env) == ("topic/3", b"Mpayload")
    assert decode_envelope(encode_group_id("ü")) == ("ü", b"")
    for bad in (b"G", b"G\x00M", b"G\x05ab", b"G\x02\xff\xfeM"):
        assert decode_envelope(bad) is None, bad
    with pytest.raises(GroupIdError):
        encode_group_id("x" * 256)


async def test_router_bookkeeping() -> None:
    phys = RecordingTransport()
    router = GroupRouter(phys)
    g1, g2 = router.group("g1"), router.group("g2")
    assert router.group("g1") is g1
    got: list[bytes] = []
    g1.set_handler(got.append)
    await g1.start()
    await g2.start()
    assert phys.starts == 1  # the physical transport starts once

    g1.update_peers({"b": "b:1", "c": "c:1", "me": "me:1"})
    g2.update_peers({"b": "b:1"})
    assert phys.peers == {"b": "b:1", "c": "c:1"}  # the union, never the node itself
    g2.update_peers({"b": "b:2"})
    assert phys.peers == {"b": "b:2", "c": "c:1"}  # the group that updated last wins

    g1.send("b", b"Mhello")
    g2.send("c", b"Mbye")
    assert phys.sent == [("b", b"G\x02g1Mhello"), ("c", b"G\x02g2Mbye")]

    assert phys.handler is not None
    phys.handler(b"G\x02g1Mone")
    phys.handler(b"G\x02g9Mnobody")  # a group this node does not host
    phys.handler(b"G\x09cut")  # malformed
    phys.handler(b"G\x02g2Mno-handler")
    assert got == [b"Mone"]
    assert (router.dropped_unknown_group, router.bad_envelopes) == (1, 1)
    assert g2.stats().dropped_no_handler == 1 and g1.stats().delivered == 1

    def boom(_: bytes) -> None:
        raise RuntimeError("handler bug")

    g2.set_handler(boom)
    phys.handler(b"G\x02g2Mx")  # counted and logged, not raised into the transport
    assert g2.stats().handler_errors == 1

    await g1.close()  # detaches g1: its peers go unless another group needs them
    assert phys.peers == {"b": "b:2"}
    g1.send("b", b"Mlate")
    assert g1.stats().dropped_closed == 1 and len(phys.sent) == 2
    phys.handler(b"G\x02g1Mlate")
    assert router.dropped_unknown_group == 2
    assert router.groups == ["g2"]
    await router.close()
    await router.close()
    assert phys.closes == 1
    with pytest.raises(RuntimeError, match="closed"):
        router.group("g3")


async def test_quiet_groups_send_nothing_but_pings_and_fail_over_on_liveness(
    dev_certs: dict[str, CertFiles],
) -> None:
    """Idle groups quiesce: over many pings, no group sends a message. A proposal wakes
    its group, commits, and it goes quiet again. When the node leading a quiet group
    stops, the others' routers report it down and the group elects a new leader."""
    tls = peer_tls(dev_certs)
    ids = ["a", "b", "c"]
    groups = ["p/0", "p/1"]
    physical: dict[str, TcpTransport] = {}
    addresses: dict[str, str] = {}
    for i in ids:
        physical[i], addresses[i] = await serving_transport(i, tls)
    routers = {
        i: GroupRouter(physical[i], liveness_interval=0.1, liveness_timeout=0.6) for i in ids
    }
    nodes: dict[str, dict[str, RaftNode]] = {g: {} for g in groups}
    try:
        for g in groups:
            for i in ids:
                node = _node(i, routers[i].group(g), addresses, quiesce_after_ticks=3)
                routers[i].add_down_listener(node.peer_unreachable)
                await node.start()
                nodes[g][i] = node
        servers = [Server(i, addresses[i]) for i in ids]
        for g in groups:
            for node in nodes[g].values():
                await node.bootstrap(servers)
        for g in groups:
            await _leader(list(nodes[g].values()))

        def all_quiet() -> bool:
            return all(n.quiesced for g in groups for n in nodes[g].values())

        await wait_until(all_quiet, WAIT, "every group quiesced on every node")

        def sent_by_groups() -> dict[tuple[str, str], int]:
            return {(g, i): routers[i].group(g).stats().enqueued for g in groups for i in ids}

        sent = sent_by_groups()
        pings = {i: r.pings_sent for i, r in routers.items()}
        await wait_until(
            lambda: all(r.pings_sent >= pings[i] + 10 for i, r in routers.items()),
            WAIT,
            "five ping rounds",
        )
        assert sent_by_groups() == sent and all_quiet()

        lead = await _leader(list(nodes["p/0"].values()))
        await lead.propose(b"wake")
        await wait_until(
            lambda: all(b"wake" in _items(n) for n in nodes["p/0"].values()),
            WAIT,
            "the proposal applied everywhere",
        )
        await wait_until(all_quiet, WAIT, "quiet again after the write")

        # the leader of p/1 stops (its transport too): the others elect a new one
        lead = await _leader(list(nodes["p/1"].values()))
        gone = lead.id
        for g in groups:
            await nodes[g][gone].close()
        await routers[gone].close()
        rest = [n for i, n in nodes["p/1"].items() if i != gone]
        await wait_until(
            lambda: any(n.is_leader for n in rest), WAIT, "a new leader of the quiet group"
        )
        new = await _leader(rest)
        assert new.id != gone
        await new.propose(b"after")
        await wait_until(
            lambda: all(b"after" in _items(n) for n in rest), WAIT, "the write after failover"
        )
        for i in ids:
            if i != gone:
                assert gone in routers[i].down
    finally:
        for g in groups:
            for node in nodes[g].values():
                await node.close()
        for r in routers.values():
            await r.close()

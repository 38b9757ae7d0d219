"""Resolver and picker mechanics.

Real in-process nodes are independent single nodes here: their GetServers answer comes from
a member list the test controls (``Directory``), so the resolver's refresh, channel closing
and the picker's routing are exercised over real TLS calls and counted on the servers. What
a real cluster does (replication, forwarding, elections) is tested against agent processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from raftlog.client import LogClient, ServerInfo, parse_addrs
from raftlog.client.picker import Picker
from support.client_nodes import FAST, Directory, RestartableNode
from support.wait import wait_until

MakeNode = Callable[[str], Awaitable[RestartableNode]]
ClientOf = Callable[..., contextlib.AbstractAsyncContextManager[LogClient]]


async def three_nodes(make_node: MakeNode) -> tuple[RestartableNode, ...]:
    nodes = tuple([await make_node(name) for name in "abc"])
    shared = Directory()
    for node in nodes:
        node.directory = shared
        assert node.local is not None
        node.local.directory = shared
        await node.local.append([b"r0", b"r1"])  # the same records on every node
    return nodes


async def test_produce_to_leader_consume_round_robin_over_followers(
    make_node: MakeNode, client_of: ClientOf
) -> None:
    a, b, c = await three_nodes(make_node)
    a.directory.members = [a.info(True), b.info(False), c.info(False)]
    async with client_of(b.addr) as client:  # bootstrapped from a follower
        assert client.resolver.leader == a.addr
        assert await client.produce(b"x") == 2
        assert (a.counts("Produce"), b.counts("Produce"), c.counts("Produce")) == (1, 0, 0)
        for _ in range(6):
            assert (await client.consume(1)).value == b"r1"
        assert (a.counts("Consume"), b.counts("Consume"), c.counts("Consume")) == (0, 3, 3)
        # offset 2 exists only on the leader: a follower answers OUT_OF_RANGE past its end,
        # and the read goes to the leader
        assert (await client.consume(2)).value == b"x"
        assert a.counts("Consume") == 1
        assert b.counts("Consume", "OUT_OF_RANGE") + c.counts("Consume", "OUT_OF_RANGE") == 1


async def test_single_node_consumes_from_the_leader(
    make_node: MakeNode, client_of: ClientOf
) -> None:
    a = await make_node("a")
    async with client_of(a.addr) as client:
        await client.produce_batch([b"p", b"q"])
        for _ in range(3):
            await client.consume(0)
        assert a.counts("Consume") == 3


async def test_resolver_drops_a_server_that_left_and_picks_up_a_new_one(
    make_node: MakeNode, client_of: ClientOf
) -> None:
    a, b, c = await three_nodes(make_node)
    a.directory.members = [a.info(True), b.info(False)]
    config = replace(FAST, refresh_interval_s=0.1)
    async with client_of(a.addr, config=config) as client:
        await client.consume(0)
        assert b.counts("Consume") == 1
        assert client.resolver.channel_addrs == {a.addr, b.addr}
        # b leaves, c joins: the periodic refresh notices, closes b's channel
        a.directory.members = [a.info(True), c.info(False)]
        await wait_until(
            lambda: {s.rpc_addr for s in client.resolver.servers} == {a.addr, c.addr},
            10.0,
            "the resolver to list a and c",
        )
        assert b.addr not in client.resolver.channel_addrs
        for _ in range(2):
            await client.consume(0)
        assert (b.counts("Consume"), c.counts("Consume")) == (1, 2)
        assert client.resolver.channel_addrs == {a.addr, c.addr}


async def test_a_follower_that_went_down_is_avoided_and_refreshed_away(
    make_node: MakeNode, client_of: ClientOf
) -> None:
    a, b, c = await three_nodes(make_node)
    a.directory.members = [a.info(True), b.info(False), c.info(False)]
    async with client_of(a.addr, config=replace(FAST, down_cooldown_s=30)) as client:
        await client.consume(0)
        await client.consume(0)
        refreshes = client.resolver.refreshes
        await b.stop()
        a.directory.members = [a.info(True), c.info(False)]
        for _ in range(4):  # the call that meets b retries on another server
            assert (await client.consume(0)).value == b"r0"
        assert client.stats.retries <= 1
        assert client.resolver.is_down(b.addr) or b.addr not in client.resolver.channel_addrs
        # the error asked for a refresh: b is gone from the view
        await wait_until(lambda: client.resolver.refreshes > refreshes, 10.0, "a refresh")
        await wait_until(
            lambda: b.addr not in {s.rpc_addr for s in client.resolver.servers},
            10.0,
            "the resolver to drop b",
        )


async def test_not_leader_hint_is_followed(make_node: MakeNode, client_of: ClientOf) -> None:
    a, b, _c = await three_nodes(make_node)
    # b still believes it leads (a stale view), but refuses writes naming a as the leader
    a.directory.members = [b.info(True), a.info(False)]
    assert b.local is not None
    b.local.not_leader_hint = a.addr
    async with client_of(b.addr) as client:
        assert client.resolver.leader == b.addr
        assert await client.produce(b"x") == 2
        assert b.counts("Produce", "UNAVAILABLE") == 1  # NOT_LEADER travels as UNAVAILABLE
        assert a.counts("Produce") == 1
        assert client.stats.retries == 0  # a hint is followed at once, no backoff


async def test_servers_reports_and_refreshes(make_node: MakeNode, client_of: ClientOf) -> None:
    a, b, c = await three_nodes(make_node)
    a.directory.members = [a.info(True)]
    async with client_of([a.addr, f"{b.addr},{c.addr}"]) as client:
        assert [s.rpc_addr for s in await client.servers()] == [a.addr]
        a.directory.members = [a.info(False), b.info(True)]
        servers = await client.servers()
        assert [(s.rpc_addr, s.is_leader) for s in servers] == [(a.addr, False), (b.addr, True)]
        assert client.resolver.leader == b.addr


# -- pure units ----------------------------------------------------------------------------


class View:
    def __init__(self, servers: list[ServerInfo], down: frozenset[str] = frozenset()) -> None:
        self.servers = tuple(servers)
        self.down = set(down)
        self.bootstrap = ("boot:1",)
        self.leader = next((s.rpc_addr for s in servers if s.is_leader), "")

    def is_down(self, addr: str) -> bool:
        return addr in self.down


def _s(addr: str, leader: bool = False) -> ServerInfo:
    return ServerInfo(addr, addr, leader)


def test_picker() -> None:
    picker = Picker()
    view = View([_s("l:1", True), _s("f:1"), _s("f:2")])
    assert [picker.for_produce(view) for _ in range(3)] == ["l:1"] * 3
    assert [picker.for_consume(view) for _ in range(4)] == ["f:1", "f:2", "f:1", "f:2"]
    view.down = {"f:1"}
    assert {picker.for_consume(view) for _ in range(3)} == {"f:2"}
    view.down = {"f:1", "f:2"}
    assert picker.for_consume(view) == "l:1"  # no live follower: the leader reads
    view.down = {"l:1"}
    assert picker.for_produce(view) in {"f:1", "f:2"}  # a follower forwards or names it
    view.down = {"l:1", "f:1", "f:2"}
    assert picker.for_produce(view) == "l:1"  # all down: try the leader anyway
    no_leader = View([_s("a:1"), _s("b:1")])
    assert {picker.for_produce(no_leader) for _ in range(2)} == {"a:1", "b:1"}
    assert picker.for_consume(View([])) == "boot:1"  # nothing learned yet
    assert picker.for_produce(View([])) == "boot:1"


def test_picker_prefers_voting_followers_over_learners_for_consume() -> None:
    picker = Picker()
    learner = ServerInfo("n:1", "n:1", False, is_learner=True)
    view = View([_s("l:1", True), _s("f:1"), learner])
    assert {picker.for_consume(view) for _ in range(4)} == {"f:1"}
    view.down = {"f:1"}
    assert picker.for_consume(view) == "n:1"  # a learner reads before the leader does
    view.down = {"f:1", "n:1"}
    assert picker.for_consume(view) == "l:1"


def test_parse_addrs() -> None:
    assert parse_addrs("a:1, b:2,a:1") == ["a:1", "b:2"]
    assert parse_addrs(["a:1", "b:2,c:3"]) == ["a:1", "b:2", "c:3"]
    assert parse_addrs("[::1]:8400") == ["[::1]:8400"]
    for bad in ("a", "a:x", ":1", "a:0", "a:70000", ""):
        with pytest.raises(ValueError):
            parse_addrs(bad)

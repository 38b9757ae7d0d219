"""In-memory transport: fault hooks, manual time and determinism."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from raftlog.raft.transport import TransportConfigError
from raftlog.raft.transport_inmem import (
    AddressInUseError,
    Faults,
    InmemNetwork,
    InmemTransport,
)

pytestmark = pytest.mark.timeout(20)

Log = list[tuple[str, bytes]]


async def cluster(
    net: InmemNetwork, ids: tuple[str, ...] = ("a", "b", "c")
) -> tuple[dict[str, InmemTransport], Log]:
    """Started, fully meshed transports whose handlers append (receiver, payload) to a log."""
    received: Log = []
    nodes: dict[str, InmemTransport] = {}
    for node_id in ids:
        t = net.transport(node_id)

        def handler(payload: bytes, node_id: str = node_id) -> None:
            received.append((node_id, payload))

        t.set_handler(handler)
        await t.start()
        nodes[node_id] = t
    net.connect_all()
    return nodes, received


async def test_manual_time_delivers_only_when_advanced() -> None:
    net = InmemNetwork(seed=1, manual=True)
    net.set_faults(Faults(min_delay=0.010, max_delay=0.010))
    nodes, received = await cluster(net)
    nodes["a"].send("b", b"m1")
    assert net.pending() == 1
    assert net.advance(0.009) == 0
    assert received == []
    assert net.advance(0.001) == 1
    assert received == [("b", b"m1")]
    assert net.now == pytest.approx(0.010)


async def test_random_delays_keep_per_link_order_without_reorder() -> None:
    net = InmemNetwork(seed=2, manual=True)
    net.set_faults(Faults(min_delay=0.001, max_delay=0.050))
    nodes, received = await cluster(net)
    for i in range(300):
        nodes["a"].send("b", b"a%d" % i)
        nodes["c"].send("b", b"c%d" % i)
    net.run_until_idle()
    assert len(received) == 600
    for sender in (b"a", b"c"):
        seqs = [int(p[1:]) for _, p in received if p.startswith(sender)]
        assert seqs == list(range(300))
    # Random delays did interleave the two links differently from the send order.
    assert [p for _, p in received] != [b"%s%d" % (s, i) for i in range(300) for s in (b"a", b"c")]


async def test_reorder_breaks_fifo_but_loses_nothing() -> None:
    net = InmemNetwork(seed=3, manual=True)
    net.set_faults(Faults(min_delay=0.001, max_delay=0.001, reorder_rate=0.5, reorder_delay=0.02))
    nodes, received = await cluster(net, ("a", "b"))
    sent = [b"%d" % i for i in range(200)]
    for p in sent:
        nodes["a"].send("b", p)
    net.run_until_idle()
    got = [p for _, p in received]
    assert sorted(got) == sorted(sent)
    assert got != sent, "reorder_rate=0.5 over 200 payloads must change the order"


async def test_drop_rate_and_predicate() -> None:
    net = InmemNetwork(seed=4, manual=True)
    nodes, received = await cluster(net, ("a", "b"))
    net.set_faults(Faults(drop_rate=0.3))
    for i in range(1000):
        nodes["a"].send("b", b"%d" % i)
    net.run_until_idle()
    stats = nodes["a"].stats()
    assert 200 < stats.dropped_fault < 400
    assert stats.dropped_fault + len(received) == 1000

    received.clear()
    net.set_faults(None, drop_if=lambda src, dst, payload: payload.startswith(b"x"))
    for p in (b"x1", b"y1", b"x2", b"y2"):
        nodes["a"].send("b", p)
    net.run_until_idle()
    assert [p for _, p in received] == [b"y1", b"y2"]

    received.clear()
    net.set_faults(Faults(drop_rate=1.0))
    nodes["a"].send("b", b"gone")
    net.run_until_idle()
    assert received == []


async def test_duplicate_delivers_twice() -> None:
    net = InmemNetwork(seed=5, manual=True)
    net.set_faults(Faults(duplicate_rate=1.0))
    nodes, received = await cluster(net, ("a", "b"))
    nodes["a"].send("b", b"twice")
    net.run_until_idle()
    assert received == [("b", b"twice"), ("b", b"twice")]
    assert nodes["a"].stats().duplicated == 1


async def test_same_seed_same_run_different_seed_different_run() -> None:
    async def run(seed: int) -> Log:
        net = InmemNetwork(seed=seed, manual=True)
        net.set_faults(
            Faults(
                drop_rate=0.1,
                duplicate_rate=0.1,
                min_delay=0.001,
                max_delay=0.02,
                reorder_rate=0.2,
                reorder_delay=0.02,
            )
        )
        nodes, received = await cluster(net)
        for i in range(200):
            for src in ("a", "b", "c"):
                for dst in ("a", "b", "c"):
                    if src != dst:
                        nodes[src].send(dst, b"%s>%s:%d" % (src.encode(), dst.encode(), i))
            net.advance(0.003)
        net.run_until_idle()
        return received

    first, again, other = await run(11), await run(11), await run(12)
    assert first == again
    assert first != other


async def test_partition_heal_and_in_flight_cut() -> None:
    net = InmemNetwork(seed=6, manual=True)
    net.set_faults(Faults(min_delay=0.01, max_delay=0.01))
    nodes, received = await cluster(net)
    nodes["a"].send("b", b"in flight")
    net.partition({"a"}, {"b", "c"})
    net.run_until_idle()
    assert received == [], "a partition also cuts payloads already in flight"
    assert nodes["b"].stats().dropped_fault == 1

    nodes["a"].send("b", b"blocked")
    nodes["b"].send("c", b"same side")
    net.run_until_idle()
    assert received == [("c", b"same side")]
    assert not net.reachable("a", "c") and net.reachable("b", "c")

    net.heal()
    nodes["a"].send("b", b"healed")
    net.run_until_idle()
    assert received[-1] == ("b", b"healed")

    # Unlisted nodes form one more island together.
    net.partition({"a"})
    assert net.reachable("b", "c") and not net.reachable("a", "b")
    with pytest.raises(ValueError, match="overlap"):
        net.partition({"a", "b"}, {"b"})


async def test_disconnect_and_reconnect_one_node() -> None:
    net = InmemNetwork(seed=7, manual=True)
    nodes, received = await cluster(net)
    net.disconnect("c")
    nodes["a"].send("c", b"to c")
    nodes["c"].send("b", b"from c")
    nodes["a"].send("b", b"a to b")
    net.run_until_idle()
    assert received == [("b", b"a to b")]
    net.reconnect("c")
    nodes["a"].send("c", b"back")
    net.run_until_idle()
    assert received[-1] == ("c", b"back")


async def test_in_flight_queue_is_bounded_per_link() -> None:
    net = InmemNetwork(seed=8, manual=True, queue_size=10)
    nodes, received = await cluster(net, ("a", "b", "c"))
    for i in range(15):
        nodes["a"].send("b", b"%d" % i)
    nodes["a"].send("c", b"other link")
    assert nodes["a"].stats().dropped_queue_full == 5
    net.run_until_idle()
    assert len(received) == 11
    nodes["a"].send("b", b"room again")
    net.run_until_idle()
    assert received[-1] == ("b", b"room again")


async def test_restarted_node_does_not_get_its_previous_incarnations_mail() -> None:
    net = InmemNetwork(seed=9, manual=True)
    net.set_faults(Faults(min_delay=0.01, max_delay=0.01))
    nodes, received = await cluster(net, ("a", "b"))
    nodes["a"].send("b", b"old")
    await nodes["b"].close()
    with pytest.raises(AddressInUseError):
        net.transport("a")
    b2 = net.transport("b")
    got: list[bytes] = []
    b2.set_handler(got.append)
    await b2.start()
    net.run_until_idle()
    assert got == [] and received == []
    nodes["a"].send("b", b"new")
    net.run_until_idle()
    assert got == [b"new"]


async def test_asyncio_mode_follows_the_loop_clock() -> None:
    net = InmemNetwork(seed=10)
    net.set_faults(Faults(min_delay=0.05, max_delay=0.05))
    nodes, _ = await cluster(net, ("a", "b"))
    arrived = asyncio.Event()
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    times: list[float] = []

    def handler(payload: bytes) -> None:
        times.append(loop.time())
        arrived.set()

    nodes["b"].set_handler(handler)
    nodes["a"].send("b", b"later")
    await asyncio.sleep(0)
    assert times == []
    async with asyncio.timeout(5):
        await arrived.wait()
    assert times[0] - sent_at >= 0.049
    with pytest.raises(RuntimeError):
        net.advance(1.0)
    await net.close()


async def test_ping_pong_handlers_are_bounded_by_max_deliveries() -> None:
    net = InmemNetwork(seed=11, manual=True)
    nodes, _ = await cluster(net, ("a", "b"))
    nodes["a"].set_handler(lambda p: nodes["a"].send("b", p))
    nodes["b"].set_handler(lambda p: nodes["b"].send("a", p))
    nodes["a"].send("b", b"ball")
    assert net.run_until_idle(max_deliveries=100) == 100
    assert net.pending() == 1


def test_fault_settings_are_validated() -> None:
    net = InmemNetwork(seed=0)
    for bad, field in (
        (Faults(drop_rate=1.5), "drop_rate"),
        (Faults(duplicate_rate=-0.1), "duplicate_rate"),
        (Faults(min_delay=-1), "min_delay"),
        (Faults(min_delay=0.2, max_delay=0.1), "max_delay"),
    ):
        with pytest.raises(TransportConfigError, match=field):
            net.set_faults(bad)
    with pytest.raises(TransportConfigError, match="queue_size"):
        InmemNetwork(queue_size=0)


async def test_asyncio_mode_ping_pong_yields_to_the_loop() -> None:
    net = InmemNetwork(seed=12)
    nodes, _ = await cluster(net, ("a", "b"))
    hits = 0

    def bounce(me: str, other: str) -> Callable[[bytes], None]:
        def handler(payload: bytes) -> None:
            nonlocal hits
            hits += 1
            nodes[me].send(other, payload)

        return handler

    nodes["a"].set_handler(bounce("a", "b"))
    nodes["b"].set_handler(bounce("b", "a"))
    nodes["a"].send("b", b"ball")
    ticks = 0
    while hits < 50:
        await asyncio.sleep(0)  # the loop keeps turning while the ball bounces
        ticks += 1
        assert ticks < 10_000
    assert ticks >= 25, "each bounce must wait for a new loop iteration"
    await net.close()

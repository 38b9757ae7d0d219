"""One behaviour contract, run against every Raft transport.

Implementations: in-memory; TCP+TLS with its own listener; TCP+TLS behind the one-port
connection multiplexer (``raftlog.mux``), which reads the marker and either does the TLS
handshake with the transport's server context or hands over the plain stream, before
``handle_connection`` takes it.

Each test gets a small network of nodes from a harness that hides how nodes are created,
addressed, stopped and restarted; the assertions are the same for every transport.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import pytest

from raftlog.mux import Mux, MuxConfig
from raftlog.raft.transport import RAFT_MARKER, Transport, TransportStats
from raftlog.raft.transport_inmem import InmemNetwork
from raftlog.raft.transport_tcp import TcpTransport, TcpTransportConfig
from raftlog.security import TLSConfig, write_dev_certs
from support.wait import wait_until

pytestmark = pytest.mark.timeout(30)


class Inbox:
    """A handler that records payloads and lets a test await a condition on them."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self._event = asyncio.Event()

    def __call__(self, payload: bytes) -> None:
        self.items.append(payload)
        self._event.set()

    async def wait_for(self, pred: Callable[[list[bytes]], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred(self.items):
                self._event.clear()
                await self._event.wait()


class Harness(Protocol):
    transports: dict[str, Transport]
    inboxes: dict[str, Inbox]

    async def add(
        self, node_id: str, *, new_address: bool = False, handler: bool = True
    ) -> Transport: ...
    def address(self, node_id: str) -> str: ...
    async def stop(self, node_id: str) -> None: ...
    def down_address(self) -> str: ...
    async def close(self) -> None: ...


def connect_all(h: Harness) -> None:
    for node_id, t in h.transports.items():
        t.update_peers({k: h.address(k) for k in h.transports if k != node_id})


class InmemHarness:
    def __init__(self, *, max_frame_size: int, queue_size: int) -> None:
        self.network = InmemNetwork(seed=7, max_frame_size=max_frame_size, queue_size=queue_size)
        self.transports: dict[str, Transport] = {}
        self.inboxes: dict[str, Inbox] = {}
        self._addresses: dict[str, str] = {}
        self._generation = 0

    async def add(
        self, node_id: str, *, new_address: bool = False, handler: bool = True
    ) -> Transport:
        address = self._addresses.get(node_id, node_id)
        if new_address:
            self._generation += 1
            address = f"{node_id}#{self._generation}"
        t = self.network.transport(node_id, address)
        self._addresses[node_id] = address
        inbox = Inbox()
        if handler:
            t.set_handler(inbox)
        await t.start()
        self.transports[node_id], self.inboxes[node_id] = t, inbox
        return t

    def address(self, node_id: str) -> str:
        return self._addresses[node_id]

    async def stop(self, node_id: str) -> None:
        await self.transports[node_id].close()

    def down_address(self) -> str:
        return "nobody-listens-here"

    async def close(self) -> None:
        await self.network.close()


class TcpHarness:
    def __init__(self, certs: TLSConfig, *, max_frame_size: int, queue_size: int) -> None:
        self.certs = certs
        self.max_frame_size = max_frame_size
        self.queue_size = queue_size
        self.transports: dict[str, Transport] = {}
        self.inboxes: dict[str, Inbox] = {}
        self._addresses: dict[str, str] = {}
        self._all: list[TcpTransport] = []

    async def add(
        self, node_id: str, *, new_address: bool = False, handler: bool = True
    ) -> Transport:
        config = TcpTransportConfig(
            node_id=node_id,
            tls=self.certs,
            max_frame_size=self.max_frame_size,
            queue_size=self.queue_size,
            connect_timeout=2.0,
            handshake_timeout=2.0,
            close_timeout=2.0,
            backoff_initial=0.02,
            backoff_max=0.2,
        )
        t = TcpTransport(config, authorize=lambda subject: subject == "server")
        self._all.append(t)
        port = 0
        if node_id in self._addresses and not new_address:
            port = int(self._addresses[node_id].rsplit(":", 1)[1])
        self._addresses[node_id] = await t.serve("127.0.0.1", port)
        inbox = Inbox()
        if handler:
            t.set_handler(inbox)
        await t.start()
        self.transports[node_id], self.inboxes[node_id] = t, inbox
        return t

    def address(self, node_id: str) -> str:
        return self._addresses[node_id]

    async def stop(self, node_id: str) -> None:
        await self.transports[node_id].close()

    def down_address(self) -> str:
        return f"127.0.0.1:{free_port()}"

    async def close(self) -> None:
        for t in self._all:
            await t.close()


class MuxHarness(TcpHarness):
    """TCP transports behind the one-port connection multiplexer.

    ``mux_tls``: the mux does the TLS handshake (with the transport's server context);
    otherwise it hands over the plain, paused stream and the transport runs ``start_tls``.
    """

    def __init__(
        self, certs: TLSConfig, *, max_frame_size: int, queue_size: int, mux_tls: bool
    ) -> None:
        super().__init__(certs, max_frame_size=max_frame_size, queue_size=queue_size)
        self._muxes: list[Mux] = []
        self.mux_tls = mux_tls

    async def add(
        self, node_id: str, *, new_address: bool = False, handler: bool = True
    ) -> Transport:
        config = TcpTransportConfig(
            node_id=node_id,
            tls=self.certs,
            max_frame_size=self.max_frame_size,
            queue_size=self.queue_size,
            connect_timeout=2.0,
            handshake_timeout=2.0,
            close_timeout=2.0,
            backoff_initial=0.02,
            backoff_max=0.2,
        )
        t = TcpTransport(config, authorize=lambda subject: subject == "server")
        self._all.append(t)
        mux = Mux(MuxConfig(host="127.0.0.1", port=0))
        mux.register(
            RAFT_MARKER[0],
            t.handle_connection,
            ssl_context=t.server_context if self.mux_tls else None,
        )
        await mux.start()
        self._muxes.append(mux)
        self._addresses[node_id] = f"127.0.0.1:{mux.port}"
        inbox = Inbox()
        if handler:
            t.set_handler(inbox)
        await t.start()
        self.transports[node_id], self.inboxes[node_id] = t, inbox
        return t

    async def close(self) -> None:
        await super().close()
        for mux in self._muxes:
            await mux.close()


def free_port() -> int:
    """A port that nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def peer_tls(tmp_path_factory: pytest.TempPathFactory) -> TLSConfig:
    files = write_dev_certs(tmp_path_factory.mktemp("certs"))["server"]
    return TLSConfig(files.cert_file, files.key_file, files.ca_file)


@pytest.fixture(params=["inmem", "tcp", "tcp-behind-mux-tls", "tcp-behind-mux-plain"])
def make_harness(request: pytest.FixtureRequest, peer_tls: TLSConfig) -> Callable[..., Harness]:
    def make(*, max_frame_size: int = 16 * 1024 * 1024, queue_size: int = 1024) -> Harness:
        if request.param == "inmem":
            return InmemHarness(max_frame_size=max_frame_size, queue_size=queue_size)
        if request.param == "tcp":
            return TcpHarness(peer_tls, max_frame_size=max_frame_size, queue_size=queue_size)
        return MuxHarness(
            peer_tls,
            max_frame_size=max_frame_size,
            queue_size=queue_size,
            mux_tls=request.param == "tcp-behind-mux-tls",
        )

    return make


@pytest.fixture
async def harness(make_harness: Callable[..., Harness]) -> AsyncIterator[Harness]:
    h = make_harness()
    try:
        yield h
    finally:
        await h.close()


def stats(t: Transport) -> TransportStats:
    return t.stats()


async def test_transports_satisfy_the_protocol(harness: Harness) -> None:
    t = await harness.add("a")
    assert isinstance(t, Transport)
    assert t.node_id == "a"


async def test_many_messages_arrive_in_order_per_sender(harness: Harness) -> None:
    for n in ("a", "b", "c"):
        await harness.add(n)
    connect_all(harness)
    count = 500
    for i in range(count):
        harness.transports["a"].send("c", b"a:%d" % i)
        harness.transports["b"].send("c", b"b:%d" % i)
    inbox = harness.inboxes["c"]
    await inbox.wait_for(lambda items: len(items) >= 2 * count)
    for sender in (b"a", b"b"):
        seqs = [int(p.split(b":")[1]) for p in inbox.items if p.startswith(sender + b":")]
        assert seqs == list(range(count)), f"{sender!r} arrived out of order or incomplete"
    assert len(inbox.items) == 2 * count
    assert stats(harness.transports["c"]).delivered == 2 * count
    assert stats(harness.transports["a"]).enqueued == count


async def test_large_payloads_arrive_whole(harness: Harness) -> None:
    for n in ("a", "b"):
        await harness.add(n)
    connect_all(harness)
    rnd = random.Random(3)
    payloads = [rnd.randbytes(5 * 1024 * 1024), b"x", rnd.randbytes(3 * 1024 * 1024 + 17), b""]
    for p in payloads:
        harness.transports["a"].send("b", p)
    inbox = harness.inboxes["b"]
    await inbox.wait_for(lambda items: len(items) >= len(payloads))
    got = [hashlib.sha256(p).hexdigest() for p in inbox.items]
    assert got == [hashlib.sha256(p).hexdigest() for p in payloads]


async def test_payload_above_max_frame_size_is_dropped_not_sent(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(max_frame_size=1024 * 1024)
    try:
        a, _ = await h.add("a"), await h.add("b")
        connect_all(h)
        a.send("b", bytes(1024 * 1024 + 1))
        a.send("b", b"after")
        await h.inboxes["b"].wait_for(lambda items: len(items) >= 1)
        assert h.inboxes["b"].items == [b"after"]
        assert stats(a).dropped_too_large == 1
    finally:
        await h.close()


async def test_peer_address_update_moves_traffic(harness: Harness) -> None:
    a = await harness.add("a")
    await harness.add("b")
    connect_all(harness)
    a.send("b", b"first")
    await harness.inboxes["b"].wait_for(lambda items: items == [b"first"])

    await harness.stop("b")
    old = harness.address("b")
    await harness.add("b", new_address=True)
    assert harness.address("b") != old
    a.update_peers({"b": harness.address("b")})
    a.send("b", b"second")
    await harness.inboxes["b"].wait_for(lambda items: items == [b"second"])

    a.update_peers({})
    before = stats(a).dropped_unknown_peer
    a.send("b", b"third")
    assert stats(a).dropped_unknown_peer == before + 1


async def test_send_to_unknown_or_down_peer_neither_raises_nor_blocks(harness: Harness) -> None:
    a = await harness.add("a")
    a.update_peers({"down": harness.down_address()})
    a.send("ghost", b"x")
    assert stats(a).dropped_unknown_peer == 1
    started = time.monotonic()
    total = 5000
    for i in range(total):
        a.send("down", b"%d" % i)
    assert time.monotonic() - started < 1.0
    s = stats(a)
    assert s.dropped_queue_full > 0, "a bounded queue must drop when full"
    assert s.enqueued + s.dropped_queue_full == total


async def test_handler_error_does_not_stop_delivery(harness: Harness) -> None:
    a = await harness.add("a")
    b = await harness.add("b")
    connect_all(harness)
    seen: list[bytes] = []
    done = asyncio.Event()

    def handler(payload: bytes) -> None:
        seen.append(payload)
        if payload == b"boom":
            raise RuntimeError("handler bug")
        if payload == b"last":
            done.set()

    b.set_handler(handler)
    for p in (b"boom", b"ok", b"last"):
        a.send("b", p)
    async with asyncio.timeout(10):
        await done.wait()
    assert seen == [b"boom", b"ok", b"last"]
    assert stats(b).handler_errors == 1


async def test_close_is_clean_bounded_and_idempotent(harness: Harness) -> None:
    a = await harness.add("a")
    await harness.add("b")
    connect_all(harness)
    a.update_peers({"b": harness.address("b"), "down": harness.down_address()})
    a.send("b", b"hello")
    await harness.inboxes["b"].wait_for(lambda items: len(items) == 1)
    for i in range(100):
        a.send("down", b"%d" % i)
        a.send("b", b"%d" % i)
    started = time.monotonic()
    await harness.transports["a"].close()
    await harness.transports["b"].close()
    assert time.monotonic() - started < 3.0
    await harness.transports["a"].close()  # idempotent
    a.send("b", b"after close")
    assert stats(a).dropped_closed >= 1
    leftovers: list[Any] = [
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task() and t.get_name().startswith("raft-transport")
    ]
    await wait_until(lambda: all(t.done() for t in leftovers), timeout=3.0)


async def test_inbound_before_handler_is_set_is_counted_not_crashing(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    try:
        a = await h.add("a")
        b = await h.add("b", handler=False)
        connect_all(h)
        a.send("b", b"lost")
        await wait_until(lambda: stats(b).dropped_no_handler == 1)
        inbox = Inbox()
        b.set_handler(inbox)
        a.send("b", b"kept")
        await inbox.wait_for(lambda items: items == [b"kept"])
    finally:
        await h.close()

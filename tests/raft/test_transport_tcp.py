"""TCP+TLS transport: authentication, authorization, hostile input, reconnects, mux hand-off."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from raftlog.raft.transport import (
    FRAME_HEADER,
    HELLO_ACK_MAGIC,
    HELLO_MAGIC,
    RAFT_MARKER,
    FrameDecoder,
    FrameTooLargeError,
    HandshakeError,
    TransportConfigError,
    decode_hello,
    encode_frame,
    encode_hello,
    read_frame,
    split_host_port,
)
from raftlog.raft.transport_tcp import TcpTransport, TcpTransportConfig
from raftlog.security import (
    TLSConfig,
    client_ssl_context,
    generate_ca,
    issue_cert,
    write_dev_certs,
)
from support.wait import wait_until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TLSConfig]:
    """The cluster's peer cert, a same-CA cert with another subject, a foreign-CA cert."""
    out = tmp_path_factory.mktemp("tcp-certs")
    files = write_dev_certs(out)["server"]
    peer = TLSConfig(files.cert_file, files.key_file, files.ca_file)
    ca_pem = Path(files.ca_file).read_bytes()
    ca_key = (out / "ca-key.pem").read_bytes()
    from raftlog.security import CertPair

    cluster_ca = CertPair(ca_pem, ca_key)
    result = {"peer": peer}
    intruder = issue_cert(cluster_ca, "intruder", hosts=["127.0.0.1", "localhost"])
    foreign = issue_cert(generate_ca("foreign CA"), "server", hosts=["127.0.0.1", "localhost"])
    for name, pair in (("intruder", intruder), ("foreign", foreign)):
        (out / f"{name}.pem").write_bytes(pair.cert_pem)
        (out / f"{name}-key.pem").write_bytes(pair.key_pem)
        # Both trust the cluster CA, so only the listener's check can refuse them.
        result[name] = TLSConfig(out / f"{name}.pem", out / f"{name}-key.pem", files.ca_file)
    return result


def config(node_id: str, tls: TLSConfig, **overrides: object) -> TcpTransportConfig:
    settings: dict[str, object] = {
        "connect_timeout": 2.0,
        "handshake_timeout": 1.0,
        "close_timeout": 2.0,
        "backoff_initial": 0.02,
        "backoff_max": 0.1,
    }
    settings.update(overrides)
    return TcpTransportConfig(node_id=node_id, tls=tls, **settings)  # type: ignore[arg-type]


def only_server(subject: str) -> bool:
    return subject == "server"


class Inbox:
    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.event = asyncio.Event()

    def __call__(self, payload: bytes) -> None:
        self.items.append(payload)
        self.event.set()

    async def wait_for(self, pred: Callable[[list[bytes]], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred(self.items):
                self.event.clear()
                await self.event.wait()


class Nodes:
    """Creates transports and closes every one of them at the end of a test."""

    def __init__(self) -> None:
        self.made: list[TcpTransport] = []

    async def make(
        self,
        node_id: str,
        tls: TLSConfig,
        *,
        authorize: Callable[[str], bool] = only_server,
        port: int | None = 0,
        **overrides: object,
    ) -> tuple[TcpTransport, Inbox]:
        t = TcpTransport(config(node_id, tls, **overrides), authorize=authorize)
        self.made.append(t)
        inbox = Inbox()
        t.set_handler(inbox)
        if port is not None:
            await t.serve("127.0.0.1", port)
        await t.start()
        return t, inbox


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    n = Nodes()
    try:
        yield n
    finally:
        for t in n.made:
            await t.close()


async def open_raft_tls(
    address: str, tls: TLSConfig, node_id: str = "raw"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Dial like a transport would, by hand, up to and including the hello exchange."""
    host, port = split_host_port(address)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(RAFT_MARKER)
    await asyncio.wait_for(writer.start_tls(client_ssl_context(tls), server_hostname=host), 5)
    writer.write(encode_frame(encode_hello(HELLO_MAGIC, node_id)))
    answer = await asyncio.wait_for(read_frame(reader, 1024), 5)
    assert answer is not None
    decode_hello(HELLO_ACK_MAGIC, answer)
    return reader, writer


async def wait_closed_by_remote(reader: asyncio.StreamReader, timeout: float = 5.0) -> None:
    """The remote closed the connection: EOF or a reset, within the deadline."""
    async with asyncio.timeout(timeout):
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass


# ------------------------------------------------------------------ framing helpers


async def test_frames_round_trip_and_oversized_header_is_refused() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(encode_frame(b"abc") + encode_frame(b"") + FRAME_HEADER.pack(11))
    reader.feed_eof()
    assert await read_frame(reader, 10) == b"abc"
    assert await read_frame(reader, 10) == b""
    with pytest.raises(FrameTooLargeError):
        await read_frame(reader, 10)

    truncated = asyncio.StreamReader()
    truncated.feed_data(FRAME_HEADER.pack(5) + b"ab")
    truncated.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        await read_frame(truncated, 10)

    empty = asyncio.StreamReader()
    empty.feed_eof()
    assert await read_frame(empty, 10) is None


def test_hello_and_address_parsing() -> None:
    assert decode_hello(HELLO_MAGIC, encode_hello(HELLO_MAGIC, "nöde-1")) == "nöde-1"
    with pytest.raises(HandshakeError):
        decode_hello(HELLO_MAGIC, encode_hello(HELLO_ACK_MAGIC, "n1"))
    with pytest.raises(HandshakeError):
        decode_hello(HELLO_MAGIC, HELLO_MAGIC + b"\xff\xfe")
    with pytest.raises(HandshakeError):
        encode_hello(HELLO_MAGIC, "")
    assert split_host_port("127.0.0.1:80") == ("127.0.0.1", 80)
    assert split_host_port("[::1]:9000") == ("::1", 9000)
    for bad in ("nohost", ":80", "h:", "h:x", "h:70000"):
        with pytest.raises(ValueError):
            split_host_port(bad)


def test_config_validation_names_the_field(certs: dict[str, TLSConfig]) -> None:
    tls = certs["peer"]
    config("n1", tls).validate()
    cases: dict[str, dict[str, object]] = {
        "node_id": {"node_id": ""},
        "max_frame_size": {"max_frame_size": 0},
        "queue_size": {"queue_size": 0},
        "connect_timeout": {"connect_timeout": 0},
        "backoff_max": {"backoff_initial": 1.0, "backoff_max": 0.5},
    }
    for field, overrides in cases.items():
        node_id = str(overrides.pop("node_id", "n1"))
        with pytest.raises(TransportConfigError, match=field):
            config(node_id, tls, **overrides).validate()
    missing = TLSConfig(Path("/nonexistent.pem"), tls.key_file, tls.ca_file)
    with pytest.raises(ValueError, match="cert_file"):
        config("n1", missing).validate()


# ------------------------------------------------------------------ authentication


async def test_certificate_from_another_ca_is_refused(
    nodes: Nodes, certs: dict[str, TLSConfig]
) -> None:
    b, inbox = await nodes.make("b", certs["peer"])
    a, _ = await nodes.make("a", certs["foreign"], port=None)
    assert b.listen_address is not None
    a.update_peers({"b": b.listen_address})
    a.send("b", b"let me in")
    await wait_until(lambda: b.stats().refused >= 1 and a.stats().connect_failures >= 1)
    assert inbox.items == []
    assert b.stats().accepted == 0
    assert b.stats().delivered == 0


async def test_subject_rejected_by_authorize_is_refused_and_logged(
    nodes: Nodes, certs: dict[str, TLSConfig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="raftlog.raft.transport")
    b, inbox = await nodes.make("b", certs["peer"])
    # The intruder's certificate is from the cluster CA: only authorization can stop it.
    a, _ = await nodes.make("a", certs["intruder"], port=None)
    assert b.listen_address is not None
    a.update_peers({"b": b.listen_address})
    a.send("b", b"replicate this")
    await wait_until(lambda: b.stats().refused >= 1)
    assert inbox.items == []
    assert any(
        "'intruder'" in r.getMessage() and "not authorized" in r.getMessage()
        for r in caplog.records
    )


async def test_dialer_refuses_listener_whose_subject_it_does_not_authorize(
    nodes: Nodes, certs: dict[str, TLSConfig]
) -> None:
    b, inbox = await nodes.make("b", certs["peer"])
    a, _ = await nodes.make("a", certs["peer"], authorize=lambda s: s == "someone-else", port=None)
    assert b.listen_address is not None
    a.update_peers({"b": b.listen_address})
    a.send("b", b"x")
    await wait_until(lambda: a.stats().connect_failures >= 1)
    assert inbox.items == []
    assert a.stats().connects == 0


async def test_dialer_refuses_a_different_node_at_the_address(
    nodes: Nodes, certs: dict[str, TLSConfig]
) -> None:
    c, inbox = await nodes.make("c", certs["peer"])
    a, _ = await nodes.make("a", certs["peer"], port=None)
    assert c.listen_address is not None
    a.update_peers({"b": c.listen_address})  # stale table: b's old address now serves c
    a.send("b", b"meant for b")
    await wait_until(lambda: a.stats().connect_failures >= 1)
    assert a.stats().connects == 0
    assert inbox.items == []


# ------------------------------------------------------------------ hostile input


async def test_garbage_does_not_crash_the_listener(
    nodes: Nodes, certs: dict[str, TLSConfig]
) -> None:
    b, inbox = await nodes.make("b", certs["peer"])
    assert b.listen_address is not None
    host, port = split_host_port(b.listen_address)

    # Not the marker at all (an HTTP client that knocked on the wrong port).
    r1, w1 = await asyncio.open_connection(host, port)
    w1.write(b"GET / HTTP/1.1\r\n\r\n")
    await wait_closed_by_remote(r1)
    w1.close()

    # The marker, then plain garbage instead of a TLS ClientHello.
    r2, w2 = await asyncio.open_connection(host, port)
    w2.write(RAFT_MARKER + b"\x00garbage" * 64)
    await wait_closed_by_remote(r2)
    w2.close()

    # The marker, then silence: ends by the handshake timeout (1 s here).
    r3, w3 = await asyncio.open_connection(host, port)
    w3.write(RAFT_MARKER)
    await wait_closed_by_remote(r3)
    w3.close()

    # A valid TLS peer whose hello is malformed.
    host_r, host_w = await asyncio.open_connection(host, port)
    host_w.write(RAFT_MARKER)
    await host_w.start_tls(client_ssl_context(certs["peer"]), server_hostname=host)
    host_w.write(encode_frame(b"HELLO? " * 10))
    await wait_closed_by_remote(host_r)
    host_w.close()

    await wait_until(lambda: b.stats().refused >= 4)
    # The listener still serves a proper peer.
    a, _ = await nodes.make("a", certs["peer"], port=None)
    a.update_peers({"b": b.listen_address})
    a.send("b", b"still alive")
    await inbox.wait_for(lambda items: items == [b"still alive"])


async def test_oversized_frame_closes_the_connection_with_an_error(
    nodes: Nodes, certs: dict[str, TLSConfig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="raftlog.raft.transport")
    b, inbox = await nodes.make("b", certs["peer"], max_frame_size=1024 * 1024)
    assert b.listen_address is not None
    reader, writer = await open_raft_tls(b.listen_address, certs["peer"])
    writer.write(encode_frame(b"fine"))
    writer.write(FRAME_HEADER.pack(1024 * 1024 + 1) + b"x" * 100)
    await wait_closed_by_remote(reader)
    writer.close()
    await inbox.wait_for(lambda items: items == [b"fine"])
    assert b.stats().oversized_frames == 1
    assert any("maximum frame size" in r.getMessage() for r in caplog.records)


async def test_close_ends_a_stalled_handshake_promptly(
    nodes: Nodes, certs: dict[str, TLSConfig]
) -> None:
    b, _ = await nodes.make("b", certs["peer"], handshake_timeout=30.0)
    assert b.listen_address is not None
    host, port = split_host_port(b.listen_address)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(RAFT_MARKER)
    await wait_until(lambda: b.inbound_connections() == 1)
    started = time.monotonic()
    await b.close()
    assert time.monotonic() - started < 2.5
    assert b.inbound_connections() == 0
    await wait_closed_by_remote(reader)
    writer.close()


# ------------------------------------------------------------------ connections


async def test_writes_are_coalesced_into_batches(nodes: Nodes, certs: dict[str, TLSConfig]) -> None:
    b, inbox = await nodes.make("b", certs["peer"])
    a, _ = await nodes.make("a", certs["peer"], port=None)
    assert b.listen_address is not None
    a.update_peers({"b": b.listen_address})
    count = 1000
    for i in range(count):
        a.send("b", b"%d" % i)  # all queued while the connection is being set up
    await inbox.wait_for(lambda items: len(items) == count)
    s = a.stats()
    assert s.frames_written == count
    assert s.write_batches < count / 10, f"{s.write_batches} drains for {count} frames"


async def idle_pump(t: TcpTransport, peer: str, timeout: float = 5.0) -> None:
    """Wait until the transport's connection to ``peer`` is up, its pump idle and nothing
    buffered."""
    p = t._peers[peer]
    async with asyncio.timeout(timeout):
        while not (
            p.idle
            and p.raw is not None
            and p.writer is not None
            and not p.raw.get_write_buffer_size()
        ):
            await asyncio.sleep(0.005)


async def test_frames_go_through_the_queue_while_the_socket_holds_unsent_bytes(
    nodes: Nodes, certs: dict[str, TLSConfig]
) -> None:
    """A frame is written at once only when nothing is buffered, counting the TCP buffer
    under TLS (which the TLS transport's own size leaves out): behind a frame the socket
    could not take at once, the next ones are queued for the pump, whose drain applies
    flow control, and all arrive in order."""
    b, inbox = await nodes.make("b", certs["peer"])
    a, _ = await nodes.make("a", certs["peer"], port=None)
    assert b.listen_address is not None
    a.update_peers({"b": b.listen_address})
    a.send("b", b"hello")
    await inbox.wait_for(lambda items: len(items) == 1)
    await idle_pump(a, "b")
    peer = a._peers["b"]
    big = b"x" * (8 << 20)  # more than the socket takes at once: the rest stays buffered
    a.send("b", big)
    assert peer.raw is not None and peer.raw.get_write_buffer_size() > 0
    assert peer.writer is not None and peer.writer.transport.get_write_buffer_size() == 0
    for i in range(20):
        a.send("b", b"%d" % i)
    assert len(peer.queue) == 20, "queued behind the buffered bytes, not written at once"
    await inbox.wait_for(lambda items: len(items) == 22, timeout=20)
    assert inbox.items[1] == big
    assert inbox.items[2:] == [b"%d" % i for i in range(20)]


async def test_reconnects_after_the_remote_restarts(
    nodes: Nodes, certs: dict[str, TLSConfig]
) -> None:
    b, inbox = await nodes.make("b", certs["peer"])
    a, _ = await nodes.make("a", certs["peer"], port=None)
    address = b.listen_address
    assert address is not None
    a.update_peers({"b": address})
    a.send("b", b"before")
    await inbox.wait_for(lambda items: items == [b"before"])
    await b.close()
    await wait_until(lambda: "b" not in a.connected_peers())

    port = split_host_port(address)[1]
    b2, inbox2 = await nodes.make("b", certs["peer"], port=port)
    # Payloads sent while the peer is away may be lost (Raft resends); keep sending.
    deadline = time.monotonic() + 10
    while not inbox2.items:
        assert time.monotonic() < deadline, "never reconnected"
        a.send("b", b"after")
        try:
            await inbox2.wait_for(bool, timeout=0.2)
        except TimeoutError:
            pass
    assert inbox2.items[0] == b"after"
    assert a.stats().connects >= 2
    assert b2.stats().accepted >= 1


class _PausedProtocol(asyncio.StreamReaderProtocol):
    """Like the mux's plain hand-off: the transport reads nothing until start_tls."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()


@pytest.mark.parametrize("mode", ["mux-does-tls", "mux-hands-plain"])
async def test_handle_connection_accepts_connections_from_a_mux(
    nodes: Nodes, certs: dict[str, TLSConfig], mode: str
) -> None:
    """A separate listener reads the first byte alone, like the connection multiplexer."""
    b, inbox = await nodes.make("b", certs["peer"], port=None)  # no listener of its own
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    others: list[bytes] = []
    handlers: set[asyncio.Task[None]] = set()

    def spawn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(b.handle_connection(reader, writer))
        handlers.add(task)

    async def route(conn: socket.socket) -> None:
        first = await asyncio.wait_for(loop.sock_recv(conn, 1), 5)
        if first != RAFT_MARKER:
            others.append(first + await asyncio.wait_for(loop.sock_recv(conn, 100), 5))
            await loop.sock_sendall(conn, b"not raft")
            conn.close()
            return
        reader = asyncio.StreamReader()
        if mode == "mux-does-tls":
            protocol = asyncio.StreamReaderProtocol(reader, spawn)
            await loop.connect_accepted_socket(
                lambda: protocol, sock=conn, ssl=b.server_context, ssl_handshake_timeout=5
            )
        else:
            paused = _PausedProtocol(reader, spawn)
            await loop.connect_accepted_socket(lambda: paused, sock=conn)

    async def accept_loop() -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            handlers.add(asyncio.create_task(route(conn)))

    acceptor = asyncio.create_task(accept_loop())
    try:
        a, _ = await nodes.make("a", certs["peer"], port=None)
        a.update_peers({"b": f"127.0.0.1:{port}"})
        for i in range(50):
            a.send("b", b"%d" % i)
        await inbox.wait_for(lambda items: len(items) == 50)
        assert inbox.items == [b"%d" % i for i in range(50)]
        assert b.stats().accepted == 1

        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"\x16\x03\x01")
        assert await asyncio.wait_for(r.read(100), 5) == b"not raft"
        w.close()
        assert others and others[0].startswith(b"\x16")
    finally:
        await b.close()  # ends the handed-over connection, so its handler task finishes
        acceptor.cancel()
        listener.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(acceptor, *handlers, return_exceptions=True)


async def test_serve_twice_and_start_after_close_are_errors(
    nodes: Nodes, certs: dict[str, TLSConfig]
) -> None:
    b, _ = await nodes.make("b", certs["peer"])
    with pytest.raises(Exception, match="already serving"):
        await b.serve("127.0.0.1", 0)
    await b.close()
    with pytest.raises(Exception, match="closed"):
        await b.start()


def test_frame_decoder_handles_any_split_and_poisons_on_oversized_header() -> None:
    stream = b"".join(encode_frame(p) for p in (b"one", b"", b"three" * 100, b"4"))
    for step in (1, 3, 7, len(stream)):
        decoder = FrameDecoder(1024)
        out: list[bytes] = []
        for i in range(0, len(stream), step):
            out.extend(decoder.feed(stream[i : i + step]))
        assert out == [b"one", b"", b"three" * 100, b"4"]
        assert decoder.pending == 0
    decoder = FrameDecoder(10)
    assert decoder.feed(encode_frame(b"ok") + FRAME_HEADER.pack(11) + b"x") == [b"ok"]
    assert isinstance(decoder.error, FrameTooLargeError)
    with pytest.raises(FrameTooLargeError):
        decoder.feed(b"more")
    torn = FrameDecoder(10)
    assert torn.feed(FRAME_HEADER.pack(5) + b"ab") == []
    assert torn.pending == 6


async def test_authorize_that_raises_refuses_without_killing_anything(
    nodes: Nodes, certs: dict[str, TLSConfig]
) -> None:
    def broken(subject: str) -> bool:
        raise RuntimeError("policy store unavailable")

    b, inbox = await nodes.make("b", certs["peer"], authorize=broken)
    a, _ = await nodes.make("a", certs["peer"], port=None)
    c, _ = await nodes.make("c", certs["peer"], authorize=broken, port=None)
    assert b.listen_address is not None
    a.update_peers({"b": b.listen_address})
    c.update_peers({"b": b.listen_address})
    a.send("b", b"x")
    c.send("b", b"y")
    await wait_until(lambda: b.stats().refused >= 1 and c.stats().connect_failures >= 1)
    assert inbox.items == []
    # Both sides keep working once the policy answers again.
    b._authorize = only_server
    c._authorize = only_server
    deadline = time.monotonic() + 10
    while len(set(inbox.items)) < 2:
        assert time.monotonic() < deadline
        a.send("b", b"x")
        c.send("b", b"y")
        try:
            await inbox.wait_for(lambda items: len(set(items)) == 2, timeout=0.2)
        except TimeoutError:
            pass
    assert set(inbox.items) == {b"x", b"y"}


async def test_a_peer_that_stops_reading_is_cut_off_by_write_timeout(
    nodes: Nodes, certs: dict[str, TLSConfig]
) -> None:
    """A listener that completes the hello and then never reads must not wedge the dialer."""
    server_ctx = TcpTransport(config("stall", certs["peer"]), authorize=only_server).server_context
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    held: list[asyncio.StreamWriter] = []

    async def stall_once() -> None:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        assert await loop.sock_recv(conn, 1) == RAFT_MARKER
        reader = asyncio.StreamReader(limit=1024)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock=conn, ssl=server_ctx
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        held.append(writer)
        hello = await read_frame(reader, 1024)
        assert hello is not None
        writer.write(encode_frame(encode_hello(HELLO_ACK_MAGIC, "b")))
        await writer.drain()
        transport.pause_reading()  # and never read again

    stall = asyncio.create_task(stall_once())
    try:
        a, _ = await nodes.make("a", certs["peer"], port=None, write_timeout=0.5)
        a.update_peers({"b": f"127.0.0.1:{port}"})
        big = bytes(4 * 1024 * 1024)
        for _ in range(16):
            a.send("b", big)
        await asyncio.wait_for(stall, 5)
        started = time.monotonic()
        await wait_until(lambda: a.stats().dropped_connection > 0, timeout=5)
        assert time.monotonic() - started < 3.0
        assert a.stats().connects == 1
        await wait_until(lambda: "b" not in a.connected_peers(), timeout=2)
    finally:
        stall.cancel()
        listener.close()
        for w in held:
            w.transport.abort()

"""The mux on a real port: gRPC with mTLS through it, Raft-marker hand-over, and abuse."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from raftlog.mux import (
    RAFT_MARKER,
    Mux,
    MuxConfig,
    MuxConfigError,
    PrivateSocketDir,
)
from raftlog.security import (
    CertFiles,
    TLSConfig,
    client_ssl_context,
    peer_common_name,
    server_ssl_context,
    write_dev_certs,
)
from raftlog.security.grpc_tls import grpc_channel_credentials, grpc_server_credentials
from support.wait import wait_until

# The module-wide loop choice below uses the event_loop_policy fixture, which
# pytest-asyncio 1.x deprecates in favour of a global hook; a hook would affect every
# test folder, so this module keeps the fixture and silences that one warning.
pytestmark = pytest.mark.filterwarnings(
    'ignore:Overriding the "event_loop_policy" fixture:DeprecationWarning'
)


@pytest.fixture(
    scope="module",
    params=["asyncio", pytest.param("uvloop", marks=pytest.mark.slow)],
)
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test runs on the default loop and on uvloop (the mux must not depend on it)."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
        return policy
    return asyncio.DefaultEventLoopPolicy()


WHOAMI = "/raftlog.test.Echo/WhoAmI"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertFiles]:
    return write_dev_certs(tmp_path_factory.mktemp("certs"))


def tls(files: CertFiles) -> TLSConfig:
    return TLSConfig(files.cert_file, files.key_file, files.ca_file)


async def _whoami(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    """Answers with the client certificate's common name, as the gRPC server saw it."""
    names = context.auth_context().get("x509_common_name", [])
    return b",".join(names) + b"|" + request


@pytest.fixture
async def grpc_socket(certs: dict[str, CertFiles]) -> AsyncIterator[PrivateSocketDir]:
    """A grpc.aio server with mTLS listening only on a unix socket in a 0700 directory."""
    sockdir = PrivateSocketDir()
    # A bounded TLS handshake: a client that stalls mid-handshake is dropped by the server.
    server = grpc.aio.server(options=[("grpc.server_handshake_timeout_ms", 1500)])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "raftlog.test.Echo", {"WhoAmI": grpc.unary_unary_rpc_method_handler(_whoami)}
            ),
        )
    )
    server.add_secure_port(sockdir.address, grpc_server_credentials(tls(certs["server"])))
    await server.start()
    try:
        yield sockdir
    finally:
        await server.stop(grace=None)
        sockdir.cleanup()


@pytest.fixture
async def make_mux() -> AsyncIterator[MakeMux]:
    """Start muxes on 127.0.0.1:<free port>; all are closed at teardown."""
    muxes: list[Mux] = []

    async def make(grpc_socket: Path | str | None, **settings: object) -> Mux:
        mux = Mux(MuxConfig(**settings), grpc_socket=grpc_socket)  # type: ignore[arg-type]
        muxes.append(mux)
        await mux.start()
        return mux

    yield make
    for mux in muxes:
        await mux.close()


MakeMux = Callable[..., Awaitable[Mux]]


async def health_check(port: int, files: CertFiles, timeout: float = 5.0) -> int:
    creds = grpc_channel_credentials(tls(files))
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return int(reply.status)


async def whoami(port: int, files: CertFiles, payload: bytes = b"hi") -> bytes:
    creds = grpc_channel_credentials(tls(files))
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(WHOAMI)
        reply: bytes = await call(payload, timeout=5.0)
        return reply


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the other end closes (EOF or reset) within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def test_config_validation() -> None:
    with pytest.raises(MuxConfigError, match="first_byte_timeout"):
        MuxConfig(first_byte_timeout=0).validate()
    with pytest.raises(MuxConfigError, match="max_pending"):
        MuxConfig(max_pending=0).validate()
    with pytest.raises(MuxConfigError, match="write_buffer"):
        MuxConfig(write_buffer_high=10, write_buffer_low=20).validate()
    mux = Mux(MuxConfig())
    with pytest.raises(MuxConfigError, match="TLS or HTTP/2"):
        mux.register(0x16, lambda r, w: asyncio.sleep(0))


def test_private_socket_dir_is_0700_and_cleaned_up(tmp_path: Path) -> None:
    with PrivateSocketDir() as sockdir:
        mode = stat.S_IMODE(os.stat(sockdir.directory).st_mode)
        assert mode == 0o700
        assert sockdir.address == f"unix:{sockdir.path}"
        assert sockdir.path.parent == sockdir.directory
    assert not sockdir.directory.exists()
    with pytest.raises(ValueError, match="too long"):
        PrivateSocketDir(base_dir=tmp_path / ("x" * 120))


async def test_grpc_with_mtls_through_the_mux(
    make_mux: MakeMux, grpc_socket: PrivateSocketDir, certs: dict[str, CertFiles]
) -> None:
    mux = await make_mux(grpc_socket.path)
    assert await health_check(mux.port, certs["root"]) == health_pb2.HealthCheckResponse.SERVING
    # The gRPC server saw the client's own certificate: TLS ran end to end through the relay.
    assert await whoami(mux.port, certs["nobody"], b"x" * 100_000) == b"nobody|" + b"x" * 100_000
    assert mux.metrics.relayed == 2
    assert mux.metrics.bytes_up > 100_000
    await wait_until(lambda: mux.metrics.active_relays == 0, 5.0, "relays to close")
    assert mux.buffered_bytes() == 0


async def test_client_without_certificate_is_refused_by_the_grpc_server(
    make_mux: MakeMux, grpc_socket: PrivateSocketDir, certs: dict[str, CertFiles]
) -> None:
    mux = await make_mux(grpc_socket.path)
    ca = Path(certs["root"].ca_file).read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=ca)  # no client certificate
    async with grpc.aio.secure_channel(f"127.0.0.1:{mux.port}", creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5.0)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_random_bytes_are_dropped_and_the_mux_keeps_serving(
    make_mux: MakeMux, grpc_socket: PrivateSocketDir, certs: dict[str, CertFiles]
) -> None:
    mux = await make_mux(grpc_socket.path, first_byte_timeout=1.0)
    blobs = (
        os.urandom(4096),
        b"\x16\x03\x01\x04\x00" + os.urandom(1000),  # a TLS record that never completes
        b"GET / HTTP/1.1\r\n\r\n",
    )
    started = time.monotonic()
    for blob in blobs:
        reader, writer = await asyncio.open_connection("127.0.0.1", mux.port)
        writer.write(b"\x7f" + blob if blob[0] == RAFT_MARKER else blob)
        assert await closed_by_peer(reader, 10.0), f"garbage {blob[:8]!r} was not closed"
        writer.close()
    assert time.monotonic() - started < 10.0
    assert await health_check(mux.port, certs["root"]) == health_pb2.HealthCheckResponse.SERVING


async def test_silent_connection_is_closed_after_the_deadline(
    make_mux: MakeMux, grpc_socket: PrivateSocketDir
) -> None:
    mux = await make_mux(grpc_socket.path, first_byte_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", mux.port)
    started = time.monotonic()
    assert await closed_by_peer(reader, 5.0)
    elapsed = time.monotonic() - started
    writer.close()
    assert 0.25 <= elapsed < 3.0
    assert mux.metrics.timed_out == 1
    assert mux.metrics.pending == 0
    assert mux.metrics.relayed == 0


async def test_a_thousand_idle_connections_are_bounded_and_real_clients_served(
    make_mux: MakeMux, grpc_socket: PrivateSocketDir, certs: dict[str, CertFiles]
) -> None:
    mux = await make_mux(grpc_socket.path, first_byte_timeout=2.0, max_pending=1010)
    idle: list[socket.socket] = []
    try:
        for _ in range(1000):
            s = socket.socket()
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", mux.port))
            idle.append(s)
        await wait_until(lambda: mux.metrics.pending == 1000, 10.0, "1000 pending")
        # Still room under the bound: a real client is served during the flood.
        assert await health_check(mux.port, certs["root"]) == health_pb2.HealthCheckResponse.SERVING
        # Past the bound: extra connections are closed at once, nothing more is held.
        extra = []
        for _ in range(40):
            reader, writer = await asyncio.open_connection("127.0.0.1", mux.port)
            extra.append((reader, writer))
        await wait_until(lambda: mux.metrics.rejected >= 30, 5.0, "rejections")
        assert mux.metrics.pending <= 1010
        closed = [await closed_by_peer(r, 1.0) for r, _ in extra[-5:]]
        assert all(closed), "connections beyond the bound were not closed at once"
        for _, w in extra:
            w.close()
        # The idle ones time out; then new clients get in again.
        await wait_until(lambda: mux.metrics.pending == 0, 10.0, "idle connections to time out")
        assert mux.metrics.timed_out >= 1000
        assert await health_check(mux.port, certs["root"]) == health_pb2.HealthCheckResponse.SERVING
    finally:
        for s in idle:
            s.close()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[tuple[PrivateSocketDir, dict[str, object]]]:
    """A plain unix-socket server behind the mux; its behaviour is set per test."""
    sockdir = PrivateSocketDir()
    state: dict[str, object] = {"mode": "firehose", "written": 0, "received": 0}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if state["mode"] == "firehose":  # write as fast as the pipe allows, never read
                chunk = b"z" * 65536
                while True:
                    writer.write(chunk)
                    await writer.drain()
                    state["written"] = int(state["written"]) + len(chunk)  # type: ignore[call-overload]
            elif state["mode"] == "sink":  # accept, never read
                await asyncio.sleep(3600)
            elif state["mode"] == "count":  # read to EOF, answer with the count, close
                total = 0
                while data := await reader.read(65536):
                    total += len(data)
                writer.write(str(total).encode())
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve, path=str(sockdir.path))
    try:
        yield sockdir, state
    finally:
        server.close()
        sockdir.cleanup()


HIGH, LOW = 64 * 1024, 16 * 1024
#: One relay direction may hold ``high`` plus one read chunk (asyncio reads 256 KiB at most).
BOUND = HIGH + 256 * 1024


async def test_a_client_that_stops_reading_pauses_the_relay(
    make_mux: MakeMux, raw_upstream: tuple[PrivateSocketDir, dict[str, object]]
) -> None:
    sockdir, state = raw_upstream
    mux = await make_mux(sockdir.path, write_buffer_high=HIGH, write_buffer_low=LOW)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", mux.port))
    try:
        s.send(b"G")  # anything but a marker: relayed; then never read
        await wait_until(lambda: mux.metrics.paused >= 1, 10.0, "the relay to pause")
        await _stops_growing(lambda: mux.metrics.bytes_down, 5.0)
        assert mux.buffered_bytes() <= BOUND
        assert any(side.reading_paused for side in mux._relay_sides)
        written = int(state["written"])  # type: ignore[call-overload]
        assert mux.metrics.bytes_down < written + 65536
    finally:
        s.close()


async def _stops_growing(read: Callable[[], int], timeout: float) -> None:
    """Wait until ``read()`` gives the same value at two checks 0.2 s apart."""
    deadline = time.monotonic() + timeout
    before = read()
    while True:
        await asyncio.sleep(0.2)
        now = read()
        if now == before:
            return
        assert time.monotonic() < deadline, "value kept growing"
        before = now


async def test_a_server_that_stops_reading_pauses_the_client_side(
    make_mux: MakeMux, raw_upstream: tuple[PrivateSocketDir, dict[str, object]]
) -> None:
    sockdir, state = raw_upstream
    state["mode"] = "sink"
    mux = await make_mux(sockdir.path, write_buffer_high=HIGH, write_buffer_low=LOW)
    s = socket.socket()
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", mux.port))
    try:
        chunk = b"G" * 65536
        deadline = time.monotonic() + 10.0
        blocked_rounds = 0
        while blocked_rounds < 10:  # the client's own socket must fill up and stay full
            assert time.monotonic() < deadline, "the mux kept reading from the client"
            try:
                s.send(chunk)
                blocked_rounds = 0
            except BlockingIOError:
                blocked_rounds += 1
                await asyncio.sleep(0.02)
        assert mux.metrics.paused >= 1
        assert mux.buffered_bytes() <= BOUND
    finally:
        s.close()


async def test_half_close_passes_eof_and_keeps_the_other_direction(
    make_mux: MakeMux, raw_upstream: tuple[PrivateSocketDir, dict[str, object]]
) -> None:
    sockdir, state = raw_upstream
    state["mode"] = "count"
    mux = await make_mux(sockdir.path)
    reader, writer = await asyncio.open_connection("127.0.0.1", mux.port)
    writer.write(b"P" + b"x" * 299_999)
    writer.write_eof()  # our direction ends; the answer must still come back
    async with asyncio.timeout(5.0):
        answer = await reader.read()
    writer.close()
    assert answer == b"300000"
    await wait_until(lambda: mux.metrics.active_relays == 0, 5.0, "both sides to close")


async def test_unreachable_grpc_server_closes_the_connection(make_mux: MakeMux) -> None:
    with PrivateSocketDir() as nowhere:
        mux = await make_mux(nowhere.path)
        reader, writer = await asyncio.open_connection("127.0.0.1", mux.port)
        writer.write(b"\x16\x03\x01")
        assert await closed_by_peer(reader, 5.0)
        writer.close()
        assert mux.metrics.upstream_errors == 1


def _tls_client_in_one_segment(port: int, files: CertFiles) -> tuple[bytes, str | None]:
    """Raft-style client: the marker and the TLS ClientHello leave in ONE send, so the mux
    must not read past the marker. Returns the echo and the server's certificate name."""
    ctx = client_ssl_context(tls(files))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        sock.sendall(bytes([RAFT_MARKER]) + outgoing.read())
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                incoming.write(data)
        if outgoing.pending:
            sock.sendall(outgoing.read())
        obj.write(b"ping")
        sock.sendall(outgoing.read())
        reply = b""
        while len(reply) < len(b"server:ping"):
            try:
                reply += obj.read(1024)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    break
                incoming.write(data)
        cert: dict[str, object] | None = dict(obj.getpeercert() or {})
        return reply, peer_common_name(cert)


async def test_marker_byte_hands_a_tls_stream_to_the_registered_handler(
    make_mux: MakeMux, grpc_socket: PrivateSocketDir, certs: dict[str, CertFiles]
) -> None:
    """The Raft way: the mux does the peer TLS handshake, the handler gets a TLS stream."""
    seen: list[str | None] = []

    async def raft_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(peer_common_name(writer.get_extra_info("peercert")))
        data = await reader.readexactly(4)
        writer.write((seen[-1] or "?").encode() + b":" + data)
        await writer.drain()

    mux = await make_mux(grpc_socket.path)
    mux.register(RAFT_MARKER, raft_handler, ssl_context=server_ssl_context(tls(certs["server"])))
    reply, server_name = await asyncio.to_thread(
        _tls_client_in_one_segment, mux.port, certs["server"]
    )
    assert reply == b"server:ping"
    assert server_name == "server"
    assert seen == ["server"]
    assert mux.metrics.raft == 1
    assert mux.metrics.relayed == 0
    # gRPC still works next to it.
    assert await health_check(mux.port, certs["root"]) == health_pb2.HealthCheckResponse.SERVING


async def test_marker_connection_without_client_certificate_is_refused(
    make_mux: MakeMux, grpc_socket: PrivateSocketDir, certs: dict[str, CertFiles]
) -> None:
    called: list[bool] = []

    async def raft_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        called.append(True)

    mux = await make_mux(grpc_socket.path, tls_handshake_timeout=3.0)
    mux.register(RAFT_MARKER, raft_handler, ssl_context=server_ssl_context(tls(certs["server"])))
    ctx = ssl.create_default_context(cafile=str(certs["server"].ca_file))  # no certificate
    reader, writer = await asyncio.open_connection("127.0.0.1", mux.port)
    writer.write(bytes([RAFT_MARKER]))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await writer.start_tls(ctx, server_hostname="localhost")
        await reader.read(1)  # TLS 1.3: the refusal arrives after the client's handshake
        raise ConnectionError("no data")
    writer.close()
    await wait_until(lambda: mux.metrics.tls_errors == 1, 5.0, "the refused handshake")
    assert called == []


async def test_plain_marker_handler_can_start_tls_itself(
    make_mux: MakeMux,
    grpc_socket: PrivateSocketDir,
    certs: dict[str, CertFiles],
) -> None:
    """A handler registered without ssl may do start_tls itself (default loop only)."""
    if type(asyncio.get_running_loop()).__module__.startswith("uvloop"):
        pytest.skip("uvloop reads right behind the marker: use register(..., ssl_context=)")
    server_ctx = server_ssl_context(tls(certs["server"]))
    seen: list[str | None] = []

    async def raft_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await writer.start_tls(server_ctx)
        seen.append(peer_common_name(writer.get_extra_info("peercert")))
        data = await reader.readexactly(4)
        writer.write((seen[-1] or "?").encode() + b":" + data)
        await writer.drain()

    mux = await make_mux(grpc_socket.path)
    mux.register(RAFT_MARKER, raft_handler)
    reply, _ = await asyncio.to_thread(_tls_client_in_one_segment, mux.port, certs["server"])
    assert reply == b"server:ping"
    assert seen == ["server"]


async def test_plain_marker_handler_gets_the_bytes_after_the_marker(make_mux: MakeMux) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(5))
        await writer.drain()

    mux = await make_mux(None)
    mux.register(0x02, echo)
    reader, writer = await asyncio.open_connection("127.0.0.1", mux.port)
    writer.write(b"\x02hello")
    async with asyncio.timeout(5.0):
        assert await reader.readexactly(5) == b"hello"
    writer.close()
    assert mux.metrics.by_marker == {0x02: 1}


async def test_close_ends_relayed_and_pending_connections(
    make_mux: MakeMux, raw_upstream: tuple[PrivateSocketDir, dict[str, object]]
) -> None:
    sockdir, state = raw_upstream
    state["mode"] = "sink"
    mux = await make_mux(sockdir.path)
    relayed_r, relayed_w = await asyncio.open_connection("127.0.0.1", mux.port)
    relayed_w.write(b"G")
    pending_r, pending_w = await asyncio.open_connection("127.0.0.1", mux.port)
    await wait_until(
        lambda: mux.metrics.active_relays == 1 and mux.metrics.pending == 1, 5.0, "setup"
    )
    await mux.close()
    assert await closed_by_peer(relayed_r, 2.0)
    assert await closed_by_peer(pending_r, 2.0)
    relayed_w.close()
    pending_w.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", mux.port)

"""One listening TCP port for everything: route each connection by its first byte.

Flow of one accepted connection (see ``docs/mux.md`` for the diagram):

1. Accepted with ``loop.sock_accept``. If ``max_pending`` connections are already waiting
   for their first byte, it is closed at once (``rejected``): a flood of idle connections
   cannot exhaust memory or file descriptors through us.
2. Exactly one byte is read with ``loop.sock_recv(sock, 1)`` within ``first_byte_timeout``
   seconds; a silent connection is closed (``timed_out``), one that closes first is dropped
   (``closed_early``). Reading one byte, never more, leaves everything that follows (a TLS
   ClientHello, say) in the kernel for whoever gets the connection.
3. A byte registered with :meth:`Mux.register` (the Raft transport registers
   :data:`RAFT_MARKER`) hands the connection to that handler as an
   ``(asyncio.StreamReader, asyncio.StreamWriter)`` pair whose first byte was consumed.
   Registered with ``ssl=<server SSLContext>``, the mux first completes the server-side TLS
   handshake (bounded by ``tls_handshake_timeout``; the peer's certificate is then
   ``writer.get_extra_info("peercert")``) and the handler gets the TLS stream: this works
   on every event loop and is the way for the Raft transport. Without ``ssl`` the handler
   gets the plain stream; it is a server-side stream whose transport starts paused, so
   ``await writer.start_tls(ctx)`` as the handler's first step works on the default asyncio
   loop. (uvloop starts reading right after ``connection_made`` whatever the protocol
   does, so bytes sent right behind the marker can land in the StreamReader, out of
   ``start_tls``'s reach: under uvloop, let the mux do TLS.)
4. Any other byte is gRPC: the connection is relayed, first byte included, as a plain byte
   pipe to the grpc.aio server on a private unix socket (:mod:`raftlog.mux.sockdir`). The
   client's TLS thus runs end to end with the gRPC server, which checks the client
   certificate itself. The relay is Protocol-based with bounded buffers both ways
   (:mod:`raftlog.mux.relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, cast

from raftlog.mux.relay import RelaySide

__all__ = [
    "RAFT_MARKER",
    "ConnectionHandler",
    "Mux",
    "MuxConfig",
    "MuxConfigError",
    "MuxMetrics",
]

log = logging.getLogger("raftlog.mux")

#: First byte of a Raft peer connection. gRPC connections start with a TLS record (0x16) or
#: the HTTP/2 preface ("P", 0x50), never with 0x01. Kept equal to
#: ``raftlog.raft.transport.RAFT_MARKER``, defined here to avoid a dependency on Raft.
RAFT_MARKER: Final = 0x01

#: A handler for connections with a registered first byte: it owns the stream pair and
#: should close the writer when done (the mux closes it otherwise when the handler returns).
ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class MuxConfigError(ValueError):
    """A mux setting is invalid; the message names the field and the reason."""


@dataclass(frozen=True)
class MuxConfig:
    """Settings of the connection multiplexer.

    - ``host`` / ``port``: where to listen (defaults ``127.0.0.1`` and 0, any free port;
      :attr:`Mux.port` tells which).
    - ``first_byte_timeout``: seconds a new connection may stay silent before it is closed
      (default 5.0).
    - ``max_pending``: connections allowed to wait for their first byte at once; beyond
      it, new connections are closed at once (default 1024).
    - ``backlog``: the listen backlog (default 1024).
    - ``upstream_connect_timeout``: seconds to connect to the gRPC unix socket (default
      5.0); a failure closes the client connection.
    - ``write_buffer_high`` / ``write_buffer_low``: per-transport write buffer limits of
      the relay, bytes (defaults 256 KiB and 64 KiB): reading from the other side pauses
      above ``high`` and resumes below ``low``.
    - ``stream_limit``: buffer limit of the StreamReader handed to registered handlers,
      bytes (default 256 KiB).
    - ``tls_handshake_timeout``: seconds allowed for the TLS handshake of handlers
      registered with ``ssl`` (default 10.0); a failed or slow handshake closes the
      connection (``tls_errors``).
    - ``close_timeout``: seconds :meth:`Mux.close` waits for cancelled handler tasks
      (default 5.0).
    """

    host: str = "127.0.0.1"
    port: int = 0
    first_byte_timeout: float = 5.0
    max_pending: int = 1024
    backlog: int = 1024
    upstream_connect_timeout: float = 5.0
    write_buffer_high: int = 256 * 1024
    write_buffer_low: int = 64 * 1024
    stream_limit: int = 256 * 1024
    tls_handshake_timeout: float = 10.0
    close_timeout: float = 5.0

    def validate(self) -> None:
        """Raise :class:`MuxConfigError` naming the first invalid field."""
        if not 0 <= self.port <= 65535:
            raise MuxConfigError(f"port: must be in 0..65535, got {self.port}")
        for name in (
            "first_byte_timeout",
            "upstream_connect_timeout",
            "tls_handshake_timeout",
            "close_timeout",
        ):
            if getattr(self, name) <= 0:
                raise MuxConfigError(f"{name}: must be > 0 seconds, got {getattr(self, name)}")
        for name in ("max_pending", "backlog", "stream_limit"):
            if getattr(self, name) < 1:
                raise MuxConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.write_buffer_low <= self.write_buffer_high or self.write_buffer_high < 1:
            raise MuxConfigError(
                "write_buffer_low/high: need 0 <= low <= high and high >= 1, got "
                f"{self.write_buffer_low} and {self.write_buffer_high}"
            )


@dataclass
class MuxMetrics:
    """Counters (since start) and gauges (now) of one mux."""

    accepted: int = 0  # connections accepted
    rejected: int = 0  # closed at once: too many waiting for their first byte
    timed_out: int = 0  # closed: no first byte within first_byte_timeout
    closed_early: int = 0  # closed by the peer (or reset) before a first byte
    relayed: int = 0  # handed to the gRPC relay
    handled: int = 0  # handed to a registered handler (any marker)
    by_marker: dict[int, int] = field(default_factory=dict)  # handled, per first byte
    upstream_errors: int = 0  # gRPC socket unreachable (or not configured)
    handler_errors: int = 0  # registered handlers that raised
    tls_errors: int = 0  # TLS handshakes (handlers registered with ssl) that failed
    paused: int = 0  # times a relay paused reading because the other side was slow
    bytes_up: int = 0  # relayed client -> gRPC server
    bytes_down: int = 0  # relayed gRPC server -> client
    pending: int = 0  # gauge: waiting for their first byte
    active_relays: int = 0  # gauge: relayed connections open

    @property
    def raft(self) -> int:
        """Connections handed over with the Raft marker."""
        return self.by_marker.get(RAFT_MARKER, 0)


class _PausedStreamProtocol(asyncio.StreamReaderProtocol):
    """A server-side stream protocol whose transport reads nothing until the handler asks.

    The handler usually starts with ``writer.start_tls()``: any byte the transport read
    before that (the TLS ClientHello, when it came in the same segment as the marker) would
    sit in the StreamReader, out of the TLS layer's reach, and the handshake would hang. So
    the transport starts paused; ``start_tls`` resumes it itself, and the reader's first
    wait for data resumes it otherwise (StreamReader resumes a transport it marked paused).
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same API.
        cast(asyncio.Transport, transport).pause_reading()
        super().connection_made(transport)
        reader = self._stream_reader  # type: ignore[attr-defined]
        if reader is not None:
            reader._paused = True  # the first read resumes the transport


#: Prefix of the abstract unix-socket name a relayed connection is bound to; the gRPC
#: server reads the client's address back from it (``context.peer()`` is then
#: ``unix-abstract:raftlog-peer%20HOST:PORT%20...``; raftlog.server.interceptors.peer_of).
PEER_NAME_PREFIX: Final = "raftlog-peer"
_relayed = itertools.count()


def _upstream_socket(conn: socket.socket) -> socket.socket:
    """A non-blocking unix socket for the relay to the gRPC server, bound (Linux abstract
    namespace) to a name that carries the TCP client's address, so that the server can
    log and audit who called. Unbound (the server then sees ``unix:``) where that fails."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        host, port = conn.getpeername()[:2]
        addr = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        sock.bind(f"\0{PEER_NAME_PREFIX} {addr} {os.getpid()}-{next(_relayed)}")
    except (OSError, ValueError, TypeError):
        pass  # not Linux, or the peer is already gone: relay without the name
    return sock


class Mux:
    """The one-port connection multiplexer (see the module docstring).

    ``grpc_socket`` is the path of the grpc.aio server's unix socket (the server listens on
    ``"unix:" + path``); ``handlers`` maps first bytes to :data:`ConnectionHandler` s (more
    can be added with :meth:`register`). ``await start()`` binds and starts accepting;
    ``await close()`` stops accepting and closes every connection the mux still owns.
    """

    def __init__(
        self,
        config: MuxConfig,
        *,
        grpc_socket: str | Path | None = None,
        handlers: Mapping[int, ConnectionHandler] | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.grpc_socket = str(grpc_socket) if grpc_socket is not None else None
        self._handlers: dict[int, tuple[ConnectionHandler, ssl.SSLContext | None]] = {}
        for marker, handler in (handlers or {}).items():
            self.register(marker, handler)
        self.metrics = MuxMetrics()
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._sniffers: set[asyncio.Task[None]] = set()
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._relay_sides: set[RelaySide] = set()
        self._closed = False

    # --- configuration -----------------------------------------------------------------
    def register(
        self,
        marker: int,
        handler: ConnectionHandler,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Send connections whose first byte is ``marker`` (0..255) to ``handler``.

        With ``ssl_context`` (a server context, e.g. ``server_ssl_context(peer_tls)``, which
        requires a client certificate) the mux does the TLS handshake first and the
        handler gets the TLS stream; without it, the plain stream (see the module doc).
        """
        if not 0 <= marker <= 255:
            raise MuxConfigError(f"marker: must be a byte value 0..255, got {marker}")
        if marker in (0x16, 0x50):
            raise MuxConfigError(
                f"marker: {marker:#04x} starts TLS or HTTP/2 (gRPC) connections; pick another"
            )
        if marker in self._handlers and self._handlers[marker][0] is not handler:
            raise MuxConfigError(f"marker: {marker:#04x} already has a handler")
        self._handlers[marker] = (handler, ssl_context)

    # --- lifecycle ---------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound; valid after :meth:`start`."""
        if self._listener is None:
            raise RuntimeError("mux not started")
        name = self._listener.getsockname()
        return str(name[0]), int(name[1])

    @property
    def port(self) -> int:
        return self.address[1]

    async def start(self) -> None:
        """Bind the port and start accepting (in a task owned by the mux)."""
        if self._listener is not None or self._closed:
            raise RuntimeError("mux already started (or closed)")
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        listener = socket.create_server(
            (self.config.host, self.config.port), family=family, backlog=self.config.backlog
        )
        listener.setblocking(False)
        self._listener = listener
        self._accept_task = asyncio.create_task(self._accept_loop(listener), name="mux-accept")
        log.info("mux listening on %s:%d", *self.address)

    async def close(self) -> None:
        """Stop accepting; close pending, relayed and handed-over connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._accept_task = self._accept_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._listener is not None:
            self._listener.close()
        for side in list(self._relay_sides):
            side.abort()
        tasks = [*self._sniffers, *self._handler_tasks]
        for t in tasks:
            t.cancel()
        if tasks:
            _done, still = await asyncio.wait(tasks, timeout=self.config.close_timeout)
            if still:
                log.warning("mux close: %d connection tasks did not finish", len(still))
        # Let aborted transports run connection_lost.
        await asyncio.sleep(0)

    async def __aenter__(self) -> Mux:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def buffered_bytes(self) -> int:
        """Bytes held right now in the write buffers of every relayed connection."""
        return sum(side.buffered() for side in self._relay_sides)

    # --- RelayObserver -----------------------------------------------------------------
    def relay_paused(self) -> None:
        self.metrics.paused += 1

    def relay_bytes(self, upstream: bool, count: int) -> None:
        if upstream:
            self.metrics.bytes_up += count
        else:
            self.metrics.bytes_down += count

    def relay_opened(self, side: RelaySide) -> None:
        self._relay_sides.add(side)
        if not side.upstream:
            self.metrics.active_relays += 1

    def relay_closed(self, side: RelaySide) -> None:
        self._relay_sides.discard(side)
        if not side.upstream:
            self.metrics.active_relays -= 1

    # --- accepting and routing ---------------------------------------------------------
    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("mux accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            self.metrics.accepted += 1
            if self.metrics.pending >= self.config.max_pending:
                self.metrics.rejected += 1
                conn.close()
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.metrics.pending += 1
            task = asyncio.create_task(self._route(conn))
            self._sniffers.add(task)
            task.add_done_callback(self._sniffers.discard)

    async def _route(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        handed_over = False
        try:
            try:
                async with asyncio.timeout(self.config.first_byte_timeout):
                    first = await loop.sock_recv(conn, 1)
            except TimeoutError:
                self.metrics.timed_out += 1
                return
            except OSError:
                self.metrics.closed_early += 1
                return
            finally:
                self.metrics.pending -= 1
            if not first:
                self.metrics.closed_early += 1
                return
            registered = self._handlers.get(first[0])
            if registered is not None:
                handed_over = await self._hand_over(conn, first[0], *registered)
            else:
                handed_over = await self._relay(conn, first)
        except Exception:
            log.exception("mux: routing a connection failed")
        finally:
            if not handed_over:
                conn.close()

    async def _hand_over(
        self,
        conn: socket.socket,
        marker: int,
        handler: ConnectionHandler,
        ssl_context: ssl.SSLContext | None,
    ) -> bool:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self.config.stream_limit)

        def connected(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            task = asyncio.create_task(self._run_handler(handler, r, w), name="mux-handler")
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_tasks.discard)

        if ssl_context is not None:
            tls_protocol = asyncio.StreamReaderProtocol(reader, connected)
            timeout = self.config.tls_handshake_timeout
            try:
                # The TLS layer sees the connection from its second byte on: nothing lost.
                async with asyncio.timeout(timeout + 1.0):
                    await loop.connect_accepted_socket(
                        lambda: tls_protocol,
                        sock=conn,
                        ssl=ssl_context,
                        ssl_handshake_timeout=timeout,
                    )
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                self.metrics.tls_errors += 1
                log.info("mux: TLS handshake for marker %#04x failed: %r", marker, exc)
                return False
        else:
            # A client_connected_cb makes this a *server-side* stream for start_tls().
            protocol = _PausedStreamProtocol(reader, connected)
            await loop.connect_accepted_socket(lambda: protocol, sock=conn)
        self.metrics.handled += 1
        self.metrics.by_marker[marker] = self.metrics.by_marker.get(marker, 0) + 1
        return True

    async def _run_handler(
        self, handler: ConnectionHandler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await handler(reader, writer)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.metrics.handler_errors += 1
            log.exception("mux: connection handler failed")
        finally:
            writer.close()

    async def _relay(self, conn: socket.socket, first: bytes) -> bool:
        """Hand a gRPC connection to the server's unix socket (the client's address rides
        along in the name the upstream socket is bound to: :func:`_upstream_socket`)."""
        if self.grpc_socket is None:
            self.metrics.upstream_errors += 1
            log.warning("mux: no gRPC socket configured; closing a gRPC connection")
            return False
        loop = asyncio.get_running_loop()
        high, low = self.config.write_buffer_high, self.config.write_buffer_low
        sock = _upstream_socket(conn)
        try:
            async with asyncio.timeout(self.config.upstream_connect_timeout):
                await loop.sock_connect(sock, str(self.grpc_socket))
                up_transport, up = await loop.create_unix_connection(
                    lambda: RelaySide(self, upstream=True, high=high, low=low), sock=sock
                )
        except (OSError, TimeoutError) as exc:
            sock.close()
            self.metrics.upstream_errors += 1
            log.warning("mux: cannot reach the gRPC server at %s: %r", self.grpc_socket, exc)
            return False
        up_transport.write(first)
        try:
            await loop.connect_accepted_socket(
                lambda: RelaySide(self, upstream=False, high=high, low=low, peer=up), sock=conn
            )
        except BaseException:
            up_transport.abort()
            raise
        self.metrics.relayed += 1
        return True

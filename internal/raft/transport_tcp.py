"""The Raft transport over TCP: asyncio streams, mutual TLS, length-prefixed frames.

Connections are one-way for data: each node dials one outbound connection per peer and
writes its payloads there; payloads from a peer arrive on the connection that peer dialled.
So a node's own listener only reads, and a dialer only writes (it watches its connection for
end-of-stream to notice a dead peer early).

Connection setup (see ``docs/raft-transport.md`` for the diagram)::

    dialer                                   listener (own serve() or the mux)
      | --- RAFT_MARKER (1 plain byte) -------> |  first byte read at socket level
      | ==== TLS handshake (both certs verified against the cluster CA) ==== |
      |   each side checks authorize(peer certificate CN)                   |
      | --- frame: HELLO_MAGIC + dialer id ---> |  handle_connection()
      | <-- frame: HELLO_ACK_MAGIC + own id --- |  dialer checks it reached the node it meant
      | --- frame, frame, frame ... ----------> |  handler(payload) per frame, in order

The dialer sends its TLS ClientHello right behind the marker, so the listener must read the
marker byte alone (``sock_recv(sock, 1)``), never through a buffered stream that could
swallow the ClientHello. :meth:`TcpTransport.serve` does exactly that, then runs the TLS
server handshake on the accepted socket; the connection multiplexer does the same.

Every wait is bounded: connect (``connect_timeout``); marker, TLS and hello share
``handshake_timeout``; each batch of writes must drain within ``write_timeout``; close()
takes at most about ``close_timeout``.

This module holds the transport itself and its listening side; the dialing side (peer
queues, dial, batched writes, backoff) is :mod:`raftlog.raft.tcp_outbound`, and what both
share is :mod:`raftlog.raft.tcp_common`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

from raftlog.raft.tcp_common import (
    CONNECTION_ERRORS,
    HANDSHAKE_FRAME_MAX,
    READ_CHUNK,
    abort,
    describe,
)
from raftlog.raft.tcp_outbound import Dialer, OutboundPeer
from raftlog.raft.transport import (
    DEFAULT_MAX_FRAME_SIZE,
    HELLO_ACK_MAGIC,
    HELLO_MAGIC,
    MAX_NODE_ID_BYTES,
    RAFT_MARKER,
    FrameDecoder,
    FrameTooLargeError,
    Handler,
    HandshakeError,
    TransportConfigError,
    TransportError,
    TransportStats,
    decode_hello,
    deliver,
    encode_frame,
    encode_hello,
    read_frame,
    split_host_port,
    validate_max_frame_size,
)
from raftlog.security.tls import (
    TLSConfig,
    client_ssl_context,
    peer_common_name,
    server_ssl_context,
)
from raftlog.telemetry.audit import NO_AUDIT, AuditSink

log = logging.getLogger("raftlog.raft.transport")

#: Decides whether a peer may speak Raft to us, by the common name of its certificate.
Authorizer = Callable[[str], bool]
#: What the dialer asks after its handshake: (subject, decoded peer certificate) -> allowed.
PeerAuthorizer = Callable[[str, "dict[str, object] | None"], bool]


@dataclass(frozen=True)
class TcpTransportConfig:
    """Settings of one node's TCP transport. Times in seconds, sizes in bytes."""

    #: This node's id, announced to listeners in the hello frame (1..255 bytes of UTF-8).
    node_id: str
    #: Certificate, key and cluster CA; the certificate serves both as server and client.
    tls: TLSConfig
    #: Largest payload sent or accepted; a peer announcing more is disconnected. 64 MiB.
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    #: Payloads queued per peer before ``send`` drops; default 1024.
    queue_size: int = 1024
    #: Payload bytes queued per peer before ``send`` drops; default 256 MiB.
    queue_bytes: int = 256 * 1024 * 1024
    #: Payload bytes written per batch before one drain (write coalescing); default 1 MiB.
    batch_bytes: int = 1024 * 1024
    #: Bound of the TCP connect, in seconds; default 5.
    connect_timeout: float = 5.0
    #: Bound of marker exchange + TLS handshake + hello, either side, in seconds; default 5.
    handshake_timeout: float = 5.0
    #: Bound of one batch's drain; a peer that does not read is disconnected. Default 10 s.
    write_timeout: float = 10.0
    #: First reconnect delay after a failed dial, doubled per failure; default 0.05 s.
    backoff_initial: float = 0.05
    #: Largest reconnect delay, in seconds; default 2.
    backoff_max: float = 2.0
    #: Bound of close(): tasks and connections still running after it are abandoned
    #: (cancelled and aborted). Default 2 s.
    close_timeout: float = 2.0
    #: Name checked against the listener's certificate instead of the dialled host (for
    #: certificates issued to a DNS name while peers dial IPs). Default: the dialled host.
    server_hostname: str | None = None

    def validate(self) -> None:
        """Check every field and the fields against each other; name what is wrong."""
        raw = self.node_id.encode("utf-8") if isinstance(self.node_id, str) else b""
        if not raw or len(raw) > MAX_NODE_ID_BYTES:
            raise TransportConfigError(
                f"node_id must be 1..{MAX_NODE_ID_BYTES} bytes of UTF-8, got {self.node_id!r}"
            )
        validate_max_frame_size(self.max_frame_size)
        for name in ("queue_size", "queue_bytes", "batch_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise TransportConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.queue_bytes < self.max_frame_size and self.queue_bytes < 1024 * 1024:
            raise TransportConfigError(
                f"queue_bytes ({self.queue_bytes}) must be at least 1 MiB or max_frame_size "
                f"({self.max_frame_size}), or a large payload could never be queued"
            )
        for name in (
            "connect_timeout",
            "handshake_timeout",
            "write_timeout",
            "backoff_initial",
            "backoff_max",
            "close_timeout",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise TransportConfigError(f"{name} must be > 0 seconds, got {value!r}")
        if self.backoff_max < self.backoff_initial:
            raise TransportConfigError(
                f"backoff_max ({self.backoff_max} s) must be >= backoff_initial "
                f"({self.backoff_initial} s)"
            )
        self.tls.validate("tls")


class _Inbound:
    """One accepted connection, tracked so close() can end it.

    While the handshake runs (in a task of our own, ``handshake``), close() cancels that
    task: aborting the socket under ``start_tls`` would leave asyncio's stream half
    upgraded. Once streaming, close() aborts the transport and the read loop ends.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.handshake: asyncio.Task[tuple[str, str, InboundFrames] | None] | None = None

    def end(self) -> None:
        if self.handshake is not None and not self.handshake.done():
            self.handshake.cancel()
        else:
            abort(self.writer)


class TcpTransport:
    """Raft transport over TCP + mutual TLS; implements the Transport protocol.

    ``authorize(subject)`` is asked about the certificate common name of every peer, on both
    sides of every connection, after the TLS handshake (the agent asks Casbin whether the
    subject may ``replicate``). Use :meth:`serve` to listen on a port of its own, or hand
    connections accepted elsewhere (the connection multiplexer) to
    :meth:`handle_connection` after reading the marker;
    :attr:`server_context` is the TLS context such a multiplexer should handshake with.
    """

    def __init__(self, config: TcpTransportConfig, *, authorize: Authorizer) -> None:
        config.validate()
        self.config = config
        self._authorize = authorize
        self._server_ctx: ssl.SSLContext = server_ssl_context(config.tls)
        self._client_ctx: ssl.SSLContext = client_ssl_context(config.tls)
        self._peers: dict[str, OutboundPeer] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._inbound: set[_Inbound] = set()
        self._inbound_empty = asyncio.Event()
        self._inbound_empty.set()
        self._handler: Handler | None = None
        self._stats = TransportStats()
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._accepted: set[asyncio.Task[None]] = set()
        self._accepting = 0
        self._listen_address: str | None = None
        self._started = False
        self._closed = False
        self._dialer = Dialer(config, self._client_ctx, self._authorize_peer, self._stats)
        #: Where refused inbound connections are audited (docs/security.md); off: NO_AUDIT.
        self.audit: AuditSink = NO_AUDIT

    def _authorize_peer(self, subject: str, peercert: dict[str, object] | None = None) -> bool:
        # Looked up at each call, so that replacing _authorize takes effect on both sides.
        if self.check_certificate is not None:
            refused = self.check_certificate(peercert)
            if refused is not None:
                log.warning("refused Raft traffic from %r: %s", subject, refused)
                return False
        return self._authorize(subject)

    #: Optional check of the whole peer certificate (as ``getpeercert()`` decodes it), on
    #: both sides of every handshake after the subject: the reason to refuse it, or None.
    #: The agent checks the deny list here (revocation).
    check_certificate: Callable[[dict[str, object] | None], str | None] | None = None

    def recheck(self) -> int:
        """Ask the certificate check and ``authorize`` again about every open connection
        (after a deny list or ACL reload) and close those now refused; how many. A closed
        peer connection is redialled, and that handshake is checked as usual."""
        writers = [
            conn.writer for conn in self._inbound if conn.handshake is None or conn.handshake.done()
        ]
        writers += [p.writer for p in self._peers.values() if p.writer is not None]
        closed = 0
        for writer in writers:
            peercert = writer.get_extra_info("peercert")
            subject = peer_common_name(peercert)
            if subject is not None and self._authorize_peer(subject, peercert):
                continue
            log.warning(
                "raft transport %s: closing a connection with %r: no longer allowed",
                self.node_id,
                subject,
            )
            abort(writer)
            closed += 1
        return closed

    def set_contexts(
        self, *, server: ssl.SSLContext | None = None, client: ssl.SSLContext | None = None
    ) -> None:
        """Use these TLS contexts for the handshakes from now on (TLS reload): ``server``
        for accepted connections, ``client`` for dialled ones. Open connections stay."""
        if server is not None:
            self._server_ctx = server
        if client is not None:
            self._client_ctx = client
            self._dialer.client_ctx = client

    # ---------------------------------------------------------------- protocol

    @property
    def node_id(self) -> str:
        return self.config.node_id

    @property
    def listen_address(self) -> str | None:
        """``host:port`` bound by :meth:`serve`, or None when not serving."""
        return self._listen_address

    async def start(self) -> None:
        """Start one connection task per known peer. Idempotent."""
        if self._closed:
            raise TransportError(f"transport {self.node_id!r} is closed; create a new one")
        if self._started:
            return
        self._started = True
        for peer in self._peers.values():
            self._spawn(peer)

    @property
    def server_context(self) -> ssl.SSLContext:
        """Server-side TLS context (peer cert, cluster CA, client certificate required).

        A multiplexer that completes the TLS handshake itself before calling
        :meth:`handle_connection` must use this context (or one just as strict).
        """
        return self._server_ctx

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = any free port); returns the bound ``host:port``.

        Each accepted connection must start with the marker byte (read alone, within
        ``handshake_timeout``); then the TLS server handshake runs on the socket and the
        connection continues as :meth:`handle_connection`. Others are closed and counted.
        """
        if self._closed:
            raise TransportError(f"transport {self.node_id!r} is closed")
        if self._listener is not None:
            raise TransportError(f"transport {self.node_id!r} is already serving")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, _, _, _, sockaddr = infos[0]
            sock = socket.create_server(sockaddr[:2], family=family, backlog=1024)
        except OSError as exc:
            raise TransportError(f"cannot listen on {host}:{port}: {exc}") from exc
        sock.setblocking(False)
        self._listener = sock
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self._listen_address = f"{shown}:{bound[1]}"
        self._accept_task = asyncio.create_task(
            self._accept_loop(sock), name=f"raft-transport-accept {self.node_id}"
        )
        return self._listen_address

    async def close(self) -> None:
        """Stop listening, cancel every task, abort connections; at most ~close_timeout."""
        if self._closed:
            return
        self._closed = True
        timeout = self.config.close_timeout
        tasks: set[asyncio.Task[None]] = set(self._retiring) | set(self._accepted)
        if self._accept_task is not None:
            tasks.add(self._accept_task)
        if self._listener is not None:
            self._listener.close()
        for peer in self._peers.values():
            if peer.task is not None:
                tasks.add(peer.task)
            self._stats.dropped_closed += peer.drop_queue()
        for task in tasks:
            task.cancel()
        for conn in list(self._inbound):
            conn.end()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning(
                    "raft transport %s: %d tasks did not stop within %.1f s",
                    self.node_id,
                    len(pending),
                    timeout,
                )
        try:
            await asyncio.wait_for(self._inbound_empty.wait(), timeout)
        except TimeoutError:
            log.warning(
                "raft transport %s: %d inbound connections did not end within %.1f s",
                self.node_id,
                len(self._inbound),
                timeout,
            )

    def set_handler(self, handler: Handler) -> None:
        self._handler = handler

    def update_peers(self, addresses: Mapping[str, str]) -> None:
        """Replace the peer table; changed addresses reconnect (queue kept), removed peers
        are disconnected and their queued payloads dropped. ValueError on a malformed
        address, before anything changes."""
        table = {k: v for k, v in addresses.items() if k != self.node_id}
        for node_id, address in table.items():
            split_host_port(address)
            if not node_id:
                raise ValueError("peer node id must not be empty")
        for node_id in list(self._peers):
            if node_id not in table:
                peer = self._peers.pop(node_id)
                self._stats.dropped_connection += peer.drop_queue()
                self._retire(peer)
        for node_id, address in table.items():
            existing = self._peers.get(node_id)
            if existing is None:
                peer = OutboundPeer(node_id, address)
                self._peers[node_id] = peer
                if self._started and not self._closed:
                    self._spawn(peer)
            elif existing.address != address:
                existing.address = address
                self._retire(existing)
                if self._started and not self._closed:
                    self._spawn(existing)

    def peers(self) -> dict[str, str]:
        """A copy of the peer table (node id -> address)."""
        return {k: p.address for k, p in self._peers.items()}

    def connected_peers(self) -> set[str]:
        """Ids of peers with an established outbound connection right now."""
        return {k for k, p in self._peers.items() if p.connected}

    async def probe(self, node_id: str, address: str) -> dict[str, object]:
        """Dial ``address`` once as this transport would for peer ``node_id`` (marker, mutual
        TLS against the peer CA, the listener's subject authorized, hello answered by
        ``node_id``), close, and return the listener's certificate (``getpeercert()``).

        Raises :class:`HandshakeError` (the listener is not ``node_id``, or its subject is
        not authorized), ``ssl.SSLError`` or ``OSError`` (no TLS peer with a certificate
        of the cluster's CA, nothing listening), or ``TimeoutError``; the message says
        which. The membership check runs this before a member is added (docs/security.md).
        """
        reader, writer, _raw = await self._dialer.dial(node_id, address)
        del reader
        try:
            cert = writer.get_extra_info("peercert")
            return dict(cert) if cert else {}
        finally:
            writer.close()
            with contextlib.suppress(*CONNECTION_ERRORS, TimeoutError):
                async with asyncio.timeout(self.config.handshake_timeout):
                    await writer.wait_closed()

    def inbound_connections(self) -> int:
        """Accepted connections currently open (marker, handshake or streaming)."""
        return self._accepting + len(self._inbound)

    def send(self, to: str, payload: bytes) -> None:
        if not self._started or self._closed:
            self._stats.dropped_closed += 1
            return
        peer = self._peers.get(to)
        if peer is None:
            self._stats.dropped_unknown_peer += 1
            return
        size = len(payload)
        if size > self.config.max_frame_size:
            self._stats.dropped_too_large += 1
            log.error(
                "raft transport %s: dropped a %d-byte payload to %s: above max_frame_size %d",
                self.node_id,
                size,
                to,
                self.config.max_frame_size,
            )
            return
        if peer.idle and peer.write_now(payload):
            self._stats.enqueued += 1
            self._stats.frames_written += 1
            self._stats.write_batches += 1
            self._stats.bytes_written += size
            return
        if (
            len(peer.queue) >= self.config.queue_size
            or peer.queued_bytes + size > self.config.queue_bytes
        ):
            self._stats.dropped_queue_full += 1
            return
        peer.queue.append(payload)
        peer.queued_bytes += size
        self._stats.enqueued += 1
        peer.wakeup.set()

    def stats(self) -> TransportStats:
        return self._stats.copy()

    # ---------------------------------------------------------------- outbound (tcp_outbound.py)

    def _spawn(self, peer: OutboundPeer) -> None:
        peer.task = asyncio.create_task(
            self._dialer.run(peer), name=f"raft-transport {self.node_id}->{peer.node_id}"
        )

    def _retire(self, peer: OutboundPeer) -> None:
        task, peer.task = peer.task, None
        peer.connected = False
        if task is None or task.done():
            return
        task.cancel()
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # ---------------------------------------------------------------- inbound

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                # Out of file descriptors and the like: say so, and do not spin.
                log.error("raft transport %s: accept failed: %s", self.node_id, describe(exc))
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = asyncio.create_task(
                self._serve_accepted(conn), name=f"raft-transport-inbound {self.node_id}"
            )
            self._accepted.add(task)
            task.add_done_callback(self._accepted.discard)

    async def _serve_accepted(self, conn: socket.socket) -> None:
        """Own listener: marker byte alone, TLS on the socket, then handle_connection."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        self._accepting += 1
        try:
            try:
                peer: object = conn.getpeername()
            except OSError:
                peer = None
            try:
                async with asyncio.timeout(cfg.handshake_timeout):
                    first = await loop.sock_recv(conn, 1)
                    if first != RAFT_MARKER:
                        self._refuse_socket(
                            conn, peer, f"first byte {first!r} is not the Raft marker"
                        )
                        return
                    reader = asyncio.StreamReader(limit=READ_CHUNK)
                    protocol = asyncio.StreamReaderProtocol(reader)
                    transport, _ = await loop.connect_accepted_socket(
                        lambda: protocol,
                        sock=conn,
                        ssl=self._server_ctx,
                        ssl_handshake_timeout=cfg.handshake_timeout,
                    )
            except CONNECTION_ERRORS as exc:
                self._refuse_socket(conn, peer, describe(exc))
                return
            except BaseException:
                conn.close()
                raise
        finally:
            self._accepting -= 1
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self.handle_connection(reader, writer)

    def _refuse_socket(self, conn: socket.socket, peer: object, why: str) -> None:
        self._stats.refused += 1
        log.warning(
            "raft transport %s: refused connection from %s (subject None): %s",
            self.node_id,
            peer,
            why,
        )
        conn.close()

    async def handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one accepted connection whose marker byte was already consumed.

        Either a TLS stream whose server handshake is done (the multiplexer did it with
        :attr:`server_context`; the peer certificate is then authorized here), or a plain
        server-side stream that has not read past the marker (``start_tls`` runs here; any
        byte already buffered in the StreamReader would be lost to it, so the marker must
        have been read with ``sock_recv(sock, 1)`` and the stream's transport kept from
        reading until now). Returns when the connection ends or the transport closes; never
        raises for connection trouble (it is logged and counted).
        """
        if self._closed:
            abort(writer)
            return
        conn = self._track(writer)
        try:
            handshake = asyncio.create_task(
                self._accept_handshake(reader, writer), name="raft-transport-handshake"
            )
            conn.handshake = handshake
            try:
                await asyncio.wait({handshake})
            except asyncio.CancelledError:
                handshake.cancel()
                raise
            if handshake.cancelled():
                return  # close() ended it
            accepted = handshake.result()
            if accepted is None:
                return
            remote_id, subject, frames = accepted
            self._stats.accepted += 1
            log.debug(
                "raft transport %s: accepted %s (subject %r) from %s",
                self.node_id,
                remote_id,
                subject,
                writer.get_extra_info("peername"),
            )
            if self._closed:
                return
            await frames.ended
        finally:
            abort(writer)
            self._untrack(conn)

    async def _accept_handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[str, str, InboundFrames] | None:
        """Ack the marker, TLS (server side), authorize, hello; (peer id, subject, the
        protocol that now reads the connection) or None.

        Right after the hello, before its ack, the connection's protocol becomes an
        :class:`InboundFrames`: the dialer sends nothing between its hello and our ack, so
        no byte is left behind in ``reader``, and every later frame is delivered from the
        transport's callback (no reader task to wake: one event-loop hop less per message).
        """
        subject: str | None = None
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                if writer.get_extra_info("ssl_object") is None:
                    await writer.start_tls(self._server_ctx)
                peercert = writer.get_extra_info("peercert")
                subject = peer_common_name(peercert)
                if subject is None or not self._authorize_peer(subject, peercert):
                    self._refuse(writer, subject, "certificate subject is not authorized")
                    return None
                hello = await read_frame(reader, HANDSHAKE_FRAME_MAX)
                if hello is None:
                    raise HandshakeError("connection closed before the hello frame")
                remote_id = decode_hello(HELLO_MAGIC, hello)
                # (uvloop's TLS transport has the Transport methods without the base class)
                transport = cast(asyncio.Transport, writer.transport)
                frames = InboundFrames(self, remote_id, transport)
                transport.set_protocol(frames)
                # a few bytes into an empty buffer: sent without a drain (whose flow
                # control belonged to the stream protocol just replaced)
                writer.write(encode_frame(encode_hello(HELLO_ACK_MAGIC, self.node_id)))
        except CONNECTION_ERRORS as exc:
            self._refuse(writer, subject, describe(exc))
            return None
        except Exception as exc:
            log.exception("raft transport %s: handshake failed unexpectedly", self.node_id)
            self._refuse(writer, subject, describe(exc))
            return None
        return remote_id, subject, frames

    def _deliver(self, payload: bytes) -> None:
        deliver(self._handler, payload, self._stats, self.node_id)

    def _refuse(self, writer: asyncio.StreamWriter, subject: str | None, why: str) -> None:
        self._stats.refused += 1
        peername = writer.get_extra_info("peername")
        log.warning(
            "raft transport %s: refused connection from %s (subject %r): %s",
            self.node_id,
            peername,
            subject,
            why,
        )
        peer = (
            f"{peername[0]}:{peername[1]}"
            if isinstance(peername, tuple) and len(peername) >= 2
            else "-"
        )
        self.audit.record(
            "raft",
            subject=subject or "-",
            peer=peer,
            method="connect",
            decision="denied",
            reason=why,
        )
        abort(writer)

    def _track(self, writer: asyncio.StreamWriter) -> _Inbound:
        conn = _Inbound(writer)
        self._inbound.add(conn)
        self._inbound_empty.clear()
        return conn

    def _untrack(self, conn: _Inbound) -> None:
        self._inbound.discard(conn)
        if not self._inbound:
            self._inbound_empty.set()


class InboundFrames(asyncio.Protocol):
    """Reads an accepted peer connection once its handshake is done: splits the bytes into
    frames (:class:`FrameDecoder`) and hands each payload to the transport's handler from
    ``data_received``. :attr:`ended` resolves when the connection is gone (the accepting
    task waits on it). A frame above ``max_frame_size`` or a transport that closed ends
    the connection."""

    def __init__(self, owner: TcpTransport, remote_id: str, transport: asyncio.Transport) -> None:
        self._owner = owner
        self._remote_id = remote_id
        self._decoder = FrameDecoder(owner.config.max_frame_size)
        # set_protocol() does not call connection_made: the transport is given here
        self._transport = transport
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        owner = self._owner
        decoder = self._decoder
        try:
            payloads = decoder.feed(data)
        except FrameTooLargeError:
            return  # already reported; the connection is being closed
        for payload in payloads:
            owner._stats.bytes_received += len(payload)
            owner._deliver(payload)
            if owner._closed:
                self._close()
                return
        if decoder.error is not None:
            owner._stats.oversized_frames += 1
            log.error(
                "raft transport %s: closing connection from %s: %s",
                owner.node_id,
                self._remote_id,
                decoder.error,
            )
            self._close()

    def eof_received(self) -> bool:
        if self._decoder.pending:
            log.warning(
                "raft transport %s: connection from %s ended inside a frame "
                "(%d bytes of it received)",
                self._owner.node_id,
                self._remote_id,
                self._decoder.pending,
            )
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug(
                "raft transport %s: connection from %s ended: %s",
                self._owner.node_id,
                self._remote_id,
                describe(exc),
            )
        if not self.ended.done():
            self.ended.set_result(None)

    def _close(self) -> None:
        # abort, as the accepting task does when it ends: a graceful TLS close would wait
        # for the peer's close_notify, which a misbehaving peer never sends
        self._transport.abort()

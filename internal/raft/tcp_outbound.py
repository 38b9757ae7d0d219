"""The dialing side of the TCP transport: one outbound connection per peer.

Each peer (:class:`OutboundPeer`) has a bounded queue of payloads and one task
(:meth:`Dialer.run`) that dials when there is something to send, runs the handshake
(marker byte, TLS as client, authorization of the listener's certificate subject, hello),
writes queued payloads in batches (one drain per batch) and redials with jittered
exponential backoff when the connection fails. The listener never writes after its
hello-ack, so the dialer watches the connection only for its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import deque
from typing import TYPE_CHECKING

from raftlog.raft.tcp_common import (
    CONNECTION_ERRORS,
    HANDSHAKE_FRAME_MAX,
    JOIN_LIMIT,
    abort,
    describe,
    set_keepalive,
)
from raftlog.raft.transport import (
    FRAME_HEADER,
    HELLO_ACK_MAGIC,
    HELLO_MAGIC,
    RAFT_MARKER,
    HandshakeError,
    TransportStats,
    decode_hello,
    encode_frame,
    encode_hello,
    read_frame,
    split_host_port,
)
from raftlog.security.tls import peer_common_name

if TYPE_CHECKING:
    from raftlog.raft.transport_tcp import PeerAuthorizer, TcpTransportConfig

log = logging.getLogger("raftlog.raft.transport")


class OutboundPeer:
    """Outbound side of one peer: its address, bounded queue and connection task."""

    def __init__(self, node_id: str, address: str) -> None:
        self.node_id = node_id
        self.address = address
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        #: The open connection's writer (None while not connected).
        self.writer: asyncio.StreamWriter | None = None
        #: The TCP transport under the writer's TLS: the bytes it holds are what the
        #: socket has not taken yet (the TLS transport's own buffer size leaves them out).
        self.raw: asyncio.WriteTransport | None = None
        #: The pump waits with an empty queue and nothing unsent: a payload may be written
        #: at once by :meth:`write_now` instead of waking the pump (one event-loop hop less
        #: per message on the commit path).
        self.idle = False

    def write_now(self, payload: bytes) -> bool:
        """Write ``payload`` on the connection at once if the pump is idle and nothing is
        buffered (so order and the one-drain-per-batch flow control hold); False when it
        must be queued instead. Both buffers count: the TLS transport's own size leaves
        out the bytes the TCP transport under it holds (those the socket has not taken),
        so a peer that stops reading would otherwise let them grow without bound."""
        writer, raw = self.writer, self.raw
        if not self.idle or self.queue or writer is None or raw is None:
            return False
        transport = writer.transport
        if (
            transport.is_closing()
            or transport.get_write_buffer_size()
            or raw.get_write_buffer_size()
        ):
            return False
        writer.write(FRAME_HEADER.pack(len(payload)) + payload)
        return True

    def drop_queue(self) -> int:
        n = len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        return n


class Dialer:
    """Runs the outbound connection of each peer for one transport."""

    def __init__(
        self,
        config: TcpTransportConfig,
        client_ctx: ssl.SSLContext,
        authorize: PeerAuthorizer,
        stats: TransportStats,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.client_ctx = client_ctx
        self._authorize = authorize
        self._stats = stats
        self._random = random.Random()

    async def run(self, peer: OutboundPeer) -> None:
        """Dial when there is something to send, pump the queue, redial with backoff."""
        cfg = self.config
        backoff = cfg.backoff_initial
        failures = 0
        while True:
            if not peer.queue:
                peer.wakeup.clear()
                await peer.wakeup.wait()
                continue
            address = peer.address
            try:
                reader, writer, raw = await self.dial(peer.node_id, address)
            except Exception as exc:
                if not isinstance(exc, CONNECTION_ERRORS):
                    # A bug or an authorize() that raised: keep the task alive, say so loudly.
                    log.exception("raft transport %s: dialling %s failed", self.node_id, address)
                failures += 1
                self._stats.connect_failures += 1
                # Raft resends what matters; stale payloads would only arrive as a burst.
                self._stats.dropped_connection += peer.drop_queue()
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(
                    level,
                    "raft transport %s: cannot connect to %s at %s (attempt %d): %s",
                    self.node_id,
                    peer.node_id,
                    address,
                    failures,
                    describe(exc),
                )
                await asyncio.sleep(backoff * (0.5 + self._random.random() / 2))
                backoff = min(backoff * 2, cfg.backoff_max)
                continue
            if failures:
                log.info(
                    "raft transport %s: connected to %s at %s after %d failed attempts",
                    self.node_id,
                    peer.node_id,
                    address,
                    failures,
                )
            failures = 0
            backoff = cfg.backoff_initial
            self._stats.connects += 1
            peer.connected = True
            peer.writer, peer.raw = writer, raw
            try:
                await self.pump(peer, reader, writer)
            except Exception as exc:
                if not isinstance(exc, CONNECTION_ERRORS):
                    log.exception("raft transport %s: writing to %s failed", self.node_id, address)
                log.info(
                    "raft transport %s: connection to %s at %s lost: %s",
                    self.node_id,
                    peer.node_id,
                    address,
                    describe(exc),
                )
            finally:
                peer.connected = False
                peer.writer = peer.raw = None
                abort(writer)

    async def dial(
        self, peer_id: str, address: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.WriteTransport]:
        """Connect, handshake and hello; the reader and writer (TLS) and the TCP
        transport under them."""
        cfg = self.config
        host, port = split_host_port(address)
        async with asyncio.timeout(cfg.connect_timeout):
            reader, writer = await asyncio.open_connection(host, port)
        raw = writer.transport
        try:
            set_keepalive(writer)
            async with asyncio.timeout(cfg.handshake_timeout):
                writer.write(RAFT_MARKER)
                await writer.start_tls(self.client_ctx, server_hostname=cfg.server_hostname or host)
                peercert = writer.get_extra_info("peercert")
                subject = peer_common_name(peercert)
                if subject is None or not self._authorize(subject, peercert):
                    raise HandshakeError(
                        f"{address} presented certificate subject {subject!r}, "
                        "which is not authorized for Raft"
                    )
                writer.write(encode_frame(encode_hello(HELLO_MAGIC, self.node_id)))
                await writer.drain()
                answer = await read_frame(reader, HANDSHAKE_FRAME_MAX)
                if answer is None:
                    raise HandshakeError(
                        f"{address} closed the connection during the hello "
                        "(it may have refused our certificate or subject)"
                    )
                remote_id = decode_hello(HELLO_ACK_MAGIC, answer)
                if remote_id != peer_id:
                    raise HandshakeError(f"{address} is node {remote_id!r}, not {peer_id!r}")
        except BaseException:
            abort(writer)
            raise
        return reader, writer, raw

    async def pump(
        self, peer: OutboundPeer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Write queued payloads in batches, one drain per batch, until the connection dies."""
        cfg = self.config

        async def watch() -> None:
            # The listener never writes after its hello-ack: any byte or EOF means closed.
            try:
                await reader.read(1)
            finally:
                peer.wakeup.set()

        watcher = asyncio.create_task(watch(), name=f"raft-transport-watch {peer.node_id}")
        try:
            while True:
                if not peer.queue:
                    peer.wakeup.clear()
                    peer.idle = True
                    try:
                        await peer.wakeup.wait()
                    finally:
                        peer.idle = False
                if watcher.done():
                    raise ConnectionResetError(f"{peer.node_id} closed the connection")
                if not peer.queue:
                    continue
                count = 0
                size = 0
                small: list[bytes] = []
                try:
                    while peer.queue and (
                        count == 0 or size + len(peer.queue[0]) <= cfg.batch_bytes
                    ):
                        payload = peer.queue.popleft()
                        peer.queued_bytes -= len(payload)
                        count += 1
                        size += len(payload)
                        header = FRAME_HEADER.pack(len(payload))
                        if len(payload) >= JOIN_LIMIT:
                            if small:
                                writer.write(b"".join(small))
                                small.clear()
                            writer.write(header)
                            writer.write(payload)
                        else:
                            small.append(header)
                            small.append(payload)
                    if small:
                        writer.write(b"".join(small))
                    async with asyncio.timeout(cfg.write_timeout):
                        await writer.drain()
                except BaseException:
                    self._stats.dropped_connection += count
                    raise
                self._stats.frames_written += count
                self._stats.write_batches += 1
                self._stats.bytes_written += size
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, *CONNECTION_ERRORS):
                await watcher


__all__ = ["Dialer", "OutboundPeer"]

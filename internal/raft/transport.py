"""The Raft transport contract and the wire framing shared by its implementations.

A transport moves opaque byte payloads (encoded Raft messages) between nodes named by id.
It is message-oriented and lossy on purpose: ``send`` never blocks and never raises for a
peer that is unknown, down or slow; the payload is dropped and counted instead, because Raft
already retransmits everything that matters (heartbeats, AppendEntries retries, snapshot
chunks). What a transport does guarantee: payloads from one sender to one receiver that do
arrive, arrive whole and in the order they were sent (the in-memory transport's reorder
fault breaks this on purpose).

Implementations: :mod:`raftlog.raft.transport_inmem` (tests and simulations, with fault
hooks) and :mod:`raftlog.raft.transport_tcp` (asyncio streams, mutual TLS, length-prefixed
frames). Wire details are documented in ``docs/raft-transport.md``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import struct
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

#: First byte a Raft dialer writes on a fresh plain TCP connection. The connection
#: multiplexer reads the first byte of every accepted connection: this value means "Raft",
#: anything else goes to gRPC (TLS records start with 0x16, HTTP/2 prefaces with ``P``).
RAFT_MARKER = b"\x01"

#: Frame header: payload length as an unsigned 32-bit big-endian integer.
FRAME_HEADER = struct.Struct(">I")
#: Default largest frame payload accepted or sent, in bytes (64 MiB).
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
#: Hard upper bound of a frame payload: what the u32 length field can express.
MAX_FRAME_LIMIT = 2**32 - 1

#: Payload of a dialer's hello frame: this prefix, then its node id in UTF-8.
HELLO_MAGIC = b"RLH1"
#: Payload of the listener's answer to a hello: this prefix, then its own node id in UTF-8.
HELLO_ACK_MAGIC = b"RLA1"
#: Largest node id in a hello frame, in bytes of UTF-8.
MAX_NODE_ID_BYTES = 255

#: The callback that receives every inbound payload, in arrival order, on the event loop.
Handler = Callable[[bytes], None]

log = logging.getLogger("raftlog.raft.transport")


class TransportError(Exception):
    """Base class of transport errors."""


class FrameTooLargeError(TransportError):
    """A frame header announced (or a sender tried) a payload above the configured maximum."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the maximum frame size of {limit} bytes")
        self.size = size
        self.limit = limit


class HandshakeError(TransportError):
    """A peer connection failed its handshake (marker, TLS, authorization or hello)."""


class TransportConfigError(ValueError):
    """A transport setting is out of range; the message names the setting."""


@dataclasses.dataclass
class TransportStats:
    """Counters of one transport, for metrics and tests. Fields that do not apply stay 0."""

    #: Payloads accepted by ``send`` into a peer's outbound queue.
    enqueued: int = 0
    #: Payloads handed to the local handler.
    delivered: int = 0
    #: Payloads dropped because the peer's outbound queue was full.
    dropped_queue_full: int = 0
    #: Payloads dropped because the destination id is not a known peer.
    dropped_unknown_peer: int = 0
    #: Payloads dropped because they exceed the maximum frame size.
    dropped_too_large: int = 0
    #: Payloads dropped because the transport was not started or already closed.
    dropped_closed: int = 0
    #: Inbound payloads dropped because no handler was set.
    dropped_no_handler: int = 0
    #: Payloads dropped by an injected fault, a partition or a disconnected node (in-memory).
    dropped_fault: int = 0
    #: Extra copies made by the duplicate fault (in-memory).
    duplicated: int = 0
    #: Payloads lost because the connection broke with them queued or in flight (TCP).
    dropped_connection: int = 0
    #: Exceptions raised by the handler (logged; the connection stays up).
    handler_errors: int = 0
    #: Frames and payload bytes written to connections, and the batches (one drain each)
    #: they were coalesced into (TCP).
    frames_written: int = 0
    write_batches: int = 0
    bytes_written: int = 0
    #: Payload bytes read from connections (TCP).
    bytes_received: int = 0
    #: Outbound connections established / attempts that failed (TCP).
    connects: int = 0
    connect_failures: int = 0
    #: Inbound connections accepted after the handshake / refused (TLS, authorization,
    #: malformed marker or hello) (TCP).
    accepted: int = 0
    refused: int = 0
    #: Connections closed because a peer sent a frame above the maximum size (TCP).
    oversized_frames: int = 0

    def copy(self) -> TransportStats:
        return dataclasses.replace(self)


@runtime_checkable
class Transport(Protocol):
    """What the Raft node runtime needs from a transport.

    Lifecycle: construct, ``set_handler``, ``update_peers``, ``await start()``, then
    ``send`` freely; ``await close()`` at the end (idempotent, bounded).
    """

    @property
    def node_id(self) -> str:
        """The id of the local node."""
        ...

    async def start(self) -> None:
        """Start background work (connection tasks); payloads sent before are dropped."""
        ...

    async def close(self) -> None:
        """Stop every task and connection; bounded in time; idempotent."""
        ...

    def send(self, to: str, payload: bytes) -> None:
        """Queue ``payload`` for node ``to``; never blocks, never raises for peer trouble."""
        ...

    def set_handler(self, handler: Handler) -> None:
        """Set the callback that receives every inbound payload on the event loop."""
        ...

    def update_peers(self, addresses: Mapping[str, str]) -> None:
        """Replace the peer table (node id -> address); removed peers are disconnected."""
        ...

    def stats(self) -> TransportStats:
        """A copy of the counters."""
        ...


def deliver(handler: Handler | None, payload: bytes, stats: TransportStats, who: str) -> None:
    """Hand one inbound payload to ``handler`` and count it (``delivered``, or
    ``dropped_no_handler``). A handler that raises is counted (``handler_errors``) and
    logged naming ``who``, never raised into the transport's read path: one bad payload must
    not close a peer's connection."""
    if handler is None:
        stats.dropped_no_handler += 1
        return
    stats.delivered += 1
    try:
        handler(payload)
    except Exception:
        stats.handler_errors += 1
        log.exception("raft transport %s: handler failed on an inbound payload", who)


def validate_max_frame_size(value: int, what: str = "max_frame_size") -> None:
    """Check a maximum frame size: a positive int that fits the u32 length field."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TransportConfigError(f"{what} must be an integer number of bytes, got {value!r}")
    if not 1 <= value <= MAX_FRAME_LIMIT:
        raise TransportConfigError(
            f"{what} must be between 1 and {MAX_FRAME_LIMIT} bytes (u32 length), got {value}"
        )


def frame_header(size: int, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """The 4-byte header of a frame carrying ``size`` payload bytes."""
    if size > max_frame_size:
        raise FrameTooLargeError(size, max_frame_size)
    return FRAME_HEADER.pack(size)


def encode_frame(payload: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """One frame: u32 big-endian length, then the payload (copies; fine for small frames)."""
    return frame_header(len(payload), max_frame_size) + payload


async def read_frame(reader: asyncio.StreamReader, max_frame_size: int) -> bytes | None:
    """Read one frame's payload; ``None`` on a clean end of stream between frames.

    Raises :class:`FrameTooLargeError` when the header announces more than
    ``max_frame_size`` bytes (the caller closes the connection: the stream cannot be
    resynchronised) and :class:`asyncio.IncompleteReadError` when the stream ends inside a
    frame.
    """
    try:
        header = await reader.readexactly(FRAME_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    (size,) = FRAME_HEADER.unpack(header)
    if size > max_frame_size:
        raise FrameTooLargeError(size, max_frame_size)
    if size == 0:
        return b""
    return await reader.readexactly(size)


class FrameDecoder:
    """Splits a byte stream into frame payloads, many frames per read.

    Reading each frame with two ``readexactly`` calls costs two coroutine round trips per
    frame; feeding whole reads here costs one per read.

    A header announcing more than ``max_frame_size`` bytes poisons the stream: the frames
    complete before it are still returned, :attr:`error` is set, and every later ``feed``
    raises it. Callers deliver what they got, then check :attr:`error`.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self.error: FrameTooLargeError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the payloads of every frame now complete, in order."""
        if self.error is not None:
            raise self.error
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end_of_data = len(buf)
        header = FRAME_HEADER.size
        while end_of_data - pos >= header:
            (size,) = FRAME_HEADER.unpack_from(buf, pos)
            if size > self.max_frame_size:
                self.error = FrameTooLargeError(size, self.max_frame_size)
                break
            end = pos + header + size
            if end > end_of_data:
                break
            out.append(bytes(buf[pos + header : end]))
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back (non-zero at EOF means a torn frame)."""
        return len(self._buf)


def encode_hello(magic: bytes, node_id: str) -> bytes:
    """Payload of a hello (``HELLO_MAGIC``) or hello-ack (``HELLO_ACK_MAGIC``) frame."""
    raw = node_id.encode("utf-8")
    if not raw or len(raw) > MAX_NODE_ID_BYTES:
        raise HandshakeError(f"node id must be 1..{MAX_NODE_ID_BYTES} bytes, got {node_id!r}")
    return magic + raw


def decode_hello(magic: bytes, payload: bytes) -> str:
    """The node id in a hello or hello-ack payload; :class:`HandshakeError` if malformed."""
    if not payload.startswith(magic):
        raise HandshakeError(f"expected a {magic!r} handshake frame, got {payload[:8]!r}")
    raw = payload[len(magic) :]
    if not raw or len(raw) > MAX_NODE_ID_BYTES:
        raise HandshakeError(f"handshake node id must be 1..{MAX_NODE_ID_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HandshakeError("handshake node id is not valid UTF-8") from exc


def split_host_port(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); ValueError says what is wrong."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"peer address must look like host:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"peer address port must be 1..65535, got {address!r}")
    return host, port

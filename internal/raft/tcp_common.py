"""Helpers shared by both sides of the TCP transport (:mod:`raftlog.raft.transport_tcp`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from raftlog.raft.transport import (
    HELLO_MAGIC,
    MAX_NODE_ID_BYTES,
    FrameTooLargeError,
    HandshakeError,
)

#: Largest handshake frame payload (magic + node id), in bytes.
HANDSHAKE_FRAME_MAX = len(HELLO_MAGIC) + MAX_NODE_ID_BYTES

#: Bytes asked of the stream per read on inbound connections (many frames per read).
READ_CHUNK = 256 * 1024
#: Payloads at least this large are written on their own instead of joined into the batch
#: buffer (joining costs a copy; small frames joined make one TLS write per batch).
JOIN_LIMIT = 256 * 1024

#: Errors that mean "this connection is unusable"; they are logged, counted and survived.
CONNECTION_ERRORS = (
    OSError,  # includes ssl.SSLError and ConnectionError
    TimeoutError,
    asyncio.IncompleteReadError,
    HandshakeError,
    FrameTooLargeError,
)


def abort(writer: asyncio.StreamWriter) -> None:
    """Drop a connection at once (no TLS close_notify: the peer may be hostile or gone)."""
    transport = writer.transport
    if transport is not None:
        transport.abort()


def set_keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = [
    "CONNECTION_ERRORS",
    "HANDSHAKE_FRAME_MAX",
    "JOIN_LIMIT",
    "READ_CHUNK",
    "abort",
    "describe",
    "set_keepalive",
]

"""A byte-pipe relay between two transports, with flow control in both directions.

Each connection is a pair of :class:`RelaySide` protocols, one on the accepted TCP
connection (``down``) and one on the unix-socket connection to the gRPC server (``up``).
Bytes read on one side are written to the other side's transport at once; nothing is queued
in Python. When a side's transport holds more than ``high`` bytes not yet sent, asyncio calls
that side's ``pause_writing()``, and we stop reading from its peer (``pause_reading``) until
the buffer drains below ``low`` (``resume_writing()``). So the mux holds at most about
``high`` bytes (plus one read chunk) per direction of each connection, however slow either
end reads.

Half-close: an EOF from one side is passed on with ``write_eof()`` and the other direction
keeps flowing; once both directions ended, both transports close. When either connection is
lost, the other is closed too (flushing what is buffered when the loss was clean, aborting
otherwise), so the two ends always go away together.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast


class RelayObserver(Protocol):
    """What a relay reports to its owner (the mux): counters and the set of live sides."""

    def relay_paused(self) -> None: ...

    def relay_bytes(self, upstream: bool, count: int) -> None: ...

    def relay_opened(self, side: RelaySide) -> None: ...

    def relay_closed(self, side: RelaySide) -> None: ...


class RelaySide(asyncio.Protocol):
    """One end of a relayed connection; ``peer`` is the protocol on the other end.

    The side created first (the upstream) has no peer yet and keeps its transport paused
    until the second side links itself in ``connection_made``.
    """

    def __init__(
        self,
        observer: RelayObserver,
        *,
        upstream: bool,
        high: int,
        low: int,
        peer: RelaySide | None = None,
    ) -> None:
        self._observer = observer
        self.upstream = upstream  # True for the side connected to the gRPC server
        self._high = high
        self._low = low
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.closed = False
        #: True while our reading is paused because the peer's buffer is full.
        self.reading_paused = False

    # --- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=self._high, low=self._low)
        self._observer.relay_opened(self)
        peer = self.peer
        if peer is None:
            self.transport.pause_reading()  # nothing to write to yet
            return
        peer.peer = self
        if peer.closed or peer.transport is None:
            self.transport.close()
            return
        peer.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None or peer.transport.is_closing():
            return
        peer.transport.write(data)
        # Bytes read from the client go up to the gRPC server, and the other way round.
        self._observer.relay_bytes(not self.upstream, len(data))

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.transport.is_closing():
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
        else:  # cannot half-close: end the whole relay
            return False
        # Keep our transport open for the other direction until it ends too.
        return not peer.eof

    def pause_writing(self) -> None:
        """Our transport's buffer passed ``high``: stop reading from the peer."""
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.pause_reading()
            peer.reading_paused = True
            self._observer.relay_paused()

    def resume_writing(self) -> None:
        """Our transport's buffer drained below ``low``: read from the peer again."""
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.reading_paused = False
            peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._observer.relay_closed(self)
        peer = self.peer
        if peer is None or peer.closed or peer.transport is None:
            return
        if exc is None:
            peer.transport.close()  # sends what is still buffered, then closes
        else:
            peer.transport.abort()

    # --- for the owner -----------------------------------------------------------------
    def buffered(self) -> int:
        """Bytes waiting in our transport's write buffer."""
        transport = self.transport
        if transport is None or self.closed:
            return 0
        return transport.get_write_buffer_size()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

"""Settings of the gRPC API server."""

from __future__ import annotations

import math
from dataclasses import dataclass

MIB = 1 << 20

#: gRPC's own receive/send limit is the record limit plus this slack (bytes), so that a
#: too-large record reaches the servicer and gets a clear INVALID_ARGUMENT instead of
#: gRPC's bare RESOURCE_EXHAUSTED. Messages beyond limit + slack are refused by gRPC itself.
TRANSPORT_SLACK_BYTES = 1 * MIB


class ServerConfigError(ValueError):
    """A :class:`ServerConfig` field has an unusable value; the message names it."""


@dataclass(frozen=True)
class ServerConfig:
    """Settings of the ``log.v1.Log`` server.

    Attributes:
        max_message_bytes: the largest record, and the largest total payload of one
            ProduceRequest batch, the server accepts, in bytes; above it the call gets
            INVALID_ARGUMENT. gRPC's transport limit is this plus 1 MiB of slack (beyond it:
            RESOURCE_EXHAUSTED). Default 4 MiB (gRPC's usual default).
        consume_max_bytes: byte budget of one ConsumeStream batch message when the client
            leaves ``max_bytes`` at 0. Default 1 MiB. Client budgets are capped at
            ``max_message_bytes``.
        follow_recheck_s: a ConsumeStream that has caught up sleeps until a record is
            appended or the server begins shutdown (both wake it at once); this bounds one
            sleep as a safety net (seconds). Default 5 s.
        read_barrier_timeout_s: longest wait of a linearizable read's barrier (leadership
            confirmed by a quorum, then applied up to the read index), seconds; the call's
            own deadline bounds it too. Default 5 s.
        produce_stream_max_requests: most ProduceStream requests gathered into one append
            (one group commit). Default 1024.
        produce_stream_max_batch_bytes: a ProduceStream stops gathering requests into one
            append once their payload reaches this many bytes. Default 8 MiB. One append
            never holds more than one Produce may carry (``max_message_bytes`` of payload,
            ``transport_limit_bytes`` encoded), since a follower forwards it whole.
        produce_stream_window_bytes: most bytes of one ProduceStream read ahead of their
            append (payload + 256 bytes per request; back-pressure on a fast producer, and a
            bound on the memory one stream can hold). A single request always fits.
            Default 16 MiB.
        handshake_timeout_s: a client that has not finished its TLS handshake after this
            many seconds is disconnected. Behind the mux a relayed connection is opaque, so
            this is what bounds a client stalling mid-handshake (gRPC's own default is
            120 s). Default 10 s.
    """

    max_message_bytes: int = 4 * MIB
    consume_max_bytes: int = 1 * MIB
    follow_recheck_s: float = 5.0
    read_barrier_timeout_s: float = 5.0
    produce_stream_max_requests: int = 1024
    produce_stream_max_batch_bytes: int = 8 * MIB
    produce_stream_window_bytes: int = 16 * MIB
    handshake_timeout_s: float = 10.0

    @property
    def transport_limit_bytes(self) -> int:
        """gRPC's max send/receive message length (bytes)."""
        return self.max_message_bytes + TRANSPORT_SLACK_BYTES

    def validate(self) -> None:
        """Raise :class:`ServerConfigError` naming the first unusable field."""
        for name in (
            "max_message_bytes",
            "consume_max_bytes",
            "produce_stream_max_requests",
            "produce_stream_max_batch_bytes",
            "produce_stream_window_bytes",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ServerConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.max_message_bytes > 1 << 30:
            raise ServerConfigError(
                f"max_message_bytes must be at most 1 GiB, got {self.max_message_bytes}"
            )
        handshake = self.handshake_timeout_s
        if not isinstance(handshake, int | float) or not math.isfinite(handshake) or handshake <= 0:
            raise ServerConfigError(
                f"handshake_timeout_s must be a positive number of seconds, got {handshake!r}"
            )
        barrier = self.read_barrier_timeout_s
        if not isinstance(barrier, int | float) or not math.isfinite(barrier) or barrier <= 0:
            raise ServerConfigError(
                f"read_barrier_timeout_s must be a positive number of seconds, got {barrier!r}"
            )
        value = self.follow_recheck_s
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ServerConfigError(
                f"follow_recheck_s must be a positive number of seconds, got {value!r}"
            )

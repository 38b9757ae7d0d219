"""Settings of :class:`~raftlog.client.LogClient`, each with its unit and default."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

MIB = 1 << 20
#: Longest producer id the servers accept, in bytes of UTF-8 (see api/v1/log.proto).
MAX_PRODUCER_ID_BYTES = 64


class ClientConfigError(ValueError):
    """A :class:`ClientConfig` field has an unusable value; the message names it."""


@dataclass(frozen=True)
class ClientConfig:
    """How the client retries, batches, and keeps its view of the cluster.

    Deadlines and retries:
        request_timeout_s: overall deadline of one operation (produce, produce_batch,
            consume, servers, offsets), retries included, in seconds. When it runs out the
            call raises ``DeadlineExceededError`` naming the last error. For ``stream()`` it
            bounds one outage: the stream gives up when it cannot make progress for this long.
            Default 30 s.
        attempt_timeout_s: deadline of one RPC attempt, in seconds (capped by what is left of
            ``request_timeout_s``). Default 5 s.
        backoff_initial_s: sleep before the second attempt, in seconds; doubled (times
            ``backoff_multiplier``) after each failed attempt up to ``backoff_max_s``. Each
            sleep is drawn uniformly from [b * (1 - backoff_jitter), b] ("jitter"), so clients
            that failed together do not retry together. Default 0.05 s.
        backoff_max_s: longest sleep between attempts, in seconds. Default 1 s.
        backoff_multiplier: growth factor of the sleep. Default 2.
        backoff_jitter: fraction of each sleep that is random, 0..1. Default 0.5.
        leader_hint_hops: how many times in a row a NOT_LEADER answer's leader hint is
            followed at once, without sleeping (more hops than that sleep like any retry, so
            two nodes that each name the other cannot make the client spin). Default 3.

    Membership (the resolver):
        bootstrap_timeout_s: how long ``start()`` keeps trying the bootstrap addresses, in
            seconds. 0 = one pass over them, failing fast with ``NoServersError`` when none
            answers (what a command-line tool wants). Default 0.
        refresh_interval_s: period of the background GetServers refresh, in seconds; the
            client also refreshes at once on errors that ask for it. Default 30 s.
        refresh_timeout_s: deadline of one GetServers call during a refresh, in seconds.
            Default 2 s.
        min_refresh_interval_s: error-triggered refreshes are at least this far apart, in
            seconds (a burst of failing calls causes one refresh, not hundreds). Default 0.1 s.
        down_cooldown_s: a server whose call failed with UNAVAILABLE or a timeout is avoided
            by the picker for this long, in seconds (unless no other server is left).
            Default 1 s.

    Automatic batching of ``produce()``:
        linger_s: how long a batch that is not full waits for more records, in seconds.
            0 sends as soon as the event loop has run the callers that are ready. Default
            0.002 s (2 ms): the latency one lone ``produce()`` pays for batching.
        batch_max_records: a batch is sent at once when it holds this many records.
            Default 1000.
        batch_max_bytes: ... or this many payload bytes. Keep it at or below the server's
            ``max_message_bytes`` (4 MiB by default): a batch is one atomic request. A record
            larger than this goes alone. Default 1 MiB.
        max_in_flight_batches: most batches sent and not yet answered at once; later batches
            wait (they keep filling meanwhile, up to their size limits). Default 4.
        buffer_max_bytes: most payload bytes held by ``produce()`` calls that are not yet
            answered (queued and in flight); further calls wait for room (back-pressure).
            Default 32 MiB.

    Idempotent producer (every produce request carries the client's producer id and its own
    sequence number; its retries reuse them, so the server appends it once however many
    attempts reach it; see docs/client.md):
        idempotent: send the producer id and sequences. False = plain requests (a produce
            whose answer was lost and which is retried may then be appended twice).
            Default True.
        producer_id: this client's producer id (1..64 bytes of UTF-8). None = a random
            UUID (32 hex digits) per LogClient, which is what almost everyone wants.
            Set it only to continue a producer across processes, and then: never use one
            id in two clients at once, and start each new process above every sequence the
            previous one used (``first_sequence``). A reused (id, sequence) is answered as
            a duplicate: the new records would be silently dropped. Default None.
        first_sequence: the sequence of this client's first request (>= 1); the next
            requests count up from it. Default 1.
        max_sequence_span: the client never has requests in flight whose sequences are this
            far apart or more: a new request waits while the oldest one (still retrying)
            is that far behind. Keep it at most the server's producer window (32 by
            default, ``raftlog.domain.producers.ProducerConfig.window``), so a slow retry
            is never refused as SEQUENCE_TOO_OLD. Default 32.

    Consuming:
        stream_batch_records: records per ConsumeStream message ``stream()`` asks for.
            Default 1000.
        stream_batch_bytes: byte budget per ConsumeStream message, 0 = the server's default
            (1 MiB). Default 0.

    Transport:
        max_message_bytes: gRPC send/receive limit of the client's channels, in bytes.
            Default 5 MiB (the server's 4 MiB record limit plus its 1 MiB slack).
        reconnect_backoff_min_s / reconnect_backoff_max_s: gRPC's own reconnect backoff of a
            channel whose server went away, in seconds. gRPC's defaults (1 s growing to
            120 s) would leave a restarted server unused for minutes; the client retries on
            its own schedule, so the channel reconnects quickly. Defaults 0.1 s and 2 s.
        tls_server_name: the name the servers' certificates are checked against, when the
            addresses the cluster announces are not names in the certificates (for example
            IP addresses with certificates for a DNS name). None = the dialled host.
            Default None.
        close_timeout_s: ``close()`` waits this long, in seconds, for queued and in-flight
            batches to be answered before failing them with ``ClientClosedError``.
            Default 10 s.
    """

    request_timeout_s: float = 30.0
    attempt_timeout_s: float = 5.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    backoff_multiplier: float = 2.0
    backoff_jitter: float = 0.5
    leader_hint_hops: int = 3
    bootstrap_timeout_s: float = 0.0
    refresh_interval_s: float = 30.0
    refresh_timeout_s: float = 2.0
    min_refresh_interval_s: float = 0.1
    down_cooldown_s: float = 1.0
    linger_s: float = 0.002
    batch_max_records: int = 1000
    batch_max_bytes: int = 1 * MIB
    max_in_flight_batches: int = 4
    buffer_max_bytes: int = 32 * MIB
    stream_batch_records: int = 1000
    stream_batch_bytes: int = 0
    max_message_bytes: int = 5 * MIB
    reconnect_backoff_min_s: float = 0.1
    reconnect_backoff_max_s: float = 2.0
    tls_server_name: str | None = None
    close_timeout_s: float = 10.0
    idempotent: bool = True
    producer_id: str | None = None
    first_sequence: int = 1
    max_sequence_span: int = 32

    def validate(self) -> None:
        """Raise :class:`ClientConfigError` naming the first unusable field."""
        positive_s = (
            "request_timeout_s",
            "attempt_timeout_s",
            "backoff_initial_s",
            "backoff_max_s",
            "refresh_interval_s",
            "refresh_timeout_s",
            "reconnect_backoff_min_s",
            "reconnect_backoff_max_s",
            "close_timeout_s",
        )
        non_negative_s = ("bootstrap_timeout_s", "min_refresh_interval_s", "down_cooldown_s")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in positive_s or f.name in non_negative_s or f.name == "linger_s":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ClientConfigError(f"{f.name} must be a number of seconds, got {value!r}")
                if not math.isfinite(value) or value < 0:
                    raise ClientConfigError(
                        f"{f.name} must be a finite number of seconds >= 0, got {value!r}"
                    )
                if f.name in positive_s and value == 0:
                    raise ClientConfigError(f"{f.name} must be more than 0 seconds, got {value!r}")
        for name in (
            "batch_max_records",
            "batch_max_bytes",
            "max_in_flight_batches",
            "buffer_max_bytes",
            "stream_batch_records",
            "max_message_bytes",
            "leader_hint_hops",
            "first_sequence",
            "max_sequence_span",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ClientConfigError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.stream_batch_bytes, bool) or not isinstance(
            self.stream_batch_bytes, int
        ):
            raise ClientConfigError(
                f"stream_batch_bytes must be an integer, got {self.stream_batch_bytes!r}"
            )
        if self.stream_batch_bytes < 0:
            raise ClientConfigError(
                f"stream_batch_bytes must be >= 0 (0 = server default), "
                f"got {self.stream_batch_bytes}"
            )
        if self.linger_s > 1.0:
            raise ClientConfigError(
                f"linger_s must be at most 1 second (it delays every produce()), "
                f"got {self.linger_s}"
            )
        if self.backoff_multiplier < 1.0:
            raise ClientConfigError(
                f"backoff_multiplier must be >= 1 (the sleep must not shrink), "
                f"got {self.backoff_multiplier}"
            )
        if not 0.0 <= self.backoff_jitter <= 1.0:
            raise ClientConfigError(
                f"backoff_jitter must be a fraction between 0 and 1, got {self.backoff_jitter}"
            )
        if self.backoff_max_s < self.backoff_initial_s:
            raise ClientConfigError(
                f"backoff_max_s ({self.backoff_max_s}) must be >= backoff_initial_s "
                f"({self.backoff_initial_s})"
            )
        if self.reconnect_backoff_max_s < self.reconnect_backoff_min_s:
            raise ClientConfigError(
                f"reconnect_backoff_max_s ({self.reconnect_backoff_max_s}) must be >= "
                f"reconnect_backoff_min_s ({self.reconnect_backoff_min_s})"
            )
        if self.attempt_timeout_s > self.request_timeout_s:
            raise ClientConfigError(
                f"attempt_timeout_s ({self.attempt_timeout_s}) must not exceed "
                f"request_timeout_s ({self.request_timeout_s}): one attempt could never fit"
            )
        if self.buffer_max_bytes < self.batch_max_bytes:
            raise ClientConfigError(
                f"buffer_max_bytes ({self.buffer_max_bytes}) must be >= batch_max_bytes "
                f"({self.batch_max_bytes}), or a full batch could never be buffered"
            )
        if self.batch_max_bytes >= self.max_message_bytes:
            raise ClientConfigError(
                f"batch_max_bytes ({self.batch_max_bytes}) must be below max_message_bytes "
                f"({self.max_message_bytes}): a full batch must fit in one message"
            )
        if not isinstance(self.idempotent, bool):
            raise ClientConfigError(f"idempotent must be True or False, got {self.idempotent!r}")
        if self.producer_id is not None:
            if not isinstance(self.producer_id, str) or not self.producer_id:
                raise ClientConfigError(
                    f"producer_id must be None or a non-empty string, got {self.producer_id!r}"
                )
            size = len(self.producer_id.encode("utf-8", "surrogatepass"))
            if size > MAX_PRODUCER_ID_BYTES:
                raise ClientConfigError(
                    f"producer_id is {size} bytes of UTF-8, more than {MAX_PRODUCER_ID_BYTES}"
                )
        if self.tls_server_name is not None and not self.tls_server_name:
            raise ClientConfigError("tls_server_name must be None or a non-empty host name")

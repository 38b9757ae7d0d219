"""``LogClient``: the asyncio client that makes the cluster feel like one server.

Produce path::

    produce(v) ──> Batcher ──batch──┐
    produce_batch(vs) ──────────────┴─> retry loop ──picker: leader──> Produce
                                          │   ^        UNAVAILABLE / timeout: mark the server
                                          │   │        down, refresh the view, back off
                                          │   └─────── NOT_LEADER + hint: go to the hint now
                                          └─ overall deadline (request_timeout_s) -> error

Consume path: ``consume(offset)`` asks a follower (round-robin); a follower that has not
applied the offset yet (OUT_OF_RANGE past its end) hands the read to the leader.
``stream(from_offset)`` follows ConsumeStream on a follower and, when the stream breaks
(server restart, leader change, server left), resumes on another server from the next
offset it has not yielded, so the caller sees every record once, in order.

The idempotent producer: each client has a producer id (a random UUID unless
``ClientConfig.producer_id`` says otherwise) and numbers its produce requests (one sequence
per request, a batch of ``produce()`` calls included); every retry of a request reuses its
sequence, so a request whose answer was lost (timeout, leader killed) and which is retried
is appended once and answered with its first offsets. Requests in flight at once stay
within ``max_sequence_span`` sequences of each other (the server remembers a window of
them per producer). A request that fails for good (deadline) is not retried with the same
sequence later: producing the same values again is a new request.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc

from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.client.batcher import Batcher
from raftlog.client.config import ClientConfig
from raftlog.client.errors import (
    AttemptTimeoutError,
    ClientClosedError,
    ClientError,
    DeadlineExceededError,
    NotLeaderError,
    OffsetOutOfRangeError,
    ServerError,
    UnavailableError,
    describe,
    from_rpc_error,
)
from raftlog.client.picker import Picker
from raftlog.client.resolver import Resolver, ServerInfo
from raftlog.security.grpc_tls import grpc_channel_credentials
from raftlog.security.tls import TLSConfig, client_ssl_context

logger = logging.getLogger("raftlog.client")

T = TypeVar("T")
#: One attempt of an operation: (stub, server address, attempt timeout in seconds) -> result.
Attempt = Callable[[log_pb2_grpc.LogStub, str, float], Awaitable[T]]


@dataclass(frozen=True, slots=True)
class Record:
    """One record of the log."""

    offset: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Offsets:
    """The offsets the leader's log holds (GetOffsets)."""

    lowest: int
    highest: int
    next: int
    empty: bool


@dataclass
class ClientStats:
    """Counters of one client, for tests and monitoring (not reset)."""

    #: Produce RPC attempts (each batch is one; retries count again).
    produce_requests: int = 0
    #: Attempts that failed with a retriable error and were tried again.
    retries: int = 0
    #: Times ``stream()`` resumed on a server after its stream broke.
    stream_resumes: int = 0
    #: Produce answers the server marked ``duplicate`` (a retry of a request it had
    #: appended already: the records were appended once, the offsets are the first ones).
    duplicates: int = 0
    #: Times a request waited for older ones to finish before taking its sequence (the
    #: span of sequences in flight had reached ``max_sequence_span``).
    sequence_waits: int = 0


class _Role(enum.Enum):
    PRODUCE = "produce"
    CONSUME = "consume"


def parse_addrs(addrs: str | Sequence[str]) -> list[str]:
    """``"h1:p1,h2:p2"`` or ``["h1:p1", "h2:p2,h3:p3"]`` -> distinct HOST:PORT strings.

    Raises ValueError naming the first malformed address.
    """
    items = [addrs] if isinstance(addrs, str) else list(addrs)
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            addr = part.strip()
            if not addr:
                continue
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"address {addr!r} is not HOST:PORT (port 1..65535)")
            if addr not in out:
                out.append(addr)
    if not out:
        raise ValueError("no server address given (HOST:PORT, comma-separated for several)")
    return out


def _stamp(tls: TLSConfig | None) -> tuple[tuple[int, int], ...]:
    """(mtime in ns, size) of each file of ``tls`` ((-1, -1) for one that is missing)."""
    if tls is None:
        return ()
    stamps = []
    for path in (tls.cert_file, tls.key_file, *tls.ca_files()):
        try:
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((-1, -1))
    return tuple(stamps)


class LogClient:
    """An asyncio client of a raftlog cluster (or a single node).

    ::

        async with LogClient(["10.0.0.1:8400", "10.0.0.2:8400"], tls=tls) as client:
            offset = await client.produce(b"hello")
            record = await client.consume(offset)
            async for record in client.stream(from_offset=0):
                ...

    ``addrs`` are bootstrap addresses (one is enough; the rest of the cluster is learned
    through GetServers). ``tls`` is the client's certificate, key and the cluster CA (mutual
    TLS); plaintext needs ``tls=None`` and ``insecure=True``, for a node started insecure.
    Use from one event loop; ``start()`` (or ``async with``) before calls, ``close()`` after.
    Settings: :class:`ClientConfig`.
    """

    def __init__(
        self,
        addrs: str | Sequence[str],
        *,
        tls: TLSConfig | None,
        config: ClientConfig | None = None,
        insecure: bool = False,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    ) -> None:
        if tls is None and not insecure:
            raise ValueError("a client without TLS needs insecure=True, explicitly")
        self.config = config or ClientConfig()
        self.config.validate()
        cfg = self.config
        self._tls = tls
        self._tls_stamp = _stamp(tls)
        self._credentials = grpc_channel_credentials(tls) if tls is not None else None
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", int(cfg.reconnect_backoff_min_s * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(cfg.reconnect_backoff_min_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(cfg.reconnect_backoff_max_s * 1000)),
        ]
        if cfg.tls_server_name:
            options.append(("grpc.ssl_target_name_override", cfg.tls_server_name))
        self._options = options
        self._interceptors = list(interceptors or ())
        #: The idempotent producer id of this client ("" when ``idempotent`` is off).
        self.producer_id = (cfg.producer_id or uuid.uuid4().hex) if cfg.idempotent else ""
        self._next_sequence = cfg.first_sequence
        self._sequences_in_flight: set[int] = set()
        self._sequence_waiters: list[asyncio.Future[None]] = []
        self._resolver = Resolver(parse_addrs(addrs), self._channel, cfg)
        self._picker = Picker()
        self._batcher = Batcher(self._send_batch, cfg)
        self.stats = ClientStats()
        self._started = False
        self._closed = False

    def reload_tls(self) -> bool:
        """Read the TLS files again if they changed since they were read (modification
        time and size); channels opened from then on use them (open channels stay). Also
        done before each new channel. True when new files are in use; files that cannot
        be read are logged and the ones loaded before stay."""
        tls = self._tls
        if tls is None:
            return False
        stamp = _stamp(tls)
        if stamp == self._tls_stamp:
            return False
        try:
            client_ssl_context(tls)  # the same checks a handshake would make: key matches
            credentials = grpc_channel_credentials(tls)
        except (OSError, ssl.SSLError) as exc:
            logger.warning("client TLS files changed but are refused, keeping the old: %s", exc)
            return False
        self._credentials = credentials
        self._tls_stamp = stamp
        logger.info("client TLS files changed: new connections use them")
        return True

    def _channel(self, addr: str) -> grpc.aio.Channel:
        self.reload_tls()
        interceptors = self._interceptors or None
        if self._credentials is None:
            return grpc.aio.insecure_channel(addr, options=self._options, interceptors=interceptors)
        return grpc.aio.secure_channel(
            addr, self._credentials, options=self._options, interceptors=interceptors
        )

    @property
    def resolver(self) -> Resolver:
        """The client's view of the cluster (members, leader, channels)."""
        return self._resolver

    @property
    def batcher(self) -> Batcher:
        """The automatic batcher behind :meth:`produce` (its counters)."""
        return self._batcher

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> LogClient:
        """Learn the cluster from the bootstrap addresses (``NoServersError`` if none answers)."""
        if self._closed:
            raise ClientClosedError("the client is closed")
        if not self._started:
            await self._resolver.start()
            self._started = True
        return self

    async def close(self) -> None:
        """Send what ``produce()`` has queued, wait for it (``close_timeout_s``), close channels.

        Idempotent. Calls still waiting afterwards fail with ``ClientClosedError``.
        """
        if self._closed:
            return
        await self._batcher.close(self.config.close_timeout_s)
        self._closed = True
        self._release_sequence(0)  # wake produce_batch calls waiting for a sequence
        await self._resolver.close()

    async def __aenter__(self) -> LogClient:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("the client is closed")
        if not self._started:
            raise ClientError("call start() (or use `async with`) before making calls")

    # -- produce ---------------------------------------------------------------------------

    async def produce(self, value: bytes) -> int:
        """Append one record; returns its offset. Concurrent calls share batch requests."""
        self._check_open()
        return await self._batcher.add(bytes(value))

    async def produce_batch(self, values: Sequence[bytes]) -> list[int]:
        """Append ``values`` as one atomic batch (consecutive offsets); returns the offsets."""
        self._check_open()
        if not values:
            return []
        first = await self._send_batch(values)
        return list(range(first, first + len(values)))

    async def _take_sequence(self) -> int:
        """The next sequence, once the oldest request in flight is within the span."""
        span = self.config.max_sequence_span
        while (
            self._sequences_in_flight
            and self._next_sequence - min(self._sequences_in_flight) >= span
        ):
            # bounded: every request in flight ends within request_timeout_s
            waiter = asyncio.get_running_loop().create_future()
            self._sequence_waiters.append(waiter)
            self.stats.sequence_waits += 1
            await waiter
            if self._closed:
                raise ClientClosedError("the client was closed")
        sequence = self._next_sequence
        self._next_sequence += 1
        self._sequences_in_flight.add(sequence)
        return sequence

    def _release_sequence(self, sequence: int) -> None:
        self._sequences_in_flight.discard(sequence)
        waiters, self._sequence_waiters = self._sequence_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _send_batch(self, values: Sequence[bytes]) -> int:
        Record = log_pb2.Record
        if len(values) == 1:
            request = log_pb2.ProduceRequest(record=Record(value=values[0]))
        else:
            request = log_pb2.ProduceRequest(records=[Record(value=v) for v in values])
        count = len(values)
        sequence = 0
        if self.producer_id:
            sequence = await self._take_sequence()
            request.producer_id = self.producer_id
            request.sequence = sequence  # every attempt below sends this same request

        async def attempt(stub: log_pb2_grpc.LogStub, addr: str, timeout_s: float) -> int:
            self.stats.produce_requests += 1
            response = await stub.Produce(request, timeout=timeout_s)
            first: int = response.offset
            last: int = response.last_offset if response.last_offset else first
            if last - first + 1 != count:
                raise ServerError(
                    f"server answered offsets {first}..{last} for {count} records", addr=addr
                )
            if response.duplicate:
                self.stats.duplicates += 1
            return first

        try:
            return await self._retry("produce", _Role.PRODUCE, attempt)
        finally:
            if sequence:
                self._release_sequence(sequence)

    # -- consume ---------------------------------------------------------------------------

    async def consume(self, offset: int, *, linearizable: bool = False) -> Record:
        """The record at ``offset`` (``OffsetOutOfRangeError`` if the log does not hold it).

        By default any server may answer (followers first) with what it has committed, so
        a record acknowledged a moment ago may still be out of range there. With
        ``linearizable`` the leader answers after a read barrier: every produce
        acknowledged before this call is readable (one quorum round more).
        """
        self._check_open()
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        request = log_pb2.ConsumeRequest(offset=offset, linearizable=linearizable)

        async def attempt(stub: log_pb2_grpc.LogStub, addr: str, timeout_s: float) -> Record:
            response = await stub.Consume(request, timeout=timeout_s)
            return Record(offset, response.record.value)

        # a linearizable read is the leader's to give: route it like a produce
        role = _Role.PRODUCE if linearizable else _Role.CONSUME
        return await self._retry("consume", role, attempt)

    async def stream(
        self, from_offset: int = 0, *, linearizable: bool = False
    ) -> AsyncIterator[Record]:
        """Every record from ``from_offset`` on, in order, each once; then new ones as they come.

        Survives leader changes and server restarts: a broken stream resumes, on another
        server if need be, at the next offset not yet yielded. Gives up with
        ``DeadlineExceededError`` when no server lets it progress for ``request_timeout_s``.
        Stop it with ``break`` (or ``aclose()``). With ``linearizable`` the stream is read
        from the leader, which starts it after a read barrier (see :meth:`consume`).
        """
        async for batch in self.stream_batches(from_offset, linearizable=linearizable):
            for record in batch:
                yield record

    async def stream_batches(
        self, from_offset: int = 0, *, linearizable: bool = False
    ) -> AsyncIterator[list[Record]]:
        """Like :meth:`stream`, a batch (up to ``stream_batch_records``) at a time."""
        self._check_open()
        if from_offset < 0:
            raise ValueError(f"offset must be >= 0, got {from_offset}")
        cfg = self.config
        loop = asyncio.get_running_loop()
        next_offset = from_offset
        outage_since: float | None = None
        backoff = cfg.backoff_initial_s
        attempts = 0
        target = ""
        while True:
            self._check_open()
            if target:
                addr = target
            elif linearizable:
                addr = self._picker.for_produce(self._resolver)  # the leader
            else:
                addr = self._picker.for_consume(self._resolver)
            target = ""
            attempts += 1
            call = self._resolver.stub(addr).ConsumeStream(
                log_pb2.ConsumeRequest(
                    offset=next_offset,
                    max_records=cfg.stream_batch_records,
                    max_bytes=cfg.stream_batch_bytes,
                    linearizable=linearizable,
                )
            )
            error: ClientError | None = None
            try:
                async for response in call:
                    batch: list[Record] = []
                    for r in response.records:
                        if r.offset < next_offset:
                            continue  # already yielded (never sent by a correct server)
                        if r.offset > next_offset:
                            error = ServerError(
                                f"stream from {addr} skipped from offset {next_offset} to "
                                f"{r.offset}",
                                addr=addr,
                            )
                            break
                        batch.append(Record(r.offset, r.value))
                        next_offset += 1
                    if batch:
                        outage_since, backoff, attempts = None, cfg.backoff_initial_s, 0
                        yield batch
                    if error is not None:
                        break
                if error is None:
                    error = UnavailableError(f"{addr} ended the stream", addr=addr)
                else:
                    error = UnavailableError(error.message, addr=addr)  # resume elsewhere
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, addr)
            finally:
                call.cancel()
            if self._closed:
                raise ClientClosedError("the client is closed") from error
            leader = self._resolver.leader
            if isinstance(error, OffsetOutOfRangeError) and error.beyond_end:
                if leader and addr != leader:
                    target = leader  # a lagging follower: the leader has the records
                elif addr == leader and next_offset == from_offset:
                    raise error  # asked past the leader's end before reading anything
                # else: no leader known, or a new leader whose commit has not caught up
                # with what this stream already read: wait and retry
            elif isinstance(error, NotLeaderError) and error.leader_addr:
                self._resolver.note_leader(error.leader_addr)
            elif not error.retriable:
                raise error
            elif isinstance(error, UnavailableError | AttemptTimeoutError):
                self._resolver.mark_down(addr)
            if error.refresh_metadata:
                self._resolver.invalidate()
            now = loop.time()
            if outage_since is None:
                outage_since = now
            self.stats.stream_resumes += 1
            if now - outage_since >= cfg.request_timeout_s:
                raise DeadlineExceededError(
                    f"stream: no progress at offset {next_offset} for "
                    f"{now - outage_since:.1f} s ({attempts} attempts); "
                    f"last error: {describe(error)}",
                    error,
                    attempts,
                ) from error
            if target:
                continue
            await asyncio.sleep(backoff * (1 - cfg.backoff_jitter * random.random()))
            backoff = min(backoff * cfg.backoff_multiplier, cfg.backoff_max_s)

    # -- cluster ---------------------------------------------------------------------------

    async def servers(self) -> list[ServerInfo]:
        """The cluster's members, asked now (this also refreshes the client's view)."""
        self._check_open()

        async def attempt(stub: log_pb2_grpc.LogStub, addr: str, timeout_s: float) -> None:
            await self._resolver.refresh()

        await self._retry("servers", _Role.CONSUME, attempt)
        return list(self._resolver.servers)

    async def offsets(self) -> Offsets:
        """The offsets the leader's log holds now (lowest, highest, next, empty)."""
        self._check_open()
        request = log_pb2.GetOffsetsRequest()

        async def attempt(stub: log_pb2_grpc.LogStub, addr: str, timeout_s: float) -> Offsets:
            r = await stub.GetOffsets(request, timeout=timeout_s)
            return Offsets(r.lowest_offset, r.highest_offset, r.next_offset, r.empty)

        return await self._retry("offsets", _Role.PRODUCE, attempt)

    # -- the retry loop --------------------------------------------------------------------

    def _redirect(self, error: ClientError, addr: str, role: _Role) -> str:
        """Where to send the next attempt at once, if the error says so ('' if nowhere)."""
        if isinstance(error, NotLeaderError):
            hint = error.leader_addr
            if hint and hint != addr:
                self._resolver.note_leader(hint)
                return hint
            return ""
        if role is _Role.CONSUME and isinstance(error, OffsetOutOfRangeError):
            leader = self._resolver.leader
            if error.beyond_end and leader and leader != addr:
                return leader  # a follower that has not applied the offset yet
        return ""

    def _lagging(self, error: ClientError, addr: str, role: _Role) -> bool:
        """A read past the end of a server that is not the leader: it may just lag behind."""
        return (
            role is _Role.CONSUME
            and isinstance(error, OffsetOutOfRangeError)
            and error.beyond_end
            and addr != self._resolver.leader
        )

    async def _retry(self, op: str, role: _Role, attempt: Attempt[T]) -> T:
        """Run ``attempt`` against the picked server until it succeeds, fails for good, or
        ``request_timeout_s`` runs out (then :class:`DeadlineExceededError`)."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + cfg.request_timeout_s
        backoff = cfg.backoff_initial_s
        attempts = hops = 0
        last: ClientError | None = None
        target = ""
        while True:
            self._check_open()
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if target:
                addr, target = target, ""
            elif role is _Role.PRODUCE:
                addr = self._picker.for_produce(self._resolver)
            else:
                addr = self._picker.for_consume(self._resolver)
            attempts += 1
            try:
                return await attempt(
                    self._resolver.stub(addr), addr, min(cfg.attempt_timeout_s, remaining)
                )
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, addr)
                error.__cause__ = exc
            except ClientError as exc:
                error = exc
            if self._closed:
                raise ClientClosedError(f"{op}: the client was closed") from error
            last = error
            redirect = self._redirect(error, addr, role)
            if redirect and hops < cfg.leader_hint_hops:
                hops += 1
                target = redirect
                continue
            lagging = self._lagging(error, addr, role)
            if not error.retriable and not lagging:
                raise error
            self.stats.retries += 1
            if isinstance(error, UnavailableError | AttemptTimeoutError) and not isinstance(
                error, NotLeaderError
            ):
                self._resolver.mark_down(addr)
            if error.refresh_metadata or lagging:
                self._resolver.invalidate()
            target = redirect
            delay = backoff * (1 - cfg.backoff_jitter * random.random())
            if loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
            backoff = min(backoff * cfg.backoff_multiplier, cfg.backoff_max_s)
        elapsed = loop.time() - started
        reason = describe(last) if last is not None else "no attempt fitted in the deadline"
        raise DeadlineExceededError(
            f"{op}: gave up after {elapsed:.1f} s and {attempts} attempts "
            f"(request_timeout_s={cfg.request_timeout_s:g}); last error: {reason}",
            last,
            attempts,
        ) from last

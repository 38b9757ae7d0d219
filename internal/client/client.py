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

Topics and partitions (``produce_to``, ``produce_keyed``, ``consume_from``, ``stream_from``,
``partition_offsets``, ``partitions``): each partition has its own leader, so these calls
route by the per-topic cache of :mod:`raftlog.client.topics` (filled by GetPartitions)
instead of the resolver's cluster leader: writes go to the partition's leader, reads to
any of its replicas (round-robin). A NOT_LEADER answer's hint is followed at once and the
topic's entry refreshed in the background; so it is after UNAVAILABLE, a timeout, or a
keyed write the server put in another partition than the cache predicted (the topic was
re-created with another partition count). The same retry loop and deadlines apply. The
idempotent producer's sequences are shared by every partition: the server keeps a window
per producer and partition, and the sequences one partition sees are a subset of those in
flight, so they stay within ``max_sequence_span`` of each other there too.
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
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import grpc

from raftlog.api.partitioning import partition_for_key
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
    PartialProduceError,
    ServerError,
    UnavailableError,
    UnknownTopicError,
    describe,
    from_rpc_error,
)
from raftlog.client.picker import Picker
from raftlog.client.resolver import Resolver, ServerInfo
from raftlog.client.topics import PartitionInfo, TopicCache, TopicPartitions, topic_name
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


@dataclass(frozen=True, slots=True)
class Produced:
    """Where one produce request to a topic went: its partition and the records' offsets
    (consecutive; offsets count per partition)."""

    topic: str
    partition: int
    offsets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PartitionOffset:
    """Where one record of a keyed batch went (:meth:`LogClient.produce_keyed`)."""

    partition: int
    offset: int


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
    #: Produce RPC attempts per server address (every produce call, default topic
    #: included): shows where writes were routed.
    produce_requests_by_addr: dict[str, int] = field(default_factory=dict)
    #: NOT_LEADER hints followed for a partition of a topic (the client's cache named a
    #: server that does not host or lead it).
    partition_redirects: int = 0


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
        self._topics = TopicCache(self._fetch_partitions, cfg)
        self._read_turn = 0
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

    @property
    def topics(self) -> TopicCache:
        """The per-topic partition metadata the topic calls route by (its ``refreshes``)."""
        return self._topics

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
        await self._topics.close()
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
        first, _, _ = await self._produce_request("produce", request, len(values), None)
        return first

    async def _produce_request(
        self,
        op: str,
        request: log_pb2.ProduceRequest,
        count: int,
        route: _PartitionRoute | None,
    ) -> tuple[int, int, int]:
        """Send ``request`` of ``count`` records with the client's retries, to the cluster
        leader (``route`` None) or to a partition's leader; (first offset, last offset,
        partition the server reports)."""
        sequence = 0
        if self.producer_id:
            sequence = await self._take_sequence()
            request.producer_id = self.producer_id
            request.sequence = sequence  # every attempt below sends this same request

        async def attempt(
            stub: log_pb2_grpc.LogStub, addr: str, timeout_s: float
        ) -> tuple[int, int, int]:
            stats = self.stats
            stats.produce_requests += 1
            stats.produce_requests_by_addr[addr] = stats.produce_requests_by_addr.get(addr, 0) + 1
            response = await stub.Produce(request, timeout=timeout_s)
            first: int = response.offset
            last: int = response.last_offset if response.last_offset else first
            if last - first + 1 != count:
                raise ServerError(
                    f"server answered offsets {first}..{last} for {count} records", addr=addr
                )
            if response.duplicate:
                stats.duplicates += 1
            return first, last, response.partition

        try:
            return await self._retry(op, _Role.PRODUCE, attempt, route)
        finally:
            if sequence:
                self._release_sequence(sequence)

    # -- topics and partitions -------------------------------------------------------------

    async def partitions(self, topic: str = "") -> TopicPartitions:
        """Ask the cluster now for ``topic``'s partitions, leaders and replicas (GetPartitions,
        any server; "" = the default topic), and keep the answer for routing.
        ``UnknownTopicError`` if the topic does not exist."""
        self._check_open()
        name = topic_name(topic)

        async def attempt(
            stub: log_pb2_grpc.LogStub, addr: str, timeout_s: float
        ) -> TopicPartitions:
            return self._partitions_of(
                await stub.GetPartitions(
                    log_pb2.GetPartitionsRequest(topic=name), timeout=timeout_s
                )
            )

        meta = await self._retry("partitions", _Role.CONSUME, attempt)
        self._topics.put(meta)
        return meta

    @staticmethod
    def _partitions_of(response: log_pb2.GetPartitionsResponse) -> TopicPartitions:
        infos = sorted(
            (
                PartitionInfo(
                    partition=i.partition,
                    leader_id=i.leader_id,
                    leader_addr=i.leader_addr,
                    replica_addrs=tuple(i.replica_addrs),
                )
                for i in response.infos
            ),
            key=lambda i: i.partition,
        )
        return TopicPartitions(response.topic, response.partitions, tuple(infos))

    async def _fetch_partitions(self, name: str) -> TopicPartitions:
        """One pass of GetPartitions over the known servers (live ones first, then those
        marked down, then the bootstrap addresses), each bounded by ``refresh_timeout_s``:
        the cache's refresh, kept short because a call may be waiting on it."""
        resolver = self._resolver
        members = [s.rpc_addr for s in resolver.servers]
        up = [a for a in members if not resolver.is_down(a)]
        candidates = list(dict.fromkeys([*up, *members, *resolver.bootstrap]))
        errors: list[str] = []
        for addr in candidates:
            try:
                response = await resolver.stub(addr).GetPartitions(
                    log_pb2.GetPartitionsRequest(topic=name),
                    timeout=self.config.refresh_timeout_s,
                )
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, addr)
                if not error.retriable:
                    raise error from exc
                resolver.mark_down(addr)
                errors.append(describe(error))
                continue
            return self._partitions_of(response)
        raise UnavailableError(
            f"no server answered GetPartitions({name!r}): " + ("; ".join(errors) or "none known")
        )

    async def partition_for(self, topic: str, key: bytes | None) -> int:
        """The partition a record with ``key`` goes to in ``topic``: Kafka's rule with the
        topic's partition count (cached; asked once); no key (None or empty): partition 0,
        as the server does."""
        self._check_open()
        if not key:
            return 0
        meta = self._topics.cached(topic) or await self.partitions(topic)
        return partition_for_key(key, meta.count)

    async def produce_to(
        self,
        topic: str,
        values: Sequence[bytes],
        *,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> Produced:
        """Append ``values`` to one partition of ``topic`` as one atomic batch ("" = the
        default topic): the partition given, or the one ``key`` picks (the server hashes
        it, Kafka's murmur2), or partition 0 when neither is given. Sent to the partition's
        leader; returns where the records went. Not both ``key`` and ``partition``."""
        self._check_open()
        if key is not None and partition is not None:
            raise ValueError("give a key or a partition, not both")
        if partition is not None and partition < 0:
            raise ValueError(f"partition must be >= 0, got {partition}")
        if not values:
            raise ValueError("produce_to needs at least one value")
        name = topic_name(topic)
        route = _PartitionRoute(self, name, partition=partition, key=key or None)
        request = log_pb2.ProduceRequest(
            records=[log_pb2.Record(value=bytes(v)) for v in values], topic=topic
        )
        if key:
            request.key = key
        elif partition is not None:
            request.partition = partition
        first, last, answered = await self._produce_request("produce", request, len(values), route)
        if route.partition is not None and answered != route.partition:
            # the server's partition count differs from the cached one (re-created topic)
            self._topics.invalidate(name)
        return Produced(name, answered, tuple(range(first, last + 1)))

    async def produce_keyed(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes]]
    ) -> list[PartitionOffset]:
        """Append (key, value) ``records`` to ``topic``: grouped by the partition each key
        picks (no key: partition 0), one Produce per partition, sent concurrently, each to
        its partition's leader. Returns each record's partition and offset, in the order
        given. Records of one key keep their order.

        Each partition's request is atomic, the whole is not: when some partitions took
        their records and others did not, :class:`PartialProduceError` says which (when
        every one failed, the first partition's error is raised). Keys are mapped with the
        cached partition count, as Kafka's producer does."""
        self._check_open()
        if not records:
            return []
        name = topic_name(topic)
        meta = self._topics.cached(name) or await self.partitions(name)
        groups: dict[int, list[int]] = {}
        for index, (key, _) in enumerate(records):
            number = partition_for_key(key, meta.count) if key else 0
            groups.setdefault(number, []).append(index)
        numbers = sorted(groups)
        results = await asyncio.gather(
            *(
                self.produce_to(name, [records[i][1] for i in groups[n]], partition=n)
                for n in numbers
            ),
            return_exceptions=True,
        )
        placed: list[PartitionOffset | None] = [None] * len(records)
        produced: dict[int, int] = {}
        errors: dict[int, ClientError] = {}
        for number, result in zip(numbers, results, strict=True):
            if isinstance(result, ClientError):
                errors[number] = result
            elif isinstance(result, BaseException):
                raise result
            else:
                produced[number] = result.offsets[0]
                for index, offset in zip(groups[number], result.offsets, strict=True):
                    placed[index] = PartitionOffset(number, offset)
        if errors:
            if not produced:
                raise errors[numbers[0]]
            first = next(iter(errors.values()))
            raise PartialProduceError(
                f"produced to partitions {sorted(produced)} of {name!r}, not to "
                f"{sorted(errors)}: {describe(first)}",
                produced,
                errors,
            )
        return [p for p in placed if p is not None]

    async def consume_from(
        self, topic: str, partition: int, offset: int, *, linearizable: bool = False
    ) -> Record:
        """The record at ``offset`` of ``partition`` of ``topic`` ("" = the default topic).

        Any replica of the partition may answer (round-robin); one that has not applied
        ``offset`` yet hands the read to the partition's leader. ``linearizable``: the
        leader answers after a read barrier (see :meth:`consume`)."""
        self._check_open()
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if partition < 0:
            raise ValueError(f"partition must be >= 0, got {partition}")
        name = topic_name(topic)
        route = _PartitionRoute(self, name, partition=partition, leader_only=linearizable)
        request = log_pb2.ConsumeRequest(
            offset=offset, linearizable=linearizable, topic=topic, partition=partition
        )

        async def attempt(stub: log_pb2_grpc.LogStub, addr: str, timeout_s: float) -> Record:
            response = await stub.Consume(request, timeout=timeout_s)
            return Record(offset, response.record.value)

        return await self._retry("consume", _Role.CONSUME, attempt, route)

    async def partition_offsets(self, topic: str, partition: int) -> Offsets:
        """The offsets ``partition`` of ``topic`` holds now, as its leader sees them."""
        self._check_open()
        name = topic_name(topic)
        route = _PartitionRoute(self, name, partition=partition, leader_only=True)
        request = log_pb2.GetOffsetsRequest(topic=topic, partition=partition)

        async def attempt(stub: log_pb2_grpc.LogStub, addr: str, timeout_s: float) -> Offsets:
            r = await stub.GetOffsets(request, timeout=timeout_s)
            return Offsets(r.lowest_offset, r.highest_offset, r.next_offset, r.empty)

        return await self._retry("offsets", _Role.PRODUCE, attempt, route)

    async def stream_from(
        self, topic: str, partition: int, from_offset: int = 0, *, linearizable: bool = False
    ) -> AsyncIterator[Record]:
        """:meth:`stream` of one partition of a topic, read from its replicas."""
        async for batch in self.stream_batches_from(
            topic, partition, from_offset, linearizable=linearizable
        ):
            for record in batch:
                yield record

    def stream_batches_from(
        self, topic: str, partition: int, from_offset: int = 0, *, linearizable: bool = False
    ) -> AsyncIterator[list[Record]]:
        """:meth:`stream_batches` of one partition of a topic, read from its replicas
        (round-robin; the leader with ``linearizable``), resuming on another replica when
        a stream breaks."""
        if partition < 0:
            raise ValueError(f"partition must be >= 0, got {partition}")
        route = _PartitionRoute(
            self, topic_name(topic), partition=partition, leader_only=linearizable
        )
        return self._stream_batches(from_offset, linearizable, route, topic)

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

    def stream_batches(
        self, from_offset: int = 0, *, linearizable: bool = False
    ) -> AsyncIterator[list[Record]]:
        """Like :meth:`stream`, a batch (up to ``stream_batch_records``) at a time."""
        return self._stream_batches(from_offset, linearizable, None, "")

    async def _stream_batches(
        self,
        from_offset: int,
        linearizable: bool,
        route: _PartitionRoute | None,
        topic: str,
    ) -> AsyncIterator[list[Record]]:
        """The stream loop: of the default topic (``route`` None, the cluster's servers)
        or of one partition (its replicas)."""
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
            elif route is not None:
                addr = await route.pick()
            elif linearizable:
                addr = self._picker.for_produce(self._resolver)  # the leader
            else:
                addr = self._picker.for_consume(self._resolver)
            target = ""
            attempts += 1
            request = log_pb2.ConsumeRequest(
                offset=next_offset,
                max_records=cfg.stream_batch_records,
                max_bytes=cfg.stream_batch_bytes,
                linearizable=linearizable,
            )
            if route is not None:
                request.topic = topic
                request.partition = route.partition or 0
            call = self._resolver.stub(addr).ConsumeStream(request)
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
            leader = self._resolver.leader if route is None else route.leader
            if isinstance(error, OffsetOutOfRangeError) and error.beyond_end:
                if leader and addr != leader:
                    target = leader  # a lagging follower: the leader has the records
                elif addr == leader and next_offset == from_offset:
                    raise error  # asked past the leader's end before reading anything
                # else: no leader known, or a new leader whose commit has not caught up
                # with what this stream already read: wait and retry
            elif isinstance(error, NotLeaderError) and error.leader_addr:
                if route is None:
                    self._resolver.note_leader(error.leader_addr)
                else:
                    route.redirect(error, addr)  # noted: the next pick goes there
            elif not error.retriable:
                if route is not None:
                    route.redirect(error, addr)  # an unknown topic: its entry is dropped
                raise error
            elif isinstance(error, UnavailableError | AttemptTimeoutError):
                self._resolver.mark_down(addr)
            if error.refresh_metadata:
                self._resolver.invalidate()
                if route is not None:
                    route.failed(error)
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

    async def _retry(
        self, op: str, role: _Role, attempt: Attempt[T], route: _PartitionRoute | None = None
    ) -> T:
        """Run ``attempt`` against the picked server until it succeeds, fails for good, or
        ``request_timeout_s`` runs out (then :class:`DeadlineExceededError`). ``route``:
        a call on one partition of a topic, which picks its servers (``role`` is then
        only a label)."""
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
            elif route is not None:
                addr = await route.pick()
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
            if route is None:
                redirect = self._redirect(error, addr, role)
                lagging = self._lagging(error, addr, role)
            else:
                redirect = route.redirect(error, addr)
                lagging = route.lagging(error, addr)
            if redirect and hops < cfg.leader_hint_hops:
                hops += 1
                target = redirect
                continue
            if not error.retriable and not lagging:
                raise error
            self.stats.retries += 1
            if isinstance(error, UnavailableError | AttemptTimeoutError) and not isinstance(
                error, NotLeaderError
            ):
                self._resolver.mark_down(addr)
            if error.refresh_metadata or lagging:
                self._resolver.invalidate()
                if route is not None:
                    route.failed(error)
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


class _PartitionRoute:
    """Where the attempts of one call on one partition of a topic go.

    Writes (and linearizable reads, and GetOffsets) go to the partition's leader as the
    client's :class:`TopicCache` knows it; reads to any of its replicas, round-robin, since
    every replica serves reads of what it has committed. The partition is given, or picked
    from ``key`` with the cached partition count (the request then carries the key, and
    the server, which has the authoritative count, picks it again).
    """

    def __init__(
        self,
        client: LogClient,
        topic: str,
        *,
        partition: int | None = None,
        key: bytes | None = None,
        leader_only: bool = True,
    ) -> None:
        self._client = client
        self.topic = topic
        self.key = key
        #: The partition (known once the first pick has mapped the key, if a key is given).
        self.partition: int | None = partition if key is None else None
        if key is None and partition is None:
            self.partition = 0
        self.leader_only = leader_only

    @property
    def leader(self) -> str:
        """The partition's leader as the cache knows it ('' if unknown)."""
        if self.partition is None:
            return ""
        return self._client.topics.leader(self.topic, self.partition)

    async def pick(self) -> str:
        """The server for the next attempt. Never raises: when the topic's partitions
        cannot be learned, any server of the cluster gets the call (it forwards it, names
        a host of the partition, or says the topic does not exist)."""
        client = self._client
        cache = client.topics
        resolver = client.resolver
        try:
            meta = await cache.get(self.topic)
        except ClientError as exc:
            logger.info("partitions of %r unknown (%s): asking any server", self.topic, exc)
            return client._picker.for_produce(resolver)
        if self.key is not None and self.partition is None:
            self.partition = partition_for_key(self.key, meta.count)
        number = self.partition or 0
        leader = cache.leader(self.topic, number)
        replicas = cache.replicas(self.topic, number)
        if not leader:
            cache.invalidate(self.topic)  # an election, or new: ask again soon
        if self.leader_only:
            if leader and not resolver.is_down(leader):
                return leader
            live = [a for a in replicas if a != leader and not resolver.is_down(a)]
        else:
            live = [a for a in replicas if not resolver.is_down(a)]
        if live:
            client._read_turn += 1
            return live[client._read_turn % len(live)]
        if leader:
            return leader
        if replicas:
            return replicas[0]
        return client._picker.for_produce(resolver)

    def redirect(self, error: ClientError, addr: str) -> str:
        """Where to send the next attempt at once ('' if nowhere): a NOT_LEADER answer's
        hint (noted in the cache, whose entry is refreshed), or, for a read past the end of
        a replica that is not the leader, the leader. Also drops the topic's entry when
        the server says the topic or partition does not exist."""
        cache = self._client.topics
        if isinstance(error, UnknownTopicError):
            cache.forget(self.topic)  # deleted (or re-created smaller): ask again next time
            return ""
        if isinstance(error, NotLeaderError):
            hint = error.leader_addr
            if self.partition is not None:
                cache.note_leader(self.topic, self.partition, hint)
            else:
                cache.invalidate(self.topic)
            if hint and hint != addr:
                self._client.stats.partition_redirects += 1
                return hint
            return ""
        if self.lagging(error, addr):
            return self.leader
        return ""

    def lagging(self, error: ClientError, addr: str) -> bool:
        """A read past the end of a replica that is not the leader: it may just lag."""
        return (
            not self.leader_only
            and isinstance(error, OffsetOutOfRangeError)
            and error.beyond_end
            and bool(self.leader)
            and addr != self.leader
        )

    def failed(self, error: ClientError) -> None:
        """An error that says the view is stale: refresh the topic's entry soon."""
        self._client.topics.invalidate(self.topic)

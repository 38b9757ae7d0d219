"""The ``log.v1.Log`` servicer: produce and consume over gRPC, batches first.

Produce path (ProduceStream)::

    client ──req──> reader task ──queue (window)──> appender loop ──append_batch──> log
                                                        │ gathers every queued request
                                                        v into ONE append (group commit)
    client <──resp── yield, in request order  <─────────┘

The reader keeps reading while an append waits for its fsync, so the next append carries
everything that arrived meanwhile: one fsync for many requests. Responses keep the order of
the requests. A bad request ends the stream with its status after every earlier request
was appended and answered.

One gathered append is never more than one Produce may carry (``max_message_bytes`` of
payload, and the transport limit on the wire, counted with each request's encoded size):
on a follower the append is forwarded whole to the leader as one Produce, and leadership
may change between gathering and appending, so the bound holds on every node. (Every node
of a cluster must run with the same ``max_message_bytes``.)

Idempotent producer: a request with ``producer_id`` (1..64 bytes) and ``sequence`` (>= 1)
goes to ``append_idempotent`` of the log (:class:`IdempotentLog`); a retry of an appended
pair is answered with the first offsets and ``duplicate = true``. On a ProduceStream such
a request is appended on its own (no group commit with its neighbours): its pair decides
alone whether it is appended.

Consume path (ConsumeStream): read from the offset in batches until caught up, then sleep
in ``CommitLog.wait_for`` (woken by appends, no polling) and go on. The stream ends when
the client cancels, or with UNAVAILABLE as soon as the server begins to shut down (the
shutdown wakes sleeping streams too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.distributed.forwarding import forwarded_call
from raftlog.distributed.topics import PartitionLeader
from raftlog.domain.errors import (
    DataLossError,
    DeadlineError,
    DomainError,
    InvalidArgumentError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    StorageError,
    UnavailableError,
    UnknownTopicError,
    UnsupportedError,
)
from raftlog.domain.producers import producer_id_problem
from raftlog.domain.protocols import Appended, CommitLog, IdempotentLog, ServerLister
from raftlog.log import (
    CorruptRecordError,
    DurabilityError,
    LogClosedError,
    LogError,
)
from raftlog.log import OffsetOutOfRangeError as LogOffsetOutOfRangeError
from raftlog.log import RecordTooLargeError as LogRecordTooLargeError
from raftlog.partitions import DEFAULT_TOPIC
from raftlog.server.config import ServerConfig
from raftlog.server.errors import status_for
from raftlog.telemetry import budget

logger = logging.getLogger("raftlog.server")

#: How long GetPartitions waits for each other node's view of its replicas, seconds.
_PARTITIONS_PEER_TIMEOUT_S = 2.0
#: Records read per batch when a ConsumeStream sends one record per message (book mode).
_BOOK_READ_RECORDS = 256
#: Most records in one batched ConsumeStream message, whatever the client asks.
_MAX_RECORDS_PER_MESSAGE = 65536

#: Where a request goes: (partition number, its log). The default topic's partition 0 is
#: (0, the server's log).
_Target = tuple[int, CommitLog]
#: What the ProduceStream reader hands the appender: (records, bytes counted against the
#: window, producer id, sequence, encoded size of the request, target) of one checked
#: request, the end of the stream (None), or an error.
_Request = tuple[list[bytes], int, str, int, int, _Target]
#: Room kept below the transport limit for what a forwarded Produce adds to the requests'
#: records (its producer fields), bytes.
_FORWARD_HEADROOM_BYTES = 1024
_Item = _Request | Exception | None


def to_api_error(exc: BaseException) -> DomainError:
    """Map a commit-log (or unexpected) error to the API's taxonomy, in one place."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, LogOffsetOutOfRangeError):
        return OffsetOutOfRangeError(exc.offset, exc.lowest, exc.highest)
    if isinstance(exc, LogClosedError):
        return UnavailableError("the log is closed: the server is shutting down")
    if isinstance(exc, LogRecordTooLargeError):
        return InvalidArgumentError(str(exc))
    if isinstance(exc, CorruptRecordError):
        return DataLossError(exc.offset, detail=exc.reason)
    if isinstance(exc, DurabilityError | LogError):
        return StorageError(f"storage error: {exc}")
    if isinstance(exc, TimeoutError):
        return DeadlineError(f"a bounded wait ran out: {exc or 'timeout'}")
    return DomainError("internal error")


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    """End the call with the status of ``exc`` (a rich status with ErrorInfo details)."""
    error = to_api_error(exc)
    if type(error) is DomainError and not isinstance(exc, DomainError):
        logger.exception("unexpected error in a call", exc_info=exc)
    code, message, trailing = status_for(error)
    await context.abort(code, message, trailing_metadata=trailing)


class RecordMetrics(Protocol):
    """Where the service counts records and bytes (the node's metrics): once per request
    or per batch, never per record."""

    def produced(self, records: int, nbytes: int) -> None: ...

    def consumed(self, records: int, nbytes: int) -> None: ...


class PartitionRouter(Protocol):
    """Finds the log of a topic's partition (:class:`raftlog.distributed.topics.Topics`)."""

    def log_for(self, topic: str, partition: int | None, key: bytes) -> tuple[int, CommitLog]:
        """(partition number, this node's replica of it) for ``topic`` ("" = the default
        topic) and ``partition`` or ``key``. Raises a DomainError: UnknownTopicError, or
        NotLeaderError naming a node that hosts the partition when this one does not."""
        ...

    async def leaders(self, topic: str, timeout_s: float) -> tuple[int, list[PartitionLeader]]:
        """The topic's partition count and each partition's leader and replicas."""
        ...


def resolve_target(
    default: CommitLog,
    partitions: PartitionRouter | None,
    topic: str,
    partition: int | None,
    key: bytes,
) -> tuple[int, CommitLog]:
    """(partition number, log) a request names by ``topic`` ("" = the default topic),
    ``partition`` (None: not given) and ``key``: ``default`` (the default topic's
    partition 0) when it names none; with ``partitions`` None (a server without topics),
    the default topic named explicitly, and UNIMPLEMENTED for anything else. The gRPC
    service and the HTTP API both resolve requests here."""
    if not topic and partition is None and not key:
        return 0, default
    if partitions is None:
        if topic in ("", DEFAULT_TOPIC) and not key and not partition:
            return 0, default
        raise UnsupportedError(
            "this server serves the default topic only (no topics, partitions or keys)"
        )
    return partitions.log_for(topic, partition, key)


class _Targeted(Protocol):
    """The request fields that name a topic and partition (Produce, Consume, GetOffsets)."""

    topic: str
    partition: int
    key: bytes

    def HasField(self, field_name: str) -> bool: ...


class LogService(log_pb2_grpc.LogServicer):
    """Serves a :class:`CommitLog` and a :class:`ServerLister` as ``log.v1.Log``.

    ``metrics`` counts the records and bytes produced (acknowledged to a client; a write a
    follower forwarded here was counted by that follower) and consumed. ``partitions``
    serves requests that name a topic, a partition or a key (None: only the default
    topic's partition 0, which is ``commit_log``)."""

    def __init__(
        self,
        commit_log: CommitLog,
        servers: ServerLister,
        config: ServerConfig | None = None,
        metrics: RecordMetrics | None = None,
        partitions: PartitionRouter | None = None,
    ) -> None:
        self._metrics = metrics
        self._partitions = partitions
        self._log = commit_log
        self._idempotent = commit_log if isinstance(commit_log, IdempotentLog) else None
        self._servers = servers
        self.config = config or ServerConfig()
        self.config.validate()
        self._stopping = False
        #: Resolved by begin_shutdown: one future every caught-up ConsumeStream waits on
        #: beside its append wake-up (made on the first such wait, in the serving loop).
        self._stop_waiter: asyncio.Future[None] | None = None

    def begin_shutdown(self) -> None:
        """End every following ConsumeStream now (UNAVAILABLE), waiting ones included."""
        self._stopping = True
        if self._stop_waiter is not None and not self._stop_waiter.done():
            self._stop_waiter.set_result(None)

    async def _barrier(self, context: grpc.aio.ServicerContext[Any, Any], log: CommitLog) -> None:
        """The read barrier of a linearizable read, bounded by ``read_barrier_timeout_s``
        and by the call's own deadline."""
        timeout = self.config.read_barrier_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(remaining, 0.0))
        await log.read_barrier(timeout)

    def _target(self, request: _Targeted) -> _Target:
        """The partition a request names (none named: the default topic's partition 0)."""
        partition = request.partition if request.HasField("partition") else None
        return resolve_target(self._log, self._partitions, request.topic, partition, request.key)

    async def GetPartitions(
        self,
        request: log_pb2.GetPartitionsRequest,
        context: grpc.aio.ServicerContext[
            log_pb2.GetPartitionsRequest, log_pb2.GetPartitionsResponse
        ],
    ) -> log_pb2.GetPartitionsResponse:
        """A topic's partitions with their leaders and replicas."""
        topic = request.topic or DEFAULT_TOPIC
        try:
            if self._partitions is not None:
                count, leaders = await self._partitions.leaders(topic, _PARTITIONS_PEER_TIMEOUT_S)
            elif topic == DEFAULT_TOPIC:
                servers = await self._servers.get_servers()
                leader = next((s for s in servers if s.is_leader), None)
                count = 1
                leaders = [
                    PartitionLeader(
                        partition=0,
                        leader_id=leader.id if leader else "",
                        leader_addr=leader.rpc_addr if leader else "",
                        replica_addrs=tuple(s.rpc_addr for s in servers),
                    )
                ]
            else:
                raise UnknownTopicError(f"topic {topic!r} does not exist", topic)
        except Exception as exc:
            await abort(context, exc)
            raise
        return log_pb2.GetPartitionsResponse(
            topic=topic,
            partitions=count,
            infos=[
                log_pb2.PartitionInfo(
                    partition=p.partition,
                    leader_id=p.leader_id,
                    leader_addr=p.leader_addr,
                    replica_addrs=p.replica_addrs,
                )
                for p in leaders
            ],
        )

    async def _follow(self, log: CommitLog, offset: int) -> None:
        """Sleep until ``offset`` is appended or the server begins shutdown, whichever
        comes first; at most ``follow_recheck_s`` (a safety net, not a polling period)."""
        if self._stop_waiter is None:
            self._stop_waiter = asyncio.get_running_loop().create_future()
        appended = asyncio.ensure_future(log.wait_for(offset, self.config.follow_recheck_s))
        try:
            # asyncio.wait never cancels the shared stop future, only our own task below
            await asyncio.wait((appended, self._stop_waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            appended.cancel()

    # -- validation ------------------------------------------------------------------------

    def _records_of(self, request: log_pb2.ProduceRequest) -> list[bytes]:
        limit = self.config.max_message_bytes
        batch = request.records
        if request.HasField("record"):
            if batch:
                raise InvalidArgumentError(
                    "ProduceRequest sets both record and records: set exactly one"
                )
            value = request.record.value
            if len(value) > limit:
                raise RecordTooLargeError(len(value), limit)
            return [value]
        if not batch:
            raise InvalidArgumentError("ProduceRequest sets neither record nor records")
        values = [r.value for r in batch]
        total = sum(map(len, values))
        if total > limit:
            biggest = max(map(len, values))
            if biggest > limit:
                raise RecordTooLargeError(biggest, limit)
            raise RecordTooLargeError(total, limit, what=f"batch of {len(values)} records")
        return values

    @staticmethod
    def _producer_of(request: log_pb2.ProduceRequest) -> tuple[str, int]:
        """(producer id, sequence) of a request; ("", 0) when it is not idempotent."""
        producer_id, sequence = request.producer_id, request.sequence
        problem = producer_id_problem(producer_id, sequence)
        if problem:
            raise InvalidArgumentError(f"ProduceRequest: {problem}")
        return producer_id, sequence

    async def _append_idempotent(
        self, records: list[bytes], producer_id: str, sequence: int, log: CommitLog
    ) -> Appended:
        idempotent = self._idempotent if log is self._log else log
        if not isinstance(idempotent, IdempotentLog):
            raise UnsupportedError("this server's log does not support idempotent producers")
        return await idempotent.append_idempotent(records, producer_id, sequence)

    def _budget(self, request: log_pb2.ConsumeRequest) -> int:
        asked = request.max_bytes or self.config.consume_max_bytes
        return min(asked, self.config.max_message_bytes)

    # -- unary -----------------------------------------------------------------------------

    async def Produce(
        self,
        request: log_pb2.ProduceRequest,
        context: grpc.aio.ServicerContext[log_pb2.ProduceRequest, log_pb2.ProduceResponse],
    ) -> log_pb2.ProduceResponse:
        """Append one record (book) or a batch (``records``)."""
        budget.mark("handler")
        try:
            records = self._records_of(request)
            producer_id, sequence = self._producer_of(request)
            number, log = self._target(request)
            if producer_id:
                done = await self._append_idempotent(records, producer_id, sequence, log)
                if not done.duplicate:
                    self._count_produced(records)
                return log_pb2.ProduceResponse(
                    offset=done.first,
                    last_offset=done.last,
                    duplicate=done.duplicate,
                    partition=number,
                )
            first, last = await log.append(records)
        except Exception as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises
        self._count_produced(records)
        return log_pb2.ProduceResponse(offset=first, last_offset=last, partition=number)

    def _count_produced(self, records: list[bytes]) -> None:
        """Count an acknowledged write, unless a follower forwarded it (it counted it)."""
        metrics = self._metrics
        if metrics is not None and not forwarded_call.get():
            metrics.produced(len(records), sum(map(len, records)))

    async def Consume(
        self,
        request: log_pb2.ConsumeRequest,
        context: grpc.aio.ServicerContext[log_pb2.ConsumeRequest, log_pb2.ConsumeResponse],
    ) -> log_pb2.ConsumeResponse:
        """Read the record at ``request.offset`` (after a read barrier if linearizable)."""
        try:
            _, log = self._target(request)
            if request.linearizable:
                await self._barrier(context, log)
            value = log.read(request.offset)
        except Exception as exc:
            await abort(context, exc)
            raise
        if self._metrics is not None:
            self._metrics.consumed(1, len(value))
        return log_pb2.ConsumeResponse(record=log_pb2.Record(value=value, offset=request.offset))

    async def GetServers(
        self,
        request: log_pb2.GetServersRequest,
        context: grpc.aio.ServicerContext[log_pb2.GetServersRequest, log_pb2.GetServersResponse],
    ) -> log_pb2.GetServersResponse:
        """The cluster's members, the leader and the learners flagged."""
        try:
            servers = await self._servers.get_servers()
        except Exception as exc:
            await abort(context, exc)
            raise
        return log_pb2.GetServersResponse(
            servers=[
                log_pb2.Server(
                    id=s.id, rpc_addr=s.rpc_addr, is_leader=s.is_leader, is_learner=s.is_learner
                )
                for s in servers
            ]
        )

    async def GetOffsets(
        self,
        request: log_pb2.GetOffsetsRequest,
        context: grpc.aio.ServicerContext[log_pb2.GetOffsetsRequest, log_pb2.GetOffsetsResponse],
    ) -> log_pb2.GetOffsetsResponse:
        """The offsets the log holds now."""
        try:
            _, log = self._target(request)
        except Exception as exc:
            await abort(context, exc)
            raise
        lowest, highest = log.lowest_offset, log.highest_offset
        return log_pb2.GetOffsetsResponse(
            lowest_offset=lowest,
            highest_offset=max(highest, 0),
            next_offset=highest + 1,
            empty=highest < lowest,
        )

    # -- streams ---------------------------------------------------------------------------

    async def ConsumeStream(
        self,
        request: log_pb2.ConsumeRequest,
        context: grpc.aio.ServicerContext[log_pb2.ConsumeRequest, log_pb2.ConsumeResponse],
    ) -> AsyncIterator[log_pb2.ConsumeResponse]:
        """Every record from ``request.offset`` on, then each new one as it is appended.

        Starting past the next offset is OUT_OF_RANGE (a follower starts at most at the
        next offset, where it waits for the next append).
        """
        offset = request.offset
        batched = request.max_records > 0
        max_records = min(request.max_records, _MAX_RECORDS_PER_MESSAGE)
        budget = self._budget(request)
        Record, ConsumeResponse = log_pb2.Record, log_pb2.ConsumeResponse
        metrics = self._metrics
        try:
            _, log = self._target(request)
            if request.linearizable:
                await self._barrier(context, log)
            if offset < log.lowest_offset or offset > log.highest_offset + 1:
                raise OffsetOutOfRangeError(offset, log.lowest_offset, log.highest_offset)
            while True:
                if offset <= log.highest_offset:
                    if batched:
                        values = log.read_batch(offset, budget, max_records)
                        if metrics is not None:
                            metrics.consumed(len(values), sum(map(len, values)))
                        response = ConsumeResponse()
                        add = response.records.add
                        for value in values:
                            add(value=value, offset=offset)
                            offset += 1
                        yield response
                    else:
                        values = log.read_batch(offset, budget, _BOOK_READ_RECORDS)
                        if metrics is not None:
                            metrics.consumed(len(values), sum(map(len, values)))
                        for value in values:
                            yield ConsumeResponse(record=Record(value=value, offset=offset))
                            offset += 1
                    continue
                if self._stopping:
                    raise UnavailableError("the server is shutting down")
                await self._follow(log, offset)
        except (DomainError, LogError) as exc:
            await abort(context, exc)

    async def ProduceStream(
        self,
        request_iterator: AsyncIterator[log_pb2.ProduceRequest],
        context: grpc.aio.ServicerContext[log_pb2.ProduceRequest, log_pb2.ProduceResponse],
    ) -> AsyncIterator[log_pb2.ProduceResponse]:
        """One response per request, in order; consecutive requests share one append."""
        config = self.config
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        window = _ByteWindow(config.produce_stream_window_bytes)
        reader = asyncio.create_task(self._read_into(request_iterator, queue, window))
        max_requests = config.produce_stream_max_requests
        max_bytes = config.produce_stream_max_batch_bytes
        # one append must fit in one Produce to the leader (module docs)
        max_payload = config.max_message_bytes
        max_wire = config.transport_limit_bytes - _FORWARD_HEADROOM_BYTES
        ProduceResponse = log_pb2.ProduceResponse
        held: _Request | None = None  # an idempotent request met while gathering
        try:
            ended = False
            while not ended:
                item: _Item
                if held is not None:
                    item, held = held, None
                else:
                    item = await queue.get()
                if item is None:
                    break
                if isinstance(item, Exception):
                    raise item
                records, size, producer_id, sequence, wire, target = item
                number, log = target
                if producer_id:
                    done = await self._append_idempotent(records, producer_id, sequence, log)
                    if not done.duplicate:
                        self._count_produced(records)
                    window.release(size)
                    yield ProduceResponse(
                        offset=done.first,
                        last_offset=done.last,
                        duplicate=done.duplicate,
                        partition=number,
                    )
                    continue
                # Gather what is queued already: one append, one fsync for all of it.
                counts = [len(records)]
                taken = size
                payload = size - _REQUEST_OVERHEAD_BYTES
                pending: Exception | None = None
                while len(counts) < max_requests and taken < max_bytes and not queue.empty():
                    nxt = queue.get_nowait()
                    if nxt is None or isinstance(nxt, Exception):
                        ended, pending = True, nxt
                        break
                    more = nxt[1] - _REQUEST_OVERHEAD_BYTES
                    if (
                        nxt[2]
                        or payload + more > max_payload
                        or wire + nxt[4] > max_wire
                        or nxt[5][1] is not log
                    ):
                        held = nxt  # appended on its own or heads the next append
                        break
                    records.extend(nxt[0])  # a fresh list per request: ours to extend
                    counts.append(len(nxt[0]))
                    taken += nxt[1]
                    payload += more
                    wire += nxt[4]
                first, _ = await log.append(records)
                self._count_produced(records)
                window.release(taken)
                for n in counts:
                    yield ProduceResponse(offset=first, last_offset=first + n - 1, partition=number)
                    first += n
                if pending is not None:
                    raise pending
        except Exception as exc:
            await abort(context, exc)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read_into(
        self,
        requests: AsyncIterator[log_pb2.ProduceRequest],
        queue: asyncio.Queue[_Item],
        window: _ByteWindow,
    ) -> None:
        """Read and check the client's requests into ``queue``, within the byte window.

        Ends with None (the client half-closed) or an error (a bad request, a broken
        stream); requests after a bad one are not read.
        """
        limit = self.config.max_message_bytes
        put = queue.put_nowait
        default: _Target = (0, self._log)
        try:
            async for request in requests:
                # the book's request (one record, not idempotent) checked inline: the
                # same checks as _records_of and _producer_of, without their calls
                if (
                    not request.producer_id
                    and not request.sequence
                    and not request.records
                    and not request.topic
                    and not request.key
                    and request.HasField("record")
                    and not request.HasField("partition")
                ):
                    value = request.record.value
                    if len(value) > limit:
                        raise RecordTooLargeError(len(value), limit)
                    records = [value]
                    size = _REQUEST_OVERHEAD_BYTES + len(value)
                    producer_id, sequence = "", 0
                    target = default
                else:
                    records = self._records_of(request)
                    producer_id, sequence = self._producer_of(request)
                    size = _REQUEST_OVERHEAD_BYTES + sum(map(len, records))
                    target = self._target(request)
                if not window.take(size):  # waits only when the window is full
                    await window.acquire(size)
                put((records, size, producer_id, sequence, request.ByteSize(), target))
        except Exception as exc:
            put(exc)
            return
        put(None)


#: What one queued request counts against a ProduceStream's byte window besides its
#: payload (bytes): bounds the number of tiny requests read ahead as well.
_REQUEST_OVERHEAD_BYTES = 256


class _ByteWindow:
    """How many bytes a ProduceStream may hold read-ahead; one acquirer (its reader)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    def take(self, n: int) -> bool:
        """Take ``n`` bytes if they fit now (a lone request always fits); else False."""
        if self.used and self.used + n > self.limit:
            return False
        self.used += n
        return True

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` more bytes fit (a lone request always fits), then take them."""
        while self.used and self.used + n > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += n

    def release(self, n: int) -> None:
        """Give back ``n`` bytes (their requests were appended)."""
        self.used -= n
        self._freed.set()

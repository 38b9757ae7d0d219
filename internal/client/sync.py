"""``SyncLogClient``: the client's calls for scripts that have no event loop.

The choice: one private event loop in a daemon thread per ``SyncLogClient``, running one
:class:`~raftlog.client.LogClient`. Each call hands its coroutine to that loop and waits for
the result. The alternative, ``asyncio.run`` per call, would open new channels (a TLS
handshake) and re-learn the cluster on every call, since grpc.aio channels belong to one
loop; the private loop keeps them, the leader and the batcher alive between calls.

Calls are thread-safe (several threads may share one client: their ``produce()`` calls
are batched together). Every call is bounded by the client's own deadlines
(``ClientConfig.request_timeout_s``); ``close()`` (or leaving ``with``) stops the thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Generator, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

import grpc

from raftlog.client.client import LogClient, Offsets, PartitionOffset, Produced, Record
from raftlog.client.config import ClientConfig
from raftlog.client.resolver import ServerInfo
from raftlog.client.topics import TopicPartitions
from raftlog.security.tls import TLSConfig

T = TypeVar("T")

#: Seconds ``close()`` waits for the loop thread to end after the client closed.
THREAD_JOIN_S = 5.0


async def _next_batch(agen: AsyncIterator[list[Record]]) -> list[Record] | None:
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        return None


class SyncLogClient:
    """Blocking twin of :class:`LogClient` (same arguments, same errors).

    ::

        with SyncLogClient("127.0.0.1:8400", tls=tls) as client:
            offset = client.produce(b"hello")
            for record in client.stream(0):
                ...
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
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="raftlog-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._client = LogClient(
                addrs, tls=tls, config=config, insecure=insecure, interceptors=interceptors
            )
            self._call(self._client.start())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def producer_id(self) -> str:
        """The idempotent producer id of this client ("" when idempotence is off)."""
        return self._client.producer_id

    @property
    def client(self) -> LogClient:
        """The asyncio client underneath (use it only from its loop: :meth:`run`)."""
        return self._client

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the client's loop and wait for its result."""
        return self._call(coro)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt in the waiting thread: stop the call too
            raise

    def produce(self, value: bytes) -> int:
        """Append one record; returns its offset (calls from several threads are batched)."""
        return self._call(self._client.produce(value))

    def produce_batch(self, values: Sequence[bytes]) -> list[int]:
        """Append ``values`` atomically at consecutive offsets; returns the offsets."""
        return self._call(self._client.produce_batch(values))

    def consume(self, offset: int, *, linearizable: bool = False) -> Record:
        """The record at ``offset`` (see :meth:`LogClient.consume`)."""
        return self._call(self._client.consume(offset, linearizable=linearizable))

    def stream(
        self, from_offset: int = 0, *, linearizable: bool = False
    ) -> Generator[Record, None, None]:
        """Records from ``from_offset`` on, following new ones (see :meth:`LogClient.stream`).

        Fetches a batch at a time from the loop thread; closing the iterator (``break``
        in a ``for`` loop, then garbage collection, or ``.close()``) ends the stream.
        """
        for batch in self.stream_batches(from_offset, linearizable=linearizable):
            yield from batch

    def stream_batches(
        self, from_offset: int = 0, *, linearizable: bool = False
    ) -> Generator[list[Record], None, None]:
        """Like :meth:`stream`, a batch at a time."""
        return self._batches(self._client.stream_batches(from_offset, linearizable=linearizable))

    def _batches(self, agen: AsyncIterator[list[Record]]) -> Generator[list[Record], None, None]:
        """The batches of ``agen`` (an async generator on the loop), fetched one at a time."""
        try:
            while True:
                batch = self._call(_next_batch(agen))
                if batch is None:
                    return
                yield batch
        finally:
            if not self._closed and self._loop.is_running():
                self._call(agen.aclose())  # type: ignore[attr-defined]

    # -- topics and partitions -------------------------------------------------------------

    def partitions(self, topic: str = "") -> TopicPartitions:
        """The topic's partitions, leaders and replicas, asked now (see
        :meth:`LogClient.partitions`)."""
        return self._call(self._client.partitions(topic))

    def partition_for(self, topic: str, key: bytes | None) -> int:
        """The partition ``key`` picks in ``topic`` (see :meth:`LogClient.partition_for`)."""
        return self._call(self._client.partition_for(topic, key))

    def produce_to(
        self,
        topic: str,
        values: Sequence[bytes],
        *,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> Produced:
        """Append ``values`` atomically to one partition of ``topic`` (see
        :meth:`LogClient.produce_to`)."""
        return self._call(self._client.produce_to(topic, values, key=key, partition=partition))

    def produce_keyed(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes]]
    ) -> list[PartitionOffset]:
        """Append (key, value) records, one request per partition, concurrently (see
        :meth:`LogClient.produce_keyed`)."""
        return self._call(self._client.produce_keyed(topic, records))

    def consume_from(
        self, topic: str, partition: int, offset: int, *, linearizable: bool = False
    ) -> Record:
        """The record at ``offset`` of a topic's partition (see :meth:`LogClient.consume_from`)."""
        return self._call(
            self._client.consume_from(topic, partition, offset, linearizable=linearizable)
        )

    def partition_offsets(self, topic: str, partition: int) -> Offsets:
        """The offsets a topic's partition holds now, as its leader sees them."""
        return self._call(self._client.partition_offsets(topic, partition))

    def stream_from(
        self, topic: str, partition: int, from_offset: int = 0, *, linearizable: bool = False
    ) -> Generator[Record, None, None]:
        """Records of one partition from ``from_offset`` on (see :meth:`stream`)."""
        for batch in self.stream_batches_from(
            topic, partition, from_offset, linearizable=linearizable
        ):
            yield from batch

    def stream_batches_from(
        self, topic: str, partition: int, from_offset: int = 0, *, linearizable: bool = False
    ) -> Generator[list[Record], None, None]:
        """Like :meth:`stream_from`, a batch at a time."""
        return self._batches(
            self._client.stream_batches_from(
                topic, partition, from_offset, linearizable=linearizable
            )
        )

    def servers(self) -> list[ServerInfo]:
        """The cluster's members, asked now."""
        return self._call(self._client.servers())

    def offsets(self) -> Offsets:
        """The offsets the leader's log holds now."""
        return self._call(self._client.offsets())

    def close(self) -> None:
        """Close the client (flushing queued produces) and stop the loop thread. Idempotent."""
        if self._closed:
            return
        try:
            self._call(self._client.close())
        finally:
            self._closed = True
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(THREAD_JOIN_S)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> SyncLogClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

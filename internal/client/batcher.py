"""Automatic batching: concurrent ``produce()`` calls coalesced into batch requests.

::

    produce(v) ─┐                       full (records or bytes) ─┐
    produce(v) ─┼─> open batch ──────── or linger_s elapsed ─────┴─> send task ──> Produce
    produce(v) ─┘   (values, futures)                                 (≤ max_in_flight)
         ^                                                                  │ first..last
         └──────── each future gets first + its index in the batch ─────────┘

A batch is one atomic ProduceRequest: its records get consecutive offsets, and a failure
(after the client's retries) fails every ``produce()`` of that batch with the same error.
A value larger than ``batch_max_bytes`` goes alone. ``buffer_max_bytes`` bounds what waits:
callers beyond it wait for room. Order: records of one batch keep the order of their
``produce()`` calls; batches in flight together may commit in any order (a caller that needs
order awaits each ``produce()`` before the next, or uses ``produce_batch``).

Each batch is one produce request with its own sequence number (the idempotent producer):
the client's retries of a batch reuse it, so a batch is appended once however often it is
retried.

A caller that is cancelled while waiting does not withdraw its record: it may still be
appended (the batch cannot be edited once sent).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from raftlog.client.config import ClientConfig
from raftlog.client.errors import ClientClosedError

#: Sends one batch (with retries); returns the offset of its first record.
SendBatch = Callable[[Sequence[bytes]], Awaitable[int]]


class Batcher:
    """Coalesces single records into batches; owned by one ``LogClient``."""

    def __init__(self, send: SendBatch, config: ClientConfig) -> None:
        self._send = send
        self._config = config
        self._values: list[bytes] = []
        self._futures: list[asyncio.Future[int]] = []
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._slots = asyncio.Semaphore(config.max_in_flight_batches)
        self._tasks: set[asyncio.Task[None]] = set()
        self._buffered = 0
        self._room: list[asyncio.Future[None]] = []
        self._closed = False
        #: Batches sent (handed to ``send``), and the records in them: for stats and tests.
        self.batches_sent = 0
        self.records_sent = 0
        #: Times a caller of ``add`` waited for room (``buffer_max_bytes`` was reached).
        self.buffer_waits = 0

    async def add(self, value: bytes) -> int:
        """Queue ``value``; return its offset once its batch is committed."""
        if self._closed:
            raise ClientClosedError("the client is closed")
        size = len(value)
        limit = self._config.buffer_max_bytes
        while self._buffered + size > limit and self._buffered > 0:
            room = asyncio.get_running_loop().create_future()
            self._room.append(room)
            self.buffer_waits += 1
            await room
            if self._closed:
                raise ClientClosedError("the client is closed")
        config = self._config
        if size >= config.batch_max_bytes:
            # too big to share a batch: send it alone (the open batch keeps its place)
            self._buffered += size
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._launch([value], [future], size)
            return await future
        if self._bytes + size > config.batch_max_bytes:
            self._flush()
        future = asyncio.get_running_loop().create_future()
        self._values.append(value)
        self._futures.append(future)
        self._bytes += size
        self._buffered += size
        if len(self._values) >= config.batch_max_records or self._bytes >= config.batch_max_bytes:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(config.linger_s, self._flush)
        return await future

    def _flush(self) -> None:
        """Send the open batch now (called when it is full, or by the linger timer)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._values:
            return
        values, futures, size = self._values, self._futures, self._bytes
        self._values, self._futures, self._bytes = [], [], 0
        self._launch(values, futures, size)

    def _launch(self, values: list[bytes], futures: list[asyncio.Future[int]], size: int) -> None:
        task = asyncio.create_task(self._run(values, futures, size), name="raftlog-batch")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, values: list[bytes], futures: list[asyncio.Future[int]], size: int
    ) -> None:
        try:
            async with self._slots:
                self.batches_sent += 1
                self.records_sent += len(values)
                first = await self._send(values)
        except BaseException as exc:
            error = exc
            if isinstance(exc, asyncio.CancelledError):
                error = ClientClosedError("the client was closed before the batch was answered")
            for future in futures:
                if not future.done():
                    future.set_exception(error)
                    # the caller may be gone (cancelled); do not warn about unretrieved errors
                    future.exception()
            if not isinstance(exc, Exception | asyncio.CancelledError):
                raise
        else:
            for i, future in enumerate(futures):
                if not future.done():
                    future.set_result(first + i)
        finally:
            self._release(size)

    def _release(self, size: int) -> None:
        self._buffered -= size
        waiters, self._room = self._room, []
        for room in waiters:
            if not room.done():
                room.set_result(None)

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes of records queued or in flight (not yet answered)."""
        return self._buffered

    async def close(self, timeout_s: float) -> None:
        """Send what is queued, wait up to ``timeout_s`` for answers, then fail the rest."""
        if self._closed:
            return
        self._closed = True
        self._flush()
        tasks = list(self._tasks)
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=timeout_s)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._release(0)

"""InstallSnapshot in chunks: the leader's :class:`SnapshotSender` streams a stored snapshot
to one follower, whose :class:`SnapshotReceiver` writes it into its snapshot store.

The protocol over the node's transport (payload kinds in :mod:`raftlog.raft.codec`)::

    leader                                        follower
      C chunk(meta, offset=0, data, done=False)  ->  create an incoming snapshot, write
                                                 <-  K ack(next_offset=len, ok)
      C chunk(offset=len, ...)                   ->  write ...
      C chunk(..., done=True)                    ->  write, commit, step a SNAPSHOT message
                                                 <-  K ack(next_offset=size, ok)

One chunk is in flight at a time. The sender resends a chunk whose acknowledgement does not
come within ``ack_timeout`` (up to ``attempts`` sends) and gives up when the follower refuses
(``ok`` False or an unexpected offset); it then reports the outcome to the core, which
retries the whole snapshot later. The receiver acknowledges a resent chunk it already holds
again, refuses a gap, and drops a stream that stays idle for ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass

from raftlog.raft.codec import (
    KIND_CHUNK,
    KIND_CHUNK_ACK,
    ChunkAck,
    encode_chunk_ack,
    encode_snapshot_chunk,
    encode_snapshot_meta,
)
from raftlog.raft.stats import NodeStats
from raftlog.raft.storage import IncomingSnapshot, SnapshotStorage
from raftlog.raft.transport import Transport
from raftlog.raft.types import Message, NodeId, SnapshotChunk, SnapshotMeta

log = logging.getLogger("raftlog.raft.node")

#: Bytes of a stored snapshot's data handed to ``stream_for`` (its head, where a snapshot
#: by reference keeps its metadata).
HEAD_BYTES = 1 << 20

#: ``stream_for(head, resume, peer)``: what to send instead of the stored data (see
#: ``raftlog.raft.fsm.CatchUpStateMachine.snapshot_stream``).
StreamFor = Callable[[bytes, int, NodeId], Iterator[bytes] | None]


class SnapshotSender:
    """Streams snapshots to followers, one stream per follower at a time.

    ``report(to, ok)`` is called when a stream ends (the node hands it to
    ``core.report_snapshot``). Sizes in bytes, times in seconds.
    """

    def __init__(
        self,
        node_id: NodeId,
        transport: Transport,
        store: SnapshotStorage,
        stats: NodeStats,
        report: Callable[[NodeId, bool], None],
        *,
        chunk_bytes: int,
        ack_timeout: float,
        attempts: int,
        stream_for: StreamFor | None = None,
    ) -> None:
        self.id = node_id
        self._stream_for = stream_for
        self._transport = transport
        self._store = store
        self._stats = stats
        self._report = report
        self._chunk_bytes = chunk_bytes
        self._ack_timeout = ack_timeout
        self._attempts = attempts
        self._senders: dict[NodeId, asyncio.Task[None]] = {}
        self._ack_waiters: dict[NodeId, tuple[int, asyncio.Future[tuple[int, bool, int]]]] = {}

    def tasks(self) -> set[asyncio.Task[None]]:
        """Streams running now (the node cancels them on close)."""
        return set(self._senders.values())

    def send(self, m: Message) -> None:
        """A SNAPSHOT message from the core: stream ``m.snapshot`` to ``m.dst`` unless a
        stream to it is already running."""
        running = self._senders.get(m.dst)
        if running is not None and not running.done():
            return
        assert m.snapshot is not None
        task = asyncio.create_task(
            self._stream(m.dst, m.snapshot, m.term),
            name=f"raft-snapshot-send {self.id}->{m.dst}",
        )
        self._senders[m.dst] = task

    def on_ack(self, ack: ChunkAck) -> None:
        """A chunk acknowledgement arrived: wake the stream waiting for it."""
        if ack.dst != self.id:
            return
        waiter = self._ack_waiters.get(ack.src)
        if waiter is not None and waiter[0] == ack.index and not waiter[1].done():
            waiter[1].set_result((ack.next_offset, ack.ok, ack.resume))

    async def _stream(self, to: NodeId, meta: SnapshotMeta, term: int) -> None:
        ok = False
        try:
            ok = await self._stream_chunks(to, meta, term)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("raft node %s: snapshot stream to %s failed: %s", self.id, to, exc)
        finally:
            self._ack_waiters.pop(to, None)
            if self._senders.get(to) is asyncio.current_task():
                del self._senders[to]
            if ok:
                self._stats.snapshots_sent += 1
            else:
                self._stats.snapshot_send_failures += 1
            self._report(to, ok)

    async def _stream_chunks(self, to: NodeId, meta: SnapshotMeta, term: int) -> bool:
        stored = await self._store.find(meta.index, meta.term)
        if stored is None:
            log.warning("raft node %s: no stored snapshot at %d for %s", self.id, meta.index, to)
            return False
        if self._stream_for is not None:
            reader = await self._store.open_chunks(stored.id)
            try:
                head = await reader.read(HEAD_BYTES)
            finally:
                await reader.close()
            # A first, empty chunk: the follower answers with its resume point.
            hello = SnapshotChunk(self.id, to, term, meta, 0, b"", False)
            answer = await self._send_chunk(to, meta, hello, 0)
            if answer is None:
                return False
            stream = self._stream_for(head, max(answer, 0), to)
            if stream is not None:
                return await self._stream_iter(to, meta, term, stream)
        reader = await self._store.open_chunks(stored.id)
        try:
            offset = 0
            while True:
                data = await reader.read(self._chunk_bytes)
                done = offset + len(data) >= stored.size
                chunk = SnapshotChunk(self.id, to, term, meta, offset, data, done)
                if await self._send_chunk(to, meta, chunk, offset + len(data)) is None:
                    return False
                self._stats.snapshot_bytes_sent += len(data)
                offset += len(data)
                if done:
                    return True
        finally:
            await reader.close()

    async def _stream_iter(
        self, to: NodeId, meta: SnapshotMeta, term: int, stream: Iterator[bytes]
    ) -> bool:
        """Send what ``stream`` yields (read in a worker thread, a chunk at a time), cut to
        ``chunk_bytes``; the last chunk is marked done."""

        def pieces() -> Generator[bytes, None, None]:
            for block in stream:
                view = memoryview(block)
                for at in range(0, len(view), self._chunk_bytes):
                    yield bytes(view[at : at + self._chunk_bytes])

        it = pieces()
        try:
            ahead = await asyncio.to_thread(next, it, None)
            offset = 0
            while True:
                data = ahead if ahead is not None else b""
                ahead = await asyncio.to_thread(next, it, None) if ahead is not None else None
                done = ahead is None
                chunk = SnapshotChunk(self.id, to, term, meta, offset, data, done)
                if await self._send_chunk(to, meta, chunk, offset + len(data)) is None:
                    return False
                self._stats.snapshot_bytes_sent += len(data)
                offset += len(data)
                if done:
                    return True
        finally:
            await asyncio.to_thread(it.close)
            close = getattr(stream, "close", None)
            if close is not None:
                await asyncio.to_thread(close)

    async def _send_chunk(
        self, to: NodeId, meta: SnapshotMeta, chunk: SnapshotChunk, want: int
    ) -> int | None:
        """Send ``chunk`` until acknowledged at ``want`` (up to ``attempts`` sends); the
        follower's resume point (-1 if none), or None when it refused or never answered."""
        loop = asyncio.get_running_loop()
        payload = bytes([KIND_CHUNK]) + encode_snapshot_chunk(chunk)
        for _attempt in range(self._attempts):
            fut: asyncio.Future[tuple[int, bool, int]] = loop.create_future()
            self._ack_waiters[to] = (meta.index, fut)
            self._transport.send(to, payload)
            try:
                async with asyncio.timeout(self._ack_timeout):
                    nxt, good, resume = await fut
            except TimeoutError:
                continue
            if not good or nxt != want:
                log.info(
                    "raft node %s: %s refused snapshot chunk at %d (expects %d)",
                    self.id,
                    to,
                    chunk.offset,
                    nxt,
                )
                return None
            return resume
        return None


@dataclass
class _Receiving:
    """A snapshot being received from one leader."""

    queue: asyncio.Queue[SnapshotChunk]
    task: asyncio.Task[None] | None = None


class SnapshotReceiver:
    """Receives snapshot streams, one per sending leader.

    ``installed(src, term, meta)`` is called once a snapshot is complete and durable in the
    store (the node steps it into the core as a SNAPSHOT message); ``stopping()`` says the
    node is closing (a stream then ends without installing).
    """

    def __init__(
        self,
        node_id: NodeId,
        transport: Transport,
        store: SnapshotStorage,
        stats: NodeStats,
        *,
        installed: Callable[[NodeId, int, SnapshotMeta], None],
        stopping: Callable[[], bool],
        idle_timeout: float,
        admit: Callable[[SnapshotChunk], bool] = lambda _c: True,
        resume: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.id = node_id
        #: The state machine's resume point, sent back with every acknowledgement.
        self._resume = resume
        #: Whether a chunk may start or feed a stream: the node refuses chunks of a stale
        #: term or of a snapshot it already holds (else such a peer could make it commit a
        #: snapshot to its store, which a restart would restore from).
        self._admit = admit
        self._transport = transport
        self._store = store
        self._stats = stats
        self._installed = installed
        self._stopping = stopping
        self._idle_timeout = idle_timeout
        self._receiving: dict[NodeId, _Receiving] = {}

    def tasks(self) -> set[asyncio.Task[None]]:
        """Streams being received now (the node cancels them on close)."""
        return {r.task for r in self._receiving.values() if r.task is not None}

    def on_chunk(self, c: SnapshotChunk) -> None:
        """A chunk arrived: hand it to the stream of its sender (started if needed)."""
        if c.dst != self.id or not self._admit(c):
            self._stats.bad_payloads += 1
            return
        rx = self._receiving.get(c.src)
        if rx is None or rx.task is None or rx.task.done():
            rx = _Receiving(asyncio.Queue(maxsize=16))
            rx.task = asyncio.create_task(
                self._receive(c.src, rx), name=f"raft-snapshot-recv {c.src}->{self.id}"
            )
            self._receiving[c.src] = rx
        with contextlib.suppress(asyncio.QueueFull):
            rx.queue.put_nowait(c)

    def _ack(
        self, src: NodeId, meta: SnapshotMeta, next_offset: int, ok: bool, resume: int = -1
    ) -> None:
        ack = ChunkAck(self.id, src, meta.index, meta.term, next_offset, ok, resume)
        self._transport.send(src, bytes([KIND_CHUNK_ACK]) + encode_chunk_ack(ack))

    async def _resume_point(self) -> int:
        if self._resume is None:
            return -1
        try:
            return max(-1, await self._resume())
        except Exception as exc:  # the leader then sends everything
            log.warning("raft node %s: no resume point for a snapshot: %s", self.id, exc)
            return -1

    async def _receive(self, src: NodeId, rx: _Receiving) -> None:
        store = self._store
        sink: IncomingSnapshot | None = None
        key: tuple[int, int, int] | None = None
        expected = 0
        resume = -1
        try:
            while not self._stopping():
                try:
                    async with asyncio.timeout(self._idle_timeout):
                        c = await rx.queue.get()
                except TimeoutError:
                    return
                ckey = (c.meta.index, c.meta.term, c.term)
                if c.offset == 0 and (ckey != key or expected != 0):
                    if sink is not None:
                        sink.abort()
                    sink = await store.create(
                        c.meta.index, c.meta.term, encode_snapshot_meta(c.meta)
                    )
                    key, expected = ckey, 0
                    resume = await self._resume_point()
                if ckey != key or sink is None or c.offset > expected:
                    self._ack(src, c.meta, expected, False)
                    continue
                if c.offset < expected:  # a resend of a chunk we have: acknowledge again
                    self._ack(src, c.meta, expected, True, resume)
                    continue
                if c.data:
                    await sink.write(c.data)
                expected += len(c.data)
                self._stats.snapshot_bytes_received += len(c.data)
                if c.done:
                    done_sink, sink, key = sink, None, None
                    await done_sink.commit()
                    self._stats.snapshots_received += 1
                    if not self._stopping():
                        self._installed(src, c.term, c.meta)
                self._ack(src, c.meta, expected, True, resume)
                if c.done:
                    expected = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("raft node %s: receiving a snapshot from %s failed: %s", self.id, src, exc)
        finally:
            if sink is not None:
                sink.abort()
            if self._receiving.get(src) is rx:
                del self._receiving[src]


__all__ = ["SnapshotReceiver", "SnapshotSender"]

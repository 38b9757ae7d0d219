"""The client's per-topic metadata: how many partitions a topic has and who leads each.

A topic's partitions are led by different nodes, so the cluster-wide leader of the
resolver says nothing about where a partition's write should go. The cache keeps one
GetPartitions answer per topic::

    produce_to / produce_keyed / consume_from ──> TopicCache.get(topic) ──GetPartitions──┐
          │  NOT_LEADER + hint: note_leader() now, refresh in the background            │
          │  UNAVAILABLE / timeout / unknown leader / unexpected partition: invalidate()│
          └────────────── partition -> leader_addr, replica_addrs <──────────────────────┘

An entry older than ``refresh_interval_s`` is refreshed in the background when next used.
Between refreshes a NOT_LEADER answer's hint overrides the cached leader of that partition
(fresher than the last answer; cleared by the next refresh). Refreshes are single-flight per
topic, and error-triggered ones are at least ``ClientConfig.min_refresh_interval_s`` apart
(a burst of failing calls causes one GetPartitions, not hundreds). A refresh that fails
keeps the entry it had: a stale leader is still a good first guess, since every replica
of a partition forwards its writes to the leader.

The cache does no routing itself: :mod:`raftlog.client.client` reads it. It holds no
channel; it asks through the ``fetch`` function the client gives it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from raftlog.client.config import ClientConfig
from raftlog.client.errors import ClientError, UnknownTopicError

logger = logging.getLogger("raftlog.client")

#: The topic that ``""`` names: the book's single log, one partition, on every node.
DEFAULT_TOPIC = "default"


def topic_name(topic: str) -> str:
    """``topic`` as the servers name it (``""`` is the default topic)."""
    return topic or DEFAULT_TOPIC


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition as GetPartitions reports it."""

    partition: int
    #: The leader's node id and rpc address ("" while the partition has no known leader).
    leader_id: str
    leader_addr: str
    #: The rpc addresses of the partition's replicas (voters first); any of them serves
    #: reads and forwards writes to the leader.
    replica_addrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TopicPartitions:
    """A topic's partition count and each partition's leader and replicas."""

    topic: str
    #: The partition count P: keys map to partitions with it (``partition_for_key``).
    count: int
    #: Indexed by partition number (``partitions[p].partition == p``).
    partitions: tuple[PartitionInfo, ...]

    def info(self, partition: int) -> PartitionInfo | None:
        """Partition ``partition`` (None when the topic has no such partition)."""
        if 0 <= partition < len(self.partitions):
            found = self.partitions[partition]
            if found.partition == partition:
                return found
        return next((p for p in self.partitions if p.partition == partition), None)


#: Asks the cluster for a topic's partitions now (raises a ClientError when it cannot).
Fetch = Callable[[str], Awaitable[TopicPartitions]]


@dataclass
class _Entry:
    meta: TopicPartitions
    #: partition -> leader address named by a NOT_LEADER answer since the last refresh.
    hints: dict[int, str]
    #: Monotonic seconds of the last refresh attempt of this topic.
    refreshed_at: float


class TopicCache:
    """Per-topic partition metadata, filled by GetPartitions; owned by one ``LogClient``.

    Must be used from one event loop. ``fetch`` asks the cluster (one GetPartitions, tried
    on the servers the client knows); the cache decides when to call it.
    """

    def __init__(
        self,
        fetch: Fetch,
        config: ClientConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._config = config
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._tasks: dict[str, asyncio.Task[TopicPartitions]] = {}
        self._soon: dict[str, asyncio.TimerHandle] = {}
        self._closed = False
        #: Completed refreshes (GetPartitions answers applied), over every topic: for tests.
        self.refreshes = 0

    def cached(self, topic: str) -> TopicPartitions | None:
        """The last answer for ``topic`` (None if the client never asked)."""
        entry = self._entries.get(topic_name(topic))
        return entry.meta if entry is not None else None

    def put(self, meta: TopicPartitions) -> None:
        """Replace the entry of ``meta.topic`` (hints dropped). What a refresh does; tests
        use it to make the client's view wrong on purpose."""
        self._entries[meta.topic] = _Entry(meta, {}, self._clock())

    def leader(self, topic: str, partition: int) -> str:
        """The address writes of ``partition`` go to: a fresh NOT_LEADER hint, else the
        last answer's leader ('' when neither names one)."""
        entry = self._entries.get(topic_name(topic))
        if entry is None:
            return ""
        hint = entry.hints.get(partition)
        if hint:
            return hint
        info = entry.meta.info(partition)
        return info.leader_addr if info is not None else ""

    def replicas(self, topic: str, partition: int) -> tuple[str, ...]:
        """The replica addresses of ``partition`` as last learned (empty if unknown)."""
        entry = self._entries.get(topic_name(topic))
        info = entry.meta.info(partition) if entry is not None else None
        return info.replica_addrs if info is not None else ()

    def note_leader(self, topic: str, partition: int, addr: str) -> None:
        """A server named ``addr`` for ``partition``: send its writes there until the next
        refresh, which is scheduled now (the hint may name a replica, not the leader)."""
        entry = self._entries.get(topic_name(topic))
        if entry is not None and addr:
            entry.hints[partition] = addr
        self.invalidate(topic)

    async def get(self, topic: str) -> TopicPartitions:
        """The topic's partitions: the cached answer (an entry an error made stale is being
        refreshed in the background meanwhile: a call does not wait for it), else asked
        now; then the fetch's ClientError is raised if it fails. An entry older than
        ``refresh_interval_s`` is refreshed in the background too: leaders also move
        without any error showing it (a replica forwards writes to the new leader, one hop
        more per write)."""
        name = topic_name(topic)
        entry = self._entries.get(name)
        if entry is None:
            return await self.refresh(name)
        if self._clock() - entry.refreshed_at >= self._config.refresh_interval_s:
            self.invalidate(name)
        return entry.meta

    async def refresh(self, topic: str) -> TopicPartitions:
        """Ask the cluster now (sharing a refresh of this topic already running)."""
        name = topic_name(topic)
        if self._closed:
            raise ClientError("the client is closed")
        task = self._tasks.get(name)
        if task is None or task.done():
            task = asyncio.create_task(self._refresh_once(name), name=f"raftlog-partitions-{name}")
            self._tasks[name] = task
        # shield: one caller giving up must not cancel the refresh the others wait on
        return await asyncio.shield(task)

    async def _refresh_once(self, name: str) -> TopicPartitions:
        entry = self._entries.get(name)
        if entry is not None:
            entry.refreshed_at = self._clock()
        try:
            meta = await self._fetch(name)
        except UnknownTopicError:
            self.forget(name)  # deleted: the next call asks again (and is told NOT_FOUND)
            raise
        except ClientError:
            if entry is not None:
                entry.refreshed_at = self._clock()
            raise
        before = entry.meta if entry is not None else None
        self.put(meta)
        self.refreshes += 1
        if before is not None and before.count != meta.count:
            logger.info("topic %r has %d partitions now (was %d)", name, meta.count, before.count)
        return meta

    def invalidate(self, topic: str) -> None:
        """Refresh ``topic`` soon, in the background (rate-limited by
        ``min_refresh_interval_s``); until then calls use what is cached."""
        name = topic_name(topic)
        entry = self._entries.get(name)
        if self._closed or name in self._soon:
            return
        task = self._tasks.get(name)
        if task is not None and not task.done():
            return
        last = entry.refreshed_at if entry is not None else -float("inf")
        wait = max(0.0, last + self._config.min_refresh_interval_s - self._clock())
        loop = asyncio.get_running_loop()
        self._soon[name] = loop.call_later(wait, self._refresh_in_background, name)

    def _refresh_in_background(self, name: str) -> None:
        self._soon.pop(name, None)
        if self._closed:
            return
        task = self._tasks.get(name)
        if task is None or task.done():
            task = asyncio.create_task(self._refresh_once(name), name=f"raftlog-partitions-{name}")
            self._tasks[name] = task
        task.add_done_callback(_swallow)

    def forget(self, topic: str) -> None:
        """Drop the entry of ``topic`` (it does not exist, as far as a server said)."""
        self._entries.pop(topic_name(topic), None)

    async def close(self) -> None:
        """Stop background refreshes. Idempotent."""
        self._closed = True
        for handle in self._soon.values():
            handle.cancel()
        self._soon.clear()
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


def _swallow(task: asyncio.Task[TopicPartitions]) -> None:
    """A background refresh that failed is logged, not raised (the next call retries)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.info("background partitions refresh failed: %s", exc)

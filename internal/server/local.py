"""The single-node :class:`~raftlog.domain.protocols.CommitLog`: the commit log itself.

:class:`LocalLog` wraps :class:`raftlog.log.Log` and adds what the API needs on top of it:
appends return (first, last) and wake every ``wait_for`` waiter, so ConsumeStream followers
sleep until a record arrives instead of polling.

Readers see committed records only: on one node a record is committed once its append has
returned (with ``sync=always``: once it is fsynced). A record written to the file but still
waiting for its fsync is not served, so no reader ever sees a record a crash could take back.

Idempotent producer (:meth:`LocalLog.append_idempotent`): the producer table
(:class:`raftlog.domain.producers.ProducerTable`) lives in memory on a single node. While
the node runs, a retried request gets its first offsets back. A clean :meth:`close` saves
the table beside the segments (``producers.json`` in the log's directory, with the log's
next offset); the next start loads it only if the log still ends at that offset (nothing
appended or lost since), so a clean restart keeps it. After a crash the table is empty: a
retry of a request appended just before the crash is appended again (the same as a
producer the table forgot). The cluster keeps the table in its Raft state machine
instead, so there it survives crashes and failover too. Expiry uses this node's wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from raftlog.domain.errors import UnavailableError
from raftlog.domain.producers import ProducerConfig, ProducerTable
from raftlog.domain.protocols import Appended, ServerInfo
from raftlog.log import Log, OffsetOutOfRangeError
from raftlog.log.fileio import atomic_write

logger = logging.getLogger("raftlog.server")

#: File in the log's directory that holds the producer table across a clean restart.
PRODUCERS_FILE = "producers.json"


def _load_producers(table: ProducerTable, directory: Path, next_offset: int) -> None:
    """Load the table saved by a clean close if the log still ends where it did."""
    path = directory / PRODUCERS_FILE
    try:
        state = json.loads(path.read_bytes())
        if int(state["next_offset"]) != next_offset:
            logger.info("producer table in %s is stale (the log moved on): not loaded", path)
            return
        table.load(state["producers"])
    except FileNotFoundError:
        return
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring unreadable producer table %s: %s", path, exc)


def _save_producers(directory: Path, next_offset: int, producers: object) -> None:
    """Atomically and durably replace the saved table (see :func:`atomic_write`)."""
    body = json.dumps({"next_offset": next_offset, "producers": producers}).encode()
    atomic_write(directory / PRODUCERS_FILE, body)


class LocalLog:
    """A one-node log: every append is committed once the log says it is durable."""

    def __init__(
        self,
        log: Log,
        *,
        node_id: str = "node-0",
        rpc_addr: str = "",
        producers: ProducerConfig | None = None,
    ) -> None:
        self._log = log
        #: The idempotent producers' recent sequences (see the module docs).
        self.producers = ProducerTable(producers)
        _load_producers(self.producers, log.directory, log.next_offset)
        # (producer, sequence) -> the offsets of its append in progress: a retry that
        # arrives while the first attempt still waits for its fsync waits for that one.
        self._in_flight: dict[tuple[str, int], asyncio.Future[tuple[int, int]]] = {}
        self.node_id = node_id
        #: The address clients dial; the agent sets it once the server is bound.
        self.rpc_addr = rpc_addr
        self._closing = False
        # Highest committed offset: every append that returned is durable per the policy,
        # and fsyncs are ordered, so the highest returned offset bounds what is safe.
        self._committed = log.highest_offset
        # One future per "generation" of the log: set (and replaced) on every append, so a
        # waiter wakes once per append batch, whatever the number of records.
        self._changed: asyncio.Future[None] | None = None

    @property
    def log(self) -> Log:
        """The wrapped commit log."""
        return self._log

    def _notify(self) -> None:
        fut, self._changed = self._changed, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def append(self, records: Sequence[bytes]) -> tuple[int, int]:
        """Append a batch and wake the followers; returns (first, last) offsets."""
        first = await self._log.append_batch(records)
        last = first + len(records) - 1
        self._committed = max(self._committed, last)
        self._notify()
        return first, last

    async def append_idempotent(
        self, records: Sequence[bytes], producer_id: str, sequence: int
    ) -> Appended:
        """Append unless (producer_id, sequence) was appended already (then its offsets).

        Raises :class:`raftlog.domain.errors.SequenceTooOldError` for a sequence below the
        producer's window. A failed append is forgotten: its retry appends.
        """
        table = self.producers
        table.advance(int(time.time() * 1000))
        seen = table.check(producer_id, sequence)
        if seen is not None:
            return Appended(seen[0], seen[1], duplicate=True)
        key = (producer_id, sequence)
        pending = self._in_flight.get(key)
        if pending is not None:
            first, last = await asyncio.shield(pending)
            return Appended(first, last, duplicate=True)
        future: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            first, last = await self.append(records)
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
            else:  # cancelled: the waiting retry must not look cancelled itself
                future.set_exception(UnavailableError("the first attempt was cancelled"))
            future.exception()  # nobody may be waiting: no "never retrieved" warning
            raise
        finally:
            del self._in_flight[key]
        table.record(producer_id, sequence, first, last)
        future.set_result((first, last))
        return Appended(first, last)

    def read(self, offset: int) -> bytes:
        """The record at ``offset``; :class:`raftlog.log.OffsetOutOfRangeError` if absent."""
        if offset > self._committed:
            raise OffsetOutOfRangeError(offset, self._log.lowest_offset, self._committed)
        return self._log.read(offset)

    def read_batch(self, offset: int, max_bytes: int, max_records: int) -> list[bytes]:
        """Consecutive committed records from ``offset`` (see :meth:`Log.read_batch`)."""
        if offset > self._committed:
            raise OffsetOutOfRangeError(offset, self._log.lowest_offset, self._committed)
        limit = min(max_records, self._committed - offset + 1)
        return self._log.read_batch(offset, max_bytes, limit)

    @property
    def lowest_offset(self) -> int:
        """The lowest offset the log holds."""
        return self._log.lowest_offset

    @property
    def highest_offset(self) -> int:
        """The highest committed offset (``lowest_offset - 1`` when empty)."""
        return self._committed

    async def wait_for(self, offset: int, timeout_s: float) -> bool:
        """True once ``offset`` is readable; False after ``timeout_s`` seconds or on close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while offset > self._committed:
            remaining = deadline - loop.time()
            if self._closing or remaining <= 0:
                return False
            if self._changed is None:
                self._changed = loop.create_future()
            try:
                # shield: a waiter that times out must not cancel the shared future.
                await asyncio.wait_for(asyncio.shield(self._changed), remaining)
            except TimeoutError:
                return offset <= self._committed
        return True

    async def read_barrier(self, timeout_s: float | None = None) -> int:
        """Nothing to wait for: an append is acknowledged only once it is committed here,
        the only node. Returns the highest committed offset."""
        return self._committed

    async def get_servers(self) -> list[ServerInfo]:
        """This node, as the leader of a cluster of one."""
        return [ServerInfo(id=self.node_id, rpc_addr=self.rpc_addr, is_leader=True)]

    def begin_close(self) -> None:
        """Wake every waiter with False: the node is shutting down."""
        self._closing = True
        self._notify()

    async def close(self) -> None:
        """Wake waiters, sync and close the commit log, then save the producer table."""
        self.begin_close()
        log = self._log
        if log.closed:
            return
        await log.close()
        if len(self.producers):
            state = self.producers.dump()
            try:
                await asyncio.to_thread(_save_producers, log.directory, log.next_offset, state)
            except OSError as exc:  # the table is a convenience: the log is what matters
                logger.warning("could not save the producer table: %s", exc)
        else:
            with contextlib.suppress(FileNotFoundError):
                (log.directory / PRODUCERS_FILE).unlink()

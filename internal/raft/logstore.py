"""The Raft log store: Raft entries kept in the commit-log engine (:class:`raftlog.log.Log`).

Mapping: the entry at Raft index ``i`` is the log record at offset ``i`` (a fresh store
starts at offset 1, Raft's first index), so the index is never stored twice. Each record is
a 10-byte header (format version, term, entry type) followed by the entry's data::

    u8 version (1) | u64 term (big-endian) | u8 EntryType | data ...

What Raft needs beyond an append-only log comes from the engine's contract
(``raftlog.log`` package docstring):

- a conflicting suffix is cut with ``truncate_after`` before the new entries are written
  (:meth:`RaftLogStore.store`);
- entries covered by a snapshot are dropped with ``truncate`` (whole segments only, so some
  entries below the compaction point may stay: :attr:`RaftLogStore.first_index` says what
  is really there);
- a received snapshot replaces the whole log with ``reset`` (:meth:`RaftLogStore.reset`).

Durability is explicit: writes go to the page cache (``append_batch_nosync``) and
:meth:`RaftLogStore.sync` makes every write so far durable with one fsync, in a worker
thread, so the node pays one fsync per Raft round, whatever the number of entries. The
engine's own sync policy is forced to ``NEVER`` for this reason. With ``fsync=False`` the
store never fsyncs (benchmarks and tests that measure without durability).

Not thread-safe: one user (the node's driver) at a time, on the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import struct
from collections.abc import Sequence
from pathlib import Path

from raftlog.log import Log, LogConfig, SyncPolicy
from raftlog.log.config import INDEX_ENTRY_BYTES
from raftlog.log.syncthread import SyncThread
from raftlog.raft.errors import CodecError
from raftlog.raft.types import Entry, EntryType

#: Record header: format version, term, entry type.
_HEADER = struct.Struct(">BQB")
_VERSION = 1
#: Bytes of the header in front of every entry's data.
HEADER_BYTES = _HEADER.size
#: Records asked of the engine per read while loading (bounded memory per call).
_LOAD_BYTES = 8 << 20


class LogStoreError(Exception):
    """The Raft log store was asked something that would break its invariants."""


def encode_record(e: Entry) -> bytes:
    """The stored bytes of entry ``e`` (its index is the record's offset)."""
    return _HEADER.pack(_VERSION, e.term, e.type) + e.data


def decode_record(index: int, record: bytes) -> Entry:
    """The entry stored at ``index`` as ``record``; CodecError if it is not one."""
    if len(record) < HEADER_BYTES:
        raise CodecError(f"log entry {index}: record of {len(record)} bytes is too short")
    version, term, kind = _HEADER.unpack_from(record)
    if version != _VERSION:
        raise CodecError(f"log entry {index}: unknown record version {version}")
    try:
        etype = EntryType(kind)
    except ValueError as exc:
        raise CodecError(f"log entry {index}: unknown entry type {kind}") from exc
    return Entry(term, index, etype, record[HEADER_BYTES:])


#: Segment size of a Raft log: compaction drops whole segments, so small ones keep the
#: Raft log near what Raft still needs (the entries since the last snapshot plus the
#: trailing window), not up to a 64 MiB segment more: with snapshots by reference the
#: commit log is the only long-lived copy of a record.
RAFT_SEGMENT_BYTES = 8 << 20
#: Index slots per Raft log segment.
RAFT_SEGMENT_ENTRIES = 1 << 16


def default_log_config() -> LogConfig:
    """Engine settings for a Raft log: starts at index 1, fsyncs only on request, small
    segments (see :data:`RAFT_SEGMENT_BYTES`)."""
    return LogConfig(
        max_store_bytes=RAFT_SEGMENT_BYTES,
        max_index_bytes=INDEX_ENTRY_BYTES * RAFT_SEGMENT_ENTRIES,
        initial_offset=1,
        sync=SyncPolicy.NEVER,
    )


class RaftLogStore:
    """Raft entries on disk. See the module docstring for the format and the promises.

    Open with :meth:`open` (blocking: the engine verifies its tail; call it in a thread
    from async code). ``fsync`` (default True) makes :meth:`sync` durable.
    """

    def __init__(self, log: Log, *, fsync: bool = True) -> None:
        self.log = log
        self.fsync = fsync
        #: The thread that runs :meth:`sync_exclusive`'s fsyncs (started on first use,
        #: stopped by :meth:`close`).
        self._syncer = SyncThread(f"raft-log-fsync {Path(log.directory).name}")

    @classmethod
    def open(
        cls, directory: str | Path, *, fsync: bool = True, config: LogConfig | None = None
    ) -> RaftLogStore:
        """Open (creating if needed) the store in ``directory``.

        ``config`` tunes the engine (segment sizes; ``initial_offset`` = first index of a
        new store, default 1); its sync policy is replaced by ``NEVER`` (see module docs).
        """
        cfg = config if config is not None else default_log_config()
        cfg = dataclasses.replace(cfg, sync=SyncPolicy.NEVER)
        return cls(Log.open(directory, cfg), fsync=fsync)

    # -- positions ------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        """Index of the oldest entry held (``last_index + 1`` when empty)."""
        return self.log.lowest_offset

    @property
    def last_index(self) -> int:
        """Index of the newest entry held (``first_index - 1`` when empty)."""
        return self.log.highest_offset

    @property
    def next_index(self) -> int:
        """Index the next appended entry must have."""
        return self.log.next_offset

    @property
    def durable_index(self) -> int:
        """Every entry below this index is known to be fsynced."""
        return self.log.durable_offset

    def is_empty(self) -> bool:
        return self.log.next_offset == self.log.lowest_offset

    def describe(self) -> str:
        """The directory of the log, for messages."""
        return str(self.log.directory)

    # -- writes ---------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Write ``entries`` (page cache) right after the last one; they must be contiguous
        and start at :attr:`next_index`. Call :meth:`sync` to make them durable."""
        if not entries:
            return
        if entries[0].index != self.next_index:
            raise LogStoreError(
                f"entries start at index {entries[0].index}, but the log continues at "
                f"{self.next_index}"
            )
        for a, b in itertools.pairwise(entries):
            if b.index != a.index + 1:
                raise LogStoreError(f"entries are not contiguous at {a.index} -> {b.index}")
        self.log.append_batch_nosync([encode_record(e) for e in entries])

    def store(self, entries: Sequence[Entry]) -> None:
        """Raft's append: drop every stored entry at or after ``entries[0].index`` (a new
        leader overwrote that suffix), then write ``entries``."""
        if not entries:
            return
        first = entries[0].index
        if first > self.next_index:
            raise LogStoreError(
                f"entries start at index {first}, leaving a gap after {self.last_index}"
            )
        if first < self.first_index:
            raise LogStoreError(
                f"entries start at index {first}, below the first stored index "
                f"{self.first_index} (compacted)"
            )
        if first <= self.last_index:
            self.log.truncate_after(first - 1)
        self.append(entries)

    async def sync(self) -> None:
        """Make every write so far durable (one fsync in a worker thread; no-op without
        ``fsync``)."""
        if self.fsync:
            await self.log.sync()

    async def sync_exclusive(self) -> None:
        """:meth:`sync` for a caller that does not touch the store until it returns.

        Runs the engine's blocking fsync in the store's own thread
        (:class:`raftlog.log.syncthread.SyncThread`: one hand-off, no task, no executor
        future; about 100 us of event-loop CPU less per call than :meth:`sync`, and 30 us
        less than the default executor, here). Only safe while nothing else reads or writes
        the store meanwhile, which holds for the node's driver (its single user, which
        awaits every round's fsync before the next); use :meth:`sync` anywhere else.
        """
        if self.fsync:
            await self._syncer.run(self.log.sync_blocking)

    async def flush(self) -> None:
        """Make every write so far durable now, even in a store opened with ``fsync``
        off (whose :meth:`sync` does nothing): the agent's interval sync."""
        await self.log.sync()

    def sync_blocking(self) -> None:
        """:meth:`sync` in the calling thread (tools, tests, startup)."""
        if self.fsync:
            self.log.sync_blocking()

    def truncate_after(self, index: int) -> None:
        """Remove every entry above ``index`` (``first_index - 1 <= index``)."""
        self.log.truncate_after(index)

    def compact(self, through: int) -> None:
        """Entries up to ``through`` are covered by a durable snapshot: drop the segments
        that hold only such entries (a few may stay; see :attr:`first_index`)."""
        self.log.truncate(through + 1)

    def reset(self, next_index: int) -> None:
        """Drop every entry; the log continues at ``next_index`` (after an installed
        snapshot that covers ``next_index - 1``)."""
        self.log.reset(next_index)

    # -- reads ----------------------------------------------------------------------------

    def entry(self, index: int) -> Entry:
        """The entry at ``index``; :class:`raftlog.log.OffsetOutOfRangeError` if absent."""
        return decode_record(index, self.log.read(index))

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``, or None if the store does not hold it."""
        if not self.first_index <= index <= self.last_index:
            return None
        return self.entry(index).term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``lo..hi-1``: at least one when ``lo`` is held and ``lo < hi``, then as
        many as keep their data within ``max_bytes`` (no limit if None).
        :class:`raftlog.log.OffsetOutOfRangeError` if ``lo`` is not held."""
        hi = min(hi, self.next_index)
        out: list[Entry] = []
        if lo >= hi:
            self.log.read(lo)  # raise the engine's out-of-range error if lo is not held
            return out
        budget = max_bytes
        at = lo
        while at < hi:
            raw_budget = _LOAD_BYTES if budget is None else budget + HEADER_BYTES * 64
            batch = self.log.read_batch(at, raw_budget, max_records=hi - at)
            for rec in batch:
                e = decode_record(at, rec)
                if budget is not None:
                    if out and len(e.data) > budget:
                        return out
                    budget -= len(e.data)
                out.append(e)
                at += 1
                if budget is not None and budget <= 0:
                    return out
        return out

    def load(self, after: int = 0) -> list[Entry]:
        """Every entry from ``max(after, first_index)`` to the end (startup: the node
        passes its snapshot's index, the only older entry the core wants)."""
        lo = max(after, self.first_index)
        if lo > self.last_index:
            return []
        return self.entries(lo, self.next_index)

    async def load_after(self, after: int) -> list[Entry]:
        """:meth:`load` in a worker thread (startup of an asyncio node)."""
        return await asyncio.to_thread(self.load, after)

    # -- lifecycle ------------------------------------------------------------------------

    async def close(self) -> None:
        """Sync (with ``fsync``) and close. Idempotent."""
        if self.log.closed:
            return
        try:
            await self.sync()
        finally:
            await asyncio.to_thread(self._syncer.stop)
            await self.log.close()

    def close_sync(self) -> None:
        """:meth:`close` without an event loop."""
        if self.log.closed:
            return
        try:
            self.sync_blocking()
        finally:
            self._syncer.stop()
            self.log.close_sync()

"""raftlog.log: the commit log (Store / Index / Segment / Log).

The log-store contract
======================

Every log store raftlog uses (this file-backed :class:`Log`, and any store Raft plugs in
later) keeps these promises; ``tests/log/test_contract.py`` checks them for any store
factory.

Offsets
    Records are opaque ``bytes`` (empty allowed). Each gets an offset, assigned once:
    ``append_batch`` returns the offset of its first record, the others follow densely.
    A batch is all or nothing: if the append raises (a write error, even in the second
    segment of a batch that spans a roll-over), none of its records is readable and the
    next append gets the same first offset.
    The log holds exactly ``lowest_offset..highest_offset``; ``highest_offset ==
    lowest_offset - 1`` when it is empty, and ``next_offset == highest_offset + 1`` always.
    A new log starts at ``LogConfig.initial_offset``. No operation ever reuses an offset
    except ``truncate_after`` (the removed suffix is re-assigned by later appends) and
    ``reset``.

Reads
    ``read(offset)`` returns exactly the bytes appended at that offset, or raises
    :class:`OffsetOutOfRangeError` carrying ``offset``, ``lowest`` and ``highest``.
    ``read_batch(offset, max_bytes)`` returns consecutive records from ``offset``: at least
    one when ``offset`` is in range, never past ``highest_offset``, payload total at most
    ``max_bytes`` unless the first record alone is larger. A record whose checksum fails is
    never returned: :class:`CorruptRecordError` is raised instead.

Truncation
    ``truncate(lowest)`` (retention) removes whole segments whose records are all below
    ``lowest``; it may keep records below ``lowest`` (those sharing a segment with newer
    ones) and never removes a record at or above it. ``truncate_after(offset)`` removes
    every record above ``offset`` (``lowest_offset - 1 <= offset``), after which
    ``next_offset == offset + 1``.

Durability (``LogConfig.sync``)
    ``ALWAYS`` (default): when ``append_batch`` returns, its records are fsynced (store
    data and, for a new segment file, the directory entry); concurrent appenders share one
    fsync (group commit), run in a worker thread so the event loop never blocks on it.
    ``INTERVAL``: records are fsynced within ``sync_interval_s`` of being written.
    ``NEVER``: only explicit ``await sync()`` fsyncs. ``append_batch_nosync`` + ``sync``
    let a caller (Raft) write several batches and pay for one fsync.

Recovery
    ``Log.open`` after any crash (kill -9, power loss, torn writes, flipped bytes) yields a
    log whose records are a prefix of what was written, each intact, offsets dense; under
    ``ALWAYS`` every acknowledged record is in it. A torn or corrupt tail is cut and
    logged (logger ``raftlog.log``); an index that disagrees with its store is rebuilt from
    it; a preallocated index left by a crash is never read as entries. Appends continue at
    ``next_offset``.

Snapshots
    ``reader()`` streams the whole log as bytes (a preamble with the lowest offset, then the
    frames); ``Log.restore(directory, stream)`` rebuilds an identical log from it,
    verifying every checksum.

Lifecycle
    ``await close()`` syncs (unless ``NEVER``) and closes; ``close_sync()`` does the same
    without an event loop. ``remove()`` closes and deletes the directory; ``reset()``
    empties the log and keeps it open. A closed log raises :class:`LogClosedError`.

Errors
    An I/O error while appending leaves no partial frame in the store, but a batch that
    spans segments may be partly written (its first records keep their offsets). A failed
    fsync makes the log refuse further writes (:class:`DurabilityError`): the kernel may
    have dropped the dirty pages.

Not thread-safe: use one log from one thread (the event loop). One open log per directory:
``Log.open`` takes an exclusive ``flock`` on ``LOCK`` in it, across processes.
"""

from raftlog.log.config import LogConfig, SyncPolicy
from raftlog.log.errors import (
    ConfigError,
    CorruptRecordError,
    DurabilityError,
    LogClosedError,
    LogError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    SnapshotFormatError,
)
from raftlog.log.index import Index
from raftlog.log.log import Log
from raftlog.log.segment import RecoveryReport, Segment
from raftlog.log.snapshot import LogReader
from raftlog.log.store import Store

__all__ = [
    "ConfigError",
    "CorruptRecordError",
    "DurabilityError",
    "Index",
    "Log",
    "LogClosedError",
    "LogConfig",
    "LogError",
    "LogReader",
    "OffsetOutOfRangeError",
    "RecordTooLargeError",
    "RecoveryReport",
    "Segment",
    "SnapshotFormatError",
    "Store",
    "SyncPolicy",
]

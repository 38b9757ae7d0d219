"""Log: the ordered segments of one directory, with durability and recovery.

See the package docstring (:mod:`raftlog.log`) for the contract every log store keeps.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from raftlog.log.config import LogConfig, SyncPolicy
from raftlog.log.errors import (
    DurabilityError,
    LogClosedError,
    LogError,
    OffsetOutOfRangeError,
)
from raftlog.log.framing import SMALL_BATCH, encode_small, thread_frame_buffer
from raftlog.log.segment import (
    INDEX_SUFFIX,
    STORE_SUFFIX,
    RecoveryReport,
    Segment,
    remove_files,
)
from raftlog.log.snapshot import LogReader, append_stream, restore_log

logger = logging.getLogger("raftlog.log")

_NO_FLOOR = 1 << 64
#: Default cap on the records one ``read_batch`` returns.
DEFAULT_MAX_RECORDS = 65_536


@dataclass
class _SyncJob:
    """One group-commit fsync: what it covers and the duplicated descriptors it syncs."""

    target: int
    fds: list[int]
    dir_fd: int
    stores: list[tuple[Segment, int]]  # segment, store size the fsync covers
    new_names: list[str]


LOCK_NAME = "LOCK"


def _lock_directory(directory: Path) -> int:
    """Take the directory's exclusive lock (one open Log per directory, across processes)."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogError(f"log directory {directory} is in use by another open Log") from None
    return fd


def _fsync_job(fds: list[int], dir_fd: int) -> None:
    """Runs in a worker thread: fdatasync every store, then the directory if asked."""
    try:
        for fd in fds:
            os.fdatasync(fd)
        if dir_fd >= 0:
            os.fsync(dir_fd)
    finally:
        for fd in fds:
            os.close(fd)
        if dir_fd >= 0:
            os.close(dir_fd)


class Log:
    """An append-only sequence of opaque records addressed by dense offsets.

    Create with :meth:`open`. Not thread-safe: call it from one thread (the event loop);
    only fsyncs run elsewhere, on duplicated file descriptors.
    """

    def __init__(self, directory: Path, config: LogConfig, segments: list[Segment]) -> None:
        self.directory = directory
        self.config = config
        self._segments = segments
        self._bases = [s.base_offset for s in segments]
        self._closed = False
        self._failed: DurabilityError | None = None
        # Group commit state. ``_durable``: every record below this offset is fsynced.
        self._durable = self.next_offset
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._sync_task: asyncio.Task[None] | None = None
        self._dirty: dict[int, Segment] = {}
        self._dir_dirty = False
        self._undurable_names: set[str] = set()
        self._interval_timer: asyncio.TimerHandle | None = None
        # Lowest truncate_after point since the running fsync was prepared: that fsync
        # cannot vouch for records rewritten at or above it.
        self._sync_floor = _NO_FLOOR
        self._lock_fd = -1
        self.recovery: list[RecoveryReport] = []

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls, directory: str | Path, config: LogConfig | None = None, *, trusted_below: int = 0
    ) -> Log:
        """Open (creating if needed) the log in ``directory``, recovering it from a crash.

        Blocking: it reads and verifies the active segment. A torn or corrupt tail is cut
        and logged; an index that does not match its store is rebuilt; segments after a
        hole are removed so that offsets stay dense.

        ``trusted_below`` is a recovery point: every record below it was fsynced (the
        caller checkpointed it durably after an fsync). A sealed segment that ends at or
        below it, whose index file holds exactly its records, is opened without reading
        its store (Kafka's recovery-point checkpoint): recovery work is bounded by what
        was written since the checkpoint, not by the size of the log. Everything after
        the point is verified as without one.
        """
        config = config or LogConfig()
        config.validate()
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock_directory(path)
        try:
            log = cls._recover(path, config, trusted_below)
        except BaseException:
            os.close(lock_fd)
            raise
        log._lock_fd = lock_fd
        return log

    @classmethod
    def _recover(cls, path: Path, config: LogConfig, trusted_below: int = 0) -> Log:
        stores: set[int] = set()
        for entry in path.iterdir():
            stem, suffix = entry.stem, entry.suffix
            if suffix not in (STORE_SUFFIX, INDEX_SUFFIX) or not stem.isdigit():
                continue
            if suffix == STORE_SUFFIX:
                stores.add(int(stem))
        for entry in path.iterdir():
            is_index = entry.suffix == INDEX_SUFFIX and entry.stem.isdigit()
            if is_index and int(entry.stem) not in stores:
                logger.warning("removing index %s: its store is missing", entry.name)
                entry.unlink()
        bases = sorted(stores)
        segments: list[Segment] = []
        reports: list[RecoveryReport] = []
        changed = False
        for i, base in enumerate(bases):
            expected = bases[i + 1] - base if i + 1 < len(bases) else None
            trusted = expected is not None and bases[i + 1] <= trusted_below
            seg, report = Segment.recover(path, base, config, expected, trusted=trusted)
            segments.append(seg)
            reports.append(report)
            changed |= bool(report.cut_bytes or report.index_rebuilt)
            if expected is not None and seg.count != expected:
                dropped = bases[i + 1 :]
                logger.error(
                    "segment %d holds %d records but the next segment starts at %d: removing "
                    "%d later segment(s) %s so that offsets stay dense",
                    base,
                    seg.count,
                    bases[i + 1],
                    len(dropped),
                    dropped,
                )
                for later in dropped:
                    remove_files(path, later)
                changed = True
                break
        if not segments:
            segments.append(Segment.create(path, config.initial_offset, config))
            changed = True
        segments[-1].unseal()
        log = cls(path, config, segments)
        log.recovery = reports
        if config.sync is not SyncPolicy.NEVER:
            # What recovery kept may still sit in the page cache only (a killed process
            # leaves it there); make it durable before promising anything about it. An
            # fsync of a file with nothing dirty is cheap.
            for seg in segments:
                seg.store.sync()
            if changed:
                log._fsync_dir()
        else:
            # Nothing is known to be on disk: the first sync() covers every segment.
            log._durable = log.lowest_offset
            log._dirty = {id(seg): seg for seg in segments}
            log._dir_dirty = changed
        return log

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- offsets -------------------------------------------------------------------------

    @property
    def lowest_offset(self) -> int:
        """Offset of the oldest record held (the next offset when the log is empty)."""
        return self._segments[0].base_offset

    @property
    def next_offset(self) -> int:
        """Offset the next appended record gets."""
        return self._segments[-1].next_offset

    @property
    def highest_offset(self) -> int:
        """Offset of the newest record held; ``lowest_offset - 1`` when the log is empty."""
        return self.next_offset - 1

    @property
    def durable_offset(self) -> int:
        """Every record below this offset is known to be fsynced."""
        return self._durable

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def segments(self) -> list[Segment]:
        """The open segments, oldest first (read-only use: tests and tools)."""
        return list(self._segments)

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"log {self.directory} is closed")
        if self._failed is not None:
            raise self._failed

    def _out_of_range(self, offset: int) -> OffsetOutOfRangeError:
        return OffsetOutOfRangeError(offset, self.lowest_offset, self.highest_offset)

    def _segment_for(self, offset: int) -> Segment:
        if offset < self.lowest_offset or offset >= self.next_offset:
            raise self._out_of_range(offset)
        return self._segments[bisect.bisect_right(self._bases, offset) - 1]

    # -- appends -------------------------------------------------------------------------

    def append_batch_nosync(self, records: Sequence[bytes]) -> int:
        """Write ``records`` (page cache only) and return the offset of the first one.

        Durability comes later, from :meth:`sync` or the sync policy's background fsync
        (``INTERVAL``). An empty batch writes nothing and returns :attr:`next_offset`.
        """
        self._check_open()
        first = self.next_offset
        n = len(records)
        if n == 0:
            return first
        if n <= SMALL_BATCH:
            small, small_sizes = encode_small(records)
            seg = self._segments[-1]
            fits = seg.store.size + len(small) <= self.config.max_store_bytes
            if seg.index.room >= n and (fits or (seg.count == 0 and n == 1)):
                seg.append_small(small, small_sizes)
                self._dirty[id(seg)] = seg
                if self.config.sync is SyncPolicy.INTERVAL:
                    self._schedule_interval_sync()
                return first
        # the thread's buffer, shared with every other log (see thread_frame_buffer):
        # ``data`` is written out before this call returns
        data, sizes = thread_frame_buffer().encode(records)
        seg = self._segments[-1]
        fits = seg.store.size + len(data) <= self.config.max_store_bytes
        if seg.index.room >= n and fits:
            seg.append_encoded(data, sizes)
            self._dirty[id(seg)] = seg
        else:
            try:
                self._append_split(memoryview(data), sizes)
            except BaseException:
                # All or nothing: a failure in a later segment (a full disk, a failed
                # roll) must not leave the batch's first frames readable in earlier ones.
                with contextlib.suppress(Exception):
                    self.truncate_after(first - 1)
                raise
        if self.config.sync is SyncPolicy.INTERVAL:
            self._schedule_interval_sync()
        return first

    def _append_split(self, data: memoryview, sizes: npt.NDArray[np.uint64]) -> None:
        """A batch that spans segments: fill the active one, roll over, go on."""
        ends = sizes.cumsum()
        i, consumed = 0, 0
        while i < len(sizes):
            seg = self._segments[-1]
            k = 0 if seg.is_maxed else seg.fit(ends, consumed, i)
            if k == 0:
                self._roll()
                continue
            stop = int(ends[i + k - 1])
            seg.append_encoded(data[consumed:stop], sizes[i : i + k])
            self._dirty[id(seg)] = seg
            i, consumed = i + k, stop

    def _roll(self) -> Segment:
        """Seal the active segment and start a new one at the next offset."""
        old = self._segments[-1]
        old.seal()
        seg = Segment.create(self.directory, old.next_offset, self.config)
        self._segments.append(seg)
        self._bases.append(seg.base_offset)
        self._dir_dirty = True
        self._undurable_names.add(seg.store.path.name)
        return seg

    async def append_batch(self, records: Sequence[bytes]) -> int:
        """Append ``records`` and return the offset of the first one.

        With ``sync=ALWAYS`` the records are fsynced before this returns; appenders that
        arrive while an fsync runs share the next one (group commit).
        """
        first = self.append_batch_nosync(records)
        if self.config.sync is SyncPolicy.ALWAYS and records:
            await self._wait_durable(first + len(records))
        return first

    async def append(self, record: bytes) -> int:
        """Append one record; see :meth:`append_batch`."""
        return await self.append_batch((record,))

    # -- durability ----------------------------------------------------------------------

    async def sync(self) -> None:
        """Make every record written so far durable (one shared fsync, in a thread)."""
        self._check_open()
        await self._wait_durable(self.next_offset)

    async def _wait_durable(self, target: int) -> None:
        if self._durable >= target and not self._dir_dirty:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append((target, fut))
        self._ensure_sync_task()
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.config.sync_timeout_s)
        except TimeoutError as exc:
            raise DurabilityError(
                f"fsync did not finish within sync_timeout_s={self.config.sync_timeout_s} s"
            ) from exc

    def _ensure_sync_task(self) -> None:
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(
                self._sync_loop(), name=f"raftlog.log.sync:{self.directory}"
            )

    def _schedule_interval_sync(self) -> None:
        if self._interval_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the next async call or close() syncs
        self._interval_timer = loop.call_later(self.config.sync_interval_s, self._interval_due)

    def _interval_due(self) -> None:
        self._interval_timer = None
        if self._closed or self._failed is not None:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiters.append((self.next_offset, fut))
        self._ensure_sync_task()

    def _prepare_sync(self) -> _SyncJob:
        fds: list[int] = []
        stores: list[tuple[Segment, int]] = []
        for seg in self._dirty.values():
            if seg.closed:
                continue
            fds.append(os.dup(seg.store.fileno()))
            stores.append((seg, seg.store.size))
            seg.store.cut_floor = seg.store.size
        self._dirty.clear()
        self._sync_floor = _NO_FLOOR
        dir_fd = -1
        names: list[str] = []
        if self._dir_dirty:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            self._dir_dirty = False
            names = list(self._undurable_names)
        return _SyncJob(self.next_offset, fds, dir_fd, stores, names)

    async def _sync_loop(self) -> None:
        """Run fsyncs back to back while anyone waits; each covers all writes before it."""
        while self._waiters and not self._closed:
            job = self._prepare_sync()
            try:
                await asyncio.to_thread(_fsync_job, job.fds, job.dir_fd)
            except OSError as exc:
                self._failed = DurabilityError(f"fsync of log {self.directory} failed: {exc}")
                self._fail_waiters(lambda _t: True, self._failed)
                logger.error("%s; the log refuses further writes", self._failed)
                return
            self._complete_sync(job)

    def _complete_sync(self, job: _SyncJob) -> None:
        for seg, size in job.stores:
            covered = min(size, seg.store.cut_floor)
            seg.store.synced_size = max(seg.store.synced_size, covered)
        self._undurable_names.difference_update(job.new_names)
        covered = min(job.target, self.next_offset, self._sync_floor)
        self._durable = max(self._durable, covered)
        still: list[tuple[int, asyncio.Future[None]]] = []
        for target, fut in self._waiters:
            if fut.done():
                continue
            if target <= self._durable:
                fut.set_result(None)
            else:
                still.append((target, fut))
        self._waiters = still

    def _fail_waiters(self, which: object, exc: BaseException) -> None:
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, fut in self._waiters:
            if callable(which) and which(target):
                if not fut.done():
                    fut.set_exception(exc)
            else:
                keep.append((target, fut))
        self._waiters = keep

    def durable_lengths(self) -> dict[Path, int]:
        """Store files and the length each had at its last completed fsync.

        What a power loss is guaranteed to leave behind (for crash simulation): a store
        that is not listed was created after the last directory fsync and may vanish.
        Index files are never listed: they carry no durability promise, recovery rebuilds
        them from the stores.
        """
        return {
            seg.store.path: seg.store.synced_size
            for seg in self._segments
            if seg.store.path.name not in self._undurable_names
        }

    # -- reads ---------------------------------------------------------------------------

    def read(self, offset: int) -> bytes:
        """The record at ``offset``; :class:`OffsetOutOfRangeError` if the log lacks it."""
        self._check_open()
        return self._segment_for(offset).read(offset)

    def read_batch(
        self, offset: int, max_bytes: int, max_records: int = DEFAULT_MAX_RECORDS
    ) -> list[bytes]:
        """Consecutive records from ``offset``, for streaming consumers.

        Returns at least one record when ``offset`` is in range; stops before the payloads
        would exceed ``max_bytes``, after ``max_records`` records, or at the end of a
        segment (the caller asks again from the next offset).
        """
        self._check_open()
        return self._segment_for(offset).read_batch(offset, max_bytes, max_records)

    # -- truncation ----------------------------------------------------------------------

    def truncate(self, lowest: int) -> None:
        """Retention: remove every segment whose records are all below ``lowest``.

        Offsets are never reused: if even the active segment goes, an empty one starts at
        the old :attr:`next_offset`.
        """
        self._check_open()
        nxt = self.next_offset
        keep = [s for s in self._segments if s.next_offset > lowest]
        drop = [s for s in self._segments if s.next_offset <= lowest]
        if not drop:
            return
        for seg in drop:
            self._dirty.pop(id(seg), None)
            seg.remove()
        if not keep:
            keep = [Segment.create(self.directory, nxt, self.config)]
            self._undurable_names.add(keep[0].store.path.name)
        self._segments = keep
        self._bases = [s.base_offset for s in keep]
        self._dir_dirty = True

    def detach_below(self, lowest: int) -> list[Segment]:
        """Retention without blocking: take every sealed segment whose records are all
        below ``lowest`` out of the log and hand them to the caller, who closes and deletes
        them (:meth:`Segment.remove`, in a worker thread). The active segment always stays.
        """
        self._check_open()
        drop: list[Segment] = []
        for seg in self._segments[:-1]:
            if seg.next_offset > lowest:
                break
            drop.append(seg)
        if drop:
            for seg in drop:
                self._dirty.pop(id(seg), None)
            del self._segments[: len(drop)]
            del self._bases[: len(drop)]
            self._dir_dirty = True
        return drop

    def truncate_after(self, offset: int) -> None:
        """Remove every record above ``offset`` (Raft's conflicting suffix).

        ``offset`` may be ``lowest_offset - 1`` (empties the log, keeping its offsets).
        Appenders still waiting for the fsync of removed records get a DurabilityError.
        """
        self._check_open()
        if offset >= self.highest_offset:
            return
        if offset < self.lowest_offset - 1:
            raise self._out_of_range(offset)
        at = 0 if offset < self.lowest_offset else bisect.bisect_right(self._bases, offset) - 1
        for seg in self._segments[at + 1 :]:
            self._dirty.pop(id(seg), None)
            seg.remove()
            self._undurable_names.discard(seg.store.path.name)
            self._dir_dirty = True
        del self._segments[at + 1 :]
        del self._bases[at + 1 :]
        seg = self._segments[at]
        seg.truncate_after(offset)
        if seg.sealed:
            seg.unseal()
        self._dirty[id(seg)] = seg
        self._durable = min(self._durable, offset + 1)
        self._sync_floor = min(self._sync_floor, offset + 1)
        self._fail_waiters(
            lambda target: target > offset + 1,
            DurabilityError(f"records above offset {offset} were truncated before their fsync"),
        )

    # -- snapshots -----------------------------------------------------------------------

    def reader(self) -> LogReader:
        """A byte stream over the whole log, as it is now (for snapshots)."""
        self._check_open()
        return LogReader(self.lowest_offset, [(s.store.path, s.store.size) for s in self._segments])

    def range_reader(self, first: int, end: int) -> LogReader:
        """A byte stream (the :meth:`reader` format) over the records ``first..end-1`` only,
        as they are now: what a follower that holds everything below ``first`` lacks.

        The positions are taken here (call it on the log's thread); reading it later in
        another thread is safe (its own descriptors, never past ``end``).
        """
        self._check_open()
        if not self.lowest_offset <= first <= end <= self.next_offset:
            raise LogError(
                f"range {first}..{end} is not within the log's {self.lowest_offset}.."
                f"{self.next_offset}"
            )
        stores: list[tuple[Path, int]] = []
        starts: list[int] = []
        for seg in self._segments:
            lo, hi = max(first, seg.base_offset), min(end, seg.next_offset)
            if lo >= hi:
                continue
            start = seg.index.position(lo - seg.base_offset)
            stop = (
                seg.index.position(hi - seg.base_offset)
                if hi < seg.next_offset
                else (seg.store.size)
            )
            stores.append((seg.store.path, stop - start))
            starts.append(start)
        return LogReader(first, stores, starts)

    def append_stream(
        self,
        source: BinaryIO | Iterable[bytes],
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[int, int]:
        """Append the records of a :meth:`range_reader` stream that starts at
        :attr:`next_offset` (checksums verified, bounded memory, not fsynced); return (first
        offset, records appended). ``progress(records, frame_bytes)`` after each batch."""
        self._check_open()
        return append_stream(self, source, progress)

    @classmethod
    def restore(
        cls,
        directory: str | Path,
        source: BinaryIO | Iterable[bytes],
        config: LogConfig | None = None,
    ) -> Log:
        """Build a new log in the (empty or absent) ``directory`` from a :meth:`reader` stream.

        Every frame is checksum-verified; the restored log starts at the snapshot's lowest
        offset and is fsynced before this returns (unless the policy is ``NEVER``).
        """
        return restore_log(cls, Path(directory), source, config or LogConfig())

    # -- lifecycle -----------------------------------------------------------------------

    async def close(self) -> None:
        """Sync (unless ``NEVER``), cut index files to their real size, close every file."""
        if self._closed:
            return
        if self._interval_timer is not None:
            self._interval_timer.cancel()
            self._interval_timer = None
        if self.config.sync is not SyncPolicy.NEVER and self._failed is None:
            await self._wait_durable(self.next_offset)
        task = self._sync_task
        if task is not None and not task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), self.config.sync_timeout_s)
        self._close_files()

    async def __aenter__(self) -> Log:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def close_sync(self) -> None:
        """Blocking close for code without an event loop (tools, tests, subprocesses)."""
        if self._closed:
            return
        if self._interval_timer is not None:
            self._interval_timer.cancel()
            self._interval_timer = None
        if self.config.sync is not SyncPolicy.NEVER and self._failed is None:
            self.sync_blocking()
        self._close_files()

    def sync_blocking(self) -> None:
        """fsync everything written so far in the calling thread.

        Blocking: for tools, tests and restore, never for code on the event loop (use
        :meth:`sync` there).
        """
        self._check_open()
        for seg in self._dirty.values():
            if not seg.closed:
                seg.store.sync()
        if self._dir_dirty:
            self._fsync_dir()
        self._dirty.clear()
        self._dir_dirty = False
        self._undurable_names.clear()
        self._durable = max(self._durable, self.next_offset)

    def _close_files(self) -> None:
        self._closed = True
        self._fail_waiters(lambda _t: True, LogClosedError(f"log {self.directory} was closed"))
        if self._sync_task is not None and not self._sync_task.done():
            self._sync_task.cancel()
        self._sync_task = None
        for seg in self._segments:
            seg.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def remove(self) -> None:
        """Close the log (without syncing) and delete its directory."""
        self._closing_remove()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _closing_remove(self) -> None:
        if self._interval_timer is not None:
            self._interval_timer.cancel()
            self._interval_timer = None
        if not self._closed:
            self._close_files()

    def reset(self, initial_offset: int | None = None) -> None:
        """Remove every record and start empty at ``initial_offset`` (default: the config's).

        Used when a snapshot replaces the whole log. The directory is recreated and the log
        object stays usable.
        """
        self._closing_remove()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_directory(self.directory)
        for seg in self._segments:
            seg.remove()
        start = self.config.initial_offset if initial_offset is None else initial_offset
        seg = Segment.create(self.directory, start, self.config)
        self._segments = [seg]
        self._bases = [start]
        self._closed = False
        self._failed = None
        self._dirty = {id(seg): seg}
        self._dir_dirty = True
        self._undurable_names = {seg.store.path.name}
        self._durable = start
        self._waiters = []
        self._sync_floor = _NO_FLOOR

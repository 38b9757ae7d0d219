"""The Raft state machine of the cluster: committed batches -> the commit log.

Every Raft entry proposed by :class:`~raftlog.distributed.distributed_log.DistributedLog`
holds one whole produce batch (``encode_batch``); applying it appends the batch to the
commit log at the next offsets. Raft applies the same entries in the same order on every
replica, so offsets are dense and identical everywhere, and a batch is all-or-nothing.

Durability comes from the Raft log (fsynced before anything is acknowledged), so the commit
log here is written to the page cache only (``SyncPolicy.NEVER``). To avoid replaying the
whole Raft log after every restart, the machine keeps a small checkpoint file
(``fsm-state``: Raft index, next offset) that is written only after the commit log was
fsynced up to that offset (at every snapshot, on a follower's catch-up, after a restore,
for retention and at a clean shutdown). On start:

- a checkpoint whose offset the commit log still reaches: the commit log opens with that
  offset as its recovery point (segments below it are not scanned), is cut back to it
  (records after it may be torn or unaccounted) and Raft resumes after its index;
- no usable checkpoint: the commit log is emptied and Raft restores the newest snapshot
  and/or replays its log from the start (the applied index is then 0).

Checkpoint hashes. A fourth kind, ``H`` + msgpack ``[1, first, end, digest, stamp_ms]``
(:func:`encode_checkpoint_hash`), is the leader's content hash of the records
``first..end-1`` (:func:`raftlog.log.scrub.range_digest`, on payloads only). Applying it
changes nothing in the commit log: it moves :attr:`CommitLogFSM.hash_next` (where the next
checkpoint starts, the same on every replica) and hands the entry to
:attr:`CommitLogFSM.on_checkpoint_hash` once the round's records are appended; the
replica compares its own hash off the apply path (:mod:`raftlog.distributed.scrub`).

Snapshots reference the commit log instead of copying it (format 2, issue 12)::

    b"RLFSMSN2" | u64 length | msgpack {"v": 2, "producers": ProducerTable.dump(),
        "next_offset": N, "lowest_offset": L, "from": F[, "records", "bytes"]}
    | the records F..N-1 as the commit log's stream (b"RLOGSNP1" ..., Log.range_reader)

A snapshot taken here has ``F = N`` (no records: a few hundred bytes); its first byte is
produced only after the commit log is fsynced up to ``N`` and a checkpoint of that very
state is durable, so Raft compacts its log behind a state a restart always finds. What a
follower receives (:meth:`CommitLogFSM.snapshot_stream`) starts at its own resume point
(:meth:`CommitLogFSM.resume_point`, its durable checkpoint): only the records it lacks.
Restoring keeps the follower's log below ``F`` and appends the rest. Format 1 (below: the
whole commit log copied) still restores, by building a new log beside the old one.

The idempotent producer. Two kinds of entries exist (the first byte says which):

- ``B`` + msgpack ``[record, ...]``: a plain batch (:func:`encode_batch`; every entry
  written before the idempotent producer existed is one; they stay decodable);
- ``I`` + msgpack ``[1, stamp_ms, producer_id, sequence, [record, ...]]``: a batch of an
  idempotent producer (:func:`encode_idempotent_batch`); ``1`` is the format version,
  ``stamp_ms`` the leader's wall clock when it proposed the entry (Unix ms).

Applying an ``I`` entry consults the :class:`~raftlog.domain.producers.ProducerTable`: a
(producer, sequence) already in it appends nothing and results in the first append's
offsets with ``duplicate=True``; a sequence below the producer's window results in a
:class:`~raftlog.domain.errors.SequenceTooOldError` (nothing appended); otherwise the
batch is appended and remembered. Every replica applies the same entries in the same
order with the same stamps, so the table is the same everywhere (expiry uses the stamps,
never the replica's clock) and survives failover; two retries of one request that both
reach Raft are deduplicated here too. The table is saved with the checkpoint (same
moment as its index and offset) and travels at the head of every snapshot (format 1)::

    b"RLFSMSN1" | u64 length | msgpack {"v": 1, "producers": ProducerTable.dump()}
    | the commit log's own snapshot stream (b"RLOGSNP1" ...)

A snapshot that starts with the commit log's magic directly (written before the table
existed) restores with an empty table. Entries replayed after a checkpoint rebuild the
same table, since the table is part of the checkpoint of the same index.

Retention. A third kind of entry, ``T`` + msgpack ``[1, lowest, stamp_ms]``
(:func:`encode_retention`), is the leader's decision to drop every record below offset
``lowest`` (the leader proposes it, see :class:`~raftlog.distributed.DistributedLog`).
Applying it sets the machine's logical :attr:`CommitLogFSM.lowest_offset` to
``max(current, min(lowest, next offset at that entry))`` on every replica alike, so every
replica serves, reports and refuses exactly the same prefix whatever its segment
boundaries. Files go afterwards, off the apply path: a task writes a checkpoint (the
commit log fsynced, then ``fsm-state`` with the applied index, next offset, producer table
and the new ``"lowest"``; in a thread) and only then takes the sealed segments that lie
wholly below that checkpoint's lowest out of the log and deletes them in a thread. So a
restart never finds a checkpoint older than a deletion (it could not cut the log back to
it) and never serves a dropped record: the lowest comes back with the checkpoint, and an
entry applied after it is replayed by Raft. A segment that is only partly below the lowest
stays on disk (its records below are never served). The snapshot head carries the lowest
too (``"lowest_offset"``; ``"lowest"`` in format 1), so a replica restored from a snapshot
taken after retention agrees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from raftlog.domain.errors import SequenceTooOldError
from raftlog.domain.producers import ProducerConfig, ProducerTable
from raftlog.domain.protocols import Appended
from raftlog.log import Log, LogConfig, SyncPolicy
from raftlog.log.fileio import atomic_write
from raftlog.raft import Entry, SnapshotMeta
from raftlog.raft.fsm import SnapshotSource

log = logging.getLogger("raftlog.distributed")

#: First byte of an entry that holds a produce batch (room for other entry kinds later).
BATCH_TAG = b"B"
#: First byte of an entry that holds an idempotent producer's batch.
IDEMPOTENT_TAG = b"I"
_IDEMPOTENT_VERSION = 1
#: First byte of a retention entry: drop every record below an offset (see module docs).
RETENTION_TAG = b"T"
_RETENTION_VERSION = 1
#: First byte of a checkpoint-hash entry: the leader's content hash of a range of records.
CHECKPOINT_HASH_TAG = b"H"
_CHECKPOINT_HASH_VERSION = 1
#: Head of a snapshot stream that carries the producer table before the commit log.
SNAPSHOT_MAGIC = b"RLFSMSN1"
#: Head of a snapshot by reference (format 2): metadata, then only the records the
#: receiver lacks (none in a snapshot kept locally).
SNAPSHOT_MAGIC_REF = b"RLFSMSN2"
#: Log a catch-up's progress every this many bytes.
_PROGRESS_BYTES = 64 << 20
_SNAPSHOT_HEAD = struct.Struct("<8sQ")
CHECKPOINT_FILE = "fsm-state"
LOG_DIR = "log"
_RESTORE_DIR = "log.restoring"


class FSMError(RuntimeError):
    """A Raft entry could not be applied (unknown kind, malformed batch)."""


class RestoringError(RuntimeError):
    """The commit log is being replaced by a snapshot; retry the read shortly."""


def encode_batch(records: Sequence[bytes]) -> bytes:
    """One Raft entry holding a whole produce batch."""
    packed: bytes = msgpack.packb(list(records), use_bin_type=True)
    return BATCH_TAG + packed


def encode_idempotent_batch(
    records: Sequence[bytes], producer_id: str, sequence: int, stamp_ms: int
) -> bytes:
    """One Raft entry holding an idempotent producer's batch, stamped with the proposer's
    wall clock ``stamp_ms`` (Unix milliseconds; drives the table's expiry)."""
    body = [_IDEMPOTENT_VERSION, stamp_ms, producer_id, sequence, list(records)]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return IDEMPOTENT_TAG + packed


def encode_retention(lowest: int, stamp_ms: int) -> bytes:
    """One Raft entry that moves every replica's lowest offset up to ``lowest``, stamped
    with the proposer's wall clock ``stamp_ms`` (Unix milliseconds, for the record)."""
    packed: bytes = msgpack.packb([_RETENTION_VERSION, lowest, stamp_ms], use_bin_type=True)
    return RETENTION_TAG + packed


def encode_checkpoint_hash(first: int, end: int, digest: bytes, stamp_ms: int) -> bytes:
    """One Raft entry with the proposer's content hash ``digest`` of the records
    ``first..end-1``, stamped with its wall clock ``stamp_ms`` (Unix ms, for the record)."""
    body = [_CHECKPOINT_HASH_VERSION, first, end, digest, stamp_ms]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return CHECKPOINT_HASH_TAG + packed


@dataclass(frozen=True, slots=True)
class CheckpointHash:
    """A decoded checkpoint-hash entry: the records ``first..end-1`` hash to ``digest``
    on the proposer."""

    first: int
    end: int
    digest: bytes
    stamp_ms: int = 0


@dataclass(frozen=True, slots=True)
class Retention:
    """A decoded retention entry: drop every record below ``lowest``."""

    lowest: int
    stamp_ms: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded batch entry; ``producer_id`` is "" for a plain (not idempotent) batch."""

    records: list[bytes]
    producer_id: str = ""
    sequence: int = 0
    stamp_ms: int = 0


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(memoryview(data)[1:], use_list=True, raw=False)
    except (ValueError, msgpack.ExtraData) as exc:
        raise FSMError(f"malformed batch entry: {exc}") from exc


def _check_records(records: Any) -> list[bytes]:
    if not isinstance(records, list) or not all(isinstance(r, bytes) for r in records):
        raise FSMError("malformed batch entry: not a list of byte strings")
    return records


def decode_entry(data: bytes) -> Batch | Retention | CheckpointHash:
    """A batch entry of either kind, a retention or a checkpoint-hash entry; FSMError if it
    is none of them or malformed."""
    tag = data[:1]
    if tag == BATCH_TAG:
        return Batch(_check_records(_unpack(data)))
    if tag == IDEMPOTENT_TAG:
        body = _unpack(data)
        if not isinstance(body, list) or len(body) != 5 or body[0] != _IDEMPOTENT_VERSION:
            raise FSMError("malformed idempotent batch entry (or an unknown version)")
        _, stamp, pid, seq, records = body
        if not isinstance(stamp, int) or not isinstance(pid, str) or not isinstance(seq, int):
            raise FSMError("malformed idempotent batch entry: bad stamp, producer or sequence")
        return Batch(_check_records(records), pid, seq, stamp)
    if tag == RETENTION_TAG:
        body = _unpack(data)
        if not isinstance(body, list) or len(body) != 3 or body[0] != _RETENTION_VERSION:
            raise FSMError("malformed retention entry (or an unknown version)")
        _, lowest, stamp = body
        if not isinstance(lowest, int) or lowest < 0 or not isinstance(stamp, int):
            raise FSMError("malformed retention entry: bad offset or stamp")
        return Retention(lowest, stamp)
    if tag == CHECKPOINT_HASH_TAG:
        body = _unpack(data)
        if not isinstance(body, list) or len(body) != 5 or body[0] != _CHECKPOINT_HASH_VERSION:
            raise FSMError("malformed checkpoint-hash entry (or an unknown version)")
        _, first, end, digest, stamp = body
        if (
            not isinstance(first, int)
            or not isinstance(end, int)
            or not 0 <= first <= end
            or not isinstance(digest, bytes)
            or not isinstance(stamp, int)
        ):
            raise FSMError("malformed checkpoint-hash entry: bad range, digest or stamp")
        return CheckpointHash(first, end, digest, stamp)
    raise FSMError(f"unknown entry kind {tag!r}")


def decode_batch(data: bytes) -> list[bytes]:
    """The records of a batch entry of either kind; FSMError if it is not one."""
    entry = decode_entry(data)
    if not isinstance(entry, Batch):
        raise FSMError(f"a {type(entry).__name__} entry holds no records")
    return entry.records


def _write_checkpoint(
    directory: Path, index: int, next_offset: int, producers: dict[str, Any], lowest: int
) -> None:
    """Atomically and durably replace the checkpoint file (see :func:`atomic_write`)."""
    state = {"index": index, "next_offset": next_offset, "producers": producers, "lowest": lowest}
    atomic_write(directory / CHECKPOINT_FILE, json.dumps(state, separators=(",", ":")).encode())


def _read_checkpoint(
    directory: Path, config: ProducerConfig
) -> tuple[int, int, ProducerTable] | None:
    """(index, next offset, producer table) of the checkpoint; a checkpoint written before
    the table existed has none: no idempotent entry was applied then, the table is empty."""
    try:
        data = json.loads((directory / CHECKPOINT_FILE).read_bytes())
        index, nxt = int(data["index"]), int(data["next_offset"])
        table = ProducerTable(config)
        if "producers" in data:
            table.load(data["producers"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable checkpoint in %s: %s", directory, exc)
        return None
    return index, nxt, table


def _encode_head(state: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(state, use_bin_type=True)
    return _SNAPSHOT_HEAD.pack(SNAPSHOT_MAGIC_REF, len(packed)) + packed


def _unpack_state(packed: bytes) -> dict[str, Any]:
    try:
        state = msgpack.unpackb(packed, use_list=True, raw=False)
    except (ValueError, msgpack.ExtraData) as exc:
        raise FSMError(f"malformed snapshot metadata: {exc}") from exc
    if not isinstance(state, dict):
        raise FSMError("malformed snapshot metadata: not a map")
    return state


def _decode_head(data: bytes) -> dict[str, Any] | None:
    """The metadata of a snapshot by reference, or None for another format."""
    if not data.startswith(SNAPSHOT_MAGIC_REF) or len(data) < _SNAPSHOT_HEAD.size:
        return None
    _, size = _SNAPSHOT_HEAD.unpack_from(data)
    return _unpack_state(data[_SNAPSHOT_HEAD.size : _SNAPSHOT_HEAD.size + size])


def _checkpoint_lowest(directory: Path) -> int:
    """The lowest offset the checkpoint recorded (0: none, or written before retention)."""
    try:
        return int(json.loads((directory / CHECKPOINT_FILE).read_bytes()).get("lowest", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _remove_segments(segments: Sequence[Any]) -> None:
    """Close and delete segments taken out of a log (worker thread)."""
    for seg in segments:
        seg.remove()


def _read_exact(source: SnapshotSource, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = source.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


class CommitLogFSM:
    """Applies committed batches to a :class:`raftlog.log.Log`; implements StateMachine.

    Create with :meth:`open` (blocking: opens and recovers the log). ``on_apply`` is
    called on the event loop after every apply and restore (DistributedLog wakes readers
    there). ``log_config`` sets segment sizes; its sync policy is forced to ``NEVER``.
    ``producers`` bounds the idempotent producer table (:class:`ProducerConfig`; every
    replica must use the same values, the defaults unless a test says otherwise).
    """

    def __init__(
        self,
        directory: Path,
        commit_log: Log,
        applied: int,
        config: LogConfig,
        producers: ProducerTable | None = None,
        *,
        lowest: int | None = None,
    ) -> None:
        self.directory = directory
        #: The lowest offset readers may see (retention; the same on every replica).
        self.lowest_offset = commit_log.lowest_offset if lowest is None else lowest
        self._prune_task: asyncio.Task[None] | None = None
        #: (generation, index, lowest) of the newest checkpoint written: checkpoints never
        #: go back, and segments go only below a checkpointed lowest.
        self._checkpointed = (0, 0, 0)
        #: The idempotent producers' recent sequences, as of :attr:`applied`.
        self.producers = producers if producers is not None else ProducerTable()
        self._log: Log | None = commit_log
        self._applied = applied
        self._config = config
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0
        self._checkpoint_task: asyncio.Task[None] | None = None
        #: The next offset of the newest durable checkpoint (what a restart resumes from;
        #: after open the log ends exactly there): a follower's resume point.
        self._checkpointed_next = commit_log.next_offset
        self.on_apply: Callable[[], None] | None = None
        #: Called on the loop with every checkpoint-hash entry applied (after the records
        #: of its round are appended); the scrubber compares this replica's hash.
        self.on_checkpoint_hash: Callable[[CheckpointHash], None] | None = None
        #: Where the next checkpoint hash starts: the end of the last one applied (0: none
        #: since this process started; the leader then starts at the lowest offset).
        self.hash_next = 0
        #: Highest offset readers may see (every record in the log is committed).
        self.highest_offset = commit_log.highest_offset
        #: (first index, last index, start ns, end ns) of recent applies, for traces;
        #: None while tracing is off (then apply does not read the clock).
        self._apply_windows: deque[tuple[int, int, int, int]] | None = None

    #: Applies remembered for :meth:`apply_window` (a proposal's waiter reads its window
    #: soon after the apply; this many rounds is far more than it can fall behind).
    APPLY_WINDOWS = 256

    def keep_apply_windows(self, keep: bool) -> None:
        """Remember when each apply ran (for the apply spans of traces) or stop."""
        self._apply_windows = deque(maxlen=self.APPLY_WINDOWS) if keep else None

    def apply_window(self, index: int) -> tuple[int, int] | None:
        """(start, end) in ns since the epoch of the apply that covered Raft ``index``;
        None when not remembered."""
        windows = self._apply_windows
        if windows is None:
            return None
        for first, last, start, end in reversed(windows):
            if first <= index <= last:
                return start, end
        return None

    @classmethod
    def open(
        cls,
        directory: str | Path,
        log_config: LogConfig | None = None,
        producers: ProducerConfig | None = None,
    ) -> CommitLogFSM:
        """Open (or create) the machine's commit log in ``directory/log``; see module docs."""
        producer_config = (producers or ProducerConfig()).validate()
        base = Path(directory)
        base.mkdir(parents=True, exist_ok=True)
        config = log_config or LogConfig()
        config = LogConfig(
            max_store_bytes=config.max_store_bytes,
            max_index_bytes=config.max_index_bytes,
            initial_offset=config.initial_offset,
            sync=SyncPolicy.NEVER,
            sync_interval_s=config.sync_interval_s,
            sync_timeout_s=config.sync_timeout_s,
        )
        shutil.rmtree(base / _RESTORE_DIR, ignore_errors=True)
        checkpoint = _read_checkpoint(base, producer_config)
        # The checkpoint is written only after an fsync of the commit log up to its offset:
        # segments below it are trusted (no store scan); the tail after it is verified.
        trusted = checkpoint[1] if checkpoint is not None else 0
        commit_log = Log.open(base / LOG_DIR, config, trusted_below=trusted)
        applied = 0
        table = ProducerTable(producer_config)
        lowest = commit_log.lowest_offset
        if (
            checkpoint is not None
            and commit_log.lowest_offset <= checkpoint[1] <= commit_log.next_offset
        ):
            index, nxt, table = checkpoint
            if nxt - 1 < commit_log.highest_offset:
                commit_log.truncate_after(nxt - 1)
            applied = index
            saved = max(_checkpoint_lowest(base), commit_log.lowest_offset)
            lowest = min(saved, commit_log.next_offset)
            _remove_segments(commit_log.detach_below(lowest))  # a crash before they went
        elif commit_log.next_offset != commit_log.lowest_offset or checkpoint is not None:
            log.info("commit log in %s has no usable checkpoint: emptied, Raft replays it", base)
            commit_log.reset(config.initial_offset)
            with contextlib.suppress(FileNotFoundError):
                (base / CHECKPOINT_FILE).unlink()
            lowest = commit_log.lowest_offset
        fsm = cls(base, commit_log, applied, config, table, lowest=lowest)
        fsm._checkpointed = (0, applied, lowest)
        fsm._checkpointed_next = commit_log.next_offset
        return fsm

    # -- reads (event loop) ----------------------------------------------------------------

    @property
    def log(self) -> Log:
        """The commit log now; RestoringError while a snapshot replaces it."""
        current = self._log
        if current is None:
            raise RestoringError("the commit log is being restored from a snapshot")
        return current

    @property
    def applied(self) -> int:
        """Raft index of the last batch applied."""
        return self._applied

    # -- StateMachine ----------------------------------------------------------------------

    def applied_index(self) -> int:
        """The checkpointed Raft index (0 without one): Raft resumes after it."""
        return self._applied

    def apply(self, entries: Sequence[Entry]) -> Sequence[Any]:
        """Append every batch (one write for all of them). Result per entry: a plain
        batch's first offset (int); for an idempotent batch an :class:`Appended` (first,
        last, duplicate) or a :class:`SequenceTooOldError` (nothing appended); for a
        retention entry the lowest offset after it (int); None for an entry applied before
        a restart (replayed: nothing appended)."""
        windows = self._apply_windows
        started = time.time_ns() if windows is not None else 0
        commit_log = self.log
        table = self.producers
        # decode everything first: a malformed entry fails the round before any change
        batches = [None if e.index <= self._applied else decode_entry(e.data) for e in entries]
        # All or nothing: if the append fails (a full disk), the producer table is as it was
        # and the runtime can apply the same entries again once there is room.
        table.begin()
        lowest = [self.lowest_offset]
        try:
            out = self._apply_batches(batches, commit_log, table, lowest)
        except BaseException:
            table.rollback()
            raise
        table.commit()
        hashes = [b for b in batches if isinstance(b, CheckpointHash)]
        self._applied = max(self._applied, entries[-1].index)
        self.highest_offset = commit_log.highest_offset
        if lowest[0] > self.lowest_offset:
            self.lowest_offset = lowest[0]
            self._schedule_prune()
        if windows is not None:
            windows.append((entries[0].index, entries[-1].index, started, time.time_ns()))
        for checkpoint in hashes:
            self.hash_next = max(self.hash_next, checkpoint.end)
            if self.on_checkpoint_hash is not None:
                self.on_checkpoint_hash(checkpoint)
        if self.on_apply is not None:
            self.on_apply()
        return out

    @staticmethod
    def _apply_batches(
        batches: Sequence[Any], commit_log: Log, table: ProducerTable, lowest: list[int]
    ) -> list[Any]:
        records: list[bytes] = []
        out: list[Any] = []
        start = at = commit_log.next_offset
        for batch in batches:
            if batch is None:
                out.append(None)  # already applied before a restart: no duplicate
                continue
            if isinstance(batch, Retention):  # never past the records applied so far
                lowest[0] = max(lowest[0], min(batch.lowest, at))
                out.append(lowest[0])
                continue
            if isinstance(batch, CheckpointHash):  # compared after the apply, off its path
                out.append(batch.end)
                continue
            n = len(batch.records)
            pid = batch.producer_id
            if not pid:
                out.append(at)
            else:
                table.advance(batch.stamp_ms)
                try:
                    seen = table.check(pid, batch.sequence)
                except SequenceTooOldError as exc:
                    out.append(exc)
                    continue
                if seen is not None:
                    out.append(Appended(seen[0], seen[1], duplicate=True))
                    continue
                table.record(pid, batch.sequence, at, at + n - 1)
                out.append(Appended(at, at + n - 1))
            records.extend(batch.records)
            at += n
        if records:
            first = commit_log.append_batch_nosync(records)
            if first != start:
                raise FSMError(f"the commit log appended at {first}, expected {start}")
        return out

    def snapshot(self) -> Iterable[bytes]:
        """A snapshot by reference (format 2, see docs/commitlog.md): the producer table and
        where the commit log ends (``next_offset``), with no records at all, since the
        commit log itself holds them. Captured now, on the loop; the first chunk is
        produced only once the commit log is fsynced up to that offset and a checkpoint of
        this very state is durable, so the snapshot (and the Raft log compaction behind it)
        never outruns what a restart finds in the commit log."""
        commit_log = self.log
        index, nxt, lowest = self._applied, commit_log.next_offset, self.lowest_offset
        producers = self.producers.dump()
        state = {
            "v": 2,
            "producers": producers,
            "next_offset": nxt,
            "lowest_offset": self.lowest_offset,  # retention's lowest, the same everywhere
            "from": nxt,
        }
        head = _encode_head(state)

        def chunks() -> Iterator[bytes]:
            self._durable_checkpoint(index, nxt, producers, lowest)
            yield head

        return chunks()

    def snapshot_stream(self, data: bytes, resume: int, peer: str = "") -> Iterator[bytes] | None:
        """What to send a follower for the stored snapshot ``data`` (taken by
        :meth:`snapshot`) when the follower's commit log already holds every record below
        ``resume`` (its :meth:`resume_point`): the metadata, then only the records from
        ``resume`` to the snapshot's end, read from the commit log in chunks (bounded
        memory). None for a snapshot of another format (sent as stored). On the loop."""
        state = _decode_head(data)
        if state is None or state.get("v") != 2:
            return None  # (a snapshot received with records is served from the log too)
        commit_log = self.log
        nxt = int(state["next_offset"])
        # retention's lowest: nothing below it is sent (the follower starts there)
        lowest = max(self.lowest_offset, commit_log.lowest_offset)
        if nxt > commit_log.next_offset:
            raise FSMError(
                f"snapshot ends at offset {nxt}, the commit log ends at {commit_log.next_offset}"
            )
        # Records below ``lowest`` are gone (retention, decided by an entry after the
        # snapshot): the follower starts at ``lowest`` (or at the snapshot's end when
        # retention passed it; it appends the entries after the snapshot from there and
        # applies the same retention entry).
        first = min(max(resume, lowest), nxt)
        reader = commit_log.range_reader(first, nxt) if first < nxt else None
        total = reader.frame_bytes if reader is not None else 0
        out = dict(state, lowest_offset=min(lowest, nxt), **{"from": first})
        out["records"] = nxt - first
        out["bytes"] = total
        head = _encode_head(out)
        log.info(
            "catch-up of %s: sending offsets %d..%d (%d records, %d bytes; it holds up to %d)",
            peer or "a follower",
            first,
            nxt - 1,
            nxt - first,
            total,
            resume,
        )

        def chunks() -> Iterator[bytes]:
            yield head
            if reader is None:
                return
            with reader:
                if first < nxt:
                    sent, mark = 0, _PROGRESS_BYTES
                    for chunk in reader.chunks():
                        sent += len(chunk)
                        if sent >= mark:
                            mark += _PROGRESS_BYTES
                            log.info(
                                "catch-up of %s: %d of %d bytes sent",
                                peer or "a follower",
                                sent,
                                total,
                            )
                        yield chunk

        return chunks()

    async def resume_point(self) -> int:
        """The offset from which this replica lacks records, made durable first (a
        checkpoint): a leader sends a catch-up only from there. Every record below it is
        committed (the commit log holds only applied records) and fsynced."""
        await self.checkpoint()
        return self._checkpointed_next

    def restore(self, source: SnapshotSource, meta: SnapshotMeta) -> None:
        """Make the commit log the snapshot's (worker thread). A snapshot by reference keeps
        what this log already holds below its ``from`` and appends the records that
        follow; the older formats replace the whole log."""
        first = _read_exact(source, _SNAPSHOT_HEAD.size)
        if first[: len(SNAPSHOT_MAGIC_REF)] == SNAPSHOT_MAGIC_REF and len(first) == len(
            _SNAPSHOT_HEAD.pack(SNAPSHOT_MAGIC_REF, 0)
        ):
            _, size = _SNAPSHOT_HEAD.unpack(first)
            state = _unpack_state(_read_exact(source, size))
            self._restore_ref(source, meta, state)
            return
        self._restore_copy(source, meta, first)

    def _restore_ref(
        self, source: SnapshotSource, meta: SnapshotMeta, state: dict[str, Any]
    ) -> None:
        table = ProducerTable(self.producers.config)
        try:
            table.load(state["producers"])
            nxt, lowest = int(state["next_offset"]), int(state["lowest_offset"])
            start = int(state["from"])
            snap_lowest = lowest
        except (ValueError, KeyError, TypeError) as exc:
            raise FSMError(f"malformed snapshot metadata: {exc}") from exc
        total_records = nxt - start
        total_bytes = int(state.get("bytes", 0))
        with self._lock:
            self._generation += 1
            current = self._detach()
        if current is None:
            raise FSMError("a restore is already in progress")
        try:
            if start < current.lowest_offset or start > current.next_offset:
                if start != lowest:
                    raise FSMError(
                        f"the snapshot at index {meta.index} needs the records below {start}, "
                        f"but the commit log holds {current.lowest_offset}.."
                        f"{current.next_offset - 1}"
                    )
                current.reset(start)  # the leader holds nothing below ``start`` either
            elif start <= current.highest_offset:
                current.truncate_after(start - 1)
            if start < nxt:
                mark = [_PROGRESS_BYTES]

                def progress(records: int, done: int) -> None:
                    if done >= mark[0] or records == total_records:
                        mark[0] = done + _PROGRESS_BYTES
                        log.info(
                            "catch-up from the snapshot at index %d: %d of %d bytes, "
                            "%d of %d records",
                            meta.index,
                            done,
                            total_bytes,
                            records,
                            total_records,
                        )

                def rest() -> Iterator[bytes]:
                    while chunk := source.read(1 << 20):
                        yield chunk

                current.append_stream(rest(), progress)
            if current.next_offset != nxt:
                raise FSMError(
                    f"after the snapshot at index {meta.index} the commit log ends at "
                    f"{current.next_offset}, expected {nxt}"
                )
            lowest = min(max(snap_lowest, current.lowest_offset), nxt)
            current.sync_blocking()
            with self._lock:
                _write_checkpoint(self.directory, meta.index, nxt, table.dump(), lowest)
                self._checkpointed = (self._generation, meta.index, lowest)
                self._checkpointed_next = nxt
            # segments wholly below the retention lowest go once it is checkpointed
            _remove_segments(current.detach_below(lowest))
            self._applied = meta.index
            self.producers = table
            self.highest_offset = current.highest_offset
            self.lowest_offset = lowest
        finally:
            self._attach(current)
        log.info(
            "commit log restored from the snapshot at index %d: offsets %d..%d (%d records "
            "received)",
            meta.index,
            current.lowest_offset,
            current.highest_offset,
            total_records,
        )

    def _restore_copy(self, source: SnapshotSource, meta: SnapshotMeta, first: bytes) -> None:
        """Restore a snapshot of format 1 (or older): a copy of the whole commit log."""
        restoring = self.directory / _RESTORE_DIR
        shutil.rmtree(restoring, ignore_errors=True)
        config = LogConfig(
            max_store_bytes=self._config.max_store_bytes,
            max_index_bytes=self._config.max_index_bytes,
            sync=SyncPolicy.ALWAYS,
        )

        table = ProducerTable(self.producers.config)
        snap_lowest = 0
        if first[: len(SNAPSHOT_MAGIC)] == SNAPSHOT_MAGIC and len(first) == _SNAPSHOT_HEAD.size:
            _, size = _SNAPSHOT_HEAD.unpack(first)
            packed = _read_exact(source, size)
            try:
                state = msgpack.unpackb(packed, use_list=True, raw=False)
                table.load(state["producers"])
                snap_lowest = int(state.get("lowest", 0))
            except (ValueError, KeyError, TypeError, msgpack.ExtraData) as exc:
                raise FSMError(f"malformed producer table in the snapshot: {exc}") from exc
            first = b""
        # else: a snapshot from before the table existed: the commit log's stream only

        def chunks() -> Iterator[bytes]:
            if first:
                yield first
            while chunk := source.read(1 << 20):
                yield chunk

        Log.restore(restoring, chunks(), config).close_sync()
        with self._lock:
            self._generation += 1
            old = self._detach()
            with contextlib.suppress(FileNotFoundError):
                (self.directory / CHECKPOINT_FILE).unlink()
            if old is not None:
                old.close_sync()
            shutil.rmtree(self.directory / LOG_DIR, ignore_errors=True)
            os.replace(restoring, self.directory / LOG_DIR)
            new = Log.open(self.directory / LOG_DIR, self._config)
            lowest = min(max(snap_lowest, new.lowest_offset), new.next_offset)
            _remove_segments(new.detach_below(lowest))
            _write_checkpoint(self.directory, meta.index, new.next_offset, table.dump(), lowest)
            self._checkpointed = (self._generation, meta.index, lowest)
            self._checkpointed_next = new.next_offset
            self._applied = meta.index
            self.producers = table
            self.highest_offset = new.highest_offset
            self.lowest_offset = lowest
            self._attach(new)
        log.info(
            "commit log restored from the snapshot at index %d: offsets %d..%d",
            meta.index,
            lowest,
            new.highest_offset,
        )

    def _detach(self) -> Log | None:
        """Take the log away from readers, on the loop (so that no read is in progress)."""
        loop = self._loop
        on_loop = False
        with contextlib.suppress(RuntimeError):
            on_loop = asyncio.get_running_loop() is loop
        if loop is None or not loop.is_running() or on_loop:
            old, self._log = self._log, None
            return old
        box: list[Log | None] = []
        done = threading.Event()

        def swap() -> None:
            box.append(self._log)
            self._log = None
            done.set()

        loop.call_soon_threadsafe(swap)
        if not done.wait(30.0):
            raise FSMError("the event loop did not release the commit log within 30 s")
        return box[0]

    def _attach(self, new: Log) -> None:
        """Hand the new log to readers (one atomic assignment), then wake them on the loop.

        Set here, not in a loop callback, so that entries applied right after the restore
        returns always find it."""
        self._log = new
        loop = self._loop
        if loop is not None and loop.is_running() and self.on_apply is not None:
            loop.call_soon_threadsafe(self.on_apply)

    # -- retention --------------------------------------------------------------------------

    def _schedule_prune(self) -> None:
        """Persist the new lowest offset, then delete the segments below it, off the loop."""
        loop = self._loop
        if loop is None:  # not bound yet (Raft replays before DistributedLog starts)
            with contextlib.suppress(RuntimeError):
                loop = asyncio.get_running_loop()
        if loop is None or not loop.is_running():
            self._prune_now()  # no loop (tools, tests): do it here
            return
        if self._prune_task is None or self._prune_task.done():
            self._prune_task = loop.create_task(self._prune(), name="fsm-retention")

    def _prune_now(self) -> None:
        current = self._log
        if current is None or current.closed:
            return
        current.sync_blocking()
        lowest = self.lowest_offset
        producers = self.producers.dump()
        _write_checkpoint(self.directory, self._applied, current.next_offset, producers, lowest)
        self._checkpointed = (self._generation, self._applied, lowest)
        self._checkpointed_next = current.next_offset
        _remove_segments(current.detach_below(lowest))

    async def _prune(self) -> None:
        while True:
            lowest = self.lowest_offset
            await self.checkpoint()  # the lowest durable before any segment below it goes
            generation, _, durable_lowest = self._checkpointed
            current = self._log
            if current is None or current.closed or generation != self._generation:
                return
            try:
                dropped = current.detach_below(durable_lowest)  # on the loop: no read runs
                if dropped:
                    await asyncio.to_thread(_remove_segments, dropped)
                    log.info(
                        "retention: lowest offset %d, %d segment(s) deleted",
                        durable_lowest,
                        len(dropped),
                        extra={"offset": durable_lowest},
                    )
            except Exception as exc:  # the next retention entry or a restart does it
                log.warning("retention at offset %d: deleting segments failed: %s", lowest, exc)
                return
            if durable_lowest < lowest:
                return  # the checkpoint failed (logged): the next retention entry retries
            if self.lowest_offset == lowest:
                return

    # -- checkpoints ------------------------------------------------------------------------

    def bind_loop(self) -> None:
        """Remember the running loop (restore runs in a thread and must reach it)."""
        self._loop = asyncio.get_running_loop()

    def _durable_checkpoint(
        self, index: int, nxt: int, producers: dict[str, Any], lowest: int
    ) -> None:
        """Blocking (the snapshot's worker thread): fsync the commit log and checkpoint
        (index, nxt, producers, lowest); raises if that failed, so the snapshot fails with
        it."""
        loop = self._loop
        on_loop = False
        with contextlib.suppress(RuntimeError):
            on_loop = asyncio.get_running_loop() is loop
        if loop is not None and loop.is_running() and not on_loop:
            future = asyncio.run_coroutine_threadsafe(
                self._checkpoint_at(index, nxt, producers, lowest, strict=True), loop
            )
            future.result(timeout=self._config.sync_timeout_s * 2)
            return
        # no loop, or consumed on the loop itself (an in-memory snapshot store): at once
        current = self.log
        current.sync_blocking()
        self._write_if_newer(index, nxt, producers, lowest, self._generation, strict=True)

    def _write_if_newer(
        self,
        index: int,
        nxt: int,
        producers: dict[str, Any],
        lowest: int,
        generation: int,
        *,
        strict: bool,
    ) -> None:
        """Write the checkpoint unless a newer one is durable already (checkpoints never go
        back, nor does their lowest). ``strict``: FSMError if the commit log was replaced
        by a snapshot meanwhile (else nothing is written)."""
        with self._lock:
            if generation != self._generation:
                if strict:
                    raise FSMError("the commit log was replaced by a snapshot meanwhile")
                return
            done = self._checkpointed
            if (generation, index) < done[:2]:
                return
            lowest = max(lowest, done[2]) if generation == done[0] else lowest
            _write_checkpoint(self.directory, index, nxt, producers, lowest)
            self._checkpointed = (generation, index, lowest)
            self._checkpointed_next = nxt

    async def _checkpoint_at(
        self, index: int, nxt: int, producers: dict[str, Any], lowest: int, *, strict: bool
    ) -> None:
        """fsync the commit log (everything written so far, so at least up to ``nxt``),
        then record (index, nxt, producers, lowest) durably. Raises on failure."""
        current = self.log
        generation = self._generation
        await current.sync()
        await asyncio.to_thread(
            self._write_if_newer, index, nxt, producers, lowest, generation, strict=strict
        )

    async def checkpoint(self) -> None:
        """fsync the commit log, then record (applied index, next offset, producer table,
        lowest offset) durably."""
        current = self._log
        if current is None:
            return
        index, nxt = self._applied, current.next_offset
        producers = self.producers.dump()  # the table as of ``index``, taken at once
        lowest = self.lowest_offset
        try:
            await self._checkpoint_at(index, nxt, producers, lowest, strict=False)
        except Exception as exc:  # a later checkpoint or the close one will do
            log.warning("fsm checkpoint at index %d failed: %s", index, exc)

    async def close(self) -> None:
        """Write a last checkpoint and close the log. Idempotent."""
        for task in (self._checkpoint_task, self._prune_task):
            if task is not None and not task.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), 10.0)
        current = self._log
        if current is None or current.closed:
            return
        await self.checkpoint()
        await current.close()

"""Scrub and self-repair: find damaged or diverging records, repair them from replicas.

Three ways a damaged record is found on a node (docs/reliability.md, "Scrub and
self-repair"):

- the **scrubber** re-reads every sealed segment at a bounded rate
  (``rate_bytes_s``; a pass starts again ``pass_interval_s`` after the previous one
  started) and verifies each record's length and CRC-32C, in a worker thread;
- a **read** of the record fails its checksum (the commit log checks every read);
- a **checkpoint hash** disagrees: the leader proposes the content hash of a range of
  sealed records (:func:`~raftlog.distributed.fsm.encode_checkpoint_hash`); every replica
  computes its own after applying the entry (off the apply path) and, on a mismatch,
  compares the range record by record with its peers: where a majority of the copies
  agrees and this node's differs, its copy diverged (with a valid checksum).

A damaged record is kept in :attr:`Scrubber.damaged` (in memory: the next pass finds it
again after a restart) and reads of it answer DATA_LOSS, never its bytes. The repair task
fetches it from a peer over the authenticated gRPC API (``Consume`` with the node's peer
certificate, :class:`RecordFetcher`), verifies it (the CRC stored in the damaged frame's
intact header, or a second peer returning the same bytes, or the majority of a vote),
writes it back over the damaged frame in place (same length; fsynced; read back) and logs
``repaired offset N from peer X``. Nothing here blocks the loop: file work runs in
threads, and every network call is bounded.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import os
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from raftlog.distributed.fsm import CheckpointHash, CommitLogFSM, RestoringError
from raftlog.log import Log
from raftlog.log.framing import checksum
from raftlog.log.scrub import (
    Span,
    hash_span,
    new_digest,
    pace_delay,
    read_span,
    rewrite_frame,
    spans_of,
)
from raftlog.log.segment import segment_name

log = logging.getLogger("raftlog.scrub")

_HEADER = struct.Struct("<II")
#: Records asked of a peer per fetch when a diverging range is compared.
_FETCH_RECORDS = 4096
#: Repair rounds a checkpoint hash may stay unsettled (no majority reachable, damage not
#: repaired) before it is given up (logged); later checkpoints cover later ranges only.
CHECK_ATTEMPTS = 30


@runtime_checkable
class RecordFetcher(Protocol):
    """Reads committed records from another node (the agent injects the gRPC forwarder)."""

    async def fetch(
        self, address: str, offset: int, count: int, *, timeout_s: float
    ) -> list[bytes]:
        """Up to ``count`` consecutive records from ``offset`` on the node at ``address``
        (at least one); raises on any failure, within ``timeout_s`` seconds."""
        ...


class ScrubConfigError(ValueError):
    """A ScrubConfig field is unusable; the message names it."""


@dataclass(frozen=True)
class ScrubConfig:
    """Settings of the :class:`Scrubber`.

    Attributes:
        rate_bytes_s: most bytes per second the scrubber reads, averaged over a pass
            (bursts of one ``chunk_bytes`` read); 0 = no scrubbing (reads and checkpoint
            hashes still find damage, and repairs still run). Default 1 MB/s.
        pass_interval_s: a full pass over the sealed segments starts again this many
            seconds after the previous one started (at once if the pass took longer).
            Default 3600 s.
        chunk_bytes: bytes read from disk at a time. Default 1 MiB (less when the rate is
            below 1 MiB/s: a chunk is at most one second's worth, at least 4 KiB).
        repair_retry_s: pause between two repair rounds while damage remains. Default 1 s.
        fetch_timeout_s: bound of one fetch from a peer. Default 5 s.
        checkpoint_max_bytes: most bytes of sealed segments one checkpoint hash covers (at
            least one segment). Default 64 MiB.
    """

    rate_bytes_s: float = 1_000_000.0
    pass_interval_s: float = 3600.0
    chunk_bytes: int = 1 << 20
    repair_retry_s: float = 1.0
    fetch_timeout_s: float = 5.0
    checkpoint_max_bytes: int = 64 << 20

    def validate(self) -> ScrubConfig:
        for name in ("rate_bytes_s", "pass_interval_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ScrubConfigError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("repair_retry_s", "fetch_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ScrubConfigError(f"{name} must be a positive number of seconds: {value!r}")
        for name in ("chunk_bytes", "checkpoint_max_bytes"):
            if getattr(self, name) < 4096:
                raise ScrubConfigError(f"{name} must be >= 4096 bytes, got {getattr(self, name)}")
        return self

    @property
    def read_bytes(self) -> int:
        """Bytes of one paced read."""
        if self.rate_bytes_s <= 0:
            return self.chunk_bytes
        return max(4096, min(self.chunk_bytes, int(self.rate_bytes_s)))


@dataclass
class ScrubStats:
    """Counters of one node's scrubber (read by the metrics at scrape time)."""

    #: Bytes of sealed segments the scrubber read and verified.
    scrubbed_bytes: int = 0
    #: Full passes over the sealed segments finished.
    passes: int = 0
    #: Damaged records found (by a pass, a read or a checkpoint-hash vote).
    corrupt_records: int = 0
    #: Records rewritten from a peer's verified copy.
    repaired_records: int = 0
    #: Repair attempts that found no usable copy (retried).
    repair_failures: int = 0
    #: Checkpoint hashes this replica compared (equal or not).
    checkpoint_hashes_checked: int = 0
    #: Checkpoint hashes that differed from the proposer's.
    checkpoint_hash_mismatches: int = 0
    #: Checkpoint hashes not compared: this replica did not hold the whole range.
    checkpoint_hashes_skipped: int = 0


class Scrubber:
    """Finds and repairs damaged records of one replica; see the module docs.

    ``peers()`` lists (node id, rpc address) of the other members, the leader first.
    ``fetcher`` None: damage is found and refused, never repaired (a node without peers).
    """

    def __init__(
        self,
        node_id: str,
        fsm: CommitLogFSM,
        peers: Callable[[], Sequence[tuple[str, str]]],
        fetcher: RecordFetcher | None,
        config: ScrubConfig | None = None,
        *,
        leader: Callable[[], str] = lambda: "",
    ) -> None:
        self.node_id = node_id
        self.fsm = fsm
        self._peers = peers
        self._leader = leader
        self.fetcher = fetcher
        self.config = (config or ScrubConfig()).validate()
        self.stats = ScrubStats()
        #: offset -> why it is damaged; reads of these answer DATA_LOSS.
        self.damaged: dict[int, str] = {}
        #: Ranges [first, end) whose hash disagreed and are being compared: reads in them
        #: answer DATA_LOSS until the comparison cleared or repaired them.
        self.suspect: list[tuple[int, int]] = []
        #: Ranges where this replica saw the leader's copy differ from the majority: if it
        #: leads one day, it proposes their hash again first, so the old leader compares
        #: and repairs itself (:meth:`take_recheck`).
        self.recheck: list[tuple[int, int]] = []
        #: Checkpoint hashes to compare, with the rounds each one stayed unsettled.
        self._checks: list[tuple[CheckpointHash, int]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        fsm.on_checkpoint_hash = self.queue_check

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scrub pass loop (when a rate is set) and the repair loop; both are
        owned here and cancelled by :meth:`close`."""
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._repair_loop(), name="scrub-repair"))
        if self.config.rate_bytes_s > 0:
            self._tasks.append(asyncio.create_task(self._scrub_loop(), name="scrub-pass"))

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- what reads consult ---------------------------------------------------------------

    def refused(self, offset: int, *, peer: bool = False) -> str | None:
        """Why a read of ``offset`` must answer DATA_LOSS now (None: it may be read).
        ``peer``: a peer's repair read, which also gets the records of a suspect range
        (valid checksums; it votes on them) but never a damaged one."""
        reason = self.damaged.get(offset)
        if reason is not None:
            return reason
        if peer:
            return None
        for first, end in self.suspect:
            if first <= offset < end:
                return "its range's checkpoint hash differs from the leader's"
        return None

    def readable(self, offset: int, count: int, *, peer: bool = False) -> int:
        """How many records from ``offset`` (at most ``count``) may be read before the
        first damaged or (unless ``peer``, see :meth:`refused`) suspect one."""
        if not self.damaged and not self.suspect:
            return count  # the read path's usual case: nothing to look through
        stop = offset + count
        for damaged in self.damaged:
            if offset <= damaged < stop:
                stop = damaged
        for first, end in [] if peer else self.suspect:
            if first < stop and end > offset:
                stop = max(offset, first)
        return stop - offset

    def report(self, offset: int, reason: str, found_by: str) -> None:
        """Record ``offset`` as damaged (once), log and count it, and wake the repair."""
        if offset in self.damaged:
            return
        self.damaged[offset] = reason
        self.stats.corrupt_records += 1
        log.error(
            "node %s: record at offset %d in segment %s is damaged (%s), found by %s; "
            "reads of it answer DATA_LOSS until it is repaired from a replica",
            self.node_id,
            offset,
            self._segment_of(offset),
            reason,
            found_by,
            extra={"offset": offset},
        )
        self._wake.set()

    def queue_check(self, checkpoint: CheckpointHash) -> None:
        """A checkpoint-hash entry was applied: compare this replica's hash (later, in the
        repair task; never on the apply path)."""
        self._checks.append((checkpoint, 0))
        self._wake.set()

    def _segment_of(self, offset: int) -> str:
        try:
            segments = self.fsm.log.segments
        except RestoringError:
            return "?"
        bases = [s.base_offset for s in segments]
        i = bisect.bisect_right(bases, offset) - 1
        return segment_name(bases[i]) if i >= 0 else "?"

    # -- the scrub pass --------------------------------------------------------------------

    async def _scrub_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.scrub_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a replaced log, a deleted file: the next pass
                log.warning("node %s: scrub pass stopped: %s", self.node_id, exc)
            wait = self.config.pass_interval_s - (loop.time() - started)
            await asyncio.sleep(max(wait, 0.5))

    async def scrub_pass(self) -> int:
        """Verify every record of the sealed segments once, paced; the bytes read."""
        loop = asyncio.get_running_loop()
        started, done = loop.time(), 0
        try:
            bounds = [(s.base_offset, s.next_offset) for s in self.fsm.log.segments[:-1]]
        except RestoringError:
            return 0
        for base, nxt in bounds:
            try:
                commit_log = self.fsm.log
            except RestoringError:
                return done
            first = max(base, self.fsm.lowest_offset)
            if first >= nxt or commit_log.closed:
                continue
            for span in spans_of(commit_log, first, nxt, sealed_only=True):
                for part in span.split(self.config.read_bytes):
                    try:
                        _, damage = await asyncio.to_thread(read_span, part)
                    except OSError:
                        break  # retention deleted the segment meanwhile
                    done += part.nbytes
                    self.stats.scrubbed_bytes += part.nbytes
                    for d in damage:
                        if d.offset >= self.fsm.lowest_offset:
                            self.report(d.offset, d.reason, "the scrubber")
                    delay = pace_delay(done, loop.time() - started, self.config.rate_bytes_s)
                    if delay > 0:
                        await asyncio.sleep(delay)
        self.stats.passes += 1
        log.log(
            logging.INFO if done else logging.DEBUG,
            "node %s: scrub pass done: %d bytes of sealed segments verified in %.1f s",
            self.node_id,
            done,
            loop.time() - started,
        )
        return done

    # -- reading a range off the loop ------------------------------------------------------

    async def digest_range(self, first: int, end: int) -> bytes | None:
        """This replica's content hash of ``first..end-1``, read and hashed in a thread a
        chunk at a time (bounded memory, the loop never hashes); damaged records are
        reported and make the result None."""
        commit_log = self.fsm.log
        h = new_digest()
        ok = True
        for span in spans_of(commit_log, first, end):
            for part in span.split(self.config.chunk_bytes):
                damage = await asyncio.to_thread(hash_span, part, h)
                for d in damage:
                    self.report(d.offset, d.reason, "a checkpoint hash")
                    ok = False
        return h.digest() if ok else None

    async def read_range(self, first: int, end: int) -> list[bytes] | None:
        """The records ``first..end-1`` of this replica, read in a thread; damaged ones are
        reported and make the result None."""
        commit_log = self.fsm.log
        out: list[bytes] = []
        ok = True
        for span in spans_of(commit_log, first, end):
            for part in span.split(self.config.chunk_bytes):
                records, damage = await asyncio.to_thread(read_span, part)
                for d in damage:
                    self.report(d.offset, d.reason, "a checkpoint hash")
                    ok = False
                out.extend(r for r in records if r is not None)
        if len(out) != end - first:
            ok = False
        return out if ok else None

    def take_recheck(self) -> tuple[int, int] | None:
        """On a new leader: a range where the previous leader's copy differed from the
        majority, to hash again (None when there is none, or it is gone by retention)."""
        while self.recheck:
            first, end = self.recheck.pop(0)
            if first >= self.fsm.lowest_offset and end <= self.fsm.highest_offset + 1:
                return first, end
        return None

    def next_checkpoint_range(self) -> tuple[int, int] | None:
        """On the leader: the sealed records the next checkpoint hash covers, from where
        the last one ended, at most ``checkpoint_max_bytes`` (at least one segment)."""
        try:
            segments = self.fsm.log.segments
        except RestoringError:
            return None
        first = max(self.fsm.hash_next, self.fsm.lowest_offset)
        end, total = first, 0
        for seg in segments[:-1]:
            if seg.next_offset <= first:
                continue
            if total and total + seg.store.size > self.config.checkpoint_max_bytes:
                break
            total += seg.store.size
            end = seg.next_offset
        end = min(end, self.fsm.highest_offset + 1)
        return (first, end) if end > first else None

    # -- repair ---------------------------------------------------------------------------

    async def _repair_loop(self) -> None:
        while True:
            if not self.damaged and not self._checks:
                self._wake.clear()
                await self._wake.wait()
            try:
                await self.repair_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("node %s: repair round failed: %s", self.node_id, exc)
            if self.damaged or self._checks:
                await asyncio.sleep(self.config.repair_retry_s)

    async def repair_round(self) -> None:
        """Try once to repair every damaged record, then compare every queued checkpoint
        hash (a range that could not be settled stays queued)."""
        for offset in sorted(self.damaged):
            await self._repair_record(offset)
        checks, self._checks = self._checks, []
        for checkpoint, attempts in checks:
            if await self._check(checkpoint, attempts == 0):
                continue
            if attempts + 1 < CHECK_ATTEMPTS:
                self._checks.append((checkpoint, attempts + 1))
                continue
            self._unsuspect((checkpoint.first, checkpoint.end))
            log.error(
                "node %s: gave up comparing offsets %d..%d with the leader's hash after %d "
                "rounds (no majority of copies reachable, or damage left unrepaired); "
                "serving them again",
                self.node_id,
                checkpoint.first,
                checkpoint.end - 1,
                CHECK_ATTEMPTS,
            )

    def leader_of_peers(self) -> str:
        """The leader's id as the peer list names it ("" when unknown)."""
        return self._leader()

    def _ordered_peers(self) -> list[tuple[str, str]]:
        return [(p, a) for p, a in self._peers() if p != self.node_id and a]

    async def _repair_record(self, offset: int) -> bool:
        fsm = self.fsm
        if offset < fsm.lowest_offset or offset > fsm.highest_offset:
            self.damaged.pop(offset, None)  # retention dropped it (or it is not ours)
            return True
        commit_log = fsm.log
        spans = spans_of(commit_log, offset, offset + 1)
        if not spans:
            self.damaged.pop(offset, None)  # retention took its segment meanwhile
            return True
        span = spans[0]
        position, size = span.frame(0)
        header = await asyncio.to_thread(_read_header, span, position)
        fetcher = self.fetcher
        if fetcher is None:
            return False
        seen: list[bytes] = []
        for peer, address in self._ordered_peers():
            try:
                got = await fetcher.fetch(address, offset, 1, timeout_s=self.config.fetch_timeout_s)
            except Exception as exc:
                log.info(
                    "node %s: fetching offset %d from %s failed: %s",
                    self.node_id,
                    offset,
                    peer,
                    exc,
                )
                continue
            if not got:
                continue
            payload = got[0]
            if len(payload) + 8 != size:
                log.warning(
                    "node %s: peer %s holds %d bytes at offset %d, the damaged frame %d: "
                    "not rewritten in place",
                    self.node_id,
                    peer,
                    len(payload),
                    offset,
                    size - 8,
                )
                continue
            intact_header = header == (len(payload), checksum(payload))
            if intact_header or payload in seen:
                how = "its stored checksum" if intact_header else "two peers agree"
                if await self._rewrite(commit_log, span, offset, payload):
                    log.warning(
                        "node %s: repaired offset %d from peer %s (segment %s; verified: %s)",
                        self.node_id,
                        offset,
                        peer,
                        self._segment_of(offset),
                        how,
                        extra={"offset": offset, "peer": peer},
                    )
                    return True
            seen.append(payload)
        self.stats.repair_failures += 1
        log.info(
            "node %s: offset %d not repaired yet (no verified copy from %d peer(s)); retrying",
            self.node_id,
            offset,
            len(seen),
        )
        return False

    async def _rewrite(self, commit_log: Log, span: Span, offset: int, payload: bytes) -> bool:
        position, size = span.frame(0)
        try:
            await asyncio.to_thread(rewrite_frame, span.path, position, size, payload)
            if self.fsm.log is not commit_log or commit_log.read(offset) != payload:
                return False
        except Exception as exc:
            log.error("node %s: rewriting offset %d failed: %s", self.node_id, offset, exc)
            return False
        self.damaged.pop(offset, None)
        self.stats.repaired_records += 1
        return True

    async def _check(self, checkpoint: CheckpointHash, first_time: bool = True) -> bool:
        """Compare this replica's hash of the checkpoint's range; True when settled (equal,
        skipped, or compared and repaired), False to try again later (a mismatch is
        counted and logged the ``first_time`` only)."""
        first, end = checkpoint.first, checkpoint.end
        fsm = self.fsm
        if first < fsm.lowest_offset or end > fsm.highest_offset + 1 or first == end:
            self.stats.checkpoint_hashes_skipped += 1
            return True
        if any(first <= o < end for o in self.damaged):
            return False  # the record repair goes first; compare once it is done
        try:
            mine = await self.digest_range(first, end)
        except (OSError, RestoringError) as exc:
            log.info("node %s: checkpoint %d..%d not compared: %s", self.node_id, first, end, exc)
            self.stats.checkpoint_hashes_skipped += 1
            return True
        if mine is None:
            return False
        if first_time:
            self.stats.checkpoint_hashes_checked += 1
        if mine == checkpoint.digest:
            return True
        if first_time:
            self.stats.checkpoint_hash_mismatches += 1
        (log.error if first_time else log.debug)(
            "node %s: checkpoint hash mismatch for offsets %d..%d: here %s, the leader's %s; "
            "comparing the range with the replicas",
            self.node_id,
            first,
            end - 1,
            mine.hex(),
            checkpoint.digest.hex(),
            extra={"offset": first},
        )
        rng = (first, end)
        if rng not in self.suspect:  # refused until settled or given up
            self.suspect.append(rng)
        settled = await self._vote(first, end, checkpoint.digest)
        if settled:
            self._unsuspect(rng)
        return settled

    def _unsuspect(self, rng: tuple[int, int]) -> None:
        with contextlib.suppress(ValueError):
            self.suspect.remove(rng)

    async def _vote(self, first: int, end: int, digest: bytes) -> bool:
        """Compare ``first..end-1`` record by record with every reachable peer, a chunk of
        records at a time; rewrite the records where a majority of the copies agrees and
        this one differs. True when every record was decided."""
        fetcher = self.fetcher
        peers = self._ordered_peers()
        if fetcher is None or not peers:
            return False
        quorum = (len(peers) + 1) // 2 + 1
        for lo in range(first, end, _FETCH_RECORDS):
            hi = min(end, lo + _FETCH_RECORDS)
            mine = await self.read_range(lo, hi)
            if mine is None:
                return False  # damaged meanwhile: repaired first, compared next round
            copies = await self._fetch_copies(fetcher, peers, lo, hi)
            if len(copies) + 1 < quorum:
                return False  # too few copies for a majority now: try again later
            if not await self._decide(lo, mine, copies, quorum):
                return False
        again = await self.digest_range(first, end)
        log.info(
            "node %s: offsets %d..%d compared with the replicas; %s the leader's hash now",
            self.node_id,
            first,
            end - 1,
            "they match" if again == digest else "they still differ from",
        )
        return True

    async def _fetch_copies(
        self, fetcher: RecordFetcher, peers: list[tuple[str, str]], lo: int, hi: int
    ) -> dict[str, list[bytes]]:
        """Every reachable peer's records ``lo..hi-1`` (peers that fail are left out)."""
        copies: dict[str, list[bytes]] = {}
        for peer, address in peers:
            got: list[bytes] = []
            try:
                while len(got) < hi - lo:
                    got += await fetcher.fetch(
                        address,
                        lo + len(got),
                        hi - lo - len(got),
                        timeout_s=self.config.fetch_timeout_s,
                    )
            except Exception as exc:
                log.info(
                    "node %s: fetching %d..%d from %s failed: %s",
                    self.node_id,
                    lo,
                    hi - 1,
                    peer,
                    exc,
                )
                continue
            copies[peer] = got[: hi - lo]
        return copies

    async def _decide(
        self, lo: int, mine: list[bytes], copies: dict[str, list[bytes]], quorum: int
    ) -> bool:
        """The per-record vote over ``lo..``; False if a record had no majority."""
        commit_log = self.fsm.log
        leader = self.leader_of_peers()
        decided = True
        for i, local in enumerate(mine):
            offset = lo + i
            votes = Counter([local, *(c[i] for c in copies.values())])
            best, count = votes.most_common(1)[0]
            if count < quorum:
                decided = False
                continue
            if best == local:
                for peer, c in copies.items():
                    if (
                        c[i] != local
                        and peer == leader
                        and (lo, lo + len(mine)) not in self.recheck
                    ):
                        self.recheck.append((lo, lo + len(mine)))
                    if c[i] != local:
                        log.error(
                            "node %s: peer %s holds different bytes at offset %d than the "
                            "majority%s",
                            self.node_id,
                            peer,
                            offset,
                            " (the leader: it is repaired once another node leads and hashes "
                            "this range again)"
                            if peer == leader
                            else "; it repairs itself when it compares",
                            extra={"offset": offset, "peer": peer},
                        )
                continue
            source = next(p for p, c in copies.items() if c[i] == best)
            spans = spans_of(commit_log, offset, offset + 1)
            if not spans:
                continue  # retention took it meanwhile
            if len(best) + 8 != spans[0].frame(0)[1]:
                self.report(offset, "diverged from the replicas with another length", "a vote")
                continue
            self.damaged[offset] = "diverged from the replicas"
            self.stats.corrupt_records += 1
            if await self._rewrite(commit_log, spans[0], offset, best):
                log.warning(
                    "node %s: repaired offset %d from peer %s (it diverged from the majority "
                    "with a valid checksum)",
                    self.node_id,
                    offset,
                    source,
                    extra={"offset": offset, "peer": source},
                )
        return decided


def _read_header(span: Span, position: int) -> tuple[int, int] | None:
    """The (length, check) stored at ``position`` of the span's file (a worker thread)."""
    try:
        fd = os.open(span.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        raw = os.pread(fd, _HEADER.size, position)
    finally:
        os.close(fd)
    if len(raw) < _HEADER.size:
        return None
    length, check = _HEADER.unpack(raw)
    return int(length), int(check)

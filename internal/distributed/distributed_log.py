"""DistributedLog: the commit log replicated by Raft, as the gRPC server sees it.

It implements the server's :class:`~raftlog.domain.protocols.CommitLog` and
:class:`~raftlog.domain.protocols.ServerLister`, and the membership
:class:`~raftlog.discovery.Handler` (join/leave on the leader)::

    append(records) ── leader? ──yes──> RaftNode.propose(encode_batch(records))
         │                                  │ queued; every proposal queued while the
         │                                  │ previous round writes goes into ONE round
         │                                  v (one log write + fsync, one AppendEntries)
         │                           committed on a quorum -> CommitLogFSM.apply on every
         │                           replica -> offsets (first, last) -> wake readers
         └── no ──> forward Produce to the leader (peer mTLS, bounded) or
                    NOT_LEADER / UNAVAILABLE with the leader hint

``append_idempotent(records, producer_id, sequence)`` is the same with the idempotent
producer: the leader stamps its wall clock into the entry and the state machine decides,
on every replica alike, whether the pair is new (appended), a duplicate (the first
offsets, nothing appended) or too old (SequenceTooOldError); see
:mod:`raftlog.distributed.fsm`. Before proposing, a node whose own table already holds the
pair answers from it (what a replica applied is committed), saving a Raft round.

Reads (``read``/``read_batch``) serve what this replica has applied: applied entries are
committed, so a reader never sees an uncommitted record. ``read_consistent`` adds a
ReadIndex barrier on the leader (linearizable). A read below the lowest offset (retention)
is OUT_OF_RANGE with the lowest and highest offsets.

Retention (``retention_bytes``, ``retention_age_s``): every ``retention_interval`` seconds
the leader looks at its own sealed segments (never the active one) and picks the new
lowest offset: the start of the first segment it keeps once the oldest segments were
dropped until the rest holds at most ``retention_bytes`` bytes (store files: records plus
8 bytes of framing each), and once every segment whose last write (its store file's
modification time on the leader) is older than ``retention_age_s`` was dropped. It
proposes that offset as a retention entry (:func:`~raftlog.distributed.fsm.encode_retention`);
every replica applies it the same way (see :mod:`raftlog.distributed.fsm`).

Scrub and self-repair (:mod:`raftlog.distributed.scrub`): a :class:`Scrubber` owned here
re-reads the sealed segments at ``scrub.rate_bytes_s`` and repairs damaged records from
peers (``fetcher``); a read of a damaged record answers DataLossError (DATA_LOSS), never
its bytes. Every ``checkpoint_hash_interval`` seconds the leader proposes the content hash
of the sealed records since the last one (:func:`~raftlog.distributed.fsm.encode_checkpoint_hash`);
each replica compares its own after applying it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry import trace

from raftlog.api.contract import Key
from raftlog.distributed.forwarding import Forwarder, ForwardError, forwarded_call
from raftlog.distributed.fsm import (
    CommitLogFSM,
    RestoringError,
    encode_batch,
    encode_checkpoint_hash,
    encode_idempotent_batch,
    encode_retention,
)
from raftlog.distributed.scrub import RecordFetcher, Scrubber, ScrubConfig
from raftlog.distributed.status import NodeStatus, members_of, role_of
from raftlog.domain.errors import (
    AdminRefusedError,
    DataLossError,
    DeadlineError,
    DiskFailedError,
    DomainError,
    InvalidArgumentError,
    NoSpaceError,
    NotLeaderError,
    NotMemberError,
    RecordTooLargeError,
    SequenceTooOldError,
    StorageError,
    UnavailableError,
)
from raftlog.domain.protocols import Appended, ServerInfo
from raftlog.log import CorruptRecordError, OffsetOutOfRangeError
from raftlog.log.errors import DurabilityError as LogDurabilityError
from raftlog.raft import NO_NODE, Suffrage
from raftlog.raft import NotLeaderError as RaftNotLeaderError
from raftlog.raft.errors import (
    ConfChangeError,
    ConfChangeInProgressError,
    DiskFullError,
    RaftError,
    TransferError,
)
from raftlog.raft.node import (
    ApplyResult,
    NodeClosedError,
    NodeFailedError,
    OutcomeUnknownError,
    RaftNode,
    WaitTimeoutError,
)
from raftlog.telemetry.audit import NO_AUDIT, AuditSink

log = logging.getLogger("raftlog.distributed")

#: Longest a follower waits, after a write it forwarded was acknowledged by the leader, to
#: have applied it itself before answering (read-your-writes on the node called), seconds.
FORWARD_APPLY_WAIT_S = 1.0


class ProposalObserver(Protocol):
    """Told how long each batch this leader proposed took to commit and apply (metrics)."""

    def observe_proposal(self, seconds: float) -> None: ...


def _no_space(exc: DiskFullError) -> NoSpaceError:
    return NoSpaceError(str(exc), exc.node_id, exc.directory)


def _node_failed(node_id: str, exc: NodeFailedError) -> DomainError:
    if isinstance(exc.__cause__, OSError | LogDurabilityError):
        return DiskFailedError(f"{exc}; write through another node", {"node_id": node_id})
    return StorageError(f"the Raft node failed: {exc}")


class DistributedConfigError(ValueError):
    """A DistributedConfig field is unusable; the message names it."""


@dataclass(frozen=True)
class DistributedConfig:
    """Settings of :class:`DistributedLog`. Times in seconds.

    Attributes:
        append_timeout: longest time an append waits for a leader, its commit and apply,
            including forwarding to the leader. Default 10 s.
        leader_wait: when no leader is known, how long an append waits for one before
            answering UNAVAILABLE with the hint. Default 3 s (bounded by append_timeout).
        promote_interval: how often the leader checks whether a learner has caught up
            and promotes it to voter. Default 0.2 s.
        promote_max_lag: a learner is caught up when its log is within this many entries
            of the leader's last entry. Default 16 entries.
        change_timeout: bound of one membership change (add, promote, remove). Default 10 s.
        retention_bytes: the leader drops the oldest whole segments while the rest holds
            more than this many bytes (module docs). 0 = no limit (the default).
        retention_age_s: the leader drops every segment whose last write is older than
            this many seconds. 0 = no limit (the default).
        retention_interval: how often the leader checks retention, seconds. Default 1 s.
        checkpoint_hash_interval: how often the leader proposes the content hash of the
            sealed records since the last one, seconds; 0 = never. Default 60 s.
        scrub: the scrubber's settings (:class:`~raftlog.distributed.scrub.ScrubConfig`).
    """

    append_timeout: float = 10.0
    leader_wait: float = 3.0
    promote_interval: float = 0.2
    promote_max_lag: int = 16
    change_timeout: float = 10.0
    retention_bytes: int = 0
    retention_age_s: float = 0.0
    retention_interval: float = 1.0
    checkpoint_hash_interval: float = 60.0
    scrub: ScrubConfig = field(default_factory=ScrubConfig)

    def validate(self) -> DistributedConfig:
        """Raise DistributedConfigError naming the first unusable field; return self."""
        for name in (
            "append_timeout",
            "leader_wait",
            "promote_interval",
            "change_timeout",
            "retention_interval",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise DistributedConfigError(
                    f"{name} must be a positive number of seconds, got {value!r}"
                )
        if self.promote_max_lag < 0:
            raise DistributedConfigError(
                f"promote_max_lag must be >= 0 entries, got {self.promote_max_lag}"
            )
        if self.retention_bytes < 0:
            raise DistributedConfigError(
                f"retention_bytes must be >= 0 (0 = no limit), got {self.retention_bytes}"
            )
        every = self.checkpoint_hash_interval
        if not isinstance(every, int | float) or not math.isfinite(every) or every < 0:
            raise DistributedConfigError(
                f"checkpoint_hash_interval must be >= 0 seconds (0 = never), got {every!r}"
            )
        self.scrub.validate()
        age = self.retention_age_s
        if not isinstance(age, int | float) or not math.isfinite(age) or age < 0:
            raise DistributedConfigError(
                f"retention_age_s must be >= 0 seconds (0 = no limit), got {age!r}"
            )
        return self


class DistributedLog:
    """A replicated commit log over one :class:`RaftNode` and its :class:`CommitLogFSM`.

    Build the FSM, the node with that FSM, then this; ``start()`` after the node started.
    ``forwarder``: how a follower forwards a write to the leader (the agent injects
    :class:`raftlog.server.forward.GrpcForwarder`); None: followers answer NOT_LEADER with
    the hint instead of forwarding.
    """

    def __init__(
        self,
        node: RaftNode,
        fsm: CommitLogFSM,
        *,
        forwarder: Forwarder | None = None,
        config: DistributedConfig | None = None,
        observer: ProposalObserver | None = None,
        tracer: trace.Tracer | None = None,
        fetcher: RecordFetcher | None = None,
    ) -> None:
        self.node = node
        #: Proposal latency goes here (None: not measured).
        self.observer = observer
        #: Spans for propose-to-commit, apply and forwarding (None: tracing off, no spans).
        self.tracer = tracer
        if tracer is not None:
            fsm.keep_apply_windows(True)
        self.fsm = fsm
        self.forwarder = forwarder
        #: Where learner promotions are audited (docs/security.md); off: NO_AUDIT.
        self.audit: AuditSink = NO_AUDIT
        self.config = (config or DistributedConfig()).validate()
        self._changed: asyncio.Future[None] | None = None
        self._closing = False
        self._change_lock = asyncio.Lock()
        self._promoter: asyncio.Task[None] | None = None
        self._retainer: asyncio.Task[None] | None = None
        self._hasher: asyncio.Task[None] | None = None
        #: Checkpoint-hash entries this node proposed as leader (for tests and stats).
        self.checkpoint_hash_proposals = 0
        #: Finds and repairs damaged records (owned here: started and closed with it).
        self.scrubber = Scrubber(
            node.id,
            fsm,
            self._peer_addresses,
            fetcher,
            self.config.scrub,
            leader=lambda: self.leader_id,
        )
        #: Retention entries this node proposed as leader (for tests and stats).
        self.retention_proposals = 0
        fsm.on_apply = self._notify
        #: Appends forwarded to the leader / served locally (for tests and stats).
        self.forwarded = 0
        self.local_appends = 0
        #: Idempotent retries answered from this node's table without a Raft round.
        self.duplicates_short_circuited = 0

    def start(self) -> None:
        """Start the learner promoter (owned here, cancelled by :meth:`close`)."""
        self.fsm.bind_loop()
        if self._promoter is None:
            self._promoter = asyncio.create_task(self._promote_loop(), name="raft-promoter")
        config = self.config
        if self._retainer is None and (config.retention_bytes or config.retention_age_s):
            self._retainer = asyncio.create_task(self._retention_loop(), name="raft-retention")
        if self._hasher is None and config.checkpoint_hash_interval > 0:
            self._hasher = asyncio.create_task(self._checkpoint_hash_loop(), name="raft-hash")
        self.scrubber.start()

    def set_retention(self, retention_bytes: int, retention_age_s: float) -> None:
        """Change the retention limits while running (a topic's settings changed): the
        next retention check (every ``retention_interval``) applies them. 0 = no limit."""
        self.config = dataclasses.replace(
            self.config, retention_bytes=retention_bytes, retention_age_s=retention_age_s
        ).validate()
        if self._retainer is None and (retention_bytes or retention_age_s) and not self._closing:
            self._retainer = asyncio.create_task(self._retention_loop(), name="raft-retention")

    # -- writes --------------------------------------------------------------------------

    async def append(self, records: Sequence[bytes]) -> tuple[int, int]:
        """Replicate ``records`` as one batch; (first, last) once committed and applied.

        On a follower the batch is forwarded to the leader (once per leader, only retried
        when the leader surely did not append it, so no duplicates come from here).
        Errors: NotLeaderError / UnavailableError (retriable, with the leader hint),
        DeadlineError (the outcome is unknown), StorageError.
        """
        done = await self._replicate(records, "", 0)
        return done.first, done.last

    async def append_idempotent(
        self, records: Sequence[bytes], producer_id: str, sequence: int
    ) -> Appended:
        """Like :meth:`append` for an idempotent producer's request (see the module docs):
        a pair already applied answers with its first offsets and ``duplicate=True``.
        Also raises SequenceTooOldError. The pair was validated by the caller."""
        seen = self.fsm.producers.lookup(producer_id, sequence)
        if seen is not None:
            self.duplicates_short_circuited += 1
            return Appended(seen[0], seen[1], duplicate=True)
        return await self._replicate(records, producer_id, sequence)

    def _check_disk(self, node: RaftNode) -> None:
        """A node whose disk is full or failed takes no writes, not even to forward them:
        the client learns at once where space is missing (or that this node is out)."""
        full = node.disk_full
        if full is not None:
            raise _no_space(full)
        failure = node.failure
        if failure is not None:
            raise _node_failed(node.id, failure)

    async def _replicate(
        self, records: Sequence[bytes], producer_id: str, sequence: int
    ) -> Appended:
        if self._closing:
            raise UnavailableError("the node is shutting down")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.append_timeout
        data = b"" if producer_id else encode_batch(records)
        forwarded = forwarded_call.get()
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise DeadlineError(
                    f"no leader accepted the write within {self.config.append_timeout} s"
                )
            node = self.node
            self._check_disk(node)
            if node.is_leader:
                if producer_id:  # stamped now, by the leader: drives the table's expiry
                    stamp = int(time.time() * 1000)
                    data = encode_idempotent_batch(records, producer_id, sequence, stamp)
                try:
                    res = await self._propose(data, left, len(records))
                except RaftNotLeaderError:
                    if forwarded:
                        raise self._not_leader() from None
                    await self._pause(loop, deadline)
                    continue  # lost leadership before it committed: never appended
                except OutcomeUnknownError as exc:
                    raise DeadlineError(f"write outcome unknown: {exc}") from None
                except NodeClosedError:
                    raise UnavailableError("the node is shutting down") from None
                except DiskFullError as exc:
                    raise _no_space(exc) from None
                except NodeFailedError as exc:
                    raise _node_failed(node.id, exc) from None
                except RaftError as exc:  # transfer in progress and the like: retriable
                    log.debug("append refused by raft: %s", exc)
                    await self._pause(loop, deadline)
                    continue
                self.local_appends += 1
                if forwarded:
                    # the follower that forwarded it waits to have applied it (below):
                    # tell the followers of this commit now, not with the next write
                    node.broadcast_commit()
                return self._outcome(res.result, res.index, len(records))
            if forwarded:
                raise self._not_leader()
            leader, address = node.leader_id, node.leader_address
            if not leader or not address or self.forwarder is None:
                if self.forwarder is None and leader:
                    raise self._not_leader()
                wait = min(left, self.config.leader_wait)
                try:
                    await node.wait_for(self._leader_known, wait)
                except WaitTimeoutError:
                    raise self._not_leader(
                        f"no leader elected within {wait:.1f} s; try again"
                    ) from None
                except NodeClosedError:
                    raise UnavailableError("the node is shutting down") from None
                continue
            try:
                with self._span("raftlog.forward", kind=trace.SpanKind.CLIENT) as span:
                    if span is not None:
                        span.set_attribute("raftlog.leader_id", leader)
                        span.set_attribute("raftlog.records", len(records))
                    result = await self.forwarder.produce(
                        address,
                        records,
                        timeout_s=left,
                        producer_id=producer_id,
                        sequence=sequence,
                    )
            except ForwardError as exc:
                if exc.reason == SequenceTooOldError.reason:
                    raise SequenceTooOldError(
                        producer_id, sequence, int(exc.metadata.get("oldest", "0") or 0)
                    ) from None
                if exc.reason == RecordTooLargeError.reason:  # never RESOURCE_EXHAUSTED
                    raise RecordTooLargeError(
                        int(exc.metadata.get(Key.SIZE, "0") or 0),
                        int(exc.metadata.get(Key.LIMIT, "0") or 0),
                        what=f"forwarded batch of {len(records)} records",
                    ) from None
                if not exc.not_applied:
                    if exc.deadline_exceeded:
                        raise DeadlineError(f"forwarded write outcome unknown: {exc}") from None
                    raise UnavailableError(f"forwarded write failed: {exc}") from None
                log.debug("forward to %s refused (%s); retrying", leader, exc)
                await self._pause(loop, deadline)
                continue
            self.forwarded += 1
            await self._applied_here(node, result.last, min(left, FORWARD_APPLY_WAIT_S))
            return result

    async def _applied_here(self, node: RaftNode, last: int, timeout_s: float) -> None:
        """Read-your-writes on the node the client called: after a forwarded write, wait
        (up to ``timeout_s``) until this follower's commit log holds ``last``, so that a read
        here right after the acknowledgement sees the write. The write is acknowledged by
        the leader either way: past the wait the answer goes out regardless."""
        fsm = self.fsm
        if fsm.highest_offset >= last or timeout_s <= 0:
            return
        with contextlib.suppress(WaitTimeoutError, NodeClosedError, NodeFailedError):
            await node.wait_for(lambda: fsm.highest_offset >= last, timeout_s, f"offset {last}")

    async def _propose(self, data: bytes, timeout_s: float, count: int) -> ApplyResult:
        """``node.propose`` measured (observer) and traced (a ``raftlog.raft.propose``
        span with the apply as its child) when those are on."""
        observer, tracer = self.observer, self.tracer
        if observer is None and tracer is None:
            return await self.node.propose(data, timeout=timeout_s)
        started = time.perf_counter()
        if tracer is None:
            res = await self.node.propose(data, timeout=timeout_s)
        else:
            with tracer.start_as_current_span("raftlog.raft.propose") as span:
                span.set_attribute("raftlog.records", count)
                res = await self.node.propose(data, timeout=timeout_s)
                span.set_attribute("raftlog.raft.index", res.index)
                span.set_attribute("raftlog.raft.term", res.term)
                window = self.fsm.apply_window(res.index)
                if window is not None:
                    apply = tracer.start_span("raftlog.raft.apply", start_time=window[0])
                    apply.set_attribute("raftlog.raft.index", res.index)
                    apply.end(end_time=window[1])
        if observer is not None:
            observer.observe_proposal(time.perf_counter() - started)
        return res

    @contextlib.contextmanager
    def _span(self, name: str, *, kind: trace.SpanKind) -> Iterator[trace.Span | None]:
        """A current span ``name`` when tracing is on; None (and no cost) when off."""
        if self.tracer is None:
            yield None
            return
        with self.tracer.start_as_current_span(name, kind=kind) as span:
            yield span

    @staticmethod
    def _outcome(result: object, index: int, count: int) -> Appended:
        """What the state machine's result for our entry means to the caller."""
        if isinstance(result, Appended):
            return result
        if isinstance(result, SequenceTooOldError):  # a fresh one: the result is shared
            raise SequenceTooOldError(result.producer_id, result.sequence, result.oldest)
        if isinstance(result, int) and not isinstance(result, bool):
            return Appended(result, result + count - 1)
        raise DomainError(f"entry {index} was applied without an offset")

    async def _pause(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Wait a tick or two for the cluster to settle (leader change), bounded."""
        pause = min(self.node.config.tick_interval * 2, deadline - loop.time())
        await asyncio.sleep(max(0.0, pause))

    def _leader_known(self) -> bool:
        return self.node.is_leader or bool(self.node.leader_id)

    def _not_leader(self, message: str | None = None) -> NotLeaderError:
        leader, address = self.node.leader_id, self.node.leader_address
        hint = f"the leader is {leader} at {address}" if leader else "no leader is known"
        return NotLeaderError(
            message or f"node {self.node.id} is not the leader: {hint}",
            {Key.LEADER_ID: leader, Key.LEADER_ADDR: address},
        )

    # -- reads ---------------------------------------------------------------------------

    def read(self, offset: int) -> bytes:
        """The committed record at ``offset`` on this replica."""
        try:
            commit_log = self.fsm.log
        except RestoringError as exc:
            raise UnavailableError(str(exc)) from None
        highest, lowest = self.fsm.highest_offset, self.fsm.lowest_offset
        if offset > highest or offset < lowest:
            raise OffsetOutOfRangeError(offset, lowest, highest)
        refused = self.scrubber.refused(offset, peer=forwarded_call.get())
        if refused is not None:
            raise DataLossError(offset, self.node.id, refused)
        try:
            return commit_log.read(offset)
        except CorruptRecordError as exc:
            self.scrubber.report(exc.offset, exc.reason, "a read")
            raise DataLossError(exc.offset, self.node.id, exc.reason) from None

    def read_batch(self, offset: int, max_bytes: int, max_records: int) -> list[bytes]:
        """Consecutive committed records from ``offset`` on this replica."""
        try:
            commit_log = self.fsm.log
        except RestoringError as exc:
            raise UnavailableError(str(exc)) from None
        highest, lowest = self.fsm.highest_offset, self.fsm.lowest_offset
        if offset > highest or offset < lowest:
            raise OffsetOutOfRangeError(offset, lowest, highest)
        peer = forwarded_call.get()
        limit = self.scrubber.readable(offset, min(max_records, highest - offset + 1), peer=peer)
        if limit == 0:
            reason = self.scrubber.refused(offset, peer=peer) or ""
            raise DataLossError(offset, self.node.id, reason)
        try:
            return commit_log.read_batch(offset, max_bytes, limit)
        except CorruptRecordError as exc:
            self.scrubber.report(exc.offset, exc.reason, "a read")
            raise DataLossError(exc.offset, self.node.id, exc.reason) from None

    async def read_barrier(self, timeout_s: float | None = None) -> int:
        """Linearizable barrier on the leader: after it, reads here see every write
        acknowledged before the call. NotLeaderError on a follower; a node that stopped
        (failed disk) or is closing answers as a write would (DiskFailedError, UnavailableError)."""
        try:
            return await self.node.read_barrier(timeout_s)
        except RaftNotLeaderError:
            raise self._not_leader() from None
        except TimeoutError as exc:
            raise DeadlineError(str(exc)) from None
        except NodeClosedError:
            raise UnavailableError("the node is shutting down") from None
        except NodeFailedError as exc:
            raise _node_failed(self.node.id, exc) from None

    async def read_consistent(self, offset: int, timeout_s: float | None = None) -> bytes:
        """``read`` after a read barrier (linearizable; leader only)."""
        await self.read_barrier(timeout_s)
        return self.read(offset)

    @property
    def lowest_offset(self) -> int:
        """The lowest offset readers may see (the same on every replica: retention is
        decided through Raft)."""
        try:
            self.fsm.log  # noqa: B018 (raises while a snapshot replaces the log)
        except RestoringError:
            return self.fsm.highest_offset + 1
        return self.fsm.lowest_offset

    @property
    def highest_offset(self) -> int:
        """The highest committed offset applied here (``lowest - 1`` when empty)."""
        return self.fsm.highest_offset

    def _notify(self) -> None:
        fut, self._changed = self._changed, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait_for(self, offset: int, timeout_s: float) -> bool:
        """True once ``offset`` is applied here; False after ``timeout_s`` or on close.
        Woken by every apply (no polling)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while offset > self.fsm.highest_offset:
            remaining = deadline - loop.time()
            if self._closing or remaining <= 0:
                return False
            if self._changed is None:
                self._changed = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._changed), remaining)
        return True

    # -- servers / membership --------------------------------------------------------------

    async def get_servers(self) -> list[ServerInfo]:
        """The servers clients may use: every voter with its rpc address, the leader by id.

        A learner is left out: it is still catching up (the leader promotes it once it
        has), so its log may be far behind, and a client of the book's proto cannot tell
        it apart. Only members the leader authenticated are in Raft at all
        (docs/security.md); :meth:`members` lists every member, learners included."""
        leader = self.node.leader_id
        return [
            ServerInfo(
                id=s.id,
                rpc_addr=s.address,
                is_leader=bool(leader) and s.id == leader,
                is_learner=False,
            )
            for s in self.node.membership
            if s.is_voter
        ]

    def is_leader(self) -> bool:
        """Whether this node leads now (membership acts only then)."""
        return self.node.is_leader

    async def members(self) -> Mapping[str, str]:
        """id -> rpc address of every member, this node included."""
        return {s.id: s.address for s in self.node.membership}

    async def join(self, node_id: str, rpc_addr: str) -> None:
        """Add ``node_id`` as a learner (promoted to voter by the leader once caught up).

        Idempotent; a known id at a new address is removed and added again there.
        """
        async with self._change_lock:
            node = self.node
            current = node.membership.get(node_id)
            if current is not None and current.address == rpc_addr:
                return
            timeout = self.config.change_timeout
            if current is not None and self._live(node_id):
                # Two live nodes claim one id (a copied data directory, a reused
                # --node-name): replacing the member would hand its place, and its
                # votes, to the newcomer. Refused; the member must leave first.
                log.error(
                    "refusing %s at %s: member %s is live at %s (two nodes with one id?)",
                    node_id,
                    rpc_addr,
                    node_id,
                    current.address,
                )
                raise InvalidArgumentError(
                    f"node id {node_id!r} is taken by a live member at {current.address}; "
                    f"refusing a second node {node_id!r} at {rpc_addr}"
                )
            if current is not None:
                log.info(
                    "member %s moved to %s: removing, then adding again",
                    node_id,
                    rpc_addr,
                    extra={"peer": node_id},
                )
                await self._change(node.remove_server(node_id, timeout=timeout))
            log.info("adding %s at %s as a learner", node_id, rpc_addr, extra={"peer": node_id})
            await self._change(node.add_learner(node_id, rpc_addr, timeout=timeout))

    def _live(self, node_id: str) -> bool:
        """Whether the leader heard from member ``node_id`` within the last election
        timeout (Raft's recent-activity flag of its progress)."""
        try:
            progress = self.node.status().progress.get(node_id)
        except RaftError:
            return False
        return progress is not None and progress.recent_active

    async def leave(self, node_id: str) -> None:
        """Remove ``node_id`` from the cluster's membership. Idempotent."""
        async with self._change_lock:
            if node_id not in self.node.membership:
                return
            log.info("removing %s from the cluster", node_id, extra={"peer": node_id})
            address = self.node.membership.address_of(node_id)
            await self._change(self.node.remove_server(node_id, timeout=self.config.change_timeout))
            if self.forwarder is not None and address:
                self.forwarder.forget(address)

    async def _change(self, change: Awaitable[int]) -> None:
        """Await one membership change, mapping Raft's errors to the API's."""
        try:
            await change
        except RaftNotLeaderError:
            raise self._not_leader() from None
        except ConfChangeInProgressError as exc:
            raise UnavailableError(f"another membership change is in progress: {exc}") from None

    async def _promote_loop(self) -> None:
        """On the leader: promote learners whose log has caught up with the leader's."""
        interval = self.config.promote_interval
        while True:
            await asyncio.sleep(interval)
            node = self.node
            if not node.is_leader or self._change_lock.locked():
                continue
            try:
                status = node.status()
            except RaftError:
                continue
            last = status.last_index
            for server in status.membership:
                if server.suffrage is not Suffrage.LEARNER:
                    continue
                progress = status.progress.get(server.id)
                if progress is None or progress.match < last - self.config.promote_max_lag:
                    continue
                try:
                    async with self._change_lock:
                        log.info(
                            "learner %s caught up (match %d): promoting",
                            server.id,
                            last,
                            extra={"peer": server.id, "index": last},
                        )
                        await node.promote_learner(server.id, timeout=self.config.change_timeout)
                    self.audit.record(
                        "membership",
                        subject=server.id,
                        peer=server.address,
                        method="promote",
                        decision="promoted",
                    )
                except (RaftError, TimeoutError) as exc:
                    log.info("promotion of %s not done yet: %s", server.id, exc)
                break

    # -- retention ---------------------------------------------------------------------------

    def retention_target(self, now: float | None = None) -> int | None:
        """The lowest offset retention asks for now, from this node's own segments (see
        the module docs); None when nothing is to be dropped."""
        config = self.config
        try:
            segments = self.fsm.log.segments
        except RestoringError:
            return None
        lowest = self.fsm.lowest_offset
        live = [s for s in segments if s.next_offset > lowest]
        sealed = live[:-1]  # the active segment always stays
        target = lowest
        if config.retention_bytes:
            total = sum(s.store.size for s in live)
            for seg in sealed:
                if total <= config.retention_bytes:
                    break
                total -= seg.store.size
                target = max(target, seg.next_offset)
        if config.retention_age_s:
            cutoff = (time.time() if now is None else now) - config.retention_age_s
            for seg in sealed:
                try:
                    written = os.stat(seg.store.path).st_mtime
                except OSError:
                    break
                if written >= cutoff:
                    break
                target = max(target, seg.next_offset)
        return target if target > lowest else None

    async def _retention_loop(self) -> None:
        """On the leader: propose a retention entry when segments are to be dropped."""
        interval = self.config.retention_interval
        while True:
            await asyncio.sleep(interval)
            node = self.node
            if self._closing or not node.is_leader:
                continue
            target = self.retention_target()
            if target is None:
                continue
            entry = encode_retention(target, int(time.time() * 1000))
            try:
                await node.propose(entry, timeout=self.config.append_timeout)
            except Exception as exc:  # lost leadership, full disk...: the next check retries
                log.info("retention to offset %d not proposed: %s", target, exc)
                continue
            self.retention_proposals += 1
            log.info("retention: proposed lowest offset %d", target, extra={"offset": target})

    # -- checkpoint hashes --------------------------------------------------------------------

    def _peer_addresses(self) -> list[tuple[str, str]]:
        """(id, rpc address) of the other members: the leader, then voters, then learners."""
        leader = self.node.leader_id
        members = [s for s in self.node.membership if s.id != self.node.id]
        members.sort(key=lambda s: (s.id != leader, not s.is_voter, s.id))
        return [(s.id, s.address) for s in members]

    async def _checkpoint_hash_loop(self) -> None:
        """On the leader: propose the content hash of the sealed records since the last
        checkpoint hash (every replica compares its own when it applies it)."""
        interval = self.config.checkpoint_hash_interval
        while True:
            await asyncio.sleep(interval)
            if self._closing or not self.node.is_leader:
                continue
            try:
                await self.propose_checkpoint_hash()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # lost leadership, a replaced log...: the next one
                log.info("checkpoint hash not proposed: %s", exc)

    async def propose_checkpoint_hash(self) -> tuple[int, int] | None:
        """Hash the next range of sealed records here and propose it (leader only); the
        range proposed, or None when there was nothing new (or a damaged record in it).
        A range where this node saw the previous leader's copy differ from the majority
        goes first (:meth:`Scrubber.take_recheck`): the old leader then repairs itself."""
        scrubber = self.scrubber
        span = scrubber.take_recheck() or scrubber.next_checkpoint_range()
        if span is None:
            return None
        first, end = span
        digest = await scrubber.digest_range(first, end)
        if digest is None:
            return None  # a damaged record here: repaired first, hashed next time
        entry = encode_checkpoint_hash(first, end, digest, int(time.time() * 1000))
        await self.node.propose(entry, timeout=self.config.append_timeout)
        self.checkpoint_hash_proposals += 1
        log.info(
            "checkpoint hash of offsets %d..%d proposed: %s",
            first,
            end - 1,
            digest.hex(),
            extra={"offset": first},
        )
        return span

    @property
    def leader_id(self) -> str:
        """The leader this node knows of ("" if none)."""
        return self.node.leader_id if self.node.leader_id != NO_NODE else ""

    # -- operators (the admin service) ------------------------------------------------------

    def node_status(self, rpc_addr: str = "") -> NodeStatus:
        """This node's role, term, leader, indexes and offsets; on the leader also every
        member with its suffrage and replication lag. ``rpc_addr``: this node's address
        as clients dial it (the membership's, when empty)."""
        node = self.node
        try:
            status = node.status()
        except RaftError as exc:
            raise UnavailableError(f"node {node.id} is not running: {exc}") from None
        own = status.membership.address_of(node.id) or ""
        return NodeStatus(
            id=node.id,
            rpc_addr=rpc_addr or own,
            role=role_of(status),
            term=status.term,
            leader_id=self.leader_id,
            leader_addr=node.leader_address,
            commit_index=status.commit,
            applied_index=status.applied,
            last_index=status.last_index,
            snapshot_index=node.snapshot_index,
            lowest_offset=self.lowest_offset,
            highest_offset=self.highest_offset,
            members=members_of(status),
            damaged_records=len(self.scrubber.damaged),
            repaired_records=self.scrubber.stats.repaired_records,
            checkpoint_hash_mismatches=self.scrubber.stats.checkpoint_hash_mismatches,
        )

    async def transfer_leadership(self, to: str = "", timeout_s: float | None = None) -> str:
        """On the leader: hand leadership to voter ``to`` (empty: the most caught-up one);
        the new leader's id once this node sees it. NotLeaderError on a follower (with the
        leader hint), NotMemberError for an unknown id, AdminRefusedError when Raft
        refuses (a learner, no other voter, or no new leader in time)."""
        node = self.node
        if to and to not in node.membership:
            raise NotMemberError(to)
        if not node.is_leader:
            raise self._not_leader()
        timeout = self.config.change_timeout if timeout_s is None else timeout_s
        try:
            return await node.transfer_leadership(to or None, timeout=timeout)
        except RaftNotLeaderError:
            raise self._not_leader() from None
        except TransferError as exc:
            raise AdminRefusedError(str(exc)) from None
        except RaftError as exc:
            raise AdminRefusedError(f"leadership transfer refused: {exc}") from None

    async def remove_member(self, node_id: str) -> int:
        """On the leader: remove ``node_id`` (voter or learner) from the membership, for a
        node that is dead for good; the index of the committed change. NotMemberError when
        it is not a member, NotLeaderError on a follower, AdminRefusedError when another
        change is in progress or the removal is invalid (the last voter)."""
        async with self._change_lock:
            node = self.node
            if node_id not in node.membership:
                raise NotMemberError(node_id)
            if not node.is_leader:
                raise self._not_leader()
            address = node.membership.address_of(node_id)
            log.info("removing %s from the cluster (admin)", node_id, extra={"peer": node_id})
            try:
                index = await node.remove_server(node_id, timeout=self.config.change_timeout)
            except RaftNotLeaderError:
                raise self._not_leader() from None
            except ConfChangeInProgressError as exc:
                raise AdminRefusedError(
                    f"another membership change is in progress: {exc}"
                ) from None
            except ConfChangeError as exc:
                raise AdminRefusedError(f"cannot remove {node_id}: {exc}") from None
            except TimeoutError:
                raise DeadlineError(
                    f"the removal of {node_id} did not commit within {self.config.change_timeout} s"
                ) from None
            if self.forwarder is not None and address:
                self.forwarder.forget(address)
            return index

    async def take_snapshot(self, timeout_s: float | None = None) -> int:
        """Snapshot this node now and compact its Raft log behind it; the index the newest
        snapshot covers. AdminRefusedError when writing it failed, DeadlineError when it
        did not finish within ``timeout_s`` (default ``change_timeout``)."""
        timeout = self.config.change_timeout if timeout_s is None else timeout_s
        try:
            return await self.node.take_snapshot(timeout=timeout)
        except NodeClosedError:
            raise UnavailableError("the node is shutting down") from None
        except WaitTimeoutError:
            raise DeadlineError(f"the snapshot did not finish within {timeout} s") from None
        except RaftError as exc:
            raise AdminRefusedError(f"snapshot failed: {exc}") from None

    # -- lifecycle -------------------------------------------------------------------------

    def begin_close(self) -> None:
        """Refuse new appends and wake every reader with False."""
        self._closing = True
        self._notify()

    async def close(self) -> None:
        """Stop the promoter and the forwarder (the agent closes the node and the FSM)."""
        self.begin_close()
        for task in (self._promoter, self._retainer, self._hasher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._promoter = self._retainer = self._hasher = None
        await self.scrubber.close()
        if self.forwarder is not None:
            await self.forwarder.close()

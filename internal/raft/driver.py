"""The Ready driver of a :class:`~raftlog.raft.node.RaftNode`: persist, send, apply.

One round, for a Ready ``rd`` (see ``docs/raft-runtime.md`` for the diagram)::

    send rd.messages_before_persist        (the core allows them before the fsync)
    persist: rd.snapshot -> reset the log store; rd.entries -> log store (not yet
             durable); one sync of the log and the hard state (only if term/vote
             changed), together, only if rd.must_sync
    send rd.messages_after_persist         (votes, acknowledgements: persist-before-send)
    apply:   rd.snapshot -> restore the state machine;
             committed NORMAL entries -> StateMachine.apply -> answer proposals;
             read states -> read barriers, released once applied
    core.advance(rd); maybe take a snapshot (in the background) and compact the log

The driver also knows what is durable: the saved term and vote (a hard state is written only
when they change) and the newest snapshot. The node runs it from one task, under its I/O
lock, so the stores have a single writer.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

from raftlog.raft.clock import Clock
from raftlog.raft.codec import (
    KIND_MESSAGE,
    decode_snapshot_meta,
    encode_message,
    encode_snapshot_meta,
)
from raftlog.raft.config import NodeConfig
from raftlog.raft.core import RaftCore, Ready, check_can_bootstrap
from raftlog.raft.errors import BootstrapError, NodeClosedError, OutcomeUnknownError, RaftError
from raftlog.raft.fsm import CatchUpStateMachine, StateMachine
from raftlog.raft.observer import NO_METRICS, RaftMetrics
from raftlog.raft.proposals import ProposalTracker
from raftlog.raft.reads import ReadBarriers
from raftlog.raft.snapshot_transfer import SnapshotSender
from raftlog.raft.stable import StableState, StableStoreError, os_error_of
from raftlog.raft.stats import NodeStats
from raftlog.raft.storage import LogStorage, SnapshotStorage, StableStorage
from raftlog.raft.transport import Transport
from raftlog.raft.types import (
    NO_NODE,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    PersistentState,
    Role,
    SnapshotMeta,
    SoftState,
)
from raftlog.telemetry.budget import LatencyBudget, RequestTrace, mark_all

log = logging.getLogger("raftlog.raft.node")

_MESSAGE_PREFIX = bytes([KIND_MESSAGE])


class Driver:
    """Runs Ready rounds for one node (see the module docstring).

    ``before_round(soft_state)`` runs first in every round (the node notices leadership
    changes and refreshes its peer table there); ``notify()`` after it (waiters re-check
    their conditions); ``wake()`` when a snapshot taken in the background is ready to be
    used by :meth:`finish_snapshot`.
    """

    def __init__(
        self,
        config: NodeConfig,
        fsm: StateMachine,
        transport: Transport,
        sender: SnapshotSender,
        *,
        log_store: LogStorage,
        stable_store: StableStorage,
        snapshot_store: SnapshotStorage,
        clock: Clock,
        stats: NodeStats,
        proposals: ProposalTracker,
        reads: ReadBarriers,
        before_round: Callable[[SoftState], None],
        notify: Callable[[], None],
        wake: Callable[[], None],
        metrics: RaftMetrics = NO_METRICS,
        disk_full: Callable[[OSError | None], None] = lambda _exc: None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.id: NodeId = config.raft.id
        self._metrics = metrics
        self.config = config
        self._fsm = fsm
        self._transport = transport
        self._sender = sender
        self._log = log_store
        self._stable = stable_store
        self._snapshots = snapshot_store
        self._clock = clock
        self._stats = stats
        self._proposals = proposals
        self._reads = reads
        self._before_round = before_round
        self._notify = notify
        self._wake = wake
        self._disk_full = disk_full
        self._stopping = stopping
        self._full = False
        #: What the stable store holds (a hard state is saved only when these change).
        self.saved_term = 0
        self.saved_vote: NodeId = NO_NODE
        #: The newest snapshot this node has (taken or installed).
        self.snapshot_meta: SnapshotMeta | None = None
        self._snap_task: asyncio.Task[None] | None = None
        self._snap_done: SnapshotMeta | None = None
        self._snap_retry_at = 0.0
        #: The latency budget (debug; set by the agent when ``latency_budget`` is on): a
        #: follower reports its rounds there, the leader stamps its proposals' traces.
        self.budget: LatencyBudget | None = None
        self._received_at = 0  # perf_counter_ns of the first append since the last round
        self._round_traces: list[RequestTrace] = []

    # -- startup and bootstrap ------------------------------------------------------------

    async def load(self) -> PersistentState:
        """Read what a restart needs (hard state, newest snapshot, log after it), restore
        the state machine from the snapshot if it is behind, and say what is durable."""
        store = self._log
        st = await self._stable.load()
        latest = await self._snapshots.latest()
        meta = None
        if latest is not None:
            meta = decode_snapshot_meta(latest.metadata)
            if (meta.index, meta.term) != (latest.index, latest.term):
                raise RaftError(
                    f"snapshot {latest.id}: metadata names index {meta.index} term {meta.term}"
                )
        entries = await store.load_after(meta.index if meta else 0)
        applied = self._fsm.applied_index()
        if meta is not None and applied < meta.index:
            assert latest is not None
            await self.restore_fsm(latest.id, meta)
            applied = meta.index
        hs = HardState()
        if st is not None:
            commit = st.extra.get("commit", 0)
            hs = HardState(
                st.term, st.voted_for or NO_NODE, commit if isinstance(commit, int) else 0
            )
        self.saved_term, self.saved_vote = hs.term, hs.vote
        self.snapshot_meta = meta
        log.info(
            "raft node %s starting: term %d, log %d..%d, snapshot %s, applied %d",
            self.id,
            hs.term,
            store.first_index,
            store.last_index,
            meta.index if meta else "none",
            applied,
        )
        return PersistentState(hs, meta, tuple(entries), applied)

    def check_can_bootstrap(self, core: RaftCore) -> None:
        """BootstrapError, naming every piece of state found, if this node has any."""
        store = self._log
        hs = core.hard_state()
        saved = HardState(max(self.saved_term, hs.term), self.saved_vote or hs.vote, hs.commit)
        reasons: list[str] = []
        try:
            check_can_bootstrap(PersistentState(saved, self.snapshot_meta))
        except BootstrapError as exc:
            reasons.append(str(exc))
        if not store.is_empty():
            where = f"log entries {store.first_index}..{store.last_index} in {store.describe()}"
            reasons.append(
                f"refusing to bootstrap: this node already has {where}" if not reasons else where
            )
        if reasons:
            raise BootstrapError("; ".join(reasons))

    async def persist_bootstrap(self, st: PersistentState) -> None:
        """Make the bootstrap state durable: its entries and its hard state."""
        self._log.store(st.entries)
        await asyncio.gather(
            self._log.sync(),
            self._stable.save(StableState(st.hard_state.term, None, {"commit": 0})),
        )
        self.saved_term, self.saved_vote = st.hard_state.term, NO_NODE

    # -- rounds -----------------------------------------------------------------------------

    @property
    def snapshot_task(self) -> asyncio.Task[None] | None:
        """The snapshot being taken in the background, if any (the node cancels it on close)."""
        return self._snap_task

    @property
    def snapshot_ready(self) -> bool:
        """A snapshot was taken and waits for :meth:`finish_snapshot`."""
        return self._snap_done is not None

    def append_received(self) -> None:
        """The transport delivered an append with entries (the caller checked that the
        budget is on): the follower's round is timed from the first one since its last
        round."""
        if not self._received_at:
            self._received_at = time.perf_counter_ns()

    async def round(self, core: RaftCore, rd: Ready) -> None:
        """Persist, send, apply one Ready (the order is the point: see the module doc)."""
        self._stats.rounds += 1
        self._before_round(rd.soft_state)
        if rd.entries and self._proposals.has_pending and rd.soft_state.role is not Role.LEADER:
            self._proposals.drop_overwritten(core.entry_term, rd.entries[0].index)
        traces = self._round_traces = (
            self._proposals.take_placed_traces() if self._proposals.placed_traces else []
        )
        for m in rd.messages_before_persist:  # the core says these may go before the fsync
            self._send(m)
        self._stats.sent_early += len(rd.messages_before_persist)
        if traces:
            mark_all(traces, "sent")
        await self._until_written(lambda: self._persist(rd))
        for m in rd.messages_after_persist:
            self._send(m)
        self._stats.sent_late += len(rd.messages_after_persist)
        if self._received_at and rd.entries and self.budget is not None:
            self.budget.observe(
                "follower_round", (time.perf_counter_ns() - self._received_at) / 1e9
            )
            self._received_at = 0
        if rd.snapshot is not None:
            await self._install_snapshot(rd.snapshot)
        if rd.committed_entries:
            committed = rd.committed_entries
            if self._proposals.traced:
                self._proposals.mark_traced(committed[-1].index, "committed")
            await self._until_written(lambda: self._apply_async(committed))
        if rd.read_states:
            self._reads.confirmed(rd.read_states)
        core.advance(rd)
        if self._reads.applying:
            self._reads.release(core.applied_index)
        self._notify()
        if (
            self._snap_task is None
            and core.should_snapshot()
            and self._clock.now() >= self._snap_retry_at
        ):
            self._start_snapshot(core)
        elif (
            rd.snapshot is not None
            and self._snap_task is None
            and self._snap_done is None
            and isinstance(self._fsm, CatchUpStateMachine)
        ):
            # The snapshot just installed came with the records this node lacked, and sits
            # in the snapshot store as received: take one by reference at the same index,
            # so that retention drops the received copy (one copy of a record on disk).
            self._start_snapshot(core, again=True)

    async def _until_written(self, attempt: Callable[[], Awaitable[None]]) -> None:
        """Run ``attempt`` (persist a Ready, or apply its entries) until it succeeds.

        A full disk (ENOSPC, from a write or an fsync) is not fatal: the attempt left
        nothing half-written behind it (the engine cuts a failed append back, and a retry
        of :meth:`_persist` rewrites the Ready's entries from memory after cutting the log
        back to the entry before them, so pages whose fsync failed are never trusted),
        the node refuses new writes (``disk_full``), and the same attempt runs again every
        ``disk_full_retry_delay`` until there is room. Meanwhile nothing this Ready holds
        back is sent: a follower does not acknowledge entries it could not persist. The
        hard state's file (the stable store, which wraps its OSError in a
        StableStoreError) counts the same: rewritten whole on the retry. Any other error
        (EIO) propagates: the node stops (see ``RaftNode._fatal``)."""
        while True:
            try:
                await attempt()
            except (OSError, StableStoreError) as exc:
                os_exc = os_error_of(exc)
                if os_exc is None or os_exc.errno != errno.ENOSPC:
                    raise
                if not self._full:
                    self._full = True
                    self._disk_full(os_exc)
                if self._stopping():
                    raise NodeClosedError(
                        f"node {self.id!r} closed while its disk was full"
                    ) from None
                await self._clock.sleep(self.config.disk_full_retry_delay)
                if self._stopping():
                    raise NodeClosedError(
                        f"node {self.id!r} closed while its disk was full"
                    ) from None
                continue
            if self._full:
                self._full = False
                self._disk_full(None)
            return

    async def _apply_async(self, committed: tuple[Entry, ...]) -> None:
        self._apply(committed)

    async def _persist(self, rd: Ready) -> None:
        store = self._log
        if rd.snapshot is not None:
            # The snapshot's data is durable in the snapshot store: the log now starts after it.
            store.reset(rd.snapshot.index + 1)
            self.snapshot_meta = rd.snapshot
        if rd.entries:
            store.store(rd.entries)
            self._stats.entries_persisted += len(rd.entries)
            self._metrics.raft_appended(len(rd.entries))
            if self._round_traces:
                mark_all(self._round_traces, "written")
        hs = rd.hard_state
        save = hs is not None and (hs.term, hs.vote) != (self.saved_term, self.saved_vote)
        if not rd.must_sync and not save:
            return
        waits: list[Coroutine[Any, Any, None]] = []
        if rd.entries or rd.snapshot is not None:
            waits.append(store.sync_exclusive())  # the driver is the store's only user
        if save:
            assert hs is not None
            state = StableState(hs.term, hs.vote or None, {"commit": hs.commit})
            waits.append(self._stable.save(state))
        started = time.perf_counter()
        if len(waits) == 1:
            await waits[0]  # no task around a single wait (one fewer loop hop per round)
        elif waits:
            # both finish before an error is raised: a retry after ENOSPC must not start
            # a second write of the hard state while the first still runs in its thread
            results = await asyncio.gather(*waits, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        if waits:
            self._stats.syncs += 1
            took = time.perf_counter() - started
            self._metrics.raft_synced(took)
            if self._round_traces:
                mark_all(self._round_traces, "synced")
            elif self._received_at and self.budget is not None:
                self.budget.observe("follower_fsync", took)
        if save:
            assert hs is not None
            self.saved_term, self.saved_vote = hs.term, hs.vote

    def _send(self, m: Message) -> None:
        if m.type is MessageType.SNAPSHOT:
            self._sender.send(m)
            return
        try:
            self._transport.send(m.dst, _MESSAGE_PREFIX + encode_message(m))
        except Exception:
            # The contract says send never raises; a transport bug must not stop the node
            # (Raft resends what matters), but it must be seen.
            log.exception("raft node %s: transport failed to send to %s", self.id, m.dst)

    # -- apply ----------------------------------------------------------------------------

    def _apply(self, committed: tuple[Entry, ...]) -> None:
        normal: Sequence[Entry] = committed
        if any(e.type is not EntryType.NORMAL for e in committed):
            normal = [e for e in committed if e.type is EntryType.NORMAL]
        results: Sequence[Any] = ()
        if normal:
            results = self._fsm.apply(normal)
            if len(results) != len(normal):
                raise RaftError(
                    f"state machine returned {len(results)} results for {len(normal)} entries"
                )
        self._stats.entries_applied += len(committed)
        self._proposals.applied(committed, results)

    # -- snapshots: taking, compacting, installing ----------------------------------------

    def snapshot_now(self, core: RaftCore) -> bool:
        """Between rounds (the caller holds the node's I/O lock): start a snapshot of what
        is applied now, whatever ``snapshot_threshold`` says. False when none was started:
        one is being taken already, or the newest snapshot covers every applied entry."""
        if self._snap_task is not None or self._snap_done is not None:
            return False
        self._start_snapshot(core)
        return self._snap_task is not None

    def _start_snapshot(self, core: RaftCore, *, again: bool = False) -> None:
        """Snapshot what is applied now, unless the newest snapshot covers it already
        (``again``: also when it is at the same index, to replace that one)."""
        meta = core.snapshot_meta()
        newest = self.snapshot_meta
        if newest is not None and (
            meta.index < newest.index or (meta.index == newest.index and not again)
        ):
            return
        source = self._fsm.snapshot()
        self._snap_task = asyncio.create_task(
            self._write_snapshot(meta, source), name=f"raft-snapshot {self.id}@{meta.index}"
        )

    async def _write_snapshot(self, meta: SnapshotMeta, source: Iterable[bytes]) -> None:
        try:
            stored = await self._snapshots.save(
                meta.index, meta.term, encode_snapshot_meta(meta), source
            )
        except Exception as exc:
            log.error("raft node %s: snapshot at %d failed: %s", self.id, meta.index, exc)
            self._snap_retry_at = self._clock.now() + self.config.snapshot_retry_delay
            self._snap_task = None
            return
        log.info("raft node %s: snapshot %s at index %d", self.id, stored.id, meta.index)
        self._stats.snapshots_taken += 1
        self._snap_done = meta
        self._wake()

    def finish_snapshot(self, core: RaftCore) -> None:
        """Between rounds: make the snapshot just taken current and compact the log."""
        meta, self._snap_done = self._snap_done, None
        self._snap_task = None
        if meta is None:
            return
        try:
            through = core.compact(meta)
        except RaftError as exc:
            log.warning("raft node %s: snapshot at %d not used: %s", self.id, meta.index, exc)
            return
        if self.snapshot_meta is None or meta.index > self.snapshot_meta.index:
            self.snapshot_meta = meta
        store = self._log
        if through >= store.first_index:
            store.compact(through)

    async def _install_snapshot(self, meta: SnapshotMeta) -> None:
        """A snapshot from the leader was accepted by the core: restore the state machine."""
        stored = await self._snapshots.find(meta.index, meta.term)
        if stored is None:
            raise RaftError(f"accepted snapshot at index {meta.index} is not in the store")
        await self.restore_fsm(stored.id, meta)
        self._proposals.fail_through(
            meta.index,
            lambda index: OutcomeUnknownError(
                f"entry {index} was replaced by a snapshot at index {meta.index}"
            ),
        )

    async def restore_fsm(self, snapshot_id: str, meta: SnapshotMeta) -> None:
        fsm = self._fsm
        await self._snapshots.restore(snapshot_id, lambda reader: fsm.restore(reader, meta))
        log.info("raft node %s: state machine restored from snapshot %s", self.id, snapshot_id)


__all__ = ["Driver"]

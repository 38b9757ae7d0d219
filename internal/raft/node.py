"""The asyncio runtime of Raft: :class:`RaftNode` drives a :class:`RaftCore`.

One driver task runs the Ready cycle of ``docs/raft.md``; a ticker task calls ``tick()``;
the transport's handler steps peer messages into the core as they arrive; proposals,
membership changes and read barriers enter the core at once and wake the driver. So
everything proposed while a round is being written is coalesced into the next Ready: one
log write, one fsync and one AppendEntries per follower for the whole group (group commit).

One round, for a Ready ``rd`` (see ``docs/raft-runtime.md`` for the diagram)::

    early  = leader AppendEntries/heartbeats of an already durable term  -> send now
    persist: rd.snapshot -> reset the log store; rd.entries -> log store (page cache);
             one fsync of the log + the hard state (only if term/vote changed), in
             threads, only if rd.must_sync
    late   = every other message (votes, acknowledgements)                -> send now
    apply:   rd.snapshot -> restore the state machine (thread);
             committed NORMAL entries -> StateMachine.apply -> resolve proposals;
             read states -> resolve read barriers once applied
    core.advance(rd); maybe take a snapshot (thread) and compact the log

Sending a leader's AppendEntries before its own fsync is the optimisation of the Raft thesis
(§10.2.1, also etcd's): the leader counts itself towards commit only once ``advance`` says
its entries are durable, so a crash before the fsync loses nothing that was acknowledged.
Everything else waits for the fsync (persist before send): a vote or an acknowledgement
must never outlive a crash that forgot it.

Payloads on the transport start with one byte naming their kind: ``M`` a Raft message,
``C`` a snapshot chunk, ``K`` a chunk acknowledgement (see docs/raft-runtime.md).
"""

# Every waiting call takes an explicit, documented timeout (the callers are RPC handlers with
# deadlines of their own), so ruff's preference for asyncio.timeout at call sites is waived.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from raftlog.raft.clock import Clock, MonotonicClock
from raftlog.raft.codec import (
    KIND_CHUNK,
    KIND_CHUNK_ACK,
    KIND_MESSAGE,
    decode_chunk_ack,
    decode_message,
    decode_snapshot_chunk,
    decode_snapshot_meta,
    encode_message,
    encode_snapshot_meta,
)
from raftlog.raft.config import NodeConfig
from raftlog.raft.core import RaftCore, Ready, Status, bootstrap_state, check_can_bootstrap
from raftlog.raft.disk import open_disk_stores
from raftlog.raft.errors import (
    BootstrapError,
    CodecError,
    ConfigError,
    NodeClosedError,
    NodeFailedError,
    NotLeaderError,
    OutcomeUnknownError,
    ProposalTimeoutError,
    RaftError,
    ReadBarrierTimeoutError,
    TransferError,
    WaitTimeoutError,
)
from raftlog.raft.fsm import StateMachine
from raftlog.raft.proposals import ApplyResult, Proposal, ProposalTracker
from raftlog.raft.reads import ReadBarriers
from raftlog.raft.snapshot_transfer import SnapshotReceiver, SnapshotSender
from raftlog.raft.stable import StableState
from raftlog.raft.stats import NodeStats
from raftlog.raft.storage import LogStorage, SnapshotStorage, StableStorage
from raftlog.raft.transport import Transport
from raftlog.raft.types import (
    NO_NODE,
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Membership,
    Message,
    MessageType,
    NodeId,
    PersistentState,
    Role,
    Server,
    SnapshotMeta,
    SoftState,
)

log = logging.getLogger("raftlog.raft.node")

_MESSAGE_PREFIX = bytes([KIND_MESSAGE])


# =========================================================================================
# The node
# =========================================================================================


class RaftNode:
    """One Raft server: a core, its stores, a transport and the user's state machine.

    Lifecycle: ``node = RaftNode(config, fsm, transport, log_store=..., stable_store=...,
    snapshot_store=..., peers=...)`` (or ``await RaftNode.on_disk(config, fsm, transport,
    peers=...)`` for the disk stores under ``config.data_dir``), ``await node.start()``
    (loads the stores, restores the state machine, starts the transport and the tasks),
    then for a brand-new cluster ``await node.bootstrap(servers)`` on the initial members
    (refused, with the reason, when the node has state), and finally ``await
    node.close()`` (idempotent, bounded). The node owns the transport: it sets its
    handler, keeps its peer table in line with the membership, starts and closes it; it
    also closes the log store. ``clock`` (default: the event loop's) times ticks, proposal
    deadlines and snapshot retries (:mod:`raftlog.raft.clock`).

    ``peers`` (node id -> address) are address hints used on top of the membership: a new
    node that is about to be added has no membership yet, but must be able to answer the
    leader. :meth:`set_peer_addresses` replaces them later (discovery).
    """

    def __init__(
        self,
        config: NodeConfig,
        fsm: StateMachine,
        transport: Transport,
        *,
        log_store: LogStorage,
        stable_store: StableStorage,
        snapshot_store: SnapshotStorage,
        clock: Clock | None = None,
        peers: Mapping[NodeId, str] | None = None,
    ) -> None:
        self.config = config.validate()
        self.id: NodeId = config.raft.id
        if transport.node_id != self.id:
            raise ConfigError(
                f"transport is for node {transport.node_id!r}, but the node id is {self.id!r}"
            )
        self._fsm = fsm
        self._transport = transport
        self._hints: dict[NodeId, str] = dict(peers or {})
        self._rng = random.Random(config.seed)
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._stable = stable_store
        self._snapshots = snapshot_store
        self._logstore = log_store
        self._core: RaftCore | None = None
        self.stats = NodeStats()
        # Durable hard state: what the stable store holds.
        self._saved_term = 0
        self._saved_vote: NodeId = NO_NODE
        self._snapshot_meta: SnapshotMeta | None = None
        # Requests in flight.
        self._proposals = ProposalTracker(self._lost_error)
        self._reads = ReadBarriers()
        self._watchers: list[asyncio.Future[None]] = []
        # Tasks.
        self._wake = asyncio.Event()
        self._io_lock = asyncio.Lock()
        self._driver: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._snap_task: asyncio.Task[None] | None = None
        self._snap_done: SnapshotMeta | None = None
        self._snap_retry_at = 0.0
        self._sender = SnapshotSender(
            self.id,
            transport,
            snapshot_store,
            self.stats,
            self._snapshot_sent,
            chunk_bytes=config.raft.snapshot_chunk_bytes,
            ack_timeout=config.snapshot_ack_timeout,
            attempts=config.snapshot_send_attempts,
        )
        self._receiver = SnapshotReceiver(
            self.id,
            transport,
            snapshot_store,
            self.stats,
            installed=self._snapshot_received,
            stopping=lambda: self._stopping,
            idle_timeout=config.snapshot_idle_timeout,
        )
        self._peer_table: dict[NodeId, str] = {}
        self._peer_membership: Membership | None = None
        self._soft: SoftState | None = None
        self._started = False
        self._stopping = False
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        self._failure: NodeFailedError | None = None

    @classmethod
    async def on_disk(
        cls,
        config: NodeConfig,
        fsm: StateMachine,
        transport: Transport,
        *,
        clock: Clock | None = None,
        peers: Mapping[NodeId, str] | None = None,
    ) -> RaftNode:
        """A node whose stores live under ``config.data_dir`` (see :mod:`raftlog.raft.disk`),
        opened in a worker thread with ``config.fsync``, ``snapshot_retain`` and
        ``log_config``. Then ``await node.start()`` as for any node."""
        config.validate()
        if config.data_dir is None:
            raise ConfigError("RaftNode.on_disk needs NodeConfig.data_dir")
        stores = await open_disk_stores(
            config.data_dir,
            fsync=config.fsync,
            snapshot_retain=config.snapshot_retain,
            log_config=config.log_config,
        )
        return cls(
            config,
            fsm,
            transport,
            log_store=stores.log,
            stable_store=stores.stable,
            snapshot_store=stores.snapshots,
            clock=clock,
            peers=peers,
        )

    # =====================================================================================
    # Lifecycle
    # =====================================================================================

    async def start(self) -> None:
        """Load the stores, restore the state machine, start the transport and the tasks.

        A node with state resumes from it (hard state, newest snapshot, log); a node
        without state waits to be bootstrapped or contacted by a leader.
        """
        if self._started:
            raise RaftError(f"node {self.id!r} was already started")
        self._started = True
        cfg = self.config
        store = self._logstore
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
            await self._restore_fsm(latest.id, meta)
            applied = meta.index
        hs = HardState()
        if st is not None:
            commit = st.extra.get("commit", 0)
            hs = HardState(
                st.term, st.voted_for or NO_NODE, commit if isinstance(commit, int) else 0
            )
        self._saved_term, self._saved_vote = hs.term, hs.vote
        self._snapshot_meta = meta
        state = PersistentState(hs, meta, tuple(entries), applied)
        self._core = RaftCore(cfg.raft, state, self._rng)
        self._soft = self._core.soft_state()
        log.info(
            "raft node %s starting: term %d, log %d..%d, snapshot %s, applied %d",
            self.id,
            hs.term,
            store.first_index,
            store.last_index,
            meta.index if meta else "none",
            applied,
        )
        self._transport.set_handler(self._on_payload)
        self._sync_peers(force=True)
        await self._transport.start()
        self._driver = asyncio.create_task(self._drive(), name=f"raft-node {self.id}")
        self._ticker = asyncio.create_task(self._tick_loop(), name=f"raft-tick {self.id}")

    def has_state(self) -> bool:
        """Whether this node has any Raft state (a term, a vote, log entries, a snapshot):
        such a node restarts from it and refuses to bootstrap."""
        try:
            self._check_can_bootstrap()
        except BootstrapError:
            return True
        return False

    def _check_can_bootstrap(self) -> None:
        core, store = self._require_core(), self._logstore
        hs = core.hard_state()
        saved = HardState(max(self._saved_term, hs.term), self._saved_vote or hs.vote, hs.commit)
        reasons: list[str] = []
        try:
            check_can_bootstrap(PersistentState(saved, self._snapshot_meta))
        except BootstrapError as exc:
            reasons.append(str(exc))
        if not store.is_empty():
            where = f"log entries {store.first_index}..{store.last_index} in {store.describe()}"
            reasons.append(
                f"refusing to bootstrap: this node already has {where}" if not reasons else where
            )
        if reasons:
            raise BootstrapError("; ".join(reasons))

    async def bootstrap(self, servers: Iterable[Server]) -> None:
        """Make this node a member of a brand-new cluster with membership ``servers``.

        Raises BootstrapError, saying what state exists, if the node has any state (it
        must restart from it: bootstrapping again would fork the cluster). Give every
        initial member the same servers, or bootstrap one node and add the others.
        """
        self._check_usable()
        membership = Membership.of(servers)
        if self.id not in membership:
            raise ValueError(f"bootstrap membership {membership.ids} does not include {self.id!r}")
        async with self._io_lock:
            self._check_can_bootstrap()
            st = bootstrap_state(membership)
            store = self._logstore
            store.store(st.entries)
            await asyncio.gather(
                store.sync(),
                self._stable.save(StableState(st.hard_state.term, None, {"commit": 0})),
            )
            self._saved_term, self._saved_vote = st.hard_state.term, NO_NODE
            core = RaftCore(self.config.raft, st, self._rng)
            self._core = core
            self._soft = core.soft_state()
            self._sync_peers(force=True)
            if membership.voters == (self.id,):
                core.campaign()  # a cluster of one need not wait for a timeout
            log.info("raft node %s bootstrapped with %s", self.id, list(membership.ids))
        self._wake.set()

    async def close(self) -> None:
        """Stop the node: finish the current round, stop every task, fail pending
        requests with NodeClosedError, close the transport and the log. Idempotent; each
        stage is bounded by ``close_timeout``."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close(), name=f"raft-close {self.id}")
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        timeout = self.config.close_timeout
        self._stopping = True
        self._wake.set()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._driver is not None:
            done, _ = await asyncio.wait({self._driver}, timeout=timeout)
            if not done:
                log.warning("raft node %s: round did not finish within %.1f s", self.id, timeout)
                self._driver.cancel()
        tasks: set[asyncio.Task[Any]] = {t for t in (self._ticker, self._driver) if t}
        if self._snap_task is not None:
            tasks.add(self._snap_task)
        tasks |= self._sender.tasks()
        tasks |= self._receiver.tasks()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        self._fail_all(NodeClosedError(f"node {self.id!r} is closed"))
        try:
            await asyncio.wait_for(self._transport.close(), timeout)
        except TimeoutError:
            log.warning("raft node %s: transport did not close within %.1f s", self.id, timeout)
        if self._started:
            try:
                await asyncio.wait_for(self._logstore.close(), timeout)
            except Exception as exc:  # a failed fsync at close: logged, nothing to retry
                log.warning("raft node %s: closing the log store failed: %s", self.id, exc)
        self._closed = True
        self._notify()

    @property
    def closed(self) -> bool:
        return self._closed

    # =====================================================================================
    # Queries
    # =====================================================================================

    def _require_core(self) -> RaftCore:
        if self._core is None:
            raise RaftError(f"node {self.id!r} is not started")
        return self._core

    def _check_usable(self) -> RaftCore:
        if self._failure is not None:
            raise self._failure
        if self._stopping:
            raise NodeClosedError(f"node {self.id!r} is closed")
        return self._require_core()

    @property
    def leader_id(self) -> NodeId:
        """The leader this node knows of (``NO_NODE``, the empty string, if none)."""
        return self._core.leader_id if self._core else NO_NODE

    @property
    def leader_address(self) -> str:
        """Address of the known leader ("" if none or unknown)."""
        lead = self.leader_id
        if not lead or self._core is None:
            return ""
        return self._core.membership.address_of(lead) or self._hints.get(lead, "")

    @property
    def is_leader(self) -> bool:
        return self._core is not None and self._core.is_leader and not self._stopping

    @property
    def term(self) -> int:
        return self._core.term if self._core else 0

    @property
    def commit_index(self) -> int:
        return self._core.commit_index if self._core else 0

    @property
    def applied_index(self) -> int:
        return self._core.applied_index if self._core else 0

    @property
    def last_index(self) -> int:
        return self._core.last_index if self._core else 0

    @property
    def membership(self) -> Membership:
        return self._core.membership if self._core else Membership()

    @property
    def snapshot_index(self) -> int:
        """Index of the newest snapshot this node has (0 if none)."""
        return self._snapshot_meta.index if self._snapshot_meta else 0

    @property
    def log_store(self) -> LogStorage:
        """The log store (read-only use: tests and tools)."""
        return self._logstore

    def status(self) -> Status:
        """The core's status (role, term, indexes, membership, followers' progress)."""
        return self._require_core().status()

    def set_peer_addresses(self, peers: Mapping[NodeId, str]) -> None:
        """Replace the address hints (used on top of the membership's addresses)."""
        self._hints = dict(peers)
        self._sync_peers(force=True)

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float, what: str = "condition"
    ) -> None:
        """Wait until ``predicate()`` holds; it is checked after every round and change of
        leader. Raises WaitTimeoutError after ``timeout`` s, NodeClosedError on close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if self._closed or self._stopping:
                raise NodeClosedError(f"node {self.id!r} closed while waiting for {what}")
            if self._failure is not None:
                raise self._failure
            left = deadline - loop.time()
            if left <= 0:
                raise WaitTimeoutError(f"node {self.id}: {what} did not hold within {timeout} s")
            fut: asyncio.Future[None] = loop.create_future()
            self._watchers.append(fut)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, min(left, self.config.tick_interval * 4))

    async def wait_for_leader(self, timeout: float) -> NodeId:
        """Wait until a leader is known; return its id."""
        await self.wait_for(lambda: bool(self.leader_id), timeout, "a known leader")
        return self.leader_id

    async def wait_applied(self, index: int, timeout: float) -> None:
        """Wait until this node has applied ``index``."""
        await self.wait_for(lambda: self.applied_index >= index, timeout, f"applied >= {index}")

    # =====================================================================================
    # Requests
    # =====================================================================================

    async def propose(self, data: bytes, *, timeout: float | None = None) -> ApplyResult:
        """Replicate ``data`` as one entry; return once it is committed and applied here.

        Raises NotLeaderError (with the leader's id and address) on a follower or if the
        entry was lost in a leader change, LeadershipTransferInProgressError during a
        transfer, ProposalTimeoutError after ``timeout`` s (default ``request_timeout``;
        checked on every tick, so up to one ``tick_interval`` late; the entry may still
        commit), NodeClosedError / NodeFailedError.
        """
        results = await self.propose_batch((data,), timeout=timeout)
        return results[0]

    async def propose_batch(
        self, items: Sequence[bytes], *, timeout: float | None = None
    ) -> list[ApplyResult]:
        """Replicate ``items`` as consecutive entries (one Raft round for all of them).

        Not atomic across a leader change: if a later entry of the batch is lost while an
        earlier one committed, NotLeaderError is raised although a prefix was applied
        (propose one entry holding the whole batch when all-or-nothing matters).
        """
        core = self._check_usable()
        if not core.is_leader:
            raise NotLeaderError(core.leader_id, self.leader_address)
        if not items:
            raise ValueError("propose_batch needs at least one item")
        loop = asyncio.get_running_loop()
        t = self.config.request_timeout if timeout is None else timeout
        fut: asyncio.Future[list[ApplyResult]] = loop.create_future()
        p = Proposal(items, fut, self._clock.now() + t)
        # Queued, not stepped: the driver hands every queued proposal to the core in one
        # call (one ticket) before its next round, so the core's per-call cost is paid
        # once per round, not once per proposal.
        self._proposals.queue(p, default_timeout=timeout is None)
        self._wake.set()
        return await fut

    async def _conf_change(self, change: ConfChange, timeout: float | None) -> int:
        core = self._check_usable()
        self._proposals.flush(core)
        ticket = core.propose_conf_change(change)
        loop = asyncio.get_running_loop()
        t = self.config.request_timeout if timeout is None else timeout
        fut: asyncio.Future[list[ApplyResult]] = loop.create_future()
        p = Proposal((b"",), fut, self._clock.now() + t)
        self._proposals.track(p, ticket)
        self._wake.set()
        results = await fut
        return results[-1].index

    async def add_voter(
        self, node_id: NodeId, address: str, *, timeout: float | None = None
    ) -> int:
        """Add a voting server (prefer add_learner, then promote_learner once caught up).
        Returns the index of the committed change. Errors as :meth:`propose`, plus
        ConfChangeError (invalid) and ConfChangeInProgressError (one at a time)."""
        self._hints.setdefault(node_id, address)
        return await self._conf_change(
            ConfChange(ConfChangeType.ADD_VOTER, node_id, address), timeout
        )

    async def add_learner(
        self, node_id: NodeId, address: str, *, timeout: float | None = None
    ) -> int:
        """Add a non-voting server that receives the log; see :meth:`add_voter`."""
        self._hints.setdefault(node_id, address)
        return await self._conf_change(
            ConfChange(ConfChangeType.ADD_LEARNER, node_id, address), timeout
        )

    async def promote_learner(self, node_id: NodeId, *, timeout: float | None = None) -> int:
        """Turn learner ``node_id`` into a voter; see :meth:`add_voter`."""
        return await self._conf_change(ConfChange(ConfChangeType.PROMOTE_LEARNER, node_id), timeout)

    async def remove_server(self, node_id: NodeId, *, timeout: float | None = None) -> int:
        """Remove a server (voter or learner). A removed leader steps down once the change
        commits (this call still returns the index). See :meth:`add_voter`."""
        return await self._conf_change(ConfChange(ConfChangeType.REMOVE, node_id), timeout)

    async def transfer_leadership(
        self, to: NodeId | None = None, *, timeout: float | None = None
    ) -> NodeId:
        """Hand leadership to voter ``to`` (default: the most caught-up one); return the
        new leader's id once this node sees it. TransferError if it cannot start or does
        not complete within ``timeout`` s (default ``request_timeout``)."""
        core = self._check_usable()
        target = core.transfer_leadership(to)
        self._wake.set()
        if target == self.id:
            return target
        t = self.config.request_timeout if timeout is None else timeout
        try:
            await self.wait_for(lambda: self.leader_id not in (self.id, NO_NODE), t, "a new leader")
        except WaitTimeoutError:
            raise TransferError(
                f"leadership transfer to {target!r} did not complete within {t} s"
            ) from None
        return self.leader_id

    async def read_barrier(self, timeout: float | None = None) -> int:
        """Linearizable read barrier (ReadIndex) on the leader: returns an index such that
        this node has applied it and a read of the state machine now sees every write
        acknowledged before the call. NotLeaderError on a follower or if leadership is lost
        meanwhile; ReadBarrierTimeoutError after ``timeout`` s (default request_timeout)."""
        core = self._check_usable()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        ctx = self._reads.start(fut)
        core.read_index(ctx)
        self._wake.set()
        t = self.config.request_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(t):
                return await fut
        except TimeoutError:
            raise ReadBarrierTimeoutError(
                f"read barrier not confirmed within {t} s (leadership unconfirmed)"
            ) from None
        finally:
            self._reads.forget(ctx)

    def campaign(self) -> None:
        """Start an election now (tests and operators)."""
        self._check_usable().campaign()
        self._wake.set()

    # =====================================================================================
    # Inbound
    # =====================================================================================

    def _on_payload(self, payload: bytes) -> None:
        """Transport handler: step a message at once, or route a snapshot chunk/ack."""
        if self._stopping or self._core is None or not payload:
            return
        kind = payload[0]
        try:
            if kind == KIND_MESSAGE:
                m = decode_message(payload[1:])
                if m.dst != self.id:
                    self.stats.bad_payloads += 1
                    return
                self._core.step(m)
                self._wake.set()
            elif kind == KIND_CHUNK:
                self._receiver.on_chunk(decode_snapshot_chunk(payload[1:]))
            elif kind == KIND_CHUNK_ACK:
                self._sender.on_ack(decode_chunk_ack(payload[1:]))
            else:
                self.stats.bad_payloads += 1
        except CodecError as exc:
            self.stats.bad_payloads += 1
            log.warning("raft node %s: dropped a malformed payload: %s", self.id, exc)

    # =====================================================================================
    # The driver
    # =====================================================================================

    async def _tick_loop(self) -> None:
        clock = self._clock
        interval = self.config.tick_interval
        due = clock.now() + interval
        while not self._stopping:
            await clock.sleep(due - clock.now())
            now = clock.now()
            due = max(due + interval, now + interval / 2)
            core = self._core
            if core is not None and self._failure is None:
                core.tick()
                self._wake.set()
            if self._proposals.has_deadlines:
                self._proposals.expire(now)

    async def _drive(self) -> None:
        try:
            while not self._stopping:
                if self._snap_done is not None:
                    self._finish_snapshot()
                core = self._require_core()
                if self._proposals.has_queued:
                    self._proposals.flush(core)
                if core.has_ready():
                    async with self._io_lock:
                        core = self._require_core()
                        if core.has_ready():
                            await self._round(core, core.ready())
                    continue
                self._wake.clear()
                if core.has_ready() or self._snap_done is not None or self._proposals.has_queued:
                    continue
                # Bounded without a timer of its own: the ticker sets the event every tick.
                await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fatal(exc)

    def _fatal(self, exc: BaseException) -> None:
        log.error("raft node %s stopped after a fatal error: %r", self.id, exc, exc_info=exc)
        failure = NodeFailedError(f"node {self.id!r} failed: {exc!r}")
        failure.__cause__ = exc
        self._failure = failure
        self._stopping = True
        self._fail_all(failure)
        self._notify()

    async def _round(self, core: RaftCore, rd: Ready) -> None:
        """Persist, send, apply one Ready (the order is the point: see the module doc)."""
        self.stats.rounds += 1
        self._on_soft_state(rd.soft_state)
        self._sync_peers()
        if rd.entries and self._proposals.has_pending and rd.soft_state.role is not Role.LEADER:
            self._proposals.drop_overwritten(core.entry_term, rd.entries[0].index)
        for m in rd.messages_before_persist:  # the core says these may go before the fsync
            self._send(m)
        self.stats.sent_early += len(rd.messages_before_persist)
        await self._persist(rd)
        for m in rd.messages_after_persist:
            self._send(m)
        self.stats.sent_late += len(rd.messages_after_persist)
        if rd.snapshot is not None:
            await self._install_snapshot(rd.snapshot)
        if rd.committed_entries:
            self._apply(rd.committed_entries)
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

    async def _persist(self, rd: Ready) -> None:
        store = self._logstore
        if rd.snapshot is not None:
            # The snapshot's data is durable in the snapshot store: the log now starts after it.
            store.reset(rd.snapshot.index + 1)
            self._snapshot_meta = rd.snapshot
        if rd.entries:
            store.store(rd.entries)
            self.stats.entries_persisted += len(rd.entries)
        hs = rd.hard_state
        save = hs is not None and (hs.term, hs.vote) != (self._saved_term, self._saved_vote)
        if not rd.must_sync and not save:
            return
        waits: list[Coroutine[Any, Any, None]] = []
        if rd.entries or rd.snapshot is not None:
            waits.append(store.sync_exclusive())  # the driver is the store's only user
        if save:
            assert hs is not None
            state = StableState(hs.term, hs.vote or None, {"commit": hs.commit})
            waits.append(self._stable.save(state))
        if len(waits) == 1:
            await waits[0]  # no task around a single wait (one fewer loop hop per round)
        elif waits:
            await asyncio.gather(*waits)
        if waits:
            self.stats.syncs += 1
        if save:
            assert hs is not None
            self._saved_term, self._saved_vote = hs.term, hs.vote

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
        self.stats.entries_applied += len(committed)
        self._proposals.applied(committed, results)

    def _lost_error(self) -> NotLeaderError:
        return NotLeaderError(self.leader_id, self.leader_address)

    def _on_soft_state(self, ss: SoftState) -> None:
        prev = self._soft
        if prev == ss:
            return
        self._soft = ss
        if (
            prev is not None
            and prev.role is Role.LEADER
            and (ss.role is not Role.LEADER or ss.term != prev.term)
        ):
            self._reads.fail_all(NotLeaderError(ss.leader, self.leader_address))
        if prev is None or prev.leader != ss.leader:
            log.info(
                "raft node %s: term %d, role %s, leader %r",
                self.id,
                ss.term,
                ss.role.name,
                ss.leader,
            )

    def _notify(self) -> None:
        watchers, self._watchers = self._watchers, []
        for fut in watchers:
            if not fut.done():
                fut.set_result(None)

    def _fail_all(self, exc: BaseException) -> None:
        self._proposals.fail_all(exc)
        self._reads.fail_all(exc)
        self._notify()

    # -- peers ----------------------------------------------------------------------------

    def _sync_peers(self, force: bool = False) -> None:
        """Keep the transport's peer table = hints + every address seen in a membership.

        Servers removed from the membership stay reachable: a removed server must still
        hear of its removal, and the transport dials a peer only when there is something
        to send, so a stale entry costs nothing.
        """
        core = self._core
        mem = core.membership if core is not None else Membership()
        if not force and mem is self._peer_membership:
            return
        self._peer_membership = mem
        table = dict(self._peer_table)
        table.update(self._hints)
        table.update({s.id: s.address for s in mem if s.address})
        table.pop(self.id, None)
        if table != self._peer_table or force:
            self._peer_table = table
            self._transport.update_peers(table)

    # =====================================================================================
    # Snapshots: taking, compacting, installing
    # =====================================================================================

    def _start_snapshot(self, core: RaftCore) -> None:
        meta = core.snapshot_meta()
        if self._snapshot_meta is not None and meta.index <= self._snapshot_meta.index:
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
        self.stats.snapshots_taken += 1
        self._snap_done = meta
        self._wake.set()

    def _finish_snapshot(self) -> None:
        """On the driver, between rounds: make the new snapshot current, compact the log."""
        meta, self._snap_done = self._snap_done, None
        self._snap_task = None
        core = self._require_core()
        if meta is None:
            return
        try:
            through = core.compact(meta)
        except RaftError as exc:
            log.warning("raft node %s: snapshot at %d not used: %s", self.id, meta.index, exc)
            return
        if self._snapshot_meta is None or meta.index > self._snapshot_meta.index:
            self._snapshot_meta = meta
        store = self._logstore
        if through >= store.first_index:
            store.compact(through)

    async def _install_snapshot(self, meta: SnapshotMeta) -> None:
        """A snapshot from the leader was accepted by the core: restore the state machine."""
        stored = await self._snapshots.find(meta.index, meta.term)
        if stored is None:
            raise RaftError(f"accepted snapshot at index {meta.index} is not in the store")
        await self._restore_fsm(stored.id, meta)
        self._proposals.fail_through(
            meta.index,
            lambda index: OutcomeUnknownError(
                f"entry {index} was replaced by a snapshot at index {meta.index}"
            ),
        )

    async def _restore_fsm(self, snapshot_id: str, meta: SnapshotMeta) -> None:
        fsm = self._fsm
        await self._snapshots.restore(snapshot_id, lambda reader: fsm.restore(reader, meta))
        log.info("raft node %s: state machine restored from snapshot %s", self.id, snapshot_id)

    # -- snapshot transfer (snapshot_transfer.py) -------------------------------------------

    def _snapshot_sent(self, to: NodeId, ok: bool) -> None:
        if not self._stopping and self._core is not None:
            self._core.report_snapshot(to, ok)
            self._wake.set()

    def _snapshot_received(self, src: NodeId, term: int, meta: SnapshotMeta) -> None:
        """A snapshot from ``src`` is complete in the store: the core decides whether to
        install it (it comes back in a Ready's ``snapshot``)."""
        core = self._core
        if core is not None:
            core.step(
                Message(type=MessageType.SNAPSHOT, src=src, dst=self.id, term=term, snapshot=meta)
            )
            self._wake.set()


__all__ = [
    "ApplyResult",
    "NodeClosedError",
    "NodeConfig",
    "NodeFailedError",
    "NodeStats",
    "OutcomeUnknownError",
    "ProposalTimeoutError",
    "RaftNode",
    "ReadBarrierTimeoutError",
    "WaitTimeoutError",
]

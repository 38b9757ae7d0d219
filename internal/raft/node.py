"""The asyncio runtime of Raft: :class:`RaftNode` drives a :class:`RaftCore`.

One driver task runs the Ready cycle of ``docs/raft.md``; a ticker task calls ``tick()``;
the transport's handler steps peer messages into the core as they arrive; proposals,
membership changes and read barriers enter the core at once and wake the driver. So
everything proposed while a round is being written is coalesced into the next Ready: one
log write, one fsync and one AppendEntries per follower for the whole group (group commit).

The node is a facade over modules named by role:

    driver.py             Driver: one Ready round (persist, send, apply), snapshots taken
    proposals.py          ProposalTracker: proposals from the call to the answer, deadlines
    reads.py              ReadBarriers: read barriers until confirmed and applied
    snapshot_transfer.py  SnapshotSender / SnapshotReceiver: InstallSnapshot in chunks
    peers.py              PeerTable: the transport's id -> address table
    storage.py, clock.py  what the node needs from its stores and its clock; disk.py and
                          inmem.py provide them

The rule of which messages may leave before the fsync is the core's
(``Ready.messages_before_persist``, see :mod:`raftlog.raft.core`).

Payloads on the transport start with one byte naming their kind: ``M`` a Raft message,
``C`` a snapshot chunk, ``K`` a chunk acknowledgement (see docs/raft-runtime.md).
"""

# Every waiting call takes an explicit, documented timeout (the callers are RPC handlers with
# deadlines of their own), so ruff's preference for asyncio.timeout at call sites is waived.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from raftlog.log.errors import DurabilityError
from raftlog.raft.clock import Clock, MonotonicClock
from raftlog.raft.codec import (
    KIND_CHUNK,
    KIND_CHUNK_ACK,
    KIND_MESSAGE,
    decode_chunk_ack,
    decode_message,
    decode_snapshot_chunk,
    encode_message,
)
from raftlog.raft.config import NodeConfig
from raftlog.raft.core import RaftCore, Status, bootstrap_state
from raftlog.raft.disk import open_disk_stores
from raftlog.raft.driver import Driver
from raftlog.raft.errors import (
    BootstrapError,
    CodecError,
    ConfigError,
    DiskFullError,
    NodeClosedError,
    NodeFailedError,
    NotLeaderError,
    OutcomeUnknownError,
    ProposalTimeoutError,
    RaftError,
    ReadBarrierTimeoutError,
    SnapshotError,
    TransferError,
    WaitTimeoutError,
)
from raftlog.raft.fsm import CatchUpStateMachine, StateMachine
from raftlog.raft.observer import NO_METRICS, RaftMetrics
from raftlog.raft.peers import PeerTable
from raftlog.raft.proposals import ApplyResult, Proposal, ProposalTracker
from raftlog.raft.reads import ReadBarriers
from raftlog.raft.snapshot_transfer import SnapshotReceiver, SnapshotSender
from raftlog.raft.stable import os_error_of
from raftlog.raft.stats import NodeStats
from raftlog.raft.storage import LogStorage, SnapshotStorage, StableStorage
from raftlog.raft.transport import Transport
from raftlog.raft.types import (
    NO_NODE,
    ConfChange,
    ConfChangeType,
    Membership,
    Message,
    MessageType,
    NodeId,
    Role,
    Server,
    SnapshotChunk,
    SnapshotMeta,
    SoftState,
)
from raftlog.telemetry.budget import CURRENT as CURRENT_TRACE
from raftlog.telemetry.budget import LatencyBudget

log = logging.getLogger("raftlog.raft.node")

#: The agent's ``commit_broadcast_delay`` (seconds): 5 ms. A write that arrives within it
#: carries the new commit index to the followers; at most this late otherwise.
AGENT_COMMIT_BROADCAST_DELAY = 0.005
#: Longest sleep of a quiesced node's ticker (seconds): a safety net, since any message,
#: proposal or ``peer_unreachable`` wakes the node at once anyway. 2 s.
QUIESCED_POLL_S = 2.0


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
        metrics: RaftMetrics = NO_METRICS,
    ) -> None:
        config = config.validate()
        if config.commit_broadcast_delay > 0 and not config.raft.defer_commit_broadcast:
            config = dataclasses.replace(
                config, raft=dataclasses.replace(config.raft, defer_commit_broadcast=True)
            )
        self.config = config
        self._metrics = metrics
        self.id: NodeId = config.raft.id
        if transport.node_id != self.id:
            raise ConfigError(
                f"transport is for node {transport.node_id!r}, but the node id is {self.id!r}"
            )
        self._fsm = fsm
        self._transport = transport
        #: how the logs name this node: its id, and its Raft group when it shares the
        #: transport with others (raft/groups.py; the default group "" is not named)
        group = getattr(transport, "group", "")
        self._label = f"{self.id} (group {group})" if isinstance(group, str) and group else self.id
        self._peers = PeerTable(self.id, transport, peers)
        self._rng = random.Random(config.seed)
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._stable = stable_store
        self._snapshots = snapshot_store
        self._logstore = log_store
        self._core: RaftCore | None = None
        self.stats = NodeStats()
        # Requests in flight.
        self._proposals = ProposalTracker(self._lost_error)
        self._reads = ReadBarriers()
        self._watchers: list[asyncio.Future[None]] = []
        # Tasks.
        self._wake = asyncio.Event()
        #: set while the core is not quiesced: what a quiesced ticker waits on
        self._awake = asyncio.Event()
        self._io_lock = asyncio.Lock()
        #: The deferred commit broadcast (``commit_broadcast_delay``): its timer, and
        #: whether it fired (the driver then sends the commit index before its next round).
        self._commit_timer: asyncio.TimerHandle | None = None
        self._commit_due = False
        #: Set once the node failed or began to close (:meth:`wait_failure`).
        self._ended = asyncio.Event()
        self._drive_task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._sender = SnapshotSender(
            self.id,
            transport,
            snapshot_store,
            self.stats,
            self._snapshot_sent,
            chunk_bytes=config.raft.snapshot_chunk_bytes,
            ack_timeout=config.snapshot_ack_timeout,
            attempts=config.snapshot_send_attempts,
            stream_for=fsm.snapshot_stream if isinstance(fsm, CatchUpStateMachine) else None,
        )
        self._receiver = SnapshotReceiver(
            self.id,
            transport,
            snapshot_store,
            self.stats,
            installed=self._snapshot_received,
            stopping=lambda: self._stopping,
            idle_timeout=config.snapshot_idle_timeout,
            admit=self._admit_chunk,
            resume=fsm.resume_point if isinstance(fsm, CatchUpStateMachine) else None,
        )
        self._driver = Driver(
            config,
            fsm,
            transport,
            self._sender,
            log_store=log_store,
            stable_store=stable_store,
            snapshot_store=snapshot_store,
            clock=self._clock,
            stats=self.stats,
            proposals=self._proposals,
            reads=self._reads,
            before_round=self._before_round,
            notify=self._notify,
            wake=self._wake.set,
            metrics=metrics,
            disk_full=self._on_disk_full,
            stopping=lambda: self._stopping,
        )
        self._soft: SoftState | None = None
        self._started = False
        self._stopping = False
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        self._failure: NodeFailedError | None = None
        #: Set while the disk is full (a write failed with ENOSPC and its retry has not
        #: yet succeeded): new writes are refused with it.
        self._disk_full: DiskFullError | None = None

    @classmethod
    async def on_disk(
        cls,
        config: NodeConfig,
        fsm: StateMachine,
        transport: Transport,
        *,
        clock: Clock | None = None,
        peers: Mapping[NodeId, str] | None = None,
        metrics: RaftMetrics = NO_METRICS,
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
            metrics=metrics,
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
        state = await self._driver.load()
        self._core = RaftCore(self.config.raft, state, self._rng)
        self._soft = self._core.soft_state()
        self._transport.set_handler(self._on_payload)
        self._peers.sync(self.membership, force=True)
        await self._transport.start()
        self._drive_task = asyncio.create_task(self._drive(), name=f"raft-node {self.id}")
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
        self._driver.check_can_bootstrap(self._require_core())

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
            await self._driver.persist_bootstrap(st)
            core = RaftCore(self.config.raft, st, self._rng)
            self._core = core
            self._soft = core.soft_state()
            self._peers.sync(self.membership, force=True)
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
        self._ended.set()
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None
        if self._ticker is not None:
            self._ticker.cancel()
        if self._drive_task is not None:
            done, _ = await asyncio.wait({self._drive_task}, timeout=timeout)
            if not done:
                log.warning("raft node %s: round did not finish within %.1f s", self.id, timeout)
                self._drive_task.cancel()
        tasks: set[asyncio.Task[Any]] = {t for t in (self._ticker, self._drive_task) if t}
        if self._driver.snapshot_task is not None:
            tasks.add(self._driver.snapshot_task)
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

    def _check_writable(self) -> RaftCore:
        core = self._check_usable()
        full = self._disk_full
        if full is not None:
            raise DiskFullError(self.id, full.directory)
        return core

    @property
    def disk_full(self) -> DiskFullError | None:
        """Why this node refuses writes because its disk is full (None when it does not)."""
        return self._disk_full

    @property
    def failure(self) -> NodeFailedError | None:
        """Why this node stopped (a failed disk, a state machine error), or None: such a
        node answers every request with this error until it is restarted."""
        return self._failure

    def _data_directory(self) -> str:
        d = self.config.data_dir
        return str(d) if d is not None else self._logstore.describe()

    def _on_disk_full(self, exc: OSError | None) -> None:
        """The driver's report: the disk is full (``exc``) or has room again (None)."""
        if exc is None:
            if self._disk_full is not None:
                log.warning(
                    "raft node %s: the write that failed for lack of space succeeded: writes "
                    "are taken again",
                    self.id,
                )
            self._disk_full = None
            self._notify()
            return
        full = DiskFullError(self.id, self._data_directory(), exc)
        self._disk_full = full
        log.error(
            "raft node %s: %s; retrying the failed write every %.1f s (reads are served, "
            "nothing is acknowledged that is not on disk)",
            self.id,
            full,
            self.config.disk_full_retry_delay,
        )
        # Never given to the core: certainly not committed, so refused like new ones.
        self._proposals.fail_queued(full)
        # A leader that cannot write hands over at once instead of leaving the others to
        # notice its silence after an election timeout.
        self._hand_over()
        self._notify()

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
        return self._core.membership.address_of(lead) or self._peers.hint(lead)

    @property
    def is_leader(self) -> bool:
        return self._core is not None and self._core.is_leader and not self._stopping

    @property
    def quiesced(self) -> bool:
        """The group is idle and quiet (``RaftConfig.quiesce_after_ticks``)."""
        return self._core is not None and self._core.quiesced

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
        return self._driver.snapshot_meta.index if self._driver.snapshot_meta else 0

    @property
    def log_store(self) -> LogStorage:
        """The log store (read-only use: tests and tools)."""
        return self._logstore

    def status(self) -> Status:
        """The core's status (role, term, indexes, membership, followers' progress)."""
        return self._require_core().status()

    @property
    def budget(self) -> LatencyBudget | None:
        """The latency budget (debug): a follower reports its rounds there."""
        return self._driver.budget

    @budget.setter
    def budget(self, value: LatencyBudget | None) -> None:
        self._driver.budget = value

    def set_peer_addresses(self, peers: Mapping[NodeId, str]) -> None:
        """Replace the address hints (used on top of the membership's addresses)."""
        self._peers.set_hints(peers, self.membership)

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
            # asyncio.timeout, not asyncio.wait_for: on Python 3.11 wait_for returns the
            # result instead of raising when a cancellation arrives in the same loop turn
            # as ``fut``'s result (CPython gh-86296), and a busy node resolves these every
            # round: a cancelled waiter (the agent's health watcher, at shutdown) went on
            # waiting, and so did the shutdown that awaited it
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, self.config.tick_interval * 4)):
                    await fut

    async def wait_failure(self, timeout: float) -> NodeFailedError:
        """Wait until this node fails (:attr:`failure`) and return why. Unlike
        :meth:`wait_for` nothing wakes it before then (a watcher that would re-check a
        predicate after every round costs every round a task switch). Raises
        NodeClosedError if the node closes first, WaitTimeoutError after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                await self._ended.wait()
        except TimeoutError:
            raise WaitTimeoutError(f"node {self.id}: no failure within {timeout} s") from None
        if self._failure is None:
            raise NodeClosedError(f"node {self.id!r} closed")
        return self._failure

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
        core = self._check_writable()
        if not core.is_leader:
            raise NotLeaderError(core.leader_id, self.leader_address)
        if not items:
            raise ValueError("propose_batch needs at least one item")
        loop = asyncio.get_running_loop()
        t = self.config.request_timeout if timeout is None else timeout
        fut: asyncio.Future[list[ApplyResult]] = loop.create_future()
        trace = CURRENT_TRACE.get()
        if trace is not None:
            trace.mark("proposed")
        p = Proposal(items, fut, self._clock.now() + t, trace)
        # Queued, not stepped: the driver hands every queued proposal to the core in one
        # call (one ticket) before its next round, so the core's per-call cost is paid
        # once per round, not once per proposal.
        self._proposals.queue(p, default_timeout=timeout is None)
        self._wake.set()
        results = await fut
        if trace is not None:
            trace.mark("resumed")
        return results

    async def _conf_change(self, change: ConfChange, timeout: float | None) -> int:
        core = self._check_writable()
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
        self._peers.add_hint(node_id, address)
        return await self._conf_change(
            ConfChange(ConfChangeType.ADD_VOTER, node_id, address), timeout
        )

    async def add_learner(
        self, node_id: NodeId, address: str, *, timeout: float | None = None
    ) -> int:
        """Add a non-voting server that receives the log; see :meth:`add_voter`."""
        self._peers.add_hint(node_id, address)
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

    async def take_snapshot(self, *, timeout: float | None = None) -> int:
        """Snapshot the state machine now (whatever ``snapshot_threshold`` says) and compact
        the log behind it, for operators; return the index of the newest snapshot once it
        covers every entry applied when the call came (at once if it already does). A
        snapshot being taken is waited for first. SnapshotError if writing it failed (the
        log says why), WaitTimeoutError after ``timeout`` s (default request_timeout)."""
        loop = asyncio.get_running_loop()
        t = self.config.request_timeout if timeout is None else timeout
        deadline = loop.time() + t
        driver = self._driver
        async with self._io_lock:  # between rounds: applied == the state machine's
            target = self._check_usable().applied_index

        def settled() -> bool:
            idle = driver.snapshot_task is None and not driver.snapshot_ready
            return self.snapshot_index >= target or idle

        while True:
            async with self._io_lock:
                core = self._check_usable()
                if self.snapshot_index >= target:
                    return self.snapshot_index
                started = driver.snapshot_now(core)
            left = deadline - loop.time()
            if left <= 0:
                raise WaitTimeoutError(f"node {self.id}: no snapshot at {target} within {t} s")
            await self.wait_for(settled, left, f"a snapshot at index {target}")
            if self.snapshot_index >= target:
                return self.snapshot_index
            if started:
                raise SnapshotError(
                    f"node {self.id}: the snapshot at index {target} failed (see the log)"
                )
            # it was another snapshot, older than ours, that just finished: take ours now

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
                if m.type is MessageType.APPEND_RESP:
                    if self._proposals.traced and not m.reject:
                        self._proposals.mark_traced(m.index, "acked")
                elif m.entries and self._driver.budget is not None:
                    self._driver.append_received()  # (only appends carry entries)
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
                if core.quiesced and not self._proposals.has_deadlines:
                    await self._sleep_quiesced()
                    self._wake.set()  # the driver's wait stays bounded, as with ticks
                    due = clock.now() + interval
                    continue
                core.tick()
                self._wake.set()
            if self._proposals.has_deadlines:
                self._proposals.expire(now)

    async def _sleep_quiesced(self) -> None:
        """A quiesced core needs no ticks: wait until it wakes (the driver sets ``_awake``
        after the round that woke it), or ``QUIESCED_POLL_S`` at most."""
        self._awake.clear()
        core = self._core
        if core is None or not core.quiesced:
            return
        waiter = asyncio.ensure_future(self._awake.wait())
        sleeper = asyncio.ensure_future(self._clock.sleep(QUIESCED_POLL_S))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()

    def peer_unreachable(self, peer: NodeId) -> None:
        """The node's failure detection (for example the group router's liveness pings)
        says ``peer`` is down: a group quiesced under that leader wakes and elects another
        (``RaftCore.wake_quiesced``). Cheap and harmless otherwise."""
        core = self._core
        if core is not None and not self._stopping and core.quiesced:
            core.wake_quiesced(peer)
            self._wake.set()

    async def _drive(self) -> None:
        try:
            while not self._stopping:
                core = self._require_core()
                if not core.quiesced:
                    self._awake.set()
                if self._driver.snapshot_ready:
                    self._driver.finish_snapshot(core)
                if self._proposals.has_queued:
                    self._proposals.flush(core)
                if self._commit_due:
                    self._commit_due = False
                    if core.commit_unsent:
                        self.stats.commit_broadcasts += 1
                        core.broadcast_commit()
                if core.has_ready():
                    async with self._io_lock:
                        core = self._require_core()
                        if core.has_ready():
                            await self._driver.round(core, core.ready())
                    if core.commit_unsent and self._commit_timer is None:
                        self._commit_timer = asyncio.get_running_loop().call_later(
                            self.config.commit_broadcast_delay, self._commit_fired
                        )
                    continue
                self._wake.clear()
                if core.has_ready() or self._driver.snapshot_ready or self._proposals.has_queued:
                    continue
                # Bounded without a timer of its own: the ticker sets the event every tick.
                await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except NodeClosedError:
            return  # closed while waiting for disk space
        except Exception as exc:
            self._fatal(exc)

    def broadcast_commit(self) -> None:
        """Tell the followers of the commit index now rather than after
        ``commit_broadcast_delay`` (a follower waits to apply a write it forwarded)."""
        if self._core is not None and self._core.commit_unsent and not self._stopping:
            self._commit_due = True
            self._wake.set()

    def _commit_fired(self) -> None:
        """The commit broadcast delay passed: the driver sends it if still unsent."""
        self._commit_timer = None
        self.broadcast_commit()

    def _fatal(self, exc: BaseException) -> None:
        # the OSError itself, or the one behind a failed save of the hard state
        disk: BaseException | None = exc if isinstance(exc, DurabilityError) else os_error_of(exc)
        if disk is not None:
            # A failed write or fsync (EIO and the like). Never retried: after a failed
            # fsync the page cache can no longer be trusted to hold what was written
            # (PostgreSQL's "fsyncgate"), so this log takes no more writes, acknowledges
            # nothing more, and hands leadership over.
            log.error(
                "raft node %s: DISK FAILURE in %s: %r; this node stops taking writes and "
                "acknowledging entries and hands leadership over; restart it once the "
                "disk is checked",
                self.id,
                self._data_directory(),
                exc,
                exc_info=exc,
            )
            failure = NodeFailedError(
                f"node {self.id!r} stopped: its disk failed in {self._data_directory()} "
                f"({exc}); it takes no writes until restarted"
            )
        else:
            log.error("raft node %s stopped after a fatal error: %r", self.id, exc, exc_info=exc)
            failure = NodeFailedError(f"node {self.id!r} failed: {exc!r}")
        # the disk error as the cause: DistributedLog answers it UNAVAILABLE/DISK_FAILED
        failure.__cause__ = exc if disk is None else disk
        self._hand_over()
        self._failure = failure
        self._stopping = True
        self._fail_all(failure)
        self._notify()
        self._ended.set()

    def _hand_over(self) -> None:
        """A leader that stops tells its most caught-up voter to campaign now (TIMEOUT_NOW,
        as a leadership transfer does), instead of leaving the cluster without a leader
        for an election timeout. Safe whatever that voter holds: it only starts an
        election, which it wins only with a log as complete as a quorum's."""
        core = self._core
        if core is None or not core.is_leader:
            return
        st = core.status()
        voters = [(p.match, i) for i, p in st.progress.items() if i != self.id and p.voter]
        if not voters:
            return
        _match, best = max(voters)
        m = Message(type=MessageType.TIMEOUT_NOW, src=self.id, dst=best, term=core.term)
        try:
            self._transport.send(best, bytes([KIND_MESSAGE]) + encode_message(m))
        except Exception:
            log.exception("raft node %s: could not hand leadership to %s", self.id, best)
            return
        log.warning("raft node %s: asked %s to take over leadership", self.id, best)

    def _lost_error(self) -> NotLeaderError:
        return NotLeaderError(self.leader_id, self.leader_address)

    def _before_round(self, ss: SoftState) -> None:
        self._on_soft_state(ss)
        self._peers.sync(self.membership)

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
                self._label,
                ss.term,
                ss.role.name,
                ss.leader,
                extra={"term": ss.term, "role": ss.role.name.lower(), "leader": ss.leader},
            )
            if prev is not None:
                self._metrics.raft_leader_changed(ss.term, ss.leader)

    def _notify(self) -> None:
        watchers, self._watchers = self._watchers, []
        for fut in watchers:
            if not fut.done():
                fut.set_result(None)

    def _fail_all(self, exc: BaseException) -> None:
        self._proposals.fail_all(exc)
        self._reads.fail_all(exc)
        self._notify()

    # -- snapshot transfer (snapshot_transfer.py) -------------------------------------------

    def _snapshot_sent(self, to: NodeId, ok: bool) -> None:
        if not self._stopping and self._core is not None:
            self._core.report_snapshot(to, ok)
            self._wake.set()

    def _admit_chunk(self, c: SnapshotChunk) -> bool:
        """A snapshot chunk is useful only from a leader of this term or a newer one, and
        only for a snapshot beyond what this node has committed (what the core accepts)."""
        core = self._core
        if core is None or c.term < core.term or c.meta.index <= core.commit_index:
            log.warning(
                "raft node %s: refused a snapshot chunk from %s (term %d, snapshot at %d; "
                "this node is at term %d, commit %d)",
                self.id,
                c.src,
                c.term,
                c.meta.index,
                core.term if core else 0,
                core.commit_index if core else 0,
            )
            return False
        return True

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
    "AGENT_COMMIT_BROADCAST_DELAY",
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

"""The asyncio Raft runtime (RaftNode): clusters over the in-memory and the TCP+TLS transports.

Every wait is a condition with a deadline (``RaftNode.wait_for`` or ``support.wait.wait_until``); no
test sleeps blindly. Ticks are short (30 ms) so elections take well under a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from raftlog.raft import (
    BootstrapError,
    ConfigError,
    MessageType,
    NotLeaderError,
    RaftConfig,
    Server,
    Suffrage,
    TransferError,
)
from raftlog.raft.codec import decode_message
from raftlog.raft.fsm import StateMachine
from raftlog.raft.inmem import InmemLogStore, InmemSnapshotStore, InmemStableStore
from raftlog.raft.node import (
    NodeClosedError,
    NodeConfig,
    ProposalTimeoutError,
    RaftNode,
    ReadBarrierTimeoutError,
    WaitTimeoutError,
)
from raftlog.raft.stable import StableStore
from raftlog.raft.testing import ListFSM
from raftlog.raft.transport import Transport
from raftlog.raft.transport_inmem import Faults, InmemNetwork
from raftlog.raft.transport_tcp import TcpTransport, TcpTransportConfig
from raftlog.security import CertFiles, TLSConfig
from support.raft_peers import peer_tls
from support.raft_transport import TransportWrapper
from support.wait import wait_until

pytestmark = pytest.mark.timeout(60)

TICK = 0.03
WAIT = 15.0


def _check_fsm(_: StateMachine) -> None:
    """ListFSM must satisfy the protocol (checked by mypy through this call)."""


_check_fsm(ListFSM())


class PersistBeforeSend(TransportWrapper):
    """Wraps a transport and checks, for every message a node sends, that what it
    promises is already durable on its disk: an acknowledged AppendEntries index is below
    the log store's fsynced offset, a granted vote is in the stable store's file."""

    def __init__(self, inner: Transport, data_dir: Path) -> None:
        super().__init__(inner)
        self.data_dir = data_dir
        self.node: RaftNode | None = None
        self.acks_checked = 0
        self.votes_checked = 0
        #: Broken promises (not raised here: the node logs and survives transport errors).
        self.violations: list[str] = []

    def send(self, to: str, payload: bytes) -> None:
        if payload[:1] == b"M" and self.node is not None:
            m = decode_message(payload[1:])
            if m.type is MessageType.APPEND_RESP and not m.reject:
                durable = self.node.log_store.durable_index
                if not (durable > m.index or m.index < self.node.log_store.first_index):
                    self.violations.append(
                        f"{m.src} acknowledged index {m.index} with only <{durable} fsynced"
                    )
                self.acks_checked += 1
            elif m.type is MessageType.VOTE_RESP and not m.reject:
                saved = StableStore(self.data_dir / "stable").load_sync()
                if saved is None or (saved.term, saved.voted_for) != (m.term, m.dst):
                    self.violations.append(
                        f"{m.src} granted a vote in term {m.term} before saving it ({saved})"
                    )
                self.votes_checked += 1
        self.inner.send(to, payload)


class Cluster:
    """N nodes in one process, over the in-memory network or TCP+TLS on 127.0.0.1."""

    def __init__(
        self,
        root: Path,
        ids: Sequence[str],
        *,
        tls: TLSConfig | None = None,
        raft: dict[str, Any] | None = None,
        node: dict[str, Any] | None = None,
        net_seed: int = 7,
    ) -> None:
        self.root = root
        self.node_kw = dict(node or {})
        self.ids = list(ids)
        self.tls = tls
        self.raft_kw = dict(raft or {})
        self.net = InmemNetwork(seed=net_seed)
        self.nodes: dict[str, RaftNode] = {}
        self.fsms: dict[str, ListFSM] = {}
        self.addresses: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self.checkers: list[PersistBeforeSend] = []

    def servers(self, ids: Iterable[str] | None = None) -> list[Server]:
        return [Server(i, self.addresses[i]) for i in (ids or self.ids)]

    async def _transport(self, node_id: str) -> Transport:
        if self.tls is None:
            self.addresses.setdefault(node_id, f"mem-{node_id}")
            inner = self.net.transport(node_id, self.addresses[node_id])
            checker = PersistBeforeSend(inner, self.root / node_id)
            self.checkers.append(checker)
            return checker
        t = TcpTransport(
            TcpTransportConfig(node_id=node_id, tls=self.tls, close_timeout=1.0),
            authorize=lambda cn: cn == "server",
        )
        addr = await t.serve("127.0.0.1", self.ports.get(node_id, 0))
        self.ports[node_id] = int(addr.rsplit(":", 1)[1])
        self.addresses[node_id] = addr
        return t

    async def prepare(self, ids: Iterable[str]) -> dict[str, Transport]:
        """Transports first, so that every address is known before any node starts."""
        return {i: await self._transport(i) for i in ids}

    async def start(
        self, node_id: str, transport: Transport | None = None, *, fresh_fsm: bool = True
    ) -> RaftNode:
        t = transport or await self._transport(node_id)
        if fresh_fsm or node_id not in self.fsms:
            self.fsms[node_id] = ListFSM()
        settings: dict[str, Any] = {
            "tick_interval": TICK,
            "close_timeout": 2.0,
            "snapshot_ack_timeout": 1.0,
            "snapshot_idle_timeout": 5.0,
            "seed": hash(node_id) & 0xFFFF,
        }
        settings.update(self.node_kw)
        cfg = NodeConfig(
            raft=RaftConfig(id=node_id, **self.raft_kw), data_dir=self.root / node_id, **settings
        )
        node = await RaftNode.on_disk(cfg, self.fsms[node_id], t, peers=dict(self.addresses))
        if isinstance(t, PersistBeforeSend):
            t.node = node
        await node.start()
        self.nodes[node_id] = node
        return node

    async def start_all(self, *, bootstrap: bool = True) -> None:
        transports = await self.prepare(self.ids)
        for i in self.ids:
            node = await self.start(i, transports[i])
            node.set_peer_addresses(self.addresses)
        if bootstrap:
            for i in self.ids:
                await self.nodes[i].bootstrap(self.servers())

    async def stop(self, node_id: str) -> None:
        node = self.nodes.pop(node_id)
        await node.close()

    def running(self) -> list[RaftNode]:
        return [n for n in self.nodes.values() if not n.closed]

    async def leader(self, timeout: float = WAIT, among: Iterable[str] | None = None) -> RaftNode:
        """Wait until one running node leads and every running node (or ``among``) agrees."""
        ids = list(among) if among is not None else list(self.nodes)
        found: list[RaftNode] = []

        def agreed() -> bool:
            nodes = [self.nodes[i] for i in ids if i in self.nodes]
            leaders = [n for n in nodes if n.is_leader]
            if len(leaders) != 1:
                return False
            lead = leaders[0]
            if not all(n.leader_id == lead.id for n in nodes):
                return False
            found[:] = [lead]
            return True

        await wait_until(agreed, timeout, f"one leader agreed by {ids}")
        return found[0]

    async def converge(self, count: int, timeout: float = WAIT) -> None:
        """Wait until every running node's state machine holds ``count`` items."""
        await wait_until(
            lambda: all(len(self.fsms[n.id].items) >= count for n in self.running()),
            timeout,
            f"{count} items applied everywhere",
        )
        lists = {n.id: self.fsms[n.id].items[:count] for n in self.running()}
        first = next(iter(lists.values()))
        for node_id, items in lists.items():
            assert items == first, f"{node_id} diverged"

    def violations(self) -> list[str]:
        return [v for c in self.checkers for v in c.violations]

    async def close(self) -> None:
        for node in list(self.nodes.values()):
            await node.close()
        self.nodes.clear()
        await self.net.close()
        # Every in-memory test also checks persist-before-send on every message sent.
        assert not self.violations(), self.violations()[:5]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, ["n1", "n2", "n3"])
    yield c
    await c.close()


def _payloads(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}-{i:05d}".encode() for i in range(n)]


# =========================================================================================
# In-memory transport
# =========================================================================================


async def test_elect_propose_apply_everywhere(cluster: Cluster) -> None:
    await cluster.start_all()
    lead = await cluster.leader()
    data = _payloads("a", 60)
    results = await asyncio.gather(*(lead.propose(d) for d in data))
    # Each proposal got its own entry, in one order, and the FSM's result for it.
    indexes = [r.index for r in results]
    assert len(set(indexes)) == 60
    for r, d in zip(results, data, strict=True):
        assert cluster.fsms[lead.id].items[r.result] == d
    await cluster.converge(60)
    assert sorted(cluster.fsms["n2"].items) == sorted(data)
    # Group commit: far fewer fsync rounds than proposals.
    assert lead.stats.syncs < 60
    # A follower refuses, naming the leader.
    follower = next(n for n in cluster.running() if not n.is_leader)
    with pytest.raises(NotLeaderError) as info:
        await follower.propose(b"nope")
    assert info.value.leader_id == lead.id
    assert info.value.leader_address == cluster.addresses[lead.id]


async def test_persist_before_send_and_leader_sends_early(cluster: Cluster) -> None:
    await cluster.start_all()
    lead = await cluster.leader()
    await asyncio.gather(*(lead.propose(d) for d in _payloads("d", 40)))
    await cluster.converge(40)
    # Every acknowledgement and granted vote sent so far was checked against the disk.
    acks = sum(c.acks_checked for c in cluster.checkers)
    votes = sum(c.votes_checked for c in cluster.checkers)
    assert acks >= 4 and votes >= 1
    assert cluster.violations() == []
    # The leader sent AppendEntries before its own fsync; followers never send early.
    assert lead.stats.sent_early > 0
    for n in cluster.running():
        if n is not lead:
            assert n.stats.sent_early == 0


async def test_batch_proposal_lands_in_consecutive_entries(cluster: Cluster) -> None:
    await cluster.start_all()
    lead = await cluster.leader()
    results = await lead.propose_batch(_payloads("b", 5))
    assert [r.index for r in results] == list(range(results[0].index, results[0].index + 5))
    assert {r.term for r in results} == {lead.term}
    await cluster.converge(5)


async def test_leader_loss_new_leader_and_restart_from_disk(cluster: Cluster) -> None:
    await cluster.start_all()
    lead = await cluster.leader()
    acked = [r.result for r in await asyncio.gather(*(lead.propose(d) for d in _payloads("x", 20)))]
    assert len(acked) == 20
    old = lead.id
    await cluster.stop(old)
    lead2 = await cluster.leader()
    assert lead2.id != old
    await asyncio.gather(*(lead2.propose(d) for d in _payloads("y", 20)))
    # The old leader restarts from its disk: it keeps its log and never re-bootstraps.
    node = await cluster.start(old)
    assert node.has_state()
    with pytest.raises(BootstrapError, match="already has"):
        await node.bootstrap(cluster.servers())
    await cluster.converge(40)
    items = cluster.fsms[old].items
    assert items[:20] == _payloads("x", 20) or sorted(items[:20]) == sorted(_payloads("x", 20))
    assert set(_payloads("y", 20)) <= set(items)


async def test_full_restart_reloads_state_and_refuses_bootstrap(cluster: Cluster) -> None:
    await cluster.start_all()
    lead = await cluster.leader()
    await asyncio.gather(*(lead.propose(d) for d in _payloads("p", 30)))
    await cluster.converge(30)
    before = list(cluster.fsms[lead.id].items)
    term_before = lead.term
    for i in list(cluster.nodes):
        await cluster.stop(i)
    # Restart everybody from disk: in-memory FSMs are rebuilt by replaying the log.
    transports = await cluster.prepare(cluster.ids)
    for i in cluster.ids:
        node = await cluster.start(i, transports[i])
        with pytest.raises(BootstrapError) as info:
            await node.bootstrap(cluster.servers())
        assert "term=" in str(info.value) and "log entries" in str(info.value)
    lead = await cluster.leader()
    assert lead.term > term_before
    await lead.propose(b"after-restart")
    await cluster.converge(31)
    assert cluster.fsms["n3"].items[:30] == before


async def test_bootstrap_refused_with_reason_and_fresh_node_waits(tmp_path: Path) -> None:
    c = Cluster(tmp_path, ["solo"])
    try:
        await c.start_all(bootstrap=False)
        node = c.nodes["solo"]
        assert not node.has_state()
        with pytest.raises(ValueError, match="does not include"):
            await node.bootstrap([Server("other", "x")])
        await node.bootstrap(c.servers())
        assert node.has_state()
        with pytest.raises(BootstrapError, match="refusing to bootstrap"):
            await node.bootstrap(c.servers())
        lead = await c.leader()
        assert lead is node
        assert (await node.propose(b"one")).result == 0
    finally:
        await c.close()


async def test_proposal_timeout_and_close_fail_pending(cluster: Cluster) -> None:
    await cluster.start_all()
    lead = await cluster.leader()
    others = [i for i in cluster.ids if i != lead.id]
    cluster.net.partition([lead.id], others)
    with pytest.raises(ProposalTimeoutError):
        await lead.propose(b"lost?", timeout=0.3)
    if lead.is_leader:  # check-quorum may already have deposed it
        pending = asyncio.ensure_future(lead.propose(b"pending", timeout=30))
        await asyncio.sleep(0)
        t0 = time.monotonic()
        await lead.close()
        await lead.close()  # idempotent
        assert time.monotonic() - t0 < 10
        with pytest.raises(NodeClosedError):
            await pending
    else:
        await lead.close()
    with pytest.raises(NodeClosedError):
        await lead.propose(b"after close")


async def test_default_timeout_applies_to_proposals_without_one(tmp_path: Path) -> None:
    c = Cluster(tmp_path, ["n1", "n2", "n3"], node={"request_timeout": 0.3})
    try:
        await c.start_all()
        lead = await c.leader()
        assert (await lead.propose(b"ok")).index > 0
        c.net.partition([lead.id], [i for i in c.ids if i != lead.id])
        t0 = time.monotonic()
        with pytest.raises((ProposalTimeoutError, NotLeaderError)):
            await lead.propose(b"stuck")
        assert time.monotonic() - t0 < 3
    finally:
        await c.close()


async def test_deposed_leader_fails_uncommitted_proposal_with_not_leader(
    cluster: Cluster,
) -> None:
    await cluster.start_all()
    lead = await cluster.leader()
    others = [i for i in cluster.ids if i != lead.id]
    cluster.net.partition([lead.id], others)
    doomed = asyncio.ensure_future(lead.propose(b"doomed", timeout=WAIT))
    new = await cluster.leader(among=others)
    await new.propose(b"winner")
    cluster.net.heal()
    # The old leader learns of the new term, its entry is overwritten: not leader.
    with pytest.raises(NotLeaderError):
        await doomed
    await cluster.converge(1)
    assert cluster.fsms[lead.id].items[0] == b"winner"


async def test_read_barrier_on_leader_only(cluster: Cluster) -> None:
    await cluster.start_all()
    lead = await cluster.leader()
    r = await lead.propose(b"v1")
    index = await lead.read_barrier(timeout=5)
    assert index >= r.index
    assert lead.applied_index >= index
    follower = next(n for n in cluster.running() if not n.is_leader)
    with pytest.raises(NotLeaderError):
        await follower.read_barrier(timeout=5)


async def test_a_cancelled_wait_for_is_cancelled_even_as_the_node_wakes_it(
    cluster: Cluster,
) -> None:
    """A cancel that lands in the same loop turn as the wake-up of the waiter (a busy
    node wakes its watchers every round) must cancel the wait. With asyncio.wait_for on
    Python 3.11 it was swallowed and the wait went on: a shutdown awaiting the agent's
    health watcher hung until SIGKILL (long chaos run of 2026-12-05, docs/reliability.md)."""
    await cluster.start_all()
    lead = await cluster.leader()
    for _ in range(20):
        waiter = asyncio.create_task(lead.wait_for(lambda: False, 30.0, "never"))
        await asyncio.sleep(0)  # the waiter now waits on its watcher future
        lead._notify()  # the wake-up of a round ...
        waiter.cancel()  # ... and a cancel in the same turn
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiter, 5.0)


async def test_leadership_transfer(cluster: Cluster) -> None:
    await cluster.start_all()
    lead = await cluster.leader()
    await lead.propose(b"before")
    target = next(i for i in cluster.ids if i != lead.id)
    new = await lead.transfer_leadership(target, timeout=WAIT)
    assert new == target
    lead2 = await cluster.leader()
    assert lead2.id == target
    await lead2.propose(b"after")
    await cluster.converge(2)


async def test_membership_learner_promote_remove(cluster: Cluster) -> None:
    await cluster.start_all()
    lead = await cluster.leader()
    await asyncio.gather(*(lead.propose(d) for d in _payloads("m", 10)))
    # A fourth node starts empty (no bootstrap) and is added as a learner, then promoted.
    t4 = (await cluster.prepare(["n4"]))["n4"]
    for n in cluster.running():
        n.set_peer_addresses(cluster.addresses)
    n4 = await cluster.start("n4", t4)
    assert not n4.has_state()
    await lead.add_learner("n4", cluster.addresses["n4"], timeout=WAIT)
    assert lead.membership.get("n4") is not None
    assert lead.membership.get("n4").suffrage is Suffrage.LEARNER  # type: ignore[union-attr]
    await n4.wait_for(lambda: len(cluster.fsms["n4"].items) >= 10, WAIT, "learner caught up")
    await lead.promote_learner("n4", timeout=WAIT)
    assert lead.membership.is_voter("n4")
    # Remove a follower; the cluster keeps committing with the remaining voters.
    victim = next(i for i in ("n1", "n2", "n3") if i != lead.id)
    await lead.remove_server(victim, timeout=WAIT)
    assert victim not in lead.membership
    await cluster.stop(victim)
    await lead.propose(b"after-remove")
    await wait_until(
        lambda: b"after-remove" in cluster.fsms["n4"].items, WAIT, "n4 applies new entries"
    )
    assert n4.membership == lead.membership


async def test_removing_the_leader_makes_it_step_down(cluster: Cluster) -> None:
    await cluster.start_all()
    lead = await cluster.leader()
    await lead.propose(b"x")
    await lead.remove_server(lead.id, timeout=WAIT)
    others = [i for i in cluster.ids if i != lead.id]
    new = await cluster.leader(among=others)
    assert new.id != lead.id
    assert lead.id not in new.membership
    await new.propose(b"y")


async def test_snapshot_compacts_log_and_install_snapshot_catches_up(tmp_path: Path) -> None:
    c = Cluster(
        tmp_path,
        ["n1", "n2", "n3"],
        raft={
            "snapshot_threshold": 40,
            "snapshot_trailing_entries": 5,
            "snapshot_chunk_bytes": 512,
        },
    )
    try:
        await c.start_all()
        lead = await c.leader()
        lagging = next(i for i in c.ids if i != lead.id)
        await c.stop(lagging)
        for k in range(4):
            await asyncio.gather(*(lead.propose(d) for d in _payloads(f"s{k}", 30)))
        await lead.wait_for(lambda: lead.snapshot_index > 0, WAIT, "a snapshot on the leader")
        store = lead.log_store
        assert lead.stats.snapshots_taken >= 1
        # The log's first index moved up (a whole segment or more was dropped) or nothing
        # old remains in the core's memory.
        assert lead.status().first_index > 1
        assert store.last_index >= 120
        node = await c.start(lagging)
        await c.converge(120)
        assert node.stats.snapshots_received >= 1
        assert c.fsms[lagging].restores >= 1
        assert lead.stats.snapshots_sent >= 1
        # Restart the caught-up node: it loads the installed snapshot, not a re-bootstrap.
        await c.stop(lagging)
        node = await c.start(lagging)
        assert node.snapshot_index > 0
        await c.converge(120)
    finally:
        await c.close()


async def test_lossy_duplicating_reordering_network_still_converges(tmp_path: Path) -> None:
    c = Cluster(
        tmp_path,
        ["n1", "n2", "n3"],
        raft={
            "snapshot_threshold": 60,
            "snapshot_trailing_entries": 0,
            "snapshot_chunk_bytes": 300,
        },
        node={"snapshot_ack_timeout": 0.2, "snapshot_send_attempts": 5},
    )
    try:
        await c.start_all()
        lead = await c.leader()
        lagging = next(i for i in c.ids if i != lead.id)
        await c.stop(lagging)
        await asyncio.gather(*(lead.propose(d) for d in _payloads("f", 100)))
        # Snapshots are taken in the background after apply: wait until every running node
        # has compacted its log, so whichever leads later can only catch the lagging node
        # up with an InstallSnapshot.
        for n in c.running():
            await n.wait_for(
                lambda n=n: n.status().first_index > 1,  # type: ignore[misc]
                WAIT,
                f"log compaction on {n.id}",
            )
        c.net.set_faults(
            Faults(
                drop_rate=0.05,
                duplicate_rate=0.05,
                min_delay=0.0,
                max_delay=0.002,
                reorder_rate=0.05,
                reorder_delay=0.005,
            )
        )
        # The lagging node needs an InstallSnapshot, streamed in chunks over a bad network.
        await c.start(lagging)
        proposer = lead
        done = 0
        while done < 40:
            try:
                await proposer.propose(b"g-%03d" % done, timeout=2)
                done += 1
            except (NotLeaderError, ProposalTimeoutError):
                proposer = await c.leader()  # outcome unknown: a duplicate is possible
        c.net.set_faults(None)
        await c.converge(140)
        assert c.nodes[lagging].stats.snapshots_received >= 1
        items = c.fsms[lagging].items
        assert set(_payloads("f", 100)) <= set(items)
    finally:
        await c.close()


async def test_bounded_waits_and_refusals(cluster: Cluster) -> None:
    await cluster.start_all()
    lead = await cluster.leader()
    with pytest.raises(WaitTimeoutError):
        await lead.wait_for(lambda: False, 0.1, "never")
    with pytest.raises(TransferError):
        await lead.transfer_leadership("nobody", timeout=1)
    # A leader cut off from its followers cannot confirm a read barrier.
    others = [i for i in cluster.ids if i != lead.id]
    cluster.net.partition([lead.id], others)
    with pytest.raises((ReadBarrierTimeoutError, NotLeaderError)):
        await lead.read_barrier(timeout=0.3)
    cluster.net.heal()


async def test_deferred_commit_broadcast_reaches_followers_without_more_writes(
    tmp_path: Path,
) -> None:
    # Heartbeats rare (every 9 ticks): the commit reaches the followers by the timer.
    c = Cluster(
        tmp_path,
        ["n1", "n2", "n3"],
        raft={"heartbeat_tick": 9},
        node={"commit_broadcast_delay": TICK / 3},
    )
    try:
        await c.start_all()
        lead = await c.leader()
        assert lead.config.raft.defer_commit_broadcast
        before = lead.stats.commit_broadcasts
        await lead.propose(b"one")
        await c.converge(1)
        assert lead.stats.commit_broadcasts > before
    finally:
        await c.close()


async def test_wait_failure_times_out_and_ends_with_the_close(cluster: Cluster) -> None:
    await cluster.start_all()
    lead = await cluster.leader()
    rounds = lead.stats.rounds
    with pytest.raises(WaitTimeoutError):
        await lead.wait_failure(0.05)
    waiter = asyncio.create_task(lead.wait_failure(WAIT))
    await lead.propose(b"x")  # rounds go by: the waiter is not woken by them
    assert lead.stats.rounds > rounds and not waiter.done()
    await cluster.stop(lead.id)
    with pytest.raises(NodeClosedError):
        await waiter


def test_node_config_validation_says_what_is_wrong(tmp_path: Path) -> None:
    raft = RaftConfig(id="n1")
    with pytest.raises(ConfigError, match="commit_broadcast_delay"):
        NodeConfig(raft=raft, tick_interval=0.05, commit_broadcast_delay=0.05).validate()
    with pytest.raises(ConfigError, match="tick_interval"):
        NodeConfig(raft=raft, data_dir=tmp_path, tick_interval=0).validate()
    with pytest.raises(ConfigError, match="snapshot_idle_timeout"):
        NodeConfig(
            raft=raft, data_dir=tmp_path, snapshot_ack_timeout=10, snapshot_idle_timeout=5
        ).validate()
    with pytest.raises(ConfigError, match="snapshot_retain"):
        NodeConfig(raft=raft, data_dir=tmp_path, snapshot_retain=0).validate()
    net = InmemNetwork()
    with pytest.raises(ConfigError, match="transport is for node"):
        RaftNode(
            NodeConfig(raft=raft),
            ListFSM(),
            net.transport("n2"),
            log_store=InmemLogStore(),
            stable_store=InmemStableStore(),
            snapshot_store=InmemSnapshotStore(),
        )


# =========================================================================================
# TCP + TLS transport
# =========================================================================================


async def test_tcp_cluster_replicates_survives_leader_stop_and_restart(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    c = Cluster(tmp_path, ["t1", "t2", "t3"], tls=peer_tls(dev_certs))
    try:
        await c.start_all()
        lead = await c.leader()
        await asyncio.gather(*(lead.propose(d) for d in _payloads("t", 50)))
        await c.converge(50)
        old = lead.id
        await c.stop(old)
        lead2 = await c.leader()
        assert lead2.id != old
        await asyncio.gather(*(lead2.propose(d) for d in _payloads("u", 50)))
        # The old leader restarts on the same port and catches up through the log.
        node = await c.start(old)
        await c.converge(100)
        assert node.stats.snapshots_received == 0
        assert set(c.fsms[old].items) == set(_payloads("t", 50) + _payloads("u", 50))
    finally:
        await c.close()


async def test_tcp_restarted_node_catches_up_by_install_snapshot(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    c = Cluster(
        tmp_path,
        ["s1", "s2", "s3"],
        tls=peer_tls(dev_certs),
        raft={
            "snapshot_threshold": 50,
            "snapshot_trailing_entries": 0,
            "snapshot_chunk_bytes": 700,
        },
    )
    try:
        await c.start_all()
        lead = await c.leader()
        lagging = next(i for i in c.ids if i != lead.id)
        held = c.nodes[lagging].last_index
        await c.stop(lagging)
        for k in range(4):
            await asyncio.gather(*(lead.propose(d) for d in _payloads(f"k{k}", 40)))
        # Every live node compacts on its own: wait until neither holds the entry after the
        # lagging node's last one any more (in its core, which is what a leader sends
        # from), so that whichever of them leads when the lagging node returns (leadership
        # may move on a loaded machine) must send a snapshot.
        for live in c.running():
            await live.wait_for(
                lambda n=live: n.snapshot_index >= 50 and n.status().first_index > held + 1,
                WAIT,
                f"{live.id} compacted past index {held + 1}",
            )
        node = await c.start(lagging)
        # The observable condition itself, with a deadline: the snapshot arrived.
        await node.wait_for(lambda: node.stats.snapshots_received >= 1, WAIT, "a snapshot received")
        await c.converge(160)
        assert c.fsms[lagging].restores >= 1
        assert sorted(c.fsms[lagging].items) == sorted(c.fsms[lead.id].items)
    finally:
        await c.close()

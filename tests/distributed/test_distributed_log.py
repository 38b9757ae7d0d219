"""DistributedLog in one process: three (or four) Raft nodes over the in-memory transport.

Quick coverage of the replicated log itself (no gRPC, no Serf): dense identical offsets,
coalesced concurrent appends, committed-only reads, wake-ups, the leader hint on a
follower, learner join and promotion, snapshot install on a newcomer after compaction,
restart without duplicates, the linearizable read barrier, and the idempotent producer's
replicated table (concurrent retries, failover, snapshot).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from raftlog.distributed import (
    CommitLogFSM,
    DistributedConfig,
    DistributedLog,
    decode_batch,
)
from raftlog.distributed.fsm import encode_batch
from raftlog.domain.errors import (
    DiskFailedError,
    NotLeaderError,
    SequenceTooOldError,
    UnavailableError,
)
from raftlog.domain.protocols import Appended
from raftlog.log import OffsetOutOfRangeError
from raftlog.raft import RaftConfig, Server
from raftlog.raft.errors import NodeClosedError, NodeFailedError
from raftlog.raft.node import NodeConfig, RaftNode
from raftlog.raft.transport_inmem import InmemNetwork
from raftlog.server.errors import code_of
from raftlog.server.forward import GrpcForwarder
from support.wait import wait_until

TICK = 0.01


@dataclass
class Member:
    id: str
    fsm: CommitLogFSM
    node: RaftNode
    dlog: DistributedLog

    async def close(self) -> None:
        await self.dlog.close()
        await self.node.close()
        await self.fsm.close()


class Cluster:
    def __init__(self, root: Path, snapshot_threshold: int = 0) -> None:
        self.root = root
        self.net = InmemNetwork(seed=7)
        self.members: dict[str, Member] = {}
        self.snapshot_threshold = snapshot_threshold

    async def start(self, node_id: str) -> Member:
        fsm = await asyncio.to_thread(CommitLogFSM.open, self.root / node_id / "fsm")
        raft = RaftConfig(
            id=node_id,
            snapshot_threshold=self.snapshot_threshold,
            snapshot_trailing_entries=2 if self.snapshot_threshold else 1024,
        )
        config = NodeConfig(
            raft=raft, data_dir=self.root / node_id / "raft", tick_interval=TICK, fsync=False
        )
        transport = self.net.transport(node_id)
        peers = {m: m for m in ("n1", "n2", "n3", "n4")}
        node = await RaftNode.on_disk(config, fsm, transport, peers=peers)
        await node.start()
        dlog = DistributedLog(node, fsm, config=DistributedConfig(append_timeout=5.0))
        dlog.start()
        member = Member(node_id, fsm, node, dlog)
        self.members[node_id] = member
        return member

    async def bootstrap(self, ids: tuple[str, ...] = ("n1", "n2", "n3")) -> None:
        """Start ``ids`` and bootstrap them as the voters of a new cluster."""
        servers = [Server(i, i) for i in ids]
        for i in ids:
            m = await self.start(i)
            await m.node.bootstrap(servers)

    async def leader(self, timeout: float = 5.0) -> Member:
        def current() -> list[Member]:
            return [m for m in self.members.values() if m.node.is_leader]

        await wait_until(lambda: bool(current()), timeout, "a leader", interval=TICK)
        return current()[0]

    async def close(self) -> None:
        for m in list(self.members.values()):
            await m.close()
        self.members.clear()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    await c.bootstrap()
    yield c
    await c.close()


def records_of(m: Member) -> list[bytes]:
    d = m.dlog
    if d.highest_offset < d.lowest_offset:
        return []
    return [d.read(o) for o in range(d.lowest_offset, d.highest_offset + 1)]


def test_batch_encoding_round_trip() -> None:
    batch = [b"", b"a", b"\x00" * 300]
    assert decode_batch(encode_batch(batch)) == batch


async def test_appends_are_dense_and_identical_everywhere(cluster: Cluster) -> None:
    leader = await cluster.leader()
    results = await asyncio.gather(
        *(leader.dlog.append([f"r{i}-{j}".encode() for j in range(i % 3 + 1)]) for i in range(60))
    )
    spans = sorted(results)
    # dense: every batch's span starts right after the previous one, from offset 0
    assert spans[0][0] == 0
    for (_, last), (first, _) in itertools.pairwise(spans):
        assert first == last + 1
    total = spans[-1][1] + 1
    assert total == sum(i % 3 + 1 for i in range(60))
    # each batch is contiguous and in order
    for i, (first, last) in enumerate(results):
        assert last - first == i % 3
        assert leader.dlog.read(first) == f"r{i}-0".encode()
    # coalesced: fewer Raft rounds than appends
    assert leader.node.stats.rounds < 60
    members = list(cluster.members.values())
    await wait_until(
        lambda: all(m.dlog.highest_offset == total - 1 for m in members), 5.0, "all replicas"
    )
    expected = records_of(leader)
    for m in cluster.members.values():
        assert records_of(m) == expected


async def test_follower_refuses_with_leader_hint_and_serves_committed(cluster: Cluster) -> None:
    leader = await cluster.leader()
    follower = next(m for m in cluster.members.values() if m is not leader)
    await wait_until(lambda: follower.node.leader_id == leader.id, 5.0, "the leader hint")
    with pytest.raises(NotLeaderError) as info:
        await follower.dlog.append([b"x"])
    assert info.value.metadata["leader_id"] == leader.id
    assert info.value.metadata["leader_addr"] == leader.id
    first, _ = await leader.dlog.append([b"hello"])
    assert await follower.dlog.wait_for(first, 5.0)
    assert follower.dlog.read(first) == b"hello"
    with pytest.raises(OffsetOutOfRangeError):
        follower.dlog.read(first + 1)
    assert not await follower.dlog.wait_for(first + 1, 0.05)


async def test_wait_for_wakes_on_apply(cluster: Cluster) -> None:
    leader = await cluster.leader()
    follower = next(m for m in cluster.members.values() if m is not leader)
    # Both park on the same apply signal, the waiter first; asyncio wakes them in that
    # order, so once the probe has returned, the waiter has seen the first apply too.
    waiter = asyncio.create_task(follower.dlog.wait_for(1, 5.0))
    probe = asyncio.create_task(follower.dlog.wait_for(0, 5.0))
    await leader.dlog.append([b"first"])
    assert await asyncio.wait_for(probe, 5.0)
    assert not waiter.done()  # woken by offset 0, still waiting for offset 1
    await leader.dlog.append([b"wake"])
    assert await asyncio.wait_for(waiter, 5.0)


async def test_get_servers_flags_the_leader_by_id(cluster: Cluster) -> None:
    leader = await cluster.leader()
    for m in cluster.members.values():
        await wait_until(lambda m=m: m.node.leader_id == leader.id, 5.0, "the leader")  # type: ignore[misc]
        servers = await m.dlog.get_servers()
        assert sorted(s.id for s in servers) == ["n1", "n2", "n3"]
        assert [s.id for s in servers if s.is_leader] == [leader.id]
        assert all(s.rpc_addr == s.id for s in servers)


async def test_read_barrier_on_leader_only(cluster: Cluster) -> None:
    leader = await cluster.leader()
    first, _ = await leader.dlog.append([b"lin"])
    assert await leader.dlog.read_consistent(first, 2.0) == b"lin"
    follower = next(m for m in cluster.members.values() if m is not leader)
    with pytest.raises(NotLeaderError):
        await follower.dlog.read_barrier(1.0)


async def test_join_as_learner_then_promoted_and_leave(cluster: Cluster) -> None:
    leader = await cluster.leader()
    for i in range(20):
        await leader.dlog.append([f"before-{i}".encode()])
    n4 = await cluster.start("n4")
    await leader.dlog.join("n4", "n4")
    await leader.dlog.join("n4", "n4")  # idempotent
    await wait_until(lambda: leader.node.membership.is_voter("n4"), 5.0, "n4 promoted")
    assert not any(s.is_learner for s in await leader.dlog.get_servers())
    # A member that never catches up (not running) stays a learner: a member, but not a
    # server clients may use (GetServers leaves it out; docs/security.md).
    await leader.dlog.join("n5", "n5")
    flags = {s.id: s.is_learner for s in await leader.dlog.get_servers()}
    assert flags == {"n1": False, "n2": False, "n3": False, "n4": False}
    assert "n5" in await leader.dlog.members()
    await leader.dlog.leave("n5")
    await leader.dlog.append([b"after"])
    await wait_until(lambda: n4.dlog.highest_offset == leader.dlog.highest_offset, 5.0, "n4")
    assert records_of(n4) == records_of(leader)
    await leader.dlog.leave("n4")
    await leader.dlog.leave("n4")  # idempotent
    assert "n4" not in leader.node.membership
    assert set((await leader.dlog.members()).keys()) == {"n1", "n2", "n3"}


async def test_newcomer_catches_up_from_a_snapshot(tmp_path: Path) -> None:
    c = Cluster(tmp_path, snapshot_threshold=8)
    try:
        await c.bootstrap()
        leader = await c.leader()
        for i in range(40):
            await leader.dlog.append([f"s{i}".encode(), f"t{i}".encode()])
        await wait_until(lambda: leader.node.status().first_index > 5, 5.0, "a snapshot")
        n4 = await c.start("n4")
        await leader.dlog.join("n4", "n4")
        await wait_until(lambda: n4.dlog.highest_offset == leader.dlog.highest_offset, 10.0, "n4")
        assert n4.node.stats.snapshots_received >= 1
        assert records_of(n4) == records_of(leader)
        assert n4.dlog.read(0) == b"s0"
        await leader.dlog.append([b"post-snapshot"])
        await wait_until(lambda: n4.dlog.highest_offset == leader.dlog.highest_offset, 5.0, "n4")
        assert n4.dlog.read(n4.dlog.highest_offset) == b"post-snapshot"
    finally:
        await c.close()


async def test_restart_resumes_without_duplicates(cluster: Cluster) -> None:
    leader = await cluster.leader()
    for i in range(10):
        await leader.dlog.append([f"a{i}".encode()])
    victim = next(m for m in cluster.members.values() if m is not leader)
    await wait_until(lambda: victim.dlog.highest_offset == 9, 5.0, "the victim")
    await victim.close()
    del cluster.members[victim.id]
    leader = await cluster.leader()
    for i in range(5):
        await leader.dlog.append([f"b{i}".encode()])
    back = await cluster.start(victim.id)
    await wait_until(lambda: back.dlog.highest_offset == 14, 5.0, "the restarted node")
    # a later record lands right after the caught-up ones: nothing was applied twice
    await leader.dlog.append([b"c0"])
    await wait_until(lambda: back.dlog.highest_offset >= 15, 5.0, "the later record")
    assert back.dlog.highest_offset == 15 and back.dlog.read(15) == b"c0"
    assert records_of(back) == records_of(leader)


async def test_no_leader_answers_unavailable_with_an_empty_hint(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    try:
        await c.bootstrap()
        await c.leader()
        for i in ("n2", "n3"):
            await c.members.pop(i).close()
        lone = c.members["n1"]
        lone.dlog.forwarder = GrpcForwarder(None)  # would forward, if there were a leader
        lone.dlog.config = DistributedConfig(append_timeout=3.0, leader_wait=0.3)
        # check-quorum: a leader that hears from nobody steps down within an election timeout
        await wait_until(lambda: not lone.node.leader_id, 5.0, "the lone leader to step down")
        started = asyncio.get_running_loop().time()
        with pytest.raises(NotLeaderError) as info:
            await lone.dlog.append([b"nobody-home"])
        assert asyncio.get_running_loop().time() - started < 2.0
        assert code_of(info.value) == grpc.StatusCode.UNAVAILABLE
        assert info.value.metadata == {"leader_id": "", "leader_addr": ""}
        assert "no leader" in info.value.message
        await lone.dlog.forwarder.close()
    finally:
        await c.close()


async def test_idempotent_retries_are_deduplicated_by_the_replicated_table(
    cluster: Cluster,
) -> None:
    leader = await cluster.leader()
    # two attempts of one request reach Raft together: the state machine keeps one
    first, second = await asyncio.gather(
        leader.dlog.append_idempotent([b"a", b"b"], "prod", 1),
        leader.dlog.append_idempotent([b"a", b"b"], "prod", 1),
    )
    assert {first, second} == {Appended(0, 1), Appended(0, 1, duplicate=True)}
    assert leader.dlog.duplicates_short_circuited == 0  # both went through Raft
    # a later retry is answered from the leader's table without a Raft round
    rounds = leader.node.stats.rounds
    assert await leader.dlog.append_idempotent([b"a", b"b"], "prod", 1) == Appended(0, 1, True)
    assert leader.dlog.duplicates_short_circuited == 1 and leader.node.stats.rounds == rounds
    await leader.dlog.append_idempotent([b"c"], "prod", 2)
    with pytest.raises(SequenceTooOldError):
        for seq in range(3, 40):
            await leader.dlog.append_idempotent([b"%d" % seq], "prod", seq)
        await leader.dlog.append_idempotent([b"old"], "prod", 1)
    members = list(cluster.members.values())
    # the refused entry appended nothing: wait for every replica to apply it all the same
    await wait_until(
        lambda: all(m.fsm.applied == leader.fsm.applied for m in members), 5.0, "all replicas"
    )
    tables = [m.fsm.producers.dump() for m in members]
    assert tables[0] == tables[1] == tables[2]
    # the leader dies: its successor knows the pairs (the table is replicated)
    await leader.close()
    del cluster.members[leader.id]
    successor = await cluster.leader(10.0)
    assert successor is not leader
    assert await successor.dlog.append_idempotent([b"39"], "prod", 39) == Appended(39, 39, True)
    done = await successor.dlog.append_idempotent([b"new"], "prod", 40)
    assert done == Appended(40, 40)
    got = records_of(successor)
    assert got[:3] == [b"a", b"b", b"c"] and got.count(b"39") == 1 and len(got) == 41


async def test_a_newcomer_gets_the_producer_table_from_the_snapshot(tmp_path: Path) -> None:
    c = Cluster(tmp_path, snapshot_threshold=8)
    try:
        await c.bootstrap()
        leader = await c.leader()
        for seq in range(1, 30):
            await leader.dlog.append_idempotent([b"s%d" % seq], "p", seq)
        await wait_until(lambda: leader.node.status().first_index > 5, 5.0, "a snapshot")
        n4 = await c.start("n4")
        await leader.dlog.join("n4", "n4")
        await wait_until(lambda: n4.dlog.highest_offset == leader.dlog.highest_offset, 10.0, "n4")
        assert n4.node.stats.snapshots_received >= 1
        assert n4.fsm.producers.lookup("p", 3) == (2, 2)  # applied before the snapshot
        assert n4.fsm.producers.dump() == leader.fsm.producers.dump()
    finally:
        await c.close()


async def test_a_join_for_a_live_members_id_at_another_address_is_refused(
    cluster: Cluster,
) -> None:
    """Two live nodes with one id: the leader keeps the member it hears from and refuses
    the second; a member that is gone may move (restarted elsewhere)."""
    from raftlog.domain.errors import InvalidArgumentError

    leader = await cluster.leader()
    follower = next(m for m in cluster.members.values() if m is not leader)
    await wait_until(
        lambda: leader.node.status().progress[follower.id].recent_active,
        5.0,
        "the leader to hear from the follower",
    )
    with pytest.raises(InvalidArgumentError, match="taken by a live member"):
        await leader.dlog.join(follower.id, "elsewhere:1")
    assert leader.node.membership.address_of(follower.id) == follower.id
    # once it is gone (no answer for an election timeout), it may move
    await follower.close()
    del cluster.members[follower.id]
    await wait_until(
        lambda: not leader.node.status().progress[follower.id].recent_active,
        10.0,
        "the leader to notice the follower is gone",
    )
    await leader.dlog.join(follower.id, "elsewhere:1")
    assert leader.node.membership.address_of(follower.id) == "elsewhere:1"


async def test_read_barrier_of_a_stopped_node_is_unavailable_not_internal() -> None:
    """Seen in the long chaos run: a linearizable Consume on a node whose disk had failed
    ended INTERNAL (the node's NodeFailedError was not mapped); it is DISK_FAILED now, as
    for a write, and a closing node's is UNAVAILABLE."""

    class Node:
        id = "n1"

        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        async def read_barrier(self, timeout_s: float | None) -> int:
            raise self.exc

    failed = NodeFailedError("node 'n1' stopped: its disk failed")
    failed.__cause__ = OSError(errno.EIO, "Input/output error")
    for exc, expected in (
        (failed, DiskFailedError),
        (NodeClosedError("node 'n1' is closed"), UnavailableError),
    ):
        stub = SimpleNamespace(node=Node(exc))
        with pytest.raises(expected) as info:
            await DistributedLog.read_barrier(stub, 1.0)  # type: ignore[arg-type]
        assert code_of(info.value) == grpc.StatusCode.UNAVAILABLE

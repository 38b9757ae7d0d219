"""Disk faults in the Raft runtime (docs/reliability.md, "Disk faults"): a full disk
(ENOSPC) is refused and retried, never fatal; a failing disk (EIO) stops the node, which
acknowledges nothing more and hands leadership over.

Three RaftNodes in one process on in-memory stores and the in-memory network; one node's
log store fails its writes or its fsyncs with the errno a test chooses, the way the disk
store does (the engine's file layer raises OSError). The process-level tests, on a real
full file system and a real failing fsync, are in tests/agent/test_disk_faults.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from raftlog.raft import Entry, RaftConfig, Server
from raftlog.raft.config import NodeConfig
from raftlog.raft.errors import DiskFullError, NodeFailedError, NotLeaderError
from raftlog.raft.inmem import InmemLogStore, InmemSnapshotStore, InmemStableStore
from raftlog.raft.node import RaftNode
from raftlog.raft.stable import StableState, StableStoreError
from raftlog.raft.testing import ListFSM
from raftlog.raft.transport_inmem import InmemNetwork
from support.wait import wait_until

IDS = ("a", "b", "c")


class FaultyLogStore(InmemLogStore):
    """An in-memory log whose writes (``on="write"``) or fsyncs (``on="sync"``) raise
    ``OSError(fault)`` while ``fault`` is set; what a failed write stored is dropped, as
    the disk store's engine cuts a failed append back."""

    def __init__(self) -> None:
        super().__init__()
        self.fault = 0
        self.on = "write"
        self.failures = 0

    def _maybe_fail(self, where: str) -> None:
        if self.fault and self.on == where:
            self.failures += 1
            raise OSError(self.fault, os.strerror(self.fault))

    def store(self, entries: Sequence[Entry]) -> None:
        self._maybe_fail("write")
        super().store(entries)

    async def sync_exclusive(self) -> None:
        self._maybe_fail("sync")
        await super().sync_exclusive()


class FaultyStableStore(InmemStableStore):
    """The hard state in memory; while ``fault`` is set a save fails the way the disk
    store's does: ``StableStoreError`` from ``OSError(fault)``, nothing saved."""

    def __init__(self) -> None:
        super().__init__()
        self.fault = 0
        self.failures = 0

    async def save(self, state: StableState) -> None:
        if self.fault:
            self.failures += 1
            raise StableStoreError(
                f"cannot save raft-state: {os.strerror(self.fault)}"
            ) from OSError(self.fault, os.strerror(self.fault))
        await super().save(state)


@dataclass
class Cluster:
    nodes: dict[str, RaftNode]
    fsms: dict[str, ListFSM]
    logs: dict[str, FaultyLogStore]
    stables: dict[str, FaultyStableStore]

    def leader(self) -> RaftNode | None:
        leaders = [n for n in self.nodes.values() if n.is_leader and n.failure is None]
        return leaders[0] if len(leaders) == 1 else None

    def others(self, node_id: str) -> list[RaftNode]:
        return [n for i, n in self.nodes.items() if i != node_id]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    net = InmemNetwork(seed=7)
    nodes: dict[str, RaftNode] = {}
    fsms = {i: ListFSM() for i in IDS}
    logs = {i: FaultyLogStore() for i in IDS}
    stables = {i: FaultyStableStore() for i in IDS}
    for i in IDS:
        nodes[i] = RaftNode(
            NodeConfig(
                raft=RaftConfig(id=i),
                tick_interval=0.02,
                request_timeout=5.0,
                disk_full_retry_delay=0.05,
                seed=hash(i) & 0xFFFF,
            ),
            fsms[i],
            net.transport(i),
            log_store=logs[i],
            stable_store=stables[i],
            snapshot_store=InmemSnapshotStore(),
        )
    for n in nodes.values():
        await n.start()
    for n in nodes.values():
        await n.bootstrap([Server(i, i) for i in IDS])
    c = Cluster(nodes, fsms, logs, stables)
    await wait_until(lambda: c.leader() is not None, 10, "a leader")
    try:
        yield c
    finally:
        for n in nodes.values():
            await n.close()


async def _propose_via_leader(c: Cluster, data: bytes) -> int:
    """Propose on whichever node leads (retrying across leader changes); the index."""
    last: BaseException | None = None
    for _ in range(200):
        leader = c.leader()
        if leader is not None:
            try:
                return (await leader.propose(data, timeout=2)).index
            except (NotLeaderError, DiskFullError) as exc:
                last = exc
        await wait_until(lambda: c.leader() is not None, 5, "a leader")
    raise AssertionError(f"no leader took {data!r}: {last}")


def _leader(c: Cluster) -> RaftNode:
    leader = c.leader()
    assert leader is not None
    return leader


async def test_follower_with_a_full_disk_acknowledges_nothing_then_catches_up(
    cluster: Cluster,
) -> None:
    c = cluster
    leader = _leader(c)
    follower = c.others(leader.id)[0]
    base = leader.last_index
    c.logs[follower.id].fault = errno.ENOSPC
    # The other follower and the leader commit without it.
    indexes = [await _propose_via_leader(c, b"w%d" % k) for k in range(5)]
    await wait_until(lambda: follower.disk_full is not None, 5, "the follower to see ENOSPC")
    assert c.logs[follower.id].last_index <= base  # nothing of it stored
    # It never acknowledged what it could not store: the leader's view of it stays put.
    assert leader.status().progress[follower.id].match <= base
    with pytest.raises(DiskFullError, match=f"node '{follower.id}' has no space left"):
        await follower.propose(b"refused")
    assert follower.failure is None and not follower.closed  # not fatal
    # Space again: the same entries are written, acknowledged and applied; nothing lost.
    c.logs[follower.id].fault = 0
    await wait_until(lambda: follower.disk_full is None, 5, "the follower to write again")
    await follower.wait_applied(indexes[-1], 5)
    assert c.fsms[follower.id].items == c.fsms[leader.id].items
    await wait_until(
        lambda: leader.status().progress[follower.id].match >= indexes[-1],
        5,
        "the leader to count the follower's acknowledgement",
    )


async def test_leader_with_a_full_disk_refuses_writes_loses_leadership_then_resumes(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    c = cluster
    old = _leader(c)
    acked = [await _propose_via_leader(c, b"before%d" % k) for k in range(3)]
    c.logs[old.id].fault = errno.ENOSPC
    c.logs[old.id].on = "sync"  # written to the page cache, then the fsync fails
    term = old.term
    with caplog.at_level(logging.WARNING, logger="raftlog.raft.node"):
        first = asyncio.create_task(old.propose(b"unknown", timeout=3))
        await wait_until(lambda: old.disk_full is not None, 5, "the leader to see ENOSPC")
    assert any("has no space left" in r.getMessage() for r in caplog.records)
    with pytest.raises(DiskFullError) as info:
        await old.propose(b"refused")
    assert info.value.node_id == old.id
    # It hands over at once (TIMEOUT_NOW; its stuck round could not heartbeat anyway):
    # the others elect a leader at the next term and go on.
    await wait_until(lambda: c.leader() is not None and c.leader() is not old, 10, "a new leader")
    assert _leader(c).term == term + 1
    assert any("to take over leadership" in r.getMessage() for r in caplog.records)
    more = [await _propose_via_leader(c, b"after%d" % k) for k in range(3)]
    c.logs[old.id].fault = 0
    await wait_until(lambda: old.disk_full is None, 5, "the old leader to write again")
    await old.wait_applied(more[-1], 10)
    for n in c.nodes.values():
        await n.wait_applied(more[-1], 10)
    logs = [c.fsms[i].items for i in IDS]
    assert logs[0] == logs[1] == logs[2]
    for k in range(3):
        assert b"before%d" % k in logs[0] and b"after%d" % k in logs[0]
    assert b"refused" not in logs[0]
    assert len(logs[0]) == len(set(logs[0]))
    # The write that met the full disk may have committed through the others (its
    # entries went out before the fsync): its outcome is whatever it is, never a crash.
    await wait_until(first.done, 10, "the first write's outcome")
    with contextlib.suppress(Exception):
        first.result()
    assert len(acked) == 3


async def test_eio_on_fsync_stops_the_leader_and_hands_leadership_over(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    c = cluster
    old = _leader(c)
    await _propose_via_leader(c, b"x")
    term = old.term
    c.logs[old.id].fault = errno.EIO
    c.logs[old.id].on = "sync"
    with caplog.at_level(logging.WARNING, logger="raftlog.raft.node"):
        with pytest.raises(NodeFailedError, match="disk failed"):
            await old.propose(b"y", timeout=3)
        assert c.logs[old.id].failures == 1  # the failed fsync is never retried
        # Handed over at once (TIMEOUT_NOW): the successor campaigns without waiting
        # for an election timeout, so its term is the next one.
        await wait_until(
            lambda: c.leader() is not None and c.leader() is not old, 5, "a new leader"
        )
    assert _leader(c).term == term + 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("DISK FAILURE" in m for m in messages)
    assert any("asked" in m and "take over" in m for m in messages)
    assert old.failure is not None
    with pytest.raises(NodeFailedError):
        await old.propose(b"z")
    # The failed node acknowledges nothing more: the cluster goes on without it.
    new = _leader(c)
    index = await _propose_via_leader(c, b"after")
    assert new.status().progress[old.id].match < index
    assert c.logs[old.id].failures == 1


async def test_eio_on_a_follower_write_stops_it_acknowledging(cluster: Cluster) -> None:
    c = cluster
    leader = _leader(c)
    follower = c.others(leader.id)[0]
    c.logs[follower.id].fault = errno.EIO
    index = await _propose_via_leader(c, b"w")
    await wait_until(lambda: follower.failure is not None, 5, "the follower to stop")
    assert leader.status().progress[follower.id].match < index
    assert c.logs[follower.id].failures == 1
    index = await _propose_via_leader(c, b"w2")  # the other two still commit
    assert leader.status().progress[follower.id].match < index


async def test_enospc_saving_the_hard_state_is_a_full_disk_not_a_failure(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the long chaos run (docs/reliability.md): ENOSPC on the hard state's file
    (a new term or vote to save) stopped the node for good ("stopped after a fatal
    error: StableStoreError(... [Errno 28] ...)") instead of refusing and resuming."""
    c = cluster
    leader = _leader(c)
    full, other = c.others(leader.id)
    c.stables[full.id].fault = errno.ENOSPC
    term = leader.term
    with caplog.at_level(logging.WARNING, logger="raftlog.raft.node"):
        # a new term: every node has to save it before it answers anyone of that term
        await leader.transfer_leadership(other.id, timeout=5)
        await wait_until(lambda: full.disk_full is not None, 5, "the hard state's ENOSPC")
    assert full.failure is None and not full.closed  # refused, retried, not fatal
    assert not any("fatal error" in r.getMessage() for r in caplog.records)
    with pytest.raises(DiskFullError, match="has no space left"):
        await full.propose(b"refused")
    index = await _propose_via_leader(c, b"while full")
    c.stables[full.id].fault = 0
    await wait_until(lambda: full.disk_full is None, 5, "the node to write again")
    await full.wait_applied(index, 5)
    assert full.term > term and c.stables[full.id].state is not None
    assert c.stables[full.id].state.term == full.term
    assert c.fsms[full.id].items == c.fsms[other.id].items
    assert full.failure is None


async def test_eio_saving_the_hard_state_is_a_disk_failure(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """EIO on the hard state's file stops the node as a failed disk (its cause the
    OSError, so the API answers UNAVAILABLE/DISK_FAILED, not INTERNAL), once."""
    c = cluster
    leader = _leader(c)
    failing, other = c.others(leader.id)
    c.stables[failing.id].fault = errno.EIO
    with caplog.at_level(logging.WARNING, logger="raftlog.raft.node"):
        await leader.transfer_leadership(other.id, timeout=5)
        await wait_until(lambda: failing.failure is not None, 5, "the node to stop")
    failure = failing.failure
    assert failure is not None and "disk failed" in str(failure)
    assert isinstance(failure.__cause__, OSError) and failure.__cause__.errno == errno.EIO
    assert any("DISK FAILURE" in r.getMessage() for r in caplog.records)
    assert c.stables[failing.id].failures == 1  # never retried
    with pytest.raises(NodeFailedError):
        await failing.propose(b"z")

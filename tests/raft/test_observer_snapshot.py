"""The runtime's observer (RaftMetrics) and a snapshot taken on request (take_snapshot).

One node (its own cluster) on the in-memory network with disk stores: it elects itself,
so the observer hears of the leader, of each round's appended entries and of each fsync;
an operator's snapshot covers everything applied, whatever snapshot_threshold says.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from raftlog.raft import NO_METRICS, RaftConfig, RaftMetrics, Server
from raftlog.raft.node import NodeConfig, RaftNode
from raftlog.raft.testing import ListFSM
from raftlog.raft.transport_inmem import InmemNetwork

pytestmark = pytest.mark.timeout(30)


class Recorder:
    def __init__(self) -> None:
        self.appended: list[int] = []
        self.synced: list[float] = []
        self.leaders: list[tuple[int, str]] = []

    def raft_appended(self, entries: int) -> None:
        self.appended.append(entries)

    def raft_synced(self, seconds: float) -> None:
        self.synced.append(seconds)

    def raft_leader_changed(self, term: int, leader: str) -> None:
        self.leaders.append((term, leader))


def _check(_: RaftMetrics) -> None:
    """Recorder and the default satisfy the protocol (checked by mypy through these calls)."""


_check(Recorder())
_check(NO_METRICS)


async def _single_node(
    tmp_path: Path, metrics: Recorder, threshold: int
) -> tuple[RaftNode, InmemNetwork]:
    net = InmemNetwork(seed=1)
    config = NodeConfig(
        raft=RaftConfig(id="s1", snapshot_threshold=threshold, snapshot_trailing_entries=0),
        data_dir=tmp_path / "s1",
        tick_interval=0.02,
        close_timeout=2.0,
    )
    node = await RaftNode.on_disk(config, ListFSM(), net.transport("s1", "mem-s1"), metrics=metrics)
    await node.start()
    await node.bootstrap([Server("s1", "mem-s1")])
    await node.wait_for(lambda: node.is_leader, 10, "s1 leading")
    return node, net


async def test_observer_hears_rounds_fsyncs_and_the_leader(tmp_path: Path) -> None:
    metrics = Recorder()
    node, net = await _single_node(tmp_path, metrics, threshold=0)
    try:
        await node.propose_batch([b"a", b"b", b"c"])
        await node.propose(b"d")
        assert metrics.leaders and metrics.leaders[-1] == (node.term, "s1")
        assert sum(metrics.appended) >= 4 + 1  # the entries, and the leader's empty entry
        assert 3 in metrics.appended  # a batch is one round (counted once, not per entry)
        assert metrics.synced and all(0 <= s < 5 for s in metrics.synced)
        assert len(metrics.synced) == node.stats.syncs
    finally:
        await node.close()
        await net.close()


async def test_take_snapshot_covers_what_is_applied_and_compacts(tmp_path: Path) -> None:
    node, net = await _single_node(tmp_path, Recorder(), threshold=0)  # 0: never on its own
    try:
        for i in range(20):
            await node.propose(b"r%d" % i)
        assert node.snapshot_index == 0
        applied = node.applied_index
        index = await node.take_snapshot(timeout=10)
        assert index == node.snapshot_index >= applied
        assert node.stats.snapshots_taken == 1
        await node.wait_for(lambda: node.log_store.first_index > index, 5, "the log compacted")
        assert await node.take_snapshot(timeout=10) == index  # nothing new: the same one
        assert node.stats.snapshots_taken == 1
        await node.propose(b"more")
        assert await node.take_snapshot(timeout=10) > index
        assert node.stats.snapshots_taken == 2
    finally:
        await node.close()
        await net.close()

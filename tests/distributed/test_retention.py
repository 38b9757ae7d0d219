"""Retention through Raft, in one process: three nodes over the in-memory transport with
small segments. The leader proposes the lowest offset; every replica applies the same one;
reads below it are out of range; a newcomer restored from a snapshot agrees."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from raftlog.distributed import DistributedConfig, DistributedLog
from raftlog.log import LogConfig, OffsetOutOfRangeError
from raftlog.raft import Server
from support.inproc_cluster import InprocNodes
from support.wait import wait_until

#: About 20 records of 100 bytes per segment.
SEGMENT = LogConfig(max_store_bytes=2160, max_index_bytes=12 * 64)
RECORD = 100


class Nodes(InprocNodes):
    def __init__(self, root: Path, config: DistributedConfig, snapshot_threshold: int) -> None:
        super().__init__(
            root,
            config,
            SEGMENT,
            seed=3,
            peers=("n1", "n2", "n3", "n4"),
            raft={
                "snapshot_threshold": snapshot_threshold,
                "snapshot_trailing_entries": 2,
            },
        )


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    config = DistributedConfig(
        append_timeout=5.0, retention_bytes=4 * 2160, retention_interval=0.05
    )
    n = Nodes(tmp_path, config, snapshot_threshold=16)
    servers = [Server(i, i) for i in ("n1", "n2", "n3")]
    for i in ("n1", "n2", "n3"):
        await (await n.start(i)).node.bootstrap(servers)
    yield n
    await n.close()


async def test_every_replica_drops_the_same_prefix(nodes: Nodes) -> None:
    leader = await nodes.leader()
    for i in range(40):
        await leader.append([b"%0*d" % (RECORD, i * 10 + j) for j in range(10)])
    await wait_until(
        lambda: leader.lowest_offset > 0 and leader.retention_target() is None,
        10.0,
        "retention on the leader",
    )
    lowest, highest = leader.lowest_offset, leader.highest_offset
    assert highest == 399 and lowest > 200  # at most 4 segments of 20 records are kept
    await wait_until(
        lambda: all(
            d.lowest_offset == lowest and d.highest_offset == 399 for d in nodes.logs.values()
        ),
        10.0,
        "the same lowest offset on every replica",
    )
    for dlog in nodes.logs.values():
        with pytest.raises(OffsetOutOfRangeError) as info:
            dlog.read(lowest - 1)
        assert (info.value.lowest, info.value.highest) == (lowest, highest)
        assert dlog.read(lowest) == b"%0*d" % (RECORD, lowest)
        assert dlog.read_batch(lowest, 1 << 20, 5)[0] == dlog.read(lowest)

        # whole segments below the lowest go (after a checkpoint, in a thread); at most
        # the one partly below it stays
        def pruned(dlog: DistributedLog = dlog) -> bool:
            segments = dlog.fsm.log.segments
            return segments[0].base_offset <= lowest and (
                len(segments) == 1 or segments[1].base_offset > lowest
            )

        await wait_until(pruned, 10.0, f"{dlog.node.id} deletes the segments below {lowest}")

    # a newcomer gets a snapshot taken after retention: the same lowest offset
    newcomer = await nodes.start("n4")
    await leader.join("n4", "n4")
    await wait_until(lambda: newcomer.highest_offset == 399, 10.0, "the newcomer catches up")
    assert newcomer.lowest_offset == lowest
    with pytest.raises(OffsetOutOfRangeError):
        newcomer.read(lowest - 1)

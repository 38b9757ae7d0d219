"""DistributedLogs of several nodes in one process: Raft over the in-memory transport,
each node's commit log and Raft files on disk under ``root/<node id>``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from raftlog.distributed import CommitLogFSM, DistributedConfig, DistributedLog
from raftlog.distributed.scrub import RecordFetcher
from raftlog.log import LogConfig
from raftlog.raft import RaftConfig
from raftlog.raft.node import NodeConfig, RaftNode
from raftlog.raft.transport_inmem import InmemNetwork
from support.wait import wait_until

#: Seconds between Raft ticks of these nodes.
TICK = 0.01


class InprocNodes:
    """Start, find the leader of, and close DistributedLogs that share one in-memory
    network (``seed``). ``peers``: every node id a node may talk to; ``raft``: extra
    RaftConfig fields; ``fetcher``: how a node reads records from its peers (none: scrub
    repair has no source)."""

    def __init__(
        self,
        root: Path,
        config: DistributedConfig,
        segment: LogConfig,
        *,
        seed: int,
        peers: Iterable[str],
        raft: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.net = InmemNetwork(seed=seed)
        self.config = config
        self.segment = segment
        self.peers = tuple(peers)
        self.raft = dict(raft or {})
        self.logs: dict[str, DistributedLog] = {}
        self.fetcher: RecordFetcher | None = None

    async def start(self, node_id: str) -> DistributedLog:
        fsm = await asyncio.to_thread(CommitLogFSM.open, self.root / node_id / "fsm", self.segment)
        node = await RaftNode.on_disk(
            NodeConfig(
                raft=RaftConfig(id=node_id, **self.raft),
                data_dir=self.root / node_id / "raft",
                tick_interval=TICK,
            ),
            fsm,
            self.net.transport(node_id),
            peers={m: m for m in self.peers},
        )
        await node.start()
        dlog = DistributedLog(node, fsm, config=self.config, fetcher=self.fetcher)
        dlog.start()
        self.logs[node_id] = dlog
        return dlog

    async def leader(self) -> DistributedLog:
        def current() -> list[DistributedLog]:
            return [d for d in self.logs.values() if d.node.is_leader]

        await wait_until(lambda: bool(current()), 5.0, "a leader", interval=TICK)
        return current()[0]

    async def close(self) -> None:
        for dlog in self.logs.values():
            await dlog.close()
            await dlog.node.close()
            await dlog.fsm.close()

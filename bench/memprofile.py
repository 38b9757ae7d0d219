"""What holds a node's private memory as its log grows: one Raft node on disk with the
commit-log state machine, ``--records`` records of 100 B proposed in batches of 1000, then
the largest live allocations by source line (``tracemalloc``), as docs/commitlog.md
reports them. ``--old`` runs with the settings before issue 12 (snapshots every 8192
entries, whatever their size: the whole Raft log since the last snapshot in memory).

    .venv/bin/python bench/memprofile.py --records 1000000 [--old]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import tracemalloc
from pathlib import Path

from raftlog.distributed.fsm import CommitLogFSM, encode_batch
from raftlog.raft import NodeConfig, RaftConfig, RaftNode, Server
from raftlog.raft.transport_inmem import InmemNetwork, InmemTransport


async def run(records: int, old: bool, top: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="raftlog-mem-"))
    fsm = CommitLogFSM.open(root / "fsm")
    fsm.bind_loop()
    net = InmemNetwork(0)
    transport = InmemTransport(net, "m1", "m1")
    raft = RaftConfig(id="m1")
    if old:
        raft = RaftConfig(id="m1", snapshot_bytes=0, snapshot_trailing_bytes=0)
    node = await RaftNode.on_disk(NodeConfig(raft=raft, data_dir=root / "raft"), fsm, transport)
    await node.start()
    await node.bootstrap([Server("m1", "m1")])
    node.campaign()
    await node.wait_for(lambda: node.is_leader, 10.0, "leading")
    tracemalloc.start(5)
    window = 8
    sem = asyncio.Semaphore(window)

    async def one(n: int) -> None:
        try:  # a new entry each time (as from the network): nothing shared between entries
            await node.propose(encode_batch([b"%099d" % n] * 1000))
        finally:
            sem.release()

    tasks = []
    for n in range(records // 1000):
        await sem.acquire()
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)  # let the last snapshot finish
    snap = tracemalloc.take_snapshot()
    stats = snap.statistics("lineno")
    total = sum(s.size for s in stats)
    print(f"{records:,} records ({'old' if old else 'new'} settings): {total / 2**20:.1f} MiB live")
    for s in stats[:top]:
        frame = s.traceback[0]
        print(f"  {s.size / 2**20:8.1f} MiB  {s.count:8d} blocks  {frame.filename}:{frame.lineno}")
    tracemalloc.stop()
    await node.close()
    await fsm.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--old", action="store_true")
    p.add_argument("--top", type=int, default=6)
    args = p.parse_args()
    asyncio.run(run(args.records, args.old, args.top))


if __name__ == "__main__":
    main()

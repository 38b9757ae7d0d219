"""LocalLog: appends return (first, last) and wake waiters; no polling needed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from raftlog.log import Log, LogConfig, SyncPolicy
from raftlog.server import CommitLog, LocalLog, ServerLister


async def test_wait_for_wakes_on_append_and_times_out(tmp_path: Path) -> None:
    local = LocalLog(Log.open(tmp_path, LogConfig(sync=SyncPolicy.NEVER)), node_id="n1")
    assert isinstance(local, CommitLog) and isinstance(local, ServerLister)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await local.wait_for(0, 0.05) is False
    assert loop.time() - started >= 0.04
    waiter = asyncio.create_task(local.wait_for(1, 10))
    await asyncio.sleep(0)
    assert await local.append([b"a"]) == (0, 0)
    await asyncio.sleep(0)
    assert not waiter.done(), "offset 1 is not readable yet"
    assert await local.append([b"b", b"c"]) == (1, 2)
    assert await asyncio.wait_for(waiter, 1) is True
    assert local.read_batch(0, 1 << 20, 10) == [b"a", b"b", b"c"]
    # a waiter left sleeping is released (False) when the log closes
    late = asyncio.create_task(local.wait_for(10, 10))
    await asyncio.sleep(0)
    await local.close()
    assert await asyncio.wait_for(late, 1) is False
    servers = await local.get_servers()
    assert [s.id for s in servers] == ["n1"] and servers[0].is_leader

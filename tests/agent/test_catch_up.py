"""Catch-up sends only what a follower lacks (issue 12, item 5), on ``raftlog agent``
processes with small snapshots (``--snapshot-bytes``) so the Raft log is compacted past a
follower that is down:

- a follower killed, left behind under load, restarted: it receives the records from its
  own end only (the leader's log line and the follower's say how many), not the log again;
- a follower wiped (its data dir removed) and restarted under load: it receives the
  whole log once, in chunks, and logs its progress; the bytes sent are the log's records
  plus their framing, nothing more; and the received copy leaves its snapshot store.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
from collections.abc import AsyncIterator

import grpc
import pytest

from raftlog.agent.devcluster import DevCluster
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles
from support.cluster import three_node_cluster_async
from support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RECORD = b"c" * 100
FRAME = len(RECORD) + 8  # a record on the wire of a catch-up: its bytes and its frame header
ARGS = ("--serf-profile", "local", "--sync", "never", "--log-level", "info")
ARGS += ("--snapshot-bytes", str(256 << 10))
SENDING = re.compile(
    r"catch-up of (\S+): sending offsets (\d+)\.\.(\d+) \((\d+) records, (\d+) bytes"
)


@pytest.fixture
async def cluster(
    tmp_path_factory: pytest.TempPathFactory, dev_certs: dict[str, CertFiles]
) -> AsyncIterator[DevCluster]:
    root = tmp_path_factory.mktemp("catchup")
    async with three_node_cluster_async(root, dev_certs, agent_args=ARGS) as c:
        yield c


async def produce(c: DevCluster, leader: str, batches: int, per: int = 500) -> int:
    """Produce ``batches`` batches to ``leader``; the next offset after them."""
    assert c.client_tls is not None
    request = log_pb2.ProduceRequest(records=[log_pb2.Record(value=RECORD)] * per)
    last = -1
    async with c.channel(leader, c.client_tls) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        for _ in range(batches):
            resp = await stub.Produce(request, timeout=10)
            last = resp.last_offset
    return last + 1


async def count_on(c: DevCluster, name: str, upto: int, timeout: float = 60) -> int:
    """Wait until node ``name`` serves offsets 0..upto-1; how many it read."""
    assert c.client_tls is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = 0
        try:
            async with c.channel(name, c.client_tls) as ch:
                stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
                call = stub.ConsumeStream(
                    log_pb2.ConsumeRequest(offset=0, max_records=5000), timeout=5
                )
                async for resp in call:
                    for r in resp.records:
                        assert r.offset == got and r.value == RECORD
                        got += 1
                    if got >= upto:
                        call.cancel()
                        return got
        except grpc.aio.AioRpcError:
            pass
        if loop.time() > deadline:
            raise AssertionError(f"{name} serves {got} of {upto} records after {timeout} s")
        await asyncio.sleep(0.3)


def sends_to(c: DevCluster, leader: str, follower: str) -> list[tuple[int, int, int, int]]:
    """(first, last, records, bytes) of every catch-up the leader logged for ``follower``."""
    return [
        (int(m[2]), int(m[3]), int(m[4]), int(m[5]))
        for m in SENDING.finditer(c.log_text(leader))
        if m[1] == follower
    ]


async def test_a_follower_receives_only_what_it_lacks(cluster: DevCluster) -> None:
    assert cluster.client_tls is not None
    leader = await cluster.wait_for(cluster.client_tls, members=3, timeout_s=30, every=True)
    follower = next(n for n in ("n3", "n2") if n != leader)
    held = await produce(cluster, leader, 40)  # 20 k records on every node
    await count_on(cluster, follower, held)

    # 1. killed, left behind (the Raft log is compacted past it), restarted under load
    cluster.signal(follower, signal.SIGKILL)
    cluster.wait_exit(follower, 10)
    end = await produce(cluster, leader, 60)  # 30 k records it lacks
    cluster.start(follower)
    load = asyncio.create_task(produce(cluster, leader, 40))
    end = max(end, await load)
    assert await count_on(cluster, follower, end) >= end
    [(first, last, records, nbytes), *_] = sends_to(cluster, leader, follower)
    assert held - 1000 <= first <= held  # from its own end (its checkpoint), not from 0
    assert records == last - first + 1 and nbytes == records * FRAME
    lacked = end - held
    print(f"partial catch-up: held {held}, end {end}, sent {records} records from {first}")
    assert records <= lacked + 1000, (records, lacked)

    # 2. wiped and rejoined under load: the whole log once, in chunks, with progress
    cluster.signal(follower, signal.SIGKILL)
    cluster.wait_exit(follower, 10)
    shutil.rmtree(cluster.nodes[follower].data_dir)
    before = len(sends_to(cluster, leader, follower))
    cluster.start(follower)
    load = asyncio.create_task(produce(cluster, leader, 40))
    total = await load
    assert await count_on(cluster, follower, total) >= total
    sent = sends_to(cluster, leader, follower)[before:]
    assert sent, cluster.log_text(leader)[-3000:]
    first, last, records, nbytes = sent[0]
    print(f"wiped catch-up: total {total}, sent {sent}")
    assert first == 0 and nbytes == records * FRAME
    assert records <= total  # at most the log once (later entries come through Raft)
    assert sum(s[2] for s in sent) <= total + 1000, sent  # never the whole log twice
    assert "catch-up from the snapshot at index" in cluster.log_text(follower)
    # one copy: the received stream (records) leaves the snapshot store once a snapshot by
    # reference replaces it (taken right after the install; the agent keeps one)
    snapshots = cluster.nodes[follower].data_dir / "raft" / "snapshots"

    def snapshot_bytes() -> int:
        return sum(f.stat().st_size for f in snapshots.rglob("*") if f.is_file())

    await wait_until(lambda: snapshot_bytes() < 64 << 10, 20, "the received copy to go")

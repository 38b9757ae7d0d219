"""Issue 17's proof on real processes: five agents, a topic of 12 partitions at R3.

Keyed produce; kill -9 a node and every partition keeps accepting writes; add a node and
replicas and leaders move onto it; the killed node, removed for good, has its replicas
re-created elsewhere, so every partition is back at three live voters."""

from __future__ import annotations

import asyncio
import math
import signal
from collections import Counter
from pathlib import Path

import grpc
import pytest

from raftlog.agent.devcluster import DevCluster
from raftlog.api.admin.v1 import admin_pb2, admin_pb2_grpc
from raftlog.api.contract import Key, Reason
from raftlog.api.partitioning import partition_for_key
from raftlog.api.status import error_info_from_metadata
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles
from support.cluster import AGENT_ARGS, new_cluster, start_cluster
from support.topics import create_topic
from support.wait import wait_until

pytestmark = pytest.mark.timeout(420)

TOPIC = "events"
PARTITIONS = 12
#: Short graces so that the test sees a dead node removed and its replicas replaced.
FAST = ("--failed-grace-s", "4", "--replica-grace-s", "4")


def _live(c: DevCluster) -> list[str]:
    return [n for n, p in c.nodes.items() if p.running]


async def _describe(c: DevCluster, via: str) -> admin_pb2.TopicDescription:
    assert c.client_tls is not None
    async with c.channel(via, c.client_tls) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
        d: admin_pb2.TopicDescription = await admin.DescribeTopic(
            admin_pb2.DescribeTopicRequest(name=TOPIC), timeout=10
        )
        return d


async def _produce(c: DevCluster, key: bytes, value: bytes, timeout_s: float = 20.0) -> int:
    """Produce one keyed record through the live nodes, following NOT_LEADER hints; the
    partition it went to."""
    assert c.client_tls is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    addrs = [c.nodes[n].rpc_addr for n in _live(c)]
    by_addr = {p.rpc_addr: n for n, p in c.nodes.items()}
    target = addrs[0]
    last = ""
    while loop.time() < deadline:
        name = by_addr.get(target)
        if name is None or not c.nodes[name].running:
            target = addrs[0]
            continue
        async with c.channel(name, c.client_tls) as ch:
            log = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            try:
                r = await log.Produce(
                    log_pb2.ProduceRequest(
                        record=log_pb2.Record(value=value), topic=TOPIC, key=key
                    ),
                    timeout=5,
                )
                return int(r.partition)
            except grpc.aio.AioRpcError as exc:
                info = error_info_from_metadata(exc.trailing_metadata())
                last = f"{name}: {exc.code().name} {exc.details()}"
                if info is not None and info.reason == Reason.NOT_LEADER:
                    hint = info.metadata.get(Key.LEADER_ADDR, "")
                    if hint and hint != target:
                        target = hint
                        continue
                addrs.append(addrs.pop(0))  # try the next live node
                target = addrs[0]
                await asyncio.sleep(0.2)
    raise AssertionError(f"no node took a write of key {key!r} within {timeout_s} s: {last}")


async def _every_partition_writable(c: DevCluster, tag: bytes) -> None:
    """One keyed write lands in each of the 12 partitions."""
    keys: dict[int, bytes] = {}
    i = 0
    while len(keys) < PARTITIONS:
        k = b"k%d" % i
        keys.setdefault(partition_for_key(k, PARTITIONS), k)
        i += 1
    for partition, key in sorted(keys.items()):
        assert await _produce(c, key, tag + key) == partition


def _settled(d: admin_pb2.TopicDescription, nodes: set[str]) -> str:
    """Why the topic is not yet at three live voters on ``nodes`` with a leader each
    ("" when it is)."""
    for p in d.partitions:
        voters = {r.node_id for r in p.replicas if r.role == "voter"}
        if len(voters) != 3 or not voters <= nodes or len(p.replicas) != 3:
            return f"partition {p.partition}: {[(r.node_id, r.role) for r in p.replicas]}"
        if not p.leader_id:
            return f"partition {p.partition}: no leader"
    return ""


async def test_five_nodes_keep_writing_through_a_kill_rebalance_onto_a_new_node_and_restore_r3(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    c = new_cluster(
        tmp_path,
        dev_certs,
        names=("n1", "n2", "n3", "n4", "n5"),
        agent_args=(*AGENT_ARGS, *FAST),
    )
    try:
        await start_cluster(c, timeout_s=60)
        assert c.client_tls is not None
        async with c.channel("n1", c.client_tls) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]

            await create_topic(admin, TOPIC, PARTITIONS, timeout=30)
        five = {"n1", "n2", "n3", "n4", "n5"}

        async def placed_on(nodes: set[str]) -> bool:
            return _settled(await _describe(c, "n1"), nodes) == ""

        await wait_until(lambda: placed_on(five), timeout=60, what="12 partitions placed at R3")
        d = await _describe(c, "n1")
        hosted = Counter(r.node_id for p in d.partitions for r in p.replicas)
        assert sum(hosted.values()) == 3 * PARTITIONS and set(hosted) == five

        # keyed produce: each key to its partition, offsets per partition
        got: Counter[int] = Counter()
        for i in range(60):
            key = b"user-%d" % i
            partition = await _produce(c, key, b"first " + key)
            assert partition == partition_for_key(key, PARTITIONS)
            got[partition] += 1

        # kill -9 a node that hosts replicas (and may lead some): every partition writable
        victim = "n3"
        c.signal(victim, signal.SIGKILL)
        c.wait_exit(victim, 10)
        await _every_partition_writable(c, b"after kill ")

        # the dead node is removed for good (failed grace), its replicas re-created on the
        # four others (replica grace): R3 again, all live
        four = five - {victim}
        await wait_until(lambda: placed_on(four), timeout=120, what="R3 restored without n3")

        # a new node joins: replicas move onto it and it leads some partitions
        c.add_node("n6")
        c.start("n6")
        six = four | {"n6"}

        async def n6_hosts_and_leads() -> bool:
            d = await _describe(c, "n1")
            holds = sum(1 for p in d.partitions for r in p.replicas if r.node_id == "n6")
            leads = sum(1 for p in d.partitions if p.leader_id == "n6")
            return holds >= 3 and leads >= 1 and _settled(d, six) == ""

        await wait_until(n6_hosts_and_leads, timeout=150, what="replicas and leaders on n6")
        # once stable, leadership is spread: the default topic's partition counts too (T
        # partitions in all, N = 5 nodes); each node hands partitions over every 5 s
        bound = math.ceil((PARTITIONS + 1) / len(six)) + 1
        seen: list[Counter[str]] = []

        async def spread() -> bool:
            d = await _describe(c, "n1")
            seen.append(Counter(p.leader_id for p in d.partitions))
            return max(seen[-1].values()) <= bound and "" not in seen[-1]

        try:
            await wait_until(spread, timeout=60, what=f"at most {bound} leaders per node")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; leaders seen last: {seen[-3:]}") from None
        d = await _describe(c, "n1")
        await _every_partition_writable(c, b"after join ")

        # nothing acknowledged was lost: each partition holds what was written to it
        expected: Counter[int] = Counter(got)
        for p in range(PARTITIONS):
            expected[p] += 2  # one write after the kill, one after the join
        for p in d.partitions:
            leader = p.leader_id
            async with c.channel(leader, c.client_tls) as ch:
                log = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
                o = await log.GetOffsets(
                    log_pb2.GetOffsetsRequest(topic=TOPIC, partition=p.partition), timeout=5
                )
                assert o.next_offset == expected[p.partition], p.partition
    finally:
        c.stop_all()

"""Topics on a cluster of real agents: create, keyed produce, consume, describe, delete.

Three ``raftlog agent`` processes (Serf, mTLS, the example ACL); everything through the
admin and log.v1 gRPC APIs a user calls, on whichever node."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import grpc
import pytest

from raftlog.agent.devcluster import free_port
from raftlog.api.admin.v1 import admin_pb2, admin_pb2_grpc
from raftlog.api.partitioning import partition_for_key
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles
from raftlog.security.tls import client_ssl_context
from support.cluster import AGENT_ARGS, new_cluster, start_cluster, three_node_cluster_async
from support.topics import create_topic, wait_placed
from support.wait import wait_until

pytestmark = pytest.mark.timeout(180)


async def test_a_topic_is_created_written_by_key_read_per_partition_and_deleted(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    # small segments, so that a topic's retention (which drops whole segments) shows
    args = (*AGENT_ARGS, "--segment-bytes", str(1 << 20))
    async with three_node_cluster_async(tmp_path, dev_certs, agent_args=args) as c:
        tls = c.client_tls
        assert tls is not None
        async with c.channel("n2", tls) as ch:  # any node: not the controller's leader
            admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
            created = await admin.CreateTopic(
                admin_pb2.CreateTopicRequest(
                    name="orders", settings=admin_pb2.TopicSettings(partitions=6)
                ),
                timeout=30,
            )
            assert created.name == "orders" and created.settings.partitions == 6
            assert created.settings.replication == 3
            assert [p.partition for p in created.partitions] == list(range(6))
            # right after start: CreateTopic waited for the controller to count the three
            # members live, so the topic is placed at R3 at once (not grown from fewer
            # replicas through 2 voters, where one lost node would stop a partition)
            assert [len(p.replicas) for p in created.partitions] == [3] * 6
            with pytest.raises(grpc.aio.AioRpcError) as again:
                await admin.CreateTopic(
                    admin_pb2.CreateTopicRequest(
                        name="orders", settings=admin_pb2.TopicSettings(partitions=2)
                    ),
                    timeout=30,
                )
            assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
            listed = await admin.ListTopics(admin_pb2.ListTopicsRequest(), timeout=10)
            assert {t.name for t in listed.topics} == {"default", "orders"}
            for bad, code in (
                (log_pb2.GetOffsetsRequest(topic="nope"), grpc.StatusCode.NOT_FOUND),
                (log_pb2.GetOffsetsRequest(topic="orders", partition=6), grpc.StatusCode.NOT_FOUND),
                (
                    log_pb2.GetOffsetsRequest(topic="orders", partition=1, key=b"k"),
                    grpc.StatusCode.INVALID_ARGUMENT,
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await log_pb2_grpc.LogStub(ch).GetOffsets(bad)  # type: ignore[no-untyped-call]
                assert refused.value.code() == code, bad

            # every partition gets three voters and a leader
            described = await wait_placed(admin, "orders")
            log = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            parts = await log.GetPartitions(log_pb2.GetPartitionsRequest(topic="orders"))
            assert parts.partitions == 6
            assert {(p.partition, p.leader_addr) for p in parts.infos} == {
                (p.partition, p.leader_addr) for p in described.partitions
            }
            assert all(len(p.replica_addrs) == 3 for p in parts.infos)
            default = await log.GetPartitions(log_pb2.GetPartitionsRequest())
            assert default.topic == "default" and default.partitions == 1
            assert default.infos[0].leader_addr in {n.rpc_addr for n in c.nodes.values()}

        keys = [b"customer-%d" % i for i in range(40)]
        expected: Counter[int] = Counter(partition_for_key(k, 6) for k in keys)
        async with c.channel("n3", tls) as ch:
            log = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            got: Counter[int] = Counter()
            for k in keys:
                try:
                    r = await log.Produce(
                        log_pb2.ProduceRequest(
                            record=log_pb2.Record(value=b"order of " + k), topic="orders", key=k
                        ),
                        timeout=10,
                    )
                except grpc.aio.AioRpcError as exc:
                    pytest.fail(f"produce {k!r}: {exc.code()} {exc.details()}")
                assert r.partition == partition_for_key(k, 6)
                got[r.partition] += 1
                assert r.offset == got[r.partition] - 1  # offsets count per partition
            assert got == expected

        # read each partition back where it is hosted (n3 may not host every one)
        async with c.channel("n1", tls) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
            d = await admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="orders"))
        for p in d.partitions:
            host = p.replicas[0].node_id
            async with c.channel(host, tls) as ch:
                log = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]

                async def caught_up(
                    partition: int = p.partition, log: log_pb2_grpc.LogStub = log
                ) -> bool:
                    o = await log.GetOffsets(
                        log_pb2.GetOffsetsRequest(topic="orders", partition=partition)
                    )
                    return o.next_offset == expected[partition]

                await wait_until(caught_up, timeout=10, what=f"partition {p.partition}")
                for offset in range(expected[p.partition]):
                    rec = await log.Consume(
                        log_pb2.ConsumeRequest(topic="orders", partition=p.partition, offset=offset)
                    )
                    key = rec.record.value.removeprefix(b"order of ")
                    assert partition_for_key(key, 6) == p.partition

        # a topic's retention applies to its partitions: 4 MiB written, 1 MiB kept
        async with c.channel("n1", tls) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
            await admin.CreateTopic(
                admin_pb2.CreateTopicRequest(
                    name="short",
                    settings=admin_pb2.TopicSettings(partitions=1, retention_bytes=1 << 20),
                ),
                timeout=30,
            )
            log = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            batch = [log_pb2.Record(value=b"x" * 1000) for _ in range(256)]
            for _ in range(16):
                await log.Produce(log_pb2.ProduceRequest(records=batch, topic="short"), timeout=20)

            async def trimmed() -> bool:
                o = await log.GetOffsets(log_pb2.GetOffsetsRequest(topic="short"))
                return o.lowest_offset > 0 and o.next_offset == 16 * 256

            await wait_until(trimmed, timeout=20, what="the topic's retention trimming it")

            # retention changed while running: a topic made without one is trimmed once
            # it is given one (every replica applies it at its next check)
            await admin.CreateTopic(
                admin_pb2.CreateTopicRequest(
                    name="later", settings=admin_pb2.TopicSettings(partitions=1)
                ),
                timeout=30,
            )
            for _ in range(16):
                await log.Produce(log_pb2.ProduceRequest(records=batch, topic="later"), timeout=20)
            o = await log.GetOffsets(log_pb2.GetOffsetsRequest(topic="later"))
            assert o.lowest_offset == 0 and o.next_offset == 16 * 256
            await admin.SetTopicRetention(
                admin_pb2.SetTopicRetentionRequest(name="later", retention_bytes=1 << 20),
                timeout=30,
            )

            async def later_trimmed() -> bool:
                o = await log.GetOffsets(log_pb2.GetOffsetsRequest(topic="later"))
                return o.lowest_offset > 0

            await wait_until(later_trimmed, timeout=20, what="the new retention trimming it")

        async with c.channel("n1", tls) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
            folders = [n.data_dir / "partitions" / "orders" for n in c.nodes.values()]
            assert all((f / "0").is_dir() for f in folders)
            await admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="orders"), timeout=30)
            # every node closes its replicas and deletes their files (a topic created
            # again under the name starts empty, not from the old Raft state)
            await wait_until(
                lambda: not any(f.exists() and any(f.iterdir()) for f in folders),
                timeout=20,
                what="the deleted topic's folders removed on every node",
            )
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="orders"))
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
            # created again under its name: a new, empty topic (a new incarnation)
            await admin.CreateTopic(
                admin_pb2.CreateTopicRequest(
                    name="orders", settings=admin_pb2.TopicSettings(partitions=2)
                ),
                timeout=30,
            )
            log = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            r = await log.Produce(
                log_pb2.ProduceRequest(
                    record=log_pb2.Record(value=b"new"), topic="orders", partition=0
                ),
                timeout=20,
            )
            assert r.offset == 0
            assert all((f / "0" / "incarnation").read_text().strip() == "4" for f in folders)
            await admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="orders"), timeout=30)
            with pytest.raises(grpc.aio.AioRpcError) as protected:
                await admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="default"))
            assert protected.value.code() == grpc.StatusCode.FAILED_PRECONDITION

            # a node stopped gracefully hands the partitions it leads over first
            d = await admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="short"))
            leader = d.partitions[0].leader_id
        c.signal(leader, signal.SIGTERM)
        assert await asyncio.to_thread(c.wait_exit, leader, 30) == 0
        assert "short/0: leadership handed to" in c.log_text(leader), c.log_text(leader)[-3000:]


async def test_static_peers_report_a_dead_node_to_the_controller_through_liveness_pings(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    """Without Serf (--peers), a node killed with SIGKILL is reported down to the
    controller by the Raft transport's liveness pings; its replicas show as not live, and
    the partitions keep a leader on the two others."""
    async with three_node_cluster_async(
        tmp_path, dev_certs, static_peers=True, check_exit=False
    ) as c:
        tls = c.client_tls
        assert tls is not None
        async with c.channel("n1", tls) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]

            await create_topic(admin, "static", 3, timeout=30, attempt_timeout=20)
            # placed at R3 at once: CreateTopic waited for the pings to report n2 and n3
            made = await admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="static"))
            assert [len(p.replicas) for p in made.partitions] == [3] * 3

            async def replicas_live(expected: set[str]) -> bool:
                d = await admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="static"))
                live = {r.node_id for p in d.partitions for r in p.replicas if r.live}
                return live == expected and all(p.leader_id for p in d.partitions)

            # every partition at 3 voters first (CreateTopic waits at most 3 s for the
            # members to be live; a partition placed on fewer and still growing may have
            # 2 voters, and lose its majority)
            await wait_placed(admin, "static")
            await wait_until(
                lambda: replicas_live({"n1", "n2", "n3"}), timeout=60, what="3 live replicas"
            )
            c.signal("n3", signal.SIGKILL)
            c.wait_exit("n3", 10)
            await wait_until(
                lambda: replicas_live({"n1", "n2"}), timeout=30, what="n3 reported down"
            )


async def test_the_http_api_reads_and_writes_a_topics_partitions(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    """POST and GET /v1/records and GET /v1/offsets with topic, partition or key, as
    the gRPC fields: the same partitions, 404 for an unknown topic."""
    c = new_cluster(tmp_path, dev_certs)
    for node in c.nodes.values():
        node.extra = ("--http-port", str(free_port()))
    try:
        await start_cluster(c)
        assert c.client_tls is not None
        async with c.channel("n1", c.client_tls) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]

            await create_topic(admin, "web", 3, timeout=40, attempt_timeout=20)

            # right after start R may be capped at the nodes then known live: wait for the
            # moves that put a replica of every partition on every node
            await wait_placed(admin, "web")
        http_port = c.nodes["n2"].extra[1]
        ctx = client_ssl_context(c.client_tls)
        async with aiohttp.ClientSession(
            f"https://127.0.0.1:{http_port}", connector=aiohttp.TCPConnector(ssl=ctx)
        ) as http:
            key = "customer-7"
            want = partition_for_key(key.encode(), 3)
            body = {"record": {"value": "hello", "encoding": "utf8"}}
            async with http.post(
                "/v1/records", params={"topic": "web", "key": key}, json=body
            ) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {
                    "offset": 0,
                    "last_offset": 0,
                    "duplicate": False,
                    "partition": want,
                }
            params = {"topic": "web", "partition": str(want), "encoding": "utf8"}
            async with http.get("/v1/records", params=params) as r:
                assert r.status == 200, await r.text()
                records = (await r.json())["records"]
                assert [(x["offset"], x["value"]) for x in records] == [(0, "hello")]
            other = (want + 1) % 3
            async with http.get(
                "/v1/offsets", params={"topic": "web", "partition": str(other)}
            ) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["empty"] is True
            async with http.get("/v1/offsets", params={"topic": "nope"}) as r:
                assert r.status == 404
                assert (await r.json())["error"]["reason"] == "UNKNOWN_TOPIC"
            async with http.post("/v1/records", json=body) as r:  # no topic: the book's log
                assert r.status == 200 and "partition" not in await r.json()
    finally:
        c.stop_all()


async def test_a_cluster_without_a_controller_gets_one_from_its_default_leader(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    """A cluster of the one-group version (its data directories have no controller)
    restarts on this version: the default group's leader asks every member, finds no
    controller, creates it, and topics work; one controller only (every node sees the
    same topics)."""
    c = new_cluster(tmp_path, dev_certs)
    try:
        await start_cluster(c)
        c.stop_all()
        for node in c.nodes.values():  # what a data directory of the one-group version lacks
            shutil.rmtree(node.data_dir / "controller")
        names = list(c.nodes)
        c.start(names[0], join=[])
        for name in names[1:]:
            c.start(name, join=[c.nodes[names[0]].gossip_addr])
        assert c.client_tls is not None
        await c.wait_for(c.client_tls, members=3, timeout_s=40, every=True)
        async with c.channel("n2", c.client_tls) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]

            await create_topic(admin, "after", 2, timeout=60, attempt_timeout=10)
        founders = [n for n in names if "controller group created on" in c.log_text(n)]
        assert len(founders) == 1, founders
        for name in names:  # every node learns the same metadata from the one controller
            async with c.channel(name, c.client_tls) as ch:
                admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]

                async def listed(admin: admin_pb2_grpc.AdminStub = admin) -> bool:
                    r = await admin.ListTopics(admin_pb2.ListTopicsRequest())
                    return {t.name for t in r.topics} == {"default", "after"}

                await wait_until(listed, timeout=30, what=f"{name} lists the topic")
    finally:
        c.stop_all()

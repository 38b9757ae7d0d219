"""Topics on a cluster of real agents: create, keyed produce, consume, describe, delete.

Three ``raftlog agent`` processes (Serf, mTLS, the example ACL); everything through the
admin and log.v1 gRPC APIs a user calls, on whichever node."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import grpc
import pytest

from raftlog.api.admin.v1 import admin_pb2, admin_pb2_grpc
from raftlog.api.partitioning import partition_for_key
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles
from support.cluster import three_node_cluster_async
from support.wait import wait_until

pytestmark = pytest.mark.timeout(180)


async def test_a_topic_is_created_written_by_key_read_per_partition_and_deleted(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    async with three_node_cluster_async(tmp_path, dev_certs) as c:
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
            assert all(len(p.replicas) == 3 for p in created.partitions)
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

            # every partition gets a leader
            async def leaders() -> bool:
                d = await admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="orders"))
                return all(p.leader_id for p in d.partitions)

            await wait_until(leaders, timeout=30, what="a leader for every partition")
            described = await admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="orders"))
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

        async with c.channel("n1", tls) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
            await admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="orders"), timeout=30)
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="orders"))
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as protected:
                await admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="default"))
            assert protected.value.code() == grpc.StatusCode.FAILED_PRECONDITION

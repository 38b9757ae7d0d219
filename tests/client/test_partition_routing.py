"""The client's partition routing on a cluster of three real ``raftlog agent`` processes.

Two topics of one replica per partition (replication 1), created through the admin rpc:
a node that does not host a partition answers its writes NOT_LEADER, so a write the client
sends anywhere but to the partition's leader shows up as a redirect in the client's stats
and as a second Produce attempt at another address; the tests assert there is none.

- Kafka's published key -> partition values (``tests/api/test_partition_keys.py``,
  ``DERIVED_PARTITIONS``) checked against the client's routing and against the partition
  the server says it wrote, each write counted at the leader GetPartitions names;
- a keyed batch: one Produce per partition, each to its leader, read back per partition;
- a stale cache (a partition pointed at a node that does not host it; a wrong partition
  count): the write still lands, the hint is followed, and the cache is refreshed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from raftlog.api.admin.v1 import admin_pb2_grpc
from raftlog.api.partitioning import partition_for_key
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.client import ClientConfig, LogClient, PartitionInfo, TopicPartitions
from raftlog.security import CertFiles
from support.cluster import three_node_cluster_async
from support.kafka_keys import DERIVED_PARTITIONS
from support.topics import create_topic
from support.wait import wait_until

pytestmark = pytest.mark.timeout(120)

#: (key, partitions, partition): Kafka's rule on Kafka's own murmur2 test hashes, the rows
#: of the shared reference table for topics of 6 and 12 partitions.
KAFKA_PARTITIONS = [row for row in DERIVED_PARTITIONS if row[1] in (6, 12)]
TOPICS = {6: "six", 12: "twelve"}

CONFIG = ClientConfig(
    request_timeout_s=20.0,
    attempt_timeout_s=5.0,
    backoff_initial_s=0.02,
    backoff_max_s=0.3,
    refresh_timeout_s=3.0,
    min_refresh_interval_s=0.05,
    down_cooldown_s=0.5,
)


async def test_writes_go_to_each_partitions_leader_and_a_stale_cache_heals(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    async with three_node_cluster_async(tmp_path, dev_certs) as c:
        tls = c.client_tls
        assert tls is not None
        addrs = {n.rpc_addr for n in c.nodes.values()}
        async with c.channel("n2", tls) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
            for count, name in TOPICS.items():
                await create_topic(admin, name, count, replication=1, attempt_timeout=10)
            log = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            leaders: dict[tuple[str, int], str] = {}

            async def every_partition_led() -> bool:
                for name in TOPICS.values():
                    parts = await log.GetPartitions(log_pb2.GetPartitionsRequest(topic=name))
                    if len(parts.infos) != parts.partitions or not all(
                        p.leader_addr in addrs for p in parts.infos
                    ):
                        return False
                    leaders.update({(name, p.partition): p.leader_addr for p in parts.infos})
                return True

            await wait_until(every_partition_led, timeout=40, what="a leader for every partition")
        # replication 1 over 3 nodes: every node leads some partition of "twelve"
        assert {leaders["twelve", p] for p in range(12)} == addrs

        async with LogClient(c.nodes["n1"].rpc_addr, tls=tls, config=CONFIG) as client:
            # -- Kafka's values: the client's routing, the server's answer, the leader used
            expected_addrs: Counter[str] = Counter()
            for key, count, partition in KAFKA_PARTITIONS:
                topic = TOPICS[count]
                assert await client.partition_for(topic, key) == partition, (key, count)
                produced = await client.produce_to(topic, [b"value of " + key], key=key)
                assert (produced.topic, produced.partition) == (topic, partition), key
                expected_addrs[leaders[topic, partition]] += 1
            assert client.stats.partition_redirects == 0
            assert client.stats.retries == 0
            assert client.stats.produce_requests_by_addr == dict(expected_addrs)
            for count, topic in TOPICS.items():
                meta = client.topics.cached(topic)
                assert meta is not None and meta.count == count
                assert {(p.partition, p.leader_addr) for p in meta.partitions} == {
                    (p, leaders[topic, p]) for p in range(count)
                }

            # -- a keyed batch: one Produce per partition, each to its leader
            keys = [b"customer-%d" % (i % 17) for i in range(60)]
            records = [(k, b"%s order %d" % (k, i)) for i, k in enumerate(keys)]
            before = dict(client.stats.produce_requests_by_addr)
            placed = await client.produce_keyed("twelve", records)
            assert [p.partition for p in placed] == [partition_for_key(k, 12) for k in keys]
            sent = Counter(client.stats.produce_requests_by_addr)
            sent.subtract(before)
            used = {p.partition for p in placed}
            assert +sent == Counter(leaders["twelve", p] for p in used)
            assert client.stats.partition_redirects == 0
            for partition in used:  # offsets count per partition, in the order given
                offsets = [p.offset for p in placed if p.partition == partition]
                assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
            for (_, value), where in zip(records, placed, strict=True):
                record = await client.consume_from("twelve", where.partition, where.offset)
                assert record.value == value
            # a whole partition, streamed from its replicas
            partition = placed[0].partition
            want = [
                v for (_, v), p in zip(records, placed, strict=True) if p.partition == partition
            ]
            got: list[bytes] = []
            first = min(p.offset for p in placed if p.partition == partition)
            async for record in client.stream_from("twelve", partition, first):
                got.append(record.value)
                if len(got) == len(want):
                    break
            assert got == want

            # -- a stale cache: partition p pointed at a node that does not host it
            meta = client.topics.cached("twelve")
            assert meta is not None
            p = 7
            right = leaders["twelve", p]
            wrong = sorted(addrs - {right})[0]
            poisoned = list(meta.partitions)
            poisoned[p] = PartitionInfo(p, "", wrong, (wrong,))
            client.topics.put(dataclasses.replace(meta, partitions=tuple(poisoned)))
            assert client.topics.leader("twelve", p) == wrong
            refreshes = client.topics.refreshes
            before = dict(client.stats.produce_requests_by_addr)
            produced = await client.produce_to("twelve", [b"after the poison"], partition=p)
            assert produced.partition == p
            assert client.stats.partition_redirects == 1  # NOT_LEADER from `wrong`, hint followed
            sent = Counter(client.stats.produce_requests_by_addr)
            sent.subtract(before)
            assert +sent == Counter({wrong: 1, right: 1})
            await wait_until(
                lambda: (
                    client.topics.refreshes > refreshes
                    and client.topics.leader("twelve", p) == right
                    and client.topics.replicas("twelve", p) == (right,)
                ),
                timeout=10,
                what="the cache refreshed after NOT_LEADER",
            )
            record = await client.consume_from("twelve", p, produced.offsets[0])
            assert record.value == b"after the poison"

            # -- a wrong partition count: the key is mapped with 6, the server uses 12
            fake = TopicPartitions(
                "twelve",
                6,
                tuple(PartitionInfo(i, "", leaders["twelve", i], ()) for i in range(6)),
            )
            client.topics.put(fake)
            refreshes = client.topics.refreshes
            produced = await client.produce_to("twelve", [b"foobar again"], key=b"foobar")
            assert produced.partition == 6  # Kafka: foobar -> 6 of 12 (0 of 6)

            def healed() -> bool:
                meta = client.topics.cached("twelve")
                return client.topics.refreshes > refreshes and meta is not None and meta.count == 12

            await wait_until(healed, timeout=10, what="the partition count re-learned")
            assert await client.partition_for("twelve", b"foobar") == 6

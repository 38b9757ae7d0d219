"""PartitionHost (raftlog.distributed.partition_host): a node's partition replicas, each a
Raft group on one GroupRouter. A data directory written by a real ``raftlog agent`` of the
one-group version opens as the default partition, in place; three hosts over TCP+TLS serve
several partitions with offsets of their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftlog.distributed import DistributedLog
from raftlog.distributed.partition_host import (
    INCARNATION_FILE,
    HostSettings,
    PartitionHost,
    PartitionHostError,
    group_id,
    replica_dir,
)
from raftlog.partitions import DEFAULT_TOPIC
from raftlog.raft import RaftConfig, Server
from raftlog.raft.config import NodeConfig
from raftlog.raft.groups import encode_group_id
from raftlog.security import CertFiles
from support.cluster import new_cluster, numbered, produce_numbered, start_cluster
from support.raft_peers import peer_tls, router, routers
from support.wait import wait_until

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0
SETTINGS = HostSettings(node=NodeConfig(raft=RaftConfig(id="-"), tick_interval=0.02))


async def _read_all(dlog: DistributedLog, count: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < count:
        got.extend(dlog.read_batch(len(got), 1 << 20, 10_000))
    return got


def test_group_ids_and_directories() -> None:
    data = Path("/d")
    assert group_id(DEFAULT_TOPIC, 0) == "" and replica_dir(data, DEFAULT_TOPIC, 0) == data
    assert group_id("orders", 3) == "orders/3"
    assert group_id("orders", 3, incarnation=7) == "orders/3@7"
    long = "t" * 249  # the longest topic name, with the longest partition number
    assert group_id(long, 9999) == f"{long}/9999"  # 254 bytes: fits the envelope
    hashed = group_id(long, 9999, incarnation=12)
    assert hashed.startswith("#") and hashed.endswith("/9999@12") and len(hashed) == 25
    assert hashed != group_id("u" * 249, 9999, incarnation=12)
    encode_group_id(group_id(long, 9999, incarnation=10**9))  # always fits
    assert replica_dir(data, "orders", 3) == data / "partitions" / "orders" / "3"
    assert replica_dir(data, DEFAULT_TOPIC, 1) == data / "partitions" / DEFAULT_TOPIC / "1"


async def test_an_agents_data_directory_opens_as_the_default_partition(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    """Records written through a one-node `raftlog agent` (today's single-group layout)
    are read back from the default partition, in place: no copy, no new folder."""
    c = new_cluster(tmp_path / "agent", dev_certs, names=("n1",))
    try:
        await start_cluster(c)
        last = await produce_numbered(c, "n1", 0, 3)
    finally:
        c.stop_all()
    data_dir = c.nodes["n1"].data_dir
    before = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*") if p.is_file())

    group_router, _ = await router("n1", peer_tls(dev_certs))
    host = PartitionHost("n1", data_dir, group_router, SETTINGS)
    try:
        dlog = await host.open(DEFAULT_TOPIC, 0)
        assert dlog.highest_offset == last
        await wait_until(dlog.is_leader, WAIT, "the one-node group to elect itself")
        got = await _read_all(dlog, last + 1)
        assert got == [numbered(i) for i in range(last + 1)]
        first, _ = await dlog.append([b"after the move"])
        assert first == last + 1
        assert not (data_dir / "partitions").exists()
        after = {p.relative_to(data_dir) for p in data_dir.rglob("*") if p.is_file()}
        assert set(before) <= after  # nothing moved away or renamed
        with pytest.raises(PartitionHostError, match="open already"):
            await host.open(DEFAULT_TOPIC, 0)
    finally:
        await host.close_all()
        await group_router.close()


async def test_three_hosts_serve_partitions_with_offsets_of_their_own(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    ids = ["a", "b", "c"]
    by_node, addresses = await routers(ids, peer_tls(dev_certs))
    hosts = {i: PartitionHost(i, tmp_path / i, by_node[i], SETTINGS) for i in ids}
    keys = [(DEFAULT_TOPIC, 0)] + [("orders", p) for p in range(3)]
    voters = [Server(i, addresses[i]) for i in ids]
    try:
        for topic, p in keys:
            for i in ids:
                await hosts[i].open(topic, p, peers=addresses)
            for i in ids:
                await hosts[i].bootstrap(topic, p, voters)

        for n, (topic, p) in enumerate(keys):
            lead = await leader_among(hosts, ids, topic, p)
            for k in range(n + 1):  # a different count per partition
                assert await lead.append([b"%s/%d-%d" % (topic.encode(), p, k)]) == (k, k)
        for n, (topic, p) in enumerate(keys):
            want = [b"%s/%d-%d" % (topic.encode(), p, k) for k in range(n + 1)]
            for i in ids:
                replica = hosts[i].get(topic, p)
                assert replica is not None
                await wait_until(
                    lambda r=replica, m=n: r.highest_offset == m, WAIT, f"{i} applied {topic}/{p}"
                )
                assert await _read_all(replica, n + 1) == want
        assert (tmp_path / "a" / "partitions" / "orders" / "2" / "fsm").is_dir()

        # one replica of orders/1 closes: the other two go on (2 of 3 is a quorum)
        await hosts["c"].close("orders", 1)
        assert hosts["c"].get("orders", 1) is None
        lead = await leader_among(hosts, ["a", "b"], "orders", 1)
        first, _ = await lead.append([b"two of three"])
        assert first == keys.index(("orders", 1)) + 1  # after that partition's own records
    finally:
        for h in hosts.values():
            await h.close_all()
        for r in by_node.values():
            await r.close()


async def leader_among(
    hosts: dict[str, PartitionHost], ids: list[str], topic: str, p: int
) -> DistributedLog:
    """The replica of ``topic``/``p`` that leads, once one among ``ids`` does."""

    def found() -> DistributedLog | None:
        for i in ids:
            d = hosts[i].get(topic, p)
            if d is not None and d.is_leader():
                return d
        return None

    await wait_until(lambda: found() is not None, WAIT, f"a leader of {topic}/{p} among {ids}")
    d = found()
    assert d is not None
    return d


async def test_bad_names_and_numbers_are_refused(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    group_router, _ = await router("a", peer_tls(dev_certs))
    host = PartitionHost("a", tmp_path, group_router, SETTINGS)
    try:
        with pytest.raises(PartitionHostError):
            await host.open("bad/name", 0)
        with pytest.raises(PartitionHostError, match="start at 0"):
            await host.open("orders", -1)
        with pytest.raises(PartitionHostError, match="not open"):
            await host.bootstrap("orders", 0, [Server("a", "x:1")])
        assert host.replicas == {}
    finally:
        await group_router.close()


async def test_a_replica_folder_of_an_older_topic_incarnation_is_wiped_not_opened(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    """A topic deleted and created again under its name while this node was away: the old
    replica's folder (its records, its Raft state) must not become the new topic's."""
    group_router, _ = await router("a", peer_tls(dev_certs))
    host = PartitionHost("a", tmp_path, group_router, SETTINGS)
    folder = replica_dir(tmp_path, "orders", 0)
    try:
        dlog = await host.open("orders", 0, incarnation=1)
        await dlog.node.bootstrap([Server("a", "127.0.0.1:1")])
        await wait_until(dlog.is_leader, WAIT, "a leader of the one-node group")
        await dlog.append([b"old record"])
        await host.close("orders", 0)
        assert (folder / INCARNATION_FILE).read_text().strip() == "1"

        again = await host.open("orders", 0, incarnation=1)  # the same topic: kept
        assert again.highest_offset == 0 and again.node.has_state()
        await host.close("orders", 0)

        fresh = await host.open("orders", 0, incarnation=2)  # a new topic of that name
        assert fresh.highest_offset == -1 and not fresh.node.has_state()
        assert (folder / INCARNATION_FILE).read_text().strip() == "2"
    finally:
        await host.close_all()
        await group_router.close()

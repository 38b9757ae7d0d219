"""The controller group (raftlog.distributed.controller): commands as log entries, applied
to ClusterMetadata on every node; voters and a learner over TCP+TLS on one GroupRouter
each; a learner added late catches up through a snapshot of the metadata."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from raftlog.distributed.controller import CONTROLLER_GROUP, Controller, ControllerFSM
from raftlog.distributed.partition_host import HostSettings, PartitionHost
from raftlog.partitions import (
    DEFAULT_TOPIC,
    Applied,
    ClusterMetadata,
    CreateTopic,
    DeleteTopic,
    NodeUp,
    Reason,
    Rejected,
    TopicSpec,
    encode_command,
    leaders_to_transfer,
)
from raftlog.raft import Entry, Membership, NotLeaderError, RaftConfig, Server, SnapshotMeta
from raftlog.raft.config import NodeConfig
from raftlog.raft.inmem import InmemLogStore, InmemSnapshotStore, InmemStableStore
from raftlog.raft.node import RaftNode
from raftlog.security import CertFiles
from support.raft_peers import peer_tls, routers
from support.wait import wait_until

pytestmark = pytest.mark.timeout(90)

WAIT = 20.0


class Bytes:
    """A SnapshotSource over bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        out, self.data = (self.data, b"") if n < 0 else (self.data[:n], self.data[n:])
        return out


def entry(index: int, data: bytes) -> Entry:
    return Entry(1, index, data=data)


def test_the_state_machine_applies_commands_rejects_garbage_and_snapshots() -> None:
    fsm = ControllerFSM()
    seen: list[ClusterMetadata] = []
    fsm.watch(seen.append)
    orders = CreateTopic("orders", TopicSpec(4, 2, None, None))
    results = fsm.apply(
        [
            entry(1, encode_command(NodeUp("a"), 1.0)),
            entry(2, encode_command(NodeUp("b"), 2.0)),
            entry(3, encode_command(orders, 3.0)),
            entry(4, b"not json"),
            entry(5, encode_command(orders, 4.0)),
        ]
    )
    assert isinstance(results[0], Applied) and isinstance(results[2], Applied)
    assert isinstance(results[3], Rejected) and results[3].reason is Reason.UNKNOWN_COMMAND
    assert isinstance(results[4], Rejected) and results[4].reason is Reason.TOPIC_EXISTS
    assert fsm.applied == 5 and len(seen) == 1
    assert sorted(fsm.metadata.topics) == [DEFAULT_TOPIC, "orders"]
    assert all(len(fsm.metadata.assignments[("orders", p)].voters) == 2 for p in range(4))

    copy = ControllerFSM()
    copy.restore(Bytes(b"".join(fsm.snapshot())), SnapshotMeta(5, 1, Membership()))
    assert copy.metadata.encode() == fsm.metadata.encode() and copy.applied == 5
    with pytest.raises(ValueError, match="controller snapshot"):
        copy.restore(Bytes(b"{}"), SnapshotMeta(6, 1, Membership()))


async def test_voters_and_a_late_learner_hold_the_same_metadata(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    """Three controller voters commit commands submitted on the leader (a follower refuses
    with NOT_LEADER); a fourth node added as a learner after a snapshot receives that
    snapshot and ends with byte-identical metadata."""
    ids = ["a", "b", "c", "d"]
    by_node, addresses = await routers(ids, peer_tls(dev_certs))
    fsms = {i: ControllerFSM() for i in ids}
    nodes: dict[str, RaftNode] = {}
    try:
        for i in ids:
            nodes[i] = await RaftNode.on_disk(
                NodeConfig(
                    raft=RaftConfig(id=i, snapshot_threshold=4, snapshot_trailing_entries=0),
                    data_dir=tmp_path / i,
                    tick_interval=0.02,
                ),
                fsms[i],
                by_node[i].group(CONTROLLER_GROUP),
                peers=addresses,
            )
            await nodes[i].start()
        voters = [Server(i, addresses[i]) for i in ids[:3]]
        for i in ids[:3]:
            await nodes[i].bootstrap(voters)
        await wait_until(
            lambda: sum(nodes[i].is_leader for i in ids[:3]) == 1, WAIT, "a controller leader"
        )
        leader = next(nodes[i] for i in ids[:3] if nodes[i].is_leader)
        follower = next(nodes[i] for i in ids[:3] if not nodes[i].is_leader)
        controller = Controller(leader, fsms[leader.id])
        for i in ids:
            assert isinstance(await controller.submit(NodeUp(i)), Applied)
        created = await controller.submit(CreateTopic("orders", TopicSpec(6, 3, None, None)))
        assert isinstance(created, Applied) and len(created.changed) == 6
        again = await controller.submit(CreateTopic("orders", TopicSpec(6, 3, None, None)))
        assert isinstance(again, Rejected) and again.reason is Reason.TOPIC_EXISTS
        with pytest.raises(NotLeaderError):
            await Controller(follower, fsms[follower.id]).submit(NodeUp("x"))

        # enough entries for snapshots on the voters, then the learner joins
        await wait_until(
            lambda: all(nodes[i].snapshot_index > 0 for i in ids[:3]), WAIT, "voter snapshots"
        )
        await leader.add_learner("d", addresses["d"], timeout=WAIT)
        want = fsms[leader.id].metadata.encode()
        for i in ids:
            await fsms[i].wait_until(lambda m: m.encode() == want, WAIT)
        assert nodes["d"].stats.snapshots_received >= 1
        assert fsms["d"].metadata.topics["orders"].partitions == 6
    finally:
        for node in nodes.values():
            await node.close()
        for r in by_node.values():
            await r.close()


async def test_a_topic_created_through_the_controller_is_hosted_where_assigned(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    """CreateTopic through the controller; every node reconciles its PartitionHost with
    its own copy of the metadata: each partition opens on exactly its assigned nodes,
    whose initial voters bootstrap it, and takes writes. DeleteTopic closes them."""
    ids = ["a", "b", "c"]
    by_node, addresses = await routers(ids, peer_tls(dev_certs))
    fsms = {i: ControllerFSM() for i in ids}
    nodes: dict[str, RaftNode] = {}
    settings = HostSettings(node=NodeConfig(raft=RaftConfig(id="-"), tick_interval=0.02))
    hosts = {i: PartitionHost(i, tmp_path / i, by_node[i], settings) for i in ids}
    try:
        for i in ids:
            nodes[i] = RaftNode(
                NodeConfig(raft=RaftConfig(id=i), tick_interval=0.02),
                fsms[i],
                by_node[i].group(CONTROLLER_GROUP),
                log_store=InmemLogStore(),
                stable_store=InmemStableStore(),
                snapshot_store=InmemSnapshotStore(),
                peers=addresses,
            )
            await nodes[i].start()
        for i in ids:
            await nodes[i].bootstrap([Server(n, addresses[n]) for n in ids])
        await wait_until(lambda: any(n.is_leader for n in nodes.values()), WAIT, "a leader")
        leader = next(n for n in nodes.values() if n.is_leader)
        controller = Controller(leader, fsms[leader.id])
        for i in ids:
            await controller.submit(NodeUp(i))
        assert isinstance(
            await controller.submit(CreateTopic("orders", TopicSpec(4, 2, None, None))), Applied
        )
        for i in ids:
            await fsms[i].wait_until(lambda m: "orders" in m.topics, WAIT)
            opened, closed = await hosts[i].reconcile(fsms[i].metadata, addresses)
            assert closed == []
            want = sorted(
                k
                for k, a in fsms[i].metadata.assignments.items()
                if i in a.replicas and k[0] == "orders"
            )
            assert opened == want and sorted(hosts[i].replicas) == want
        assignments = fsms["a"].metadata.assignments
        for p in range(4):
            holders = [i for i in ids if hosts[i].get("orders", p) is not None]
            assert sorted(holders) == sorted(assignments[("orders", p)].voters)
            replicas = [hosts[i].get("orders", p) for i in holders]

            def one_leads(rs: list[object] = replicas) -> bool:
                return sum(bool(r.is_leader()) for r in rs) == 1  # type: ignore[attr-defined]

            await wait_until(one_leads, WAIT, f"a leader of orders/{p}")
            lead = next(r for r in replicas if r is not None and r.is_leader())
            assert await lead.append([b"p%d" % p]) == (0, 0)
        # a second reconcile changes nothing
        for i in ids:
            assert await hosts[i].reconcile(fsms[i].metadata, addresses) == ([], [])

        assert isinstance(await controller.submit(DeleteTopic("orders")), Applied)
        for i in ids:
            await fsms[i].wait_until(lambda m: "orders" not in m.topics, WAIT)
            _, closed = await hosts[i].reconcile(fsms[i].metadata, addresses)
            assert closed and hosts[i].replicas == {}
    finally:
        for h in hosts.values():
            await h.close_all()
        for node in nodes.values():
            await node.close()
        for r in by_node.values():
            await r.close()


async def test_leaders_move_to_their_preferred_nodes(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    """Six partitions at R3 on three hosts, all led by node a to start with; each host
    hands the partitions it leads to their preferred leaders until none is left to move.
    The spread counts every partition of the metadata, the default one (led by its only
    voter, a) included: 7 over 3 nodes, so no node leads more than ceil(7/3) = 3."""
    ids = ["a", "b", "c"]
    by_node, addresses = await routers(ids, peer_tls(dev_certs))
    settings = HostSettings(node=NodeConfig(raft=RaftConfig(id="-"), tick_interval=0.02))
    hosts = {i: PartitionHost(i, tmp_path / i, by_node[i], settings) for i in ids}
    metadata = ClusterMetadata()
    for i in ids:
        metadata.apply(NodeUp(i), 1.0)
    metadata.apply(CreateTopic("orders", TopicSpec(6, 3, None, None)), 2.0)
    keys = [("orders", p) for p in range(6)]

    def leaders() -> dict[tuple[str, int], str | None]:
        out: dict[tuple[str, int], str | None] = {}
        for key in keys:
            leading = [i for i in ids if (d := hosts[i].get(*key)) and d.is_leader()]
            out[key] = leading[0] if len(leading) == 1 else None
        return out

    try:
        for i in ids:
            await hosts[i].reconcile(metadata, addresses)
        await wait_until(lambda: None not in leaders().values(), WAIT, "a leader everywhere")
        # start from the worst spread: node a leads all six
        for key, leader in leaders().items():
            if leader != "a":
                lead = hosts[leader].get(*key) if leader else None
                assert lead is not None
                await lead.transfer_leadership("a", timeout_s=WAIT)
        await wait_until(
            lambda: set(leaders().values()) == {"a"}, WAIT, "node a leading every partition"
        )

        async def balanced() -> bool:
            for i in ids:
                await hosts[i].balance_leaders(metadata)
            current = leaders()
            return None not in current.values() and not leaders_to_transfer(metadata, current)

        await wait_until(balanced, WAIT, "leaders on their preferred nodes", interval=0.1)
        counts = Counter(leaders().values())
        counts["a"] += 1  # the default partition: its one voter leads it
        assert sum(counts.values()) == 7 and max(counts.values()) <= 3, counts
    finally:
        for h in hosts.values():
            await h.close_all()
        for r in by_node.values():
            await r.close()

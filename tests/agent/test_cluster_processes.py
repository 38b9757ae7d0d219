"""A real cluster: ``raftlog agent`` processes with real Serf, the mux and mutual TLS.

One cluster per module, started once for speed; the tests do not depend on each other
(each passes alone and in any order): before each test every live node sees one leader and
the three founders, and a test that needs more (a fourth node, one to leave) starts it
itself. Three nodes elect a leader; records produced to any node are readable on every node
at the same offsets; Raft traffic with a client certificate is refused; a new node joins
through Serf and catches up from a snapshot; the leader is SIGKILLed, a new leader accepts
writes and the old one restarts and catches up; a node that leaves gracefully is removed
from Raft; everything stops with nothing left behind (no Serf, no socket dir, no held lock;
a SIGKILLed agent's Serf dies with it and its socket dir is swept).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from raftlog.agent.devcluster import DevCluster
from raftlog.api.contract import FORWARDED_KEY
from raftlog.api.status import error_info_from_metadata
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.mux.sockdir import socket_dirs_of
from raftlog.raft.transport import HELLO_MAGIC, RAFT_MARKER, encode_frame, encode_hello
from raftlog.security import CertFiles, client_ssl_context
from support.client_nodes import tls_of
from support.cluster import three_node_cluster
from support.procs import locks_free, pid_gone, serf_pids
from support.wait import wait_until

SNAPSHOT_THRESHOLD = 64
pytestmark = pytest.mark.timeout(120)


FOUNDERS = ("n1", "n2", "n3")


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, dev_certs: dict[str, CertFiles]
) -> Iterator[DevCluster]:
    root = tmp_path_factory.mktemp("cluster")
    args = ("--serf-profile", "local", "--snapshot-threshold", str(SNAPSHOT_THRESHOLD))
    args += ("--sync", "never", "--log-level", "info")
    with three_node_cluster(root, dev_certs, names=FOUNDERS, agent_args=args) as c:
        yield c
        gossip = [n.gossip_addr for n in c.nodes.values()]
        pids = {name: n.proc.pid for name, n in c.nodes.items() if n.proc is not None}
    # every node exited 0 (three_node_cluster checks), and left nothing behind
    for addr in gossip:
        assert serf_pids([f"-bind={addr}"]) == [], f"serf for {addr} left behind"
    for name, pid in pids.items():
        assert socket_dirs_of(pid) == [], f"{name} left its gRPC socket dir behind"
        assert locks_free(c.nodes[name].data_dir), f"{name} has no LOCK: layout changed?"


@pytest.fixture(autouse=True)
async def healthy(cluster: DevCluster) -> AsyncIterator[None]:
    """Each test starts on a working cluster, whatever ran before it: every live node
    names the same leader and lists the founders (and any node a test added), and every
    member votes (a learner that is not yet promoted would not count for a quorum)."""
    assert cluster.client_tls is not None
    tls = cluster.client_tls
    leader = await cluster.wait_for(tls, members=len(FOUNDERS), timeout_s=40, every=True)

    async def all_vote() -> bool:
        return not any(s.is_learner for s in await cluster.servers(leader, tls))

    await wait_until(all_vote, 30, "every member to be promoted to voter", interval=0.1)
    yield


def running(c: DevCluster) -> list[str]:
    return [name for name, node in c.nodes.items() if node.running]


async def start_new_node(c: DevCluster) -> str:
    """Add a node with a name no test used yet, join it through n2's Serf, and wait until
    n1 lists it (with every other running node)."""
    name = f"n{len(c.nodes) + 1}"
    c.add_node(name)
    c.start(name, join=[c.nodes["n2"].gossip_addr])
    assert c.client_tls is not None
    await c.wait_for(c.client_tls, members=len(running(c)), timeout_s=40, via=["n1"])
    return name


def stub_for(c: DevCluster, name: str) -> tuple[grpc.aio.Channel, log_pb2_grpc.LogStub]:
    assert c.client_tls is not None
    ch = c.channel(name, c.client_tls)
    return ch, log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]


async def produce(c: DevCluster, name: str, values: list[bytes]) -> tuple[int, int]:
    ch, stub = stub_for(c, name)
    async with ch:
        resp = await stub.Produce(
            log_pb2.ProduceRequest(records=[log_pb2.Record(value=v) for v in values]), timeout=10
        )
    return resp.offset, resp.offset + len(values) - 1


async def read_all(c: DevCluster, name: str, upto: int, timeout: float = 20.0) -> list[bytes]:
    """Records 0..upto on node ``name``, waiting (bounded) until it has them and serves."""
    deadline = time.monotonic() + timeout
    while True:
        ch, stub = stub_for(c, name)
        out: list[bytes] = []
        try:
            async with ch:
                call = stub.ConsumeStream(
                    log_pb2.ConsumeRequest(offset=0, max_records=1000),
                    timeout=max(0.5, deadline - time.monotonic()),
                )
                async for resp in call:
                    for r in resp.records:
                        assert r.offset == len(out)
                        out.append(r.value)
                    if len(out) > upto:
                        call.cancel()
                        break
            return out[: upto + 1]
        except grpc.aio.AioRpcError as exc:
            # a node that is still starting (or restoring a snapshot) refuses for a moment
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def leader_of(c: DevCluster, via: str) -> str:
    assert c.client_tls is not None
    servers = await c.servers(via, c.client_tls)
    leaders = [s.id for s in servers if s.is_leader]
    assert len(leaders) == 1, servers
    return str(leaders[0])


async def test_three_nodes_elect_one_leader(cluster: DevCluster) -> None:
    """Every running node lists the same members, the running nodes (the founders and any
    node another test added), with one leader; a node that left is no longer listed."""
    assert cluster.client_tls is not None
    tls = cluster.client_tls
    views: list[list[tuple[str, str, bool]]] = []

    async def agreed() -> bool:
        views.clear()
        for name in running(cluster):
            servers = await cluster.servers(name, tls)
            views.append(sorted((s.id, s.rpc_addr, s.is_leader) for s in servers))
        return all(v == views[0] for v in views) and [s[0] for s in views[0]] == sorted(
            running(cluster)
        )

    # a node another test removed may still be listed until the change reaches everyone
    await wait_until(agreed, 20, "every node to list the running nodes", interval=0.2)
    assert set(FOUNDERS) <= {s[0] for s in views[0]}
    assert sum(1 for s in views[0] if s[2]) == 1
    assert {s[1] for s in views[0]} == {cluster.nodes[n].rpc_addr for n in running(cluster)}


async def test_produce_anywhere_read_everywhere_at_the_same_offsets(cluster: DevCluster) -> None:
    spans = []
    for round_ in range(3):
        for name in ("n1", "n2", "n3"):
            values = [f"{name}-{round_}-{i}".encode() for i in range(5)]
            spans.append((await produce(cluster, name, values), values))
    spans.sort()
    base = spans[0][0][0]  # the log's end when this test began (other tests write too)
    expected: list[bytes] = []
    for (first, last), values in spans:
        assert first == base + len(expected) and last == first + 4  # dense, kept together
        expected += values
    # concurrent writes through all three nodes at once
    end = base + len(expected)
    results = await asyncio.gather(
        *(produce(cluster, f"n{1 + i % 3}", [b"c%d" % i]) for i in range(30))
    )
    assert sorted(f for f, _ in results) == list(range(end, end + 30))
    top = end + 29
    copies = [await read_all(cluster, name, top) for name in FOUNDERS]
    assert copies[0] == copies[1] == copies[2]
    assert copies[0][base:end] == expected


async def test_a_forwarded_write_is_never_forwarded_again(
    cluster: DevCluster, dev_certs: dict[str, CertFiles]
) -> None:
    """A follower forwards a client's write, but answers a forwarded one (sent with the peer
    certificate, as a follower does) with NOT_LEADER and the leader hint, so a stale view
    cannot bounce a write around the cluster."""
    leader = await leader_of(cluster, "n1")
    follower = next(n for n in ("n1", "n2", "n3") if n != leader)
    ch = cluster.channel(follower, tls_of(dev_certs["server"]))
    stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Produce(
                log_pb2.ProduceRequest(record=log_pb2.Record(value=b"bounced")),
                metadata=((FORWARDED_KEY, "1"),),
                timeout=10,
            )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    details = error_info_from_metadata(info.value.trailing_metadata())  # type: ignore[arg-type]
    assert details is not None and details.reason == "NOT_LEADER"
    assert details.metadata["leader_id"] == leader
    assert details.metadata["leader_addr"] == cluster.nodes[leader].rpc_addr


async def test_raft_with_a_client_certificate_is_refused(
    cluster: DevCluster, dev_certs: dict[str, CertFiles]
) -> None:
    """A CA-signed client certificate (may produce/consume) cannot speak Raft."""
    node = cluster.nodes["n2"]
    ctx = client_ssl_context(tls_of(dev_certs["root"]))
    reader, writer = await asyncio.open_connection("127.0.0.1", node.rpc_port)
    try:
        writer.write(bytes([RAFT_MARKER[0]]))
        await writer.drain()
        await asyncio.wait_for(writer.start_tls(ctx, server_hostname="127.0.0.1"), 5)
        writer.write(encode_frame(encode_hello(HELLO_MAGIC, "intruder")))
        await writer.drain()
        # a peer would get a hello-ack frame; the intruder gets the connection closed
        data = await asyncio.wait_for(reader.read(4096), 10)
        assert data == b""
    except (ConnectionError, ssl.SSLError):
        pass  # closed during or right after the handshake: refused as well
    finally:
        writer.close()
    # and the node says why
    await wait_until(
        lambda: "refused Raft traffic from 'root'" in cluster.log_text("n2"),
        5,
        "n2 to log the refusal",
        interval=0.1,
    )
    # the cluster still works
    await produce(cluster, "n2", [b"still-fine"])


async def test_fourth_node_joins_via_serf_and_catches_up_from_a_snapshot(
    cluster: DevCluster,
) -> None:
    # enough Raft entries (one per produce) for a few snapshots and a compacted log
    await asyncio.gather(*(produce(cluster, "n1", [b"bulk-%d" % i]) for i in range(200)))
    top, _ = await produce(cluster, "n1", [b"before-new"])
    new = await start_new_node(cluster)
    copy = await read_all(cluster, new, top)
    assert copy == await read_all(cluster, "n1", top)
    assert copy[-1] == b"before-new"
    assert "restored from the snapshot" in cluster.log_text(new)
    # and it follows new writes, also written through it
    first, _ = await produce(cluster, new, [b"via-new"])
    assert (await read_all(cluster, "n3", first))[-1] == b"via-new"


async def test_leader_killed_new_leader_accepts_writes_old_one_catches_up(
    cluster: DevCluster,
) -> None:
    old = await leader_of(cluster, "n3")
    others = [n for n in cluster.nodes if n != old and cluster.nodes[n].running]
    old_proc = cluster.nodes[old].proc
    assert old_proc is not None
    [old_serf] = serf_pids([f"-bind={cluster.nodes[old].gossip_addr}"])
    [old_sockdir] = socket_dirs_of(old_proc.pid)
    cluster.signal(old, signal.SIGKILL)
    cluster.wait_exit(old, 10)
    started = time.monotonic()
    first = -1

    async def accepted() -> bool:
        nonlocal first
        for name in others:
            with contextlib.suppress(grpc.aio.AioRpcError):
                first, _ = await produce(cluster, name, [b"after-failover"])
                return True
        return False

    await wait_until(accepted, 15, "a write accepted after the leader died", interval=0.05)
    took = time.monotonic() - started
    new = await leader_of(cluster, others[0])
    assert new != old
    assert took < 10, took
    # its Serf got the parent-death signal (else the restart below could not bind its port)
    await wait_until(lambda: pid_gone(old_serf), 10, f"serf {old_serf} to die with its agent")
    # the old leader restarts on its data dir (with --bootstrap again: ignored) and catches up
    cluster.start(old, bootstrap=True, join=[cluster.nodes[others[0]].gossip_addr])
    copy = await read_all(cluster, old, first)
    assert copy == await read_all(cluster, new, first)
    assert "a restart never bootstraps again" in cluster.log_text(old)
    # the killed agent's socket dir was swept (by the restart, or any other agent's start)
    assert not old_sockdir.exists(), f"stale socket dir {old_sockdir} left behind"


async def test_graceful_leave_removes_the_node_from_raft(cluster: DevCluster) -> None:
    assert cluster.client_tls is not None
    tls = cluster.client_tls
    before = {s.id for s in await cluster.servers("n1", tls)}
    leaver = await start_new_node(cluster)
    gossip = cluster.nodes[leaver].gossip_addr
    proc = cluster.nodes[leaver].proc
    assert proc is not None
    [sockdir] = socket_dirs_of(proc.pid)
    cluster.signal(leaver, signal.SIGTERM)
    assert cluster.wait_exit(leaver, 30) == 0, cluster.log_text(leaver)[-3000:]
    assert serf_pids([f"-bind={gossip}"]) == []
    assert not sockdir.exists(), "the socket dir outlived the agent's shutdown"
    assert locks_free(cluster.nodes[leaver].data_dir)

    async def removed() -> bool:
        return leaver not in {s.id for s in await cluster.servers("n1", tls)}

    await wait_until(removed, 30, f"{leaver} to be removed from Raft", interval=0.2)
    assert {s.id for s in await cluster.servers("n1", tls)} == before
    await produce(cluster, "n1", [b"after-leave"])

"""A real cluster: ``raftlog agent`` processes with real Serf, the mux and mutual TLS.

One cluster per module (started once, the tests run in file order and build on each
other): three nodes elect a leader; records produced to any node are readable on every
node at the same offsets; Raft traffic with a client certificate is refused; a fourth node
joins through Serf and catches up from a snapshot; the leader is SIGKILLed, a new leader
accepts writes and the old one restarts and catches up; a node that leaves gracefully is
removed from Raft; everything stops with nothing left behind (no Serf, no socket dir, no
held lock; a SIGKILLed agent's Serf dies with it and its socket dir is swept).
"""

from __future__ import annotations

import asyncio
import fcntl
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from raftlog.agent.devcluster import DevCluster
from raftlog.api.contract import FORWARDED_KEY
from raftlog.api.status import error_info_from_metadata
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.mux.sockdir import socket_dirs_of
from raftlog.raft.transport import HELLO_MAGIC, RAFT_MARKER, encode_frame, encode_hello
from raftlog.security import CertFiles, TLSConfig, client_ssl_context
from support.cluster_files import dev_cluster_files
from support.procs import serf_pids

SNAPSHOT_THRESHOLD = 64
pytestmark = pytest.mark.timeout(120)


def tls_of(files: CertFiles) -> TLSConfig:
    return TLSConfig(files.cert_file, files.key_file, files.ca_file)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, dev_certs: dict[str, CertFiles]
) -> Iterator[DevCluster]:
    root = tmp_path_factory.mktemp("cluster")
    files = dev_cluster_files(root, dev_certs)
    c = DevCluster(
        root,
        files,
        agent_args=(
            "--serf-profile",
            "local",
            "--snapshot-threshold",
            str(SNAPSHOT_THRESHOLD),
            "--sync",
            "never",
            "--log-level",
            "info",
        ),
    )
    c.client_tls = tls_of(dev_certs["root"])
    for name in ("n1", "n2", "n3"):
        c.add_node(name)
    c.start("n1", bootstrap=True)
    try:
        asyncio.run(c.wait_for(c.client_tls, members=1, timeout_s=30))
        c.start("n2")
        c.start("n3")
        asyncio.run(c.wait_for(c.client_tls, members=3, timeout_s=40, every=True))
    except BaseException:
        c.stop_all()
        raise
    yield c
    gossip = [n.gossip_addr for n in c.nodes.values()]
    pids = {name: n.proc.pid for name, n in c.nodes.items() if n.proc is not None}
    c.stop_all()
    codes = {name: n.proc.returncode for name, n in c.nodes.items() if n.proc is not None}
    for name, code in codes.items():
        assert code == 0, f"{name} exited with {code}:\n{c.log_text(name)[-3000:]}"
    for addr in gossip:
        assert serf_pids([f"-bind={addr}"]) == [], f"serf for {addr} left behind"
    for name, pid in pids.items():
        assert socket_dirs_of(pid) == [], f"{name} left its gRPC socket dir behind"
        assert locks_free(c.nodes[name].data_dir), f"{name} has no LOCK: layout changed?"


def locks_free(data_dir: Path) -> list[Path]:
    """Every LOCK under ``data_dir``, after checking nobody holds its flock any more."""
    locks = sorted(data_dir.rglob("LOCK"))
    for lock in locks:
        with open(lock, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if still held
            fcntl.flock(fh, fcntl.LOCK_UN)
    return locks


def dead(pid: int) -> bool:
    """``pid`` no longer runs (gone, or a zombie awaiting its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


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
    views = []
    for name in ("n1", "n2", "n3"):
        assert cluster.client_tls is not None
        servers = await cluster.servers(name, cluster.client_tls)
        views.append(sorted((s.id, s.rpc_addr, s.is_leader) for s in servers))
    assert views[0] == views[1] == views[2], views
    assert [s[0] for s in views[0]] == ["n1", "n2", "n3"]
    assert sum(1 for s in views[0] if s[2]) == 1
    assert {s[1] for s in views[0]} == {cluster.nodes[n].rpc_addr for n in ("n1", "n2", "n3")}


async def test_produce_anywhere_read_everywhere_at_the_same_offsets(cluster: DevCluster) -> None:
    spans = []
    for round_ in range(3):
        for name in ("n1", "n2", "n3"):
            values = [f"{name}-{round_}-{i}".encode() for i in range(5)]
            spans.append((await produce(cluster, name, values), values))
    spans.sort()
    expected: list[bytes] = []
    for (first, last), values in spans:
        assert first == len(expected) and last == first + 4  # dense, batch kept together
        expected += values
    # concurrent writes through all three nodes at once
    results = await asyncio.gather(
        *(produce(cluster, f"n{1 + i % 3}", [b"c%d" % i]) for i in range(30))
    )
    assert sorted(f for f, _ in results) == list(range(len(expected), len(expected) + 30))
    top = len(expected) + 29
    copies = [await read_all(cluster, name, top) for name in ("n1", "n2", "n3")]
    assert copies[0] == copies[1] == copies[2]
    assert copies[0][: len(expected)] == expected


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
    deadline = time.monotonic() + 5
    while "refused Raft traffic from 'root'" not in cluster.log_text("n2"):
        assert time.monotonic() < deadline, cluster.log_text("n2")[-2000:]
        await asyncio.sleep(0.1)
    # the cluster still works
    await produce(cluster, "n2", [b"still-fine"])


async def test_fourth_node_joins_via_serf_and_catches_up_from_a_snapshot(
    cluster: DevCluster,
) -> None:
    # enough Raft entries (one per produce) for a few snapshots and a compacted log
    await asyncio.gather(*(produce(cluster, "n1", [b"bulk-%d" % i]) for i in range(200)))
    top, _ = await produce(cluster, "n1", [b"before-n4"])
    cluster.add_node("n4")
    cluster.start("n4", join=[cluster.nodes["n2"].gossip_addr])
    assert cluster.client_tls is not None
    await cluster.wait_for(cluster.client_tls, members=4, timeout_s=40, via=["n1"])
    copy = await read_all(cluster, "n4", top)
    assert copy == await read_all(cluster, "n1", top)
    assert copy[-1] == b"before-n4"
    assert "restored from the snapshot" in cluster.log_text("n4")
    # and it follows new writes, also written through it
    first, _ = await produce(cluster, "n4", [b"via-n4"])
    assert (await read_all(cluster, "n3", first))[-1] == b"via-n4"


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
    while first < 0:
        assert time.monotonic() - started < 15, "no write accepted after the leader died"
        for name in others:
            try:
                first, _ = await produce(cluster, name, [b"after-failover"])
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
    took = time.monotonic() - started
    new = await leader_of(cluster, others[0])
    assert new != old
    assert took < 10, took
    # its Serf got the parent-death signal (else the restart below could not bind its port)
    deadline = time.monotonic() + 10
    while not dead(old_serf):
        assert time.monotonic() < deadline, f"serf {old_serf} outlived its SIGKILLed agent"
        await asyncio.sleep(0.05)
    # the old leader restarts on its data dir (with --bootstrap again: ignored) and catches up
    cluster.start(old, bootstrap=True, join=[cluster.nodes[others[0]].gossip_addr])
    copy = await read_all(cluster, old, first)
    assert copy == await read_all(cluster, new, first)
    assert "a restart never bootstraps again" in cluster.log_text(old)
    # the killed agent's socket dir was swept (by the restart, or any other agent's start)
    assert not old_sockdir.exists(), f"stale socket dir {old_sockdir} left behind"


async def test_graceful_leave_removes_the_node_from_raft(cluster: DevCluster) -> None:
    leaver = "n4"
    gossip = cluster.nodes[leaver].gossip_addr
    proc = cluster.nodes[leaver].proc
    assert proc is not None
    [sockdir] = socket_dirs_of(proc.pid)
    cluster.signal(leaver, signal.SIGTERM)
    assert cluster.wait_exit(leaver, 30) == 0, cluster.log_text(leaver)[-3000:]
    assert serf_pids([f"-bind={gossip}"]) == []
    assert not sockdir.exists(), "the socket dir outlived the agent's shutdown"
    assert locks_free(cluster.nodes[leaver].data_dir)
    assert cluster.client_tls is not None
    deadline = time.monotonic() + 30
    while True:
        servers = await cluster.servers("n1", cluster.client_tls)
        if leaver not in {s.id for s in servers}:
            break
        assert time.monotonic() < deadline, servers
        await asyncio.sleep(0.2)
    assert sorted(s.id for s in servers) == ["n1", "n2", "n3"]
    await produce(cluster, "n1", [b"after-leave"])

"""Static membership (no Serf): three agent processes given the same --peers list."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from raftlog.agent.devcluster import DevCluster
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles, TLSConfig, write_dev_certs
from support.cluster_files import dev_cluster_files

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize(("peer_ca", "loop"), [("shared", "asyncio"), ("separate", "uvloop")])
async def test_static_peers_form_a_cluster_without_serf(
    tmp_path: Path, dev_certs: dict[str, CertFiles], peer_ca: str, loop: str
) -> None:
    """With ``separate``, the nodes' peer certificates come from a second CA (their server
    certificates from the clients' CA): Raft runs on the peer CA, and a write sent to a
    follower still reaches the leader's gRPC server with the peer certificate. The second
    cluster also runs its nodes on uvloop (``--event-loop uvloop``)."""
    root = dev_certs["root"]
    files = dev_cluster_files(tmp_path, dev_certs)
    tls = TLSConfig(root.cert_file, root.key_file, root.ca_file)
    args: tuple[str, ...] = ("--sync", "never", "--event-loop", loop)
    if peer_ca == "separate":
        peer = write_dev_certs(tmp_path / "peer-ca", clients=())["server"]
        assert peer.ca_file.read_bytes() != files.ca.read_bytes()
        args += (
            *("--peer-tls-cert-file", str(peer.cert_file)),
            *("--peer-tls-key-file", str(peer.key_file)),
            *("--peer-tls-ca-file", str(peer.ca_file)),
        )
    cluster = DevCluster(tmp_path, files, agent_args=args)
    names = ("s1", "s2", "s3")
    for name in names:
        cluster.add_node(name)
    peers = ",".join(f"{n}={cluster.nodes[n].rpc_addr}" for n in names)
    for name in names:
        cluster.nodes[name] = dataclasses.replace(cluster.nodes[name], extra=("--peers", peers))
    try:
        cluster.start("s1", bootstrap=True, join=[])
        cluster.start("s2", join=[])
        cluster.start("s3", join=[])
        leader = await cluster.wait_for(tls, members=3, timeout_s=40, every=True)
        follower = next(n for n in names if n != leader)
        async with cluster.channel(follower, tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            resp = await stub.Produce(
                log_pb2.ProduceRequest(record=log_pb2.Record(value=b"static")), timeout=10
            )
        for name in names:
            async with cluster.channel(name, tls) as ch:
                stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
                for _ in range(100):
                    offsets = await stub.GetOffsets(log_pb2.GetOffsetsRequest(), timeout=5)
                    if not offsets.empty and offsets.highest_offset >= resp.offset:
                        break
                    await asyncio.sleep(0.05)
                got = await stub.Consume(log_pb2.ConsumeRequest(offset=resp.offset), timeout=5)
                assert got.record.value == b"static"
        assert "serf agent" not in cluster.log_text("s2")
        assert f"event loop: {loop}." in cluster.log_text("s2")
    finally:
        cluster.stop_all()
    for name in names:
        proc = cluster.nodes[name].proc
        assert proc is not None and proc.returncode == 0, cluster.log_text(name)[-2000:]

"""Static membership (no Serf): three agent processes given the same --peers list."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from raftlog.agent.devcluster import DevCluster
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles, TLSConfig
from support.cluster_files import dev_cluster_files

pytestmark = pytest.mark.timeout(90)


async def test_static_peers_form_a_cluster_without_serf(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    root = dev_certs["root"]
    files = dev_cluster_files(tmp_path, dev_certs)
    tls = TLSConfig(root.cert_file, root.key_file, root.ca_file)
    cluster = DevCluster(tmp_path, files, agent_args=("--sync", "never"))
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
    finally:
        cluster.stop_all()
    for name in names:
        proc = cluster.nodes[name].proc
        assert proc is not None and proc.returncode == 0, cluster.log_text(name)[-2000:]

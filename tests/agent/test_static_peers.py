"""Static membership (no Serf): three agent processes given the same --peers list."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles, write_dev_certs
from support.cluster import three_node_cluster_async
from support.wait import wait_until

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize(("peer_ca", "loop"), [("shared", "asyncio"), ("separate", "uvloop")])
async def test_static_peers_form_a_cluster_without_serf(
    tmp_path: Path, dev_certs: dict[str, CertFiles], peer_ca: str, loop: str
) -> None:
    """With ``separate``, the nodes' peer certificates come from a second CA (their server
    certificates from the clients' CA): Raft runs on the peer CA, and a write sent to a
    follower still reaches the leader's gRPC server with the peer certificate. The second
    cluster also runs its nodes on uvloop (``--event-loop uvloop``)."""
    args: tuple[str, ...] = ("--sync", "never", "--event-loop", loop)
    if peer_ca == "separate":
        peer = write_dev_certs(tmp_path / "peer-ca", clients=())["server"]
        assert peer.ca_file.read_bytes() != dev_certs["server"].ca_file.read_bytes()
        args += (
            *("--peer-tls-cert-file", str(peer.cert_file)),
            *("--peer-tls-key-file", str(peer.key_file)),
            *("--peer-tls-ca-file", str(peer.ca_file)),
        )
    names = ("s1", "s2", "s3")
    async with three_node_cluster_async(
        tmp_path, dev_certs, names=names, agent_args=args, static_peers=True
    ) as cluster:
        tls = cluster.client_tls
        assert tls is not None
        leader = await cluster.wait_for(tls, members=3, timeout_s=10, every=True)
        follower = next(n for n in names if n != leader)
        async with cluster.channel(follower, tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            resp = await stub.Produce(
                log_pb2.ProduceRequest(record=log_pb2.Record(value=b"static")), timeout=10
            )
        for name in names:
            async with cluster.channel(name, tls) as ch:
                stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]

                async def applied(stub: log_pb2_grpc.LogStub = stub) -> bool:
                    offsets = await stub.GetOffsets(log_pb2.GetOffsetsRequest(), timeout=5)
                    return not offsets.empty and offsets.highest_offset >= resp.offset

                await wait_until(applied, 10, f"{name} to apply the record", interval=0.05)
                got = await stub.Consume(log_pb2.ConsumeRequest(offset=resp.offset), timeout=5)
                assert got.record.value == b"static"
        assert "serf agent" not in cluster.log_text("s2")
        assert f"event loop: {loop}." in cluster.log_text("s2")

"""The Agent: ordered start, reverse and idempotent shutdown, rollback of a failed start."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest

from raftlog.agent import Agent
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.auth import AuthConfigError, write_example_acl
from raftlog.config import AgentConfig
from raftlog.log import Log
from raftlog.security import CertFiles, TLSConfig, grpc_channel_credentials


def _config(tmp_path: Path, certs: dict[str, CertFiles]) -> AgentConfig:
    write_example_acl(tmp_path / "acl")
    server = certs["server"]
    return AgentConfig(
        data_dir=tmp_path / "data",
        node_name="agent-test",
        rpc_port=0,
        acl_model_file=tmp_path / "acl" / "model.conf",
        acl_policy_file=tmp_path / "acl" / "policy.csv",
        server_tls_cert_file=server.cert_file,
        server_tls_key_file=server.key_file,
        server_tls_ca_file=server.ca_file,
        peer_tls_cert_file=server.cert_file,
        peer_tls_key_file=server.key_file,
        peer_tls_ca_file=server.ca_file,
        shutdown_timeout_s=5,
    )


async def test_agent_serves_then_shuts_down_once(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    agent = Agent(_config(tmp_path, dev_certs))
    assert [s.name for s in agent.steps] == ["log", "server"]
    await agent.start()
    root = dev_certs["root"]
    creds = grpc_channel_credentials(TLSConfig(root.cert_file, root.key_file, root.ca_file))
    async with grpc.aio.secure_channel(agent.rpc_addr, creds) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        resp = await stub.Produce(
            log_pb2.ProduceRequest(records=[log_pb2.Record(value=b"a"), log_pb2.Record(value=b"b")])
        )
        assert (resp.offset, resp.last_offset) == (0, 1)
        servers = await stub.GetServers(log_pb2.GetServersRequest())
        assert [(s.id, s.rpc_addr) for s in servers.servers] == [("agent-test", agent.rpc_addr)]
    await agent.shutdown()
    await agent.shutdown()  # idempotent
    assert agent.local_log is not None and agent.local_log.log.closed
    reopened = Log.open(tmp_path / "data")
    assert reopened.read(1) == b"b"
    reopened.close_sync()


async def test_a_failed_step_undoes_the_started_ones(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    config = _config(tmp_path, dev_certs)
    (tmp_path / "acl" / "model.conf").write_text("[request_definition]\nr = sub\n")  # broken
    agent = Agent(dataclasses.replace(config))
    with pytest.raises(AuthConfigError, match="cannot load the ACL"):
        await agent.start()
    assert agent.local_log is not None and agent.local_log.log.closed, "the log step was undone"

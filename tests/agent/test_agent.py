"""The Agent: ordered start, reverse and idempotent shutdown, rollback of a failed start;
as a real process (cluster mode, Serf): what SIGKILL and SIGTERM leave behind."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import grpc
import pytest

from raftlog.agent import Agent
from raftlog.agent.devcluster import DevCluster
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.auth import AuthConfigError, write_example_acl
from raftlog.config import AgentConfig
from raftlog.discovery import find_serf_binary
from raftlog.log import Log
from raftlog.mux.sockdir import socket_dirs_of
from raftlog.security import CertFiles, TLSConfig
from raftlog.security.grpc_tls import grpc_channel_credentials
from support.cluster_files import agent_tls, dev_cluster_files
from support.procs import locks_free, pid_gone
from support.wait import wait_until


def _config(tmp_path: Path, certs: dict[str, CertFiles]) -> AgentConfig:
    write_example_acl(tmp_path / "acl")
    server = certs["server"]
    return AgentConfig(
        data_dir=tmp_path / "data",
        node_name="agent-test",
        rpc_port=0,
        acl_model_file=tmp_path / "acl" / "model.conf",
        acl_policy_file=tmp_path / "acl" / "policy.csv",
        **agent_tls(server),
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


# -- a real agent process: what SIGKILL and SIGTERM leave behind ------------------------------


def _children(pid: int) -> dict[int, bytes]:
    """pid -> command line of the live (not zombie) children of ``pid``."""
    found: dict[int, bytes] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.timeout(90)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and pdeathsig")
async def test_agent_process_leaves_nothing_behind(
    tmp_path: Path, dev_certs: dict[str, CertFiles], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL: Serf dies with the agent (parent-death signal), the socket dir stays and the
    next start removes it. SIGTERM: exit 0, no Serf, no socket dir, no lock held."""
    try:
        find_serf_binary()
    except FileNotFoundError as exc:
        pytest.skip(f"no serf binary: {exc}")
    # the agents' socket dirs go to a private, short TMPDIR (unix paths < 104 bytes)
    sockbase = Path(tempfile.mkdtemp(prefix="rl-agent-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(sockbase))
    cluster = DevCluster(tmp_path, dev_cluster_files(tmp_path, dev_certs))
    tls = TLSConfig(
        dev_certs["root"].cert_file, dev_certs["root"].key_file, dev_certs["root"].ca_file
    )
    node = cluster.add_node("n1")
    try:
        cluster.start("n1", bootstrap=True)
        await cluster.wait_for(tls, members=1, timeout_s=30)
        assert node.proc is not None
        first = node.proc.pid
        [first_dir] = socket_dirs_of(first, sockbase)
        assert (first_dir / "grpc.sock").exists()
        [serf] = [pid for pid, cmd in _children(first).items() if b"serf" in cmd.split(b"\0")[0]]

        cluster.signal("n1", signal.SIGKILL)
        assert cluster.wait_exit("n1", 10) == -signal.SIGKILL
        await wait_until(lambda: pid_gone(serf), 10, f"serf {serf} to die with its agent")
        assert first_dir.is_dir(), "a SIGKILLed agent cannot remove its socket dir"

        cluster.start("n1", bootstrap=True)  # a restart on the same data dir
        await cluster.wait_for(tls, members=1, timeout_s=30)
        assert node.proc is not None
        second = node.proc.pid
        assert not first_dir.exists(), "the next agent did not remove the stale socket dir"
        assert "removed 1 socket directories of agents that are gone" in cluster.log_text("n1")
        [second_dir] = socket_dirs_of(second, sockbase)
        [serf] = [pid for pid, cmd in _children(second).items() if b"serf" in cmd.split(b"\0")[0]]

        cluster.signal("n1", signal.SIGTERM)
        assert cluster.wait_exit("n1", 30) == 0, cluster.log_text("n1")[-3000:]
        assert pid_gone(serf), "serf outlived the agent's shutdown"
        assert not second_dir.exists(), "the socket dir outlived the agent's shutdown"
        assert list(sockbase.iterdir()) == []
        assert locks_free(node.data_dir), "no LOCK file found: the data dir layout changed?"
    finally:
        cluster.stop_all(timeout=10)
        shutil.rmtree(sockbase, ignore_errors=True)

"""A data directory knows whose it is (docs/cluster.md, "Identity"), met the way a user
meets it: ``raftlog agent`` processes.

- another node's data directory (``--node-name p2`` on p1's): the agent exits 1 with an
  error naming both, before it touches the log;
- a data directory of one cluster joined to another: the agent exits 1 naming both
  cluster ids and the foreign members;
- a second live node with a member's id: the leader refuses it and says why, and the
  member keeps its place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from pathlib import Path

import pytest

from raftlog.agent.devcluster import DevCluster, free_port
from raftlog.security import CertFiles
from support.cluster import new_cluster, start_cluster
from support.wait import wait_until

pytestmark = pytest.mark.timeout(120)


async def run_agent(argv: list[str], timeout: float = 40) -> tuple[int, str]:
    """Run an agent command line to its exit; (exit code, its output)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        raise AssertionError(
            f"the agent did not exit within {timeout} s:\n{out.decode()}"
        ) from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def identity(c: DevCluster, name: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((c.nodes[name].data_dir / "identity.json").read_text())
    return data


async def test_another_nodes_data_directory_is_refused(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    c = new_cluster(tmp_path, dev_certs, names=("p1",))
    try:
        await start_cluster(c)
        assert identity(c, "p1")["node_id"] == "p1"
        assert identity(c, "p1")["cluster_id"]
    finally:
        c.stop_all()
    p1 = c.nodes["p1"]
    raft_files = sorted(p.name for p in (p1.data_dir / "raft").rglob("*"))
    c.nodes["p2"] = dataclasses.replace(p1, name="p2", proc=None, rpc_port=free_port())
    rc, out = await run_agent(c.command(c.nodes["p2"], bootstrap=False, join=[]))
    assert rc == 1, out
    assert f"data directory {p1.data_dir} belongs to node 'p1', not 'p2'" in out, out
    assert sorted(p.name for p in (p1.data_dir / "raft").rglob("*")) == raft_files


async def test_a_data_directory_of_another_cluster_does_not_join(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    a = new_cluster(tmp_path / "a", dev_certs, names=("a1",))
    b = new_cluster(tmp_path / "b", dev_certs, names=("b1",))
    try:
        await start_cluster(a)
        a.stop_all()
        await start_cluster(b)
        a_id, b_id = identity(a, "a1")["cluster_id"], identity(b, "b1")["cluster_id"]
        assert a_id != b_id
        # a1 restarts on its data directory, but joining cluster b's gossip
        argv = a.command(a.nodes["a1"], bootstrap=False, join=[b.nodes["b1"].gossip_addr])
        rc, out = await run_agent(argv, timeout=15)
        assert rc == 1, out
        assert f"belongs to cluster {a_id}" in out, out
        assert f"b1 (cluster {b_id})" in out, out
        assert b.client_tls is not None
        assert [s.id for s in await b.servers("b1", b.client_tls)] == ["b1"]
    finally:
        a.stop_all()
        b.stop_all()


async def test_a_second_live_node_with_a_members_id_is_refused(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    c = new_cluster(tmp_path, dev_certs, names=("n1", "n2"))
    try:
        leader = await start_cluster(c)
        assert c.client_tls is not None
        tls = c.client_tls
        original = c.nodes["n2"].rpc_addr
        # n2 joined with no cluster id: it learns the one n1 made when it bootstrapped
        cluster_id = identity(c, "n1")["cluster_id"]
        await wait_until(
            lambda: identity(c, "n2").get("cluster_id") == cluster_id,
            10,
            "n2 to record the cluster id",
            interval=0.1,
        )
        # an impostor: a fresh data directory, new ports, the same --node-name n2
        twin = c.add_node("twin")
        c.nodes["twin"] = dataclasses.replace(twin, name="n2", data_dir=tmp_path / "twin")
        argv = c.command(c.nodes["twin"], bootstrap=False, join=[c.nodes["n1"].gossip_addr])
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await wait_until(
                lambda: (
                    "refusing n2 at" in c.log_text(leader)
                    or "name conflict" in c.log_text(leader).lower()
                ),
                30,
                "the leader to refuse the second n2",
                interval=0.2,
            )
            servers = {s.id: s.rpc_addr for s in await c.servers(leader, tls)}
            assert servers["n2"] == original
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        servers = {s.id: s.rpc_addr for s in await c.servers(leader, tls)}
        assert servers["n2"] == original
    finally:
        c.stop_all()

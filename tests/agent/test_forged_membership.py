"""Membership that cannot be forged, and the audit log (issue 18, items 1 and 6).

One real cluster for the module: three ``raftlog agent`` processes with real Serf, gossip
encrypted with a key from :func:`write_gossip_key`, and ``--audit-log`` on every node.
Rogues try what the issue tried on ``make run`` (a Serf member whose ``rpc_addr`` tag is
the leader's own address), each a real process on 127.0.0.1:

- a bare Serf agent without the key: its join is refused by the gossip layer itself;
- a bare Serf agent with the key but no certificate: it joins the gossip, the leader's
  check (a peer mTLS handshake with the address it advertises) refuses it;
- a real ``raftlog agent`` with the key and a certificate of the cluster's CA that the ACL
  lets ``replicate``, but whose names do not name the node id it claims.

Neither the Raft membership (the leader's admin Status, learners included) nor any node's
GetServers changes. "Nothing happened" is checked only after an observable event proved
the attempt was made and refused (the join error, the leader's audit line).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from raftlog.agent.devcluster import DevCluster, free_port
from raftlog.api.admin.v1 import admin_pb2, admin_pb2_grpc
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.discovery import SerfAgent, SerfAgentConfig, SerfRPCError
from raftlog.raft.transport import HELLO_MAGIC, RAFT_MARKER, encode_frame, encode_hello
from raftlog.security import (
    CertFiles,
    CertPair,
    client_ssl_context,
    issue_cert,
    write_gossip_key,
)
from support.client_nodes import tls_of
from support.cluster import AGENT_ARGS, new_cluster, start_cluster
from support.wait import wait_until

pytestmark = pytest.mark.timeout(120)

FOUNDERS = ("n1", "n2", "n3")
#: A record value that must never reach the audit log.
SECRET_VALUE = b"payload-that-must-not-be-audited"


@dataclasses.dataclass
class Setup:
    cluster: DevCluster
    certs: dict[str, CertFiles]
    gossip_key: str
    root: Path

    def audit_path(self, name: str) -> Path:
        return self.root / f"{name}-audit.jsonl"

    def audit(self, name: str) -> list[dict[str, Any]]:
        path = self.audit_path(name)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, dev_certs: dict[str, CertFiles]
) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("forged")
    key_file = write_gossip_key(root / "gossip")
    c = new_cluster(
        root, dev_certs, names=FOUNDERS, agent_args=(*AGENT_ARGS, "--log-level", "info")
    )
    # the intruder's certificate (made below) is signed by the cluster CA and may replicate:
    # only the name check stands between it and the Raft membership
    with c.files.acl_policy.open("a") as policy:
        policy.write("p, intruder, *, replicate\n")
    c.files = dataclasses.replace(c.files, gossip_key=key_file)
    for name in FOUNDERS:
        node = c.nodes[name]
        c.nodes[name] = dataclasses.replace(
            node, extra=("--audit-log", str(root / f"{name}-audit.jsonl"))
        )
    try:
        asyncio.run(start_cluster(c))
        yield Setup(c, dev_certs, key_file.read_text().strip(), root)
    finally:
        c.stop_all()


async def _leader(s: Setup) -> str:
    assert s.cluster.client_tls is not None
    return await s.cluster.wait_for(
        s.cluster.client_tls, members=len(FOUNDERS), timeout_s=30, every=True
    )


async def _raft_members(s: Setup, leader: str) -> set[str]:
    """Every Raft member, learners included (the leader's admin Status)."""
    async with s.cluster.channel(leader, tls_of(s.certs["root"])) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
        status = await stub.Status(admin_pb2.StatusRequest(), timeout=5)
    return {m.id for m in status.members}


async def _assert_unchanged(s: Setup, leader: str) -> None:
    assert s.cluster.client_tls is not None
    assert await _raft_members(s, leader) == set(FOUNDERS)
    for name in FOUNDERS:
        servers = await s.cluster.servers(name, s.cluster.client_tls)
        assert {srv.id for srv in servers} == set(FOUNDERS), name
        assert {srv.rpc_addr for srv in servers} == {s.cluster.nodes[n].rpc_addr for n in FOUNDERS}


@contextlib.asynccontextmanager
async def _rogue_serf(
    root: Path, name: str, rpc_addr: str, key: str | None
) -> AsyncIterator[SerfAgent]:
    agent = SerfAgent(
        SerfAgentConfig(
            node_name=name,
            bind_addr=f"127.0.0.1:{free_port()}",
            rpc_addr=f"127.0.0.1:{free_port()}",
            advertise_rpc_addr=rpc_addr,
            encrypt_key=key,
            profile="local",
            log_file=root / f"{name}-serf.log",
        )
    )
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


def _refusals(s: Setup, leader: str, rogue: str) -> list[dict[str, Any]]:
    return [
        e
        for e in s.audit(leader)
        if e["event"] == "membership" and e["subject"] == rogue and e["decision"] == "refused"
    ]


async def test_a_rogue_serf_agent_without_the_key_cannot_even_join_the_gossip(
    setup: Setup,
) -> None:
    s = setup
    leader = await _leader(s)
    target = s.cluster.nodes[leader]
    async with _rogue_serf(s.root, "rogue-nokey", target.rpc_addr, None) as rogue:
        # the observable event: the join itself is refused (no key to decrypt the cluster's
        # gossip, and the cluster drops the rogue's clear-text messages)
        with pytest.raises(SerfRPCError):
            await rogue.join([target.gossip_addr], timeout=10)
        async with await rogue.connect() as client:
            assert {m.name for m in await client.members(timeout=5)} == {"rogue-nokey"}
    await _assert_unchanged(s, leader)
    assert not _refusals(s, leader, "rogue-nokey")  # it never even reached membership


async def test_a_rogue_with_the_key_but_no_certificate_is_refused_and_never_listed(
    setup: Setup,
) -> None:
    """The issue's attack: the rogue advertises the leader's own address."""
    s = setup
    leader = await _leader(s)
    target = s.cluster.nodes[leader]
    async with _rogue_serf(s.root, "rogue", target.rpc_addr, s.gossip_key) as rogue:
        assert await rogue.join([target.gossip_addr], timeout=10) >= 1
        await wait_until(
            lambda: bool(_refusals(s, leader, "rogue")),
            30,
            "the leader to audit its refusal of the rogue",
        )
        refusal = _refusals(s, leader, "rogue")[0]
        assert refusal["peer"] == target.rpc_addr
        assert refusal["method"] == "join"
        # the leader dialled that address: the node there is the leader, not "rogue"
        assert "is node" in refusal["reason"] and "not 'rogue'" in refusal["reason"]
        assert "refused member rogue" in s.cluster.log_text(leader)
        await _assert_unchanged(s, leader)
    # and nothing lingers after the rogue is gone
    await _assert_unchanged(s, leader)


async def test_a_rogue_with_the_key_and_a_certificate_that_names_another_node_is_refused(
    setup: Setup,
) -> None:
    """A certificate of the cluster's CA that may replicate, but does not name the node
    id its holder claims: the name check alone refuses it."""
    s = setup
    c = s.cluster
    leader = await _leader(s)
    ca_file = s.certs["root"].ca_file
    ca = CertPair(ca_file.read_bytes(), (ca_file.parent / "ca-key.pem").read_bytes())
    intruder = issue_cert(ca, "intruder", hosts=["127.0.0.1", "localhost"])
    cert, key = s.root / "intruder.pem", s.root / "intruder-key.pem"
    cert.write_bytes(intruder.cert_pem)
    key.write_bytes(intruder.key_pem)
    key.chmod(0o600)
    node = c.add_node("rogue-cert")
    c.nodes["rogue-cert"] = dataclasses.replace(
        node,
        extra=(
            "--server-tls-cert-file",
            str(cert),
            "--server-tls-key-file",
            str(key),
            "--peer-tls-cert-file",
            str(cert),
            "--peer-tls-key-file",
            str(key),
        ),
    )
    try:
        c.start("rogue-cert", join=[c.nodes[leader].gossip_addr])
        await wait_until(
            lambda: bool(_refusals(s, leader, "rogue-cert")),
            40,
            "the leader to audit its refusal of rogue-cert",
        )
        reason = _refusals(s, leader, "rogue-cert")[0]["reason"]
        assert "does not name node 'rogue-cert'" in reason, reason
        assert "'intruder'" in reason
        await _assert_unchanged(s, leader)
    finally:
        proc = c.nodes["rogue-cert"].proc
        if proc is not None and proc.poll() is None:
            c.signal("rogue-cert", signal.SIGKILL)
            c.wait_exit("rogue-cert", 10)
        del c.nodes["rogue-cert"]
    await _assert_unchanged(s, leader)


async def test_the_audit_log_records_denied_and_admin_calls_and_membership_without_payloads(
    setup: Setup,
) -> None:
    s = setup
    c = s.cluster
    leader = await _leader(s)
    assert c.client_tls is not None
    # a write (its value must never be audited), a denied call, an admin call
    async with c.channel(leader, c.client_tls) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        await stub.Produce(
            log_pb2.ProduceRequest(record=log_pb2.Record(value=SECRET_VALUE)), timeout=5
        )
    async with c.channel(leader, tls_of(s.certs["nobody"])) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.Produce(
                log_pb2.ProduceRequest(record=log_pb2.Record(value=SECRET_VALUE)), timeout=5
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await _raft_members(s, leader)  # admin Status as root

    def entries() -> list[dict[str, Any]]:
        return s.audit(leader)

    def has(**want: str) -> bool:
        return any(all(e.get(k) == v for k, v in want.items()) for e in entries())

    await wait_until(
        lambda: (
            has(event="call", subject="nobody", decision="denied", code="PERMISSION_DENIED")
            and has(event="call", subject="root", method="/raftlog.admin.v1.Admin/Status")
        ),
        10,
        "the denied and the admin call in the leader's audit log",
    )
    denied_entry = next(e for e in entries() if e.get("subject") == "nobody")
    assert denied_entry["method"] == "/log.v1.Log/Produce"
    # the mux passes the TCP client's address to the gRPC server: the real peer, not "unix:"
    assert denied_entry["peer"].startswith("127.0.0.1:"), denied_entry
    assert set(denied_entry) >= {"time", "event", "subject", "peer", "method", "decision"}
    # the founders joined through the bootstrapping node's membership check: audited there
    first = FOUNDERS[0]
    added = {
        e["subject"]
        for e in s.audit(first)
        if e["event"] == "membership" and e["decision"] == "added"
    }
    assert added >= {"n2", "n3"}
    promoted = {
        e["subject"]
        for e in s.audit(first)
        if e["event"] == "membership" and e["decision"] == "promoted"
    }
    assert promoted >= {"n2", "n3"}
    # an allowed data call is not audited; never a payload, never a key
    for name in FOUNDERS:
        text = s.audit_path(name).read_text() if s.audit_path(name).exists() else ""
        assert SECRET_VALUE.decode() not in text
        assert s.gossip_key not in text
        assert "PRIVATE KEY" not in text
        assert s.gossip_key not in c.log_text(name)
    assert not has(event="call", method="/log.v1.Log/Produce", subject="root")


UNAUTHENTICATED_GOSSIP = "gossip is neither encrypted nor authenticated"


async def test_a_node_without_a_gossip_key_starts_and_warns_once(setup: Setup) -> None:
    s = setup
    for name in FOUNDERS:  # they have the key: no warning
        assert UNAUTHENTICATED_GOSSIP not in s.cluster.log_text(name)
    solo = DevCluster(
        s.root / "keyless",
        dataclasses.replace(s.cluster.files, gossip_key=None),
        agent_args=AGENT_ARGS,
    )
    solo.client_tls = s.cluster.client_tls
    solo.add_node("solo")
    try:
        solo.start("solo", bootstrap=True, join=[])
        assert solo.client_tls is not None
        await solo.wait_for(solo.client_tls, members=1, timeout_s=30)
        await wait_until(
            lambda: "serf agent solo: gossip" in solo.log_text("solo"), 10, "solo's Serf agent"
        )
        assert solo.log_text("solo").count(UNAUTHENTICATED_GOSSIP) == 1
    finally:
        solo.stop_all()


async def test_raft_traffic_the_acl_refuses_is_audited(setup: Setup) -> None:
    """A client certificate of the cluster's CA (``root``: produce, consume, admin; no
    replicate) speaking Raft to a node: refused, and audited there."""
    s = setup
    node = s.cluster.nodes["n2"]
    ctx = client_ssl_context(tls_of(s.certs["root"]))
    reader, writer = await asyncio.open_connection("127.0.0.1", node.rpc_port)
    local = f"127.0.0.1:{writer.get_extra_info('sockname')[1]}"
    try:
        writer.write(RAFT_MARKER)
        await writer.drain()
        await asyncio.wait_for(writer.start_tls(ctx, server_hostname="127.0.0.1"), 5)
        writer.write(encode_frame(encode_hello(HELLO_MAGIC, "intruder")))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(4096), 10) == b""
    except (ConnectionError, ssl.SSLError):
        pass  # closed during or right after the handshake: refused as well
    finally:
        writer.close()

    def refused() -> list[dict[str, Any]]:
        return [e for e in s.audit("n2") if e["event"] == "raft" and e["subject"] == "root"]

    await wait_until(lambda: bool(refused()), 10, "n2 to audit the refused Raft connection")
    [entry] = refused()
    assert entry["decision"] == "denied" and entry["method"] == "connect"
    assert entry["peer"] == local
    assert "not authorized" in entry["reason"]


async def test_a_rogue_advertising_an_address_where_nothing_listens_is_refused(
    setup: Setup,
) -> None:
    s = setup
    leader = await _leader(s)
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    async with _rogue_serf(s.root, "rogue-nowhere", nowhere, s.gossip_key) as rogue:
        assert await rogue.join([s.cluster.nodes[leader].gossip_addr], timeout=10) >= 1
        await wait_until(
            lambda: bool(_refusals(s, leader, "rogue-nowhere")),
            30,
            "the leader to audit its refusal of rogue-nowhere",
        )
        reason = _refusals(s, leader, "rogue-nowhere")[0]["reason"]
        assert reason.startswith(f"peer handshake with {nowhere} failed"), reason
        await _assert_unchanged(s, leader)

"""A single node's TLS reload through :meth:`Agent.reload` (what SIGHUP runs): the gRPC
server and the HTTP listener present the new certificate, the expiry gauge follows, a
certificate close to expiry is warned about (issue 18, items 2 and 5)."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from raftlog.agent import Agent
from raftlog.agent.devcluster import free_port
from raftlog.auth import write_example_acl
from raftlog.config import AgentConfig
from raftlog.security import (
    CertFiles,
    CertPair,
    TLSConfig,
    client_ssl_context,
    generate_ca,
    issue_cert,
)
from support.cluster_files import agent_tls

DAY = 86400.0


def _write(root: Path, pair: CertPair, ca: CertPair) -> None:
    (root / "key.pem").write_bytes(pair.key_pem)
    (root / "cert.pem").write_bytes(pair.cert_pem)
    (root / "ca.pem").write_bytes(ca.cert_pem)


def _presented(port: int, client: TLSConfig, alpn: str) -> int:
    import socket

    ctx = client_ssl_context(client)
    ctx.set_alpn_protocols([alpn])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _expiry(metrics_addr: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("raftlog_tls_certificate_expiry_seconds{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('"')[1]] = float(value)
    return found


async def test_reload_rotates_grpc_and_http_and_the_expiry_gauge_follows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = generate_ca()
    hosts = ["127.0.0.1", "localhost"]
    _write(tmp_path, issue_cert(ca, "server", hosts=hosts), ca)
    client = issue_cert(ca, "root", server=False)
    (tmp_path / "root.pem").write_bytes(client.cert_pem)
    (tmp_path / "root-key.pem").write_bytes(client.key_pem)
    client_tls = TLSConfig(tmp_path / "root.pem", tmp_path / "root-key.pem", tmp_path / "ca.pem")
    acl = write_example_acl(tmp_path / "acl")
    config = AgentConfig(
        data_dir=tmp_path / "data",
        node_name="n1",
        rpc_port=0,
        http_port=free_port(),
        metrics_addr="127.0.0.1:0",
        acl_model_file=acl[0],
        acl_policy_file=acl[1],
        shutdown_timeout_s=5,
        server_tls_cert_file=tmp_path / "cert.pem",
        server_tls_key_file=tmp_path / "key.pem",
        server_tls_ca_file=tmp_path / "ca.pem",
        peer_tls_cert_file=tmp_path / "cert.pem",
        peer_tls_key_file=tmp_path / "key.pem",
        peer_tls_ca_file=tmp_path / "ca.pem",
    )
    agent = Agent(config)
    await agent.start()
    try:
        grpc_port = int(agent.rpc_addr.rpartition(":")[2])
        http_port = int(agent.http_addr.rpartition(":")[2])
        left = await asyncio.to_thread(_expiry, agent.metrics_addr)
        assert set(left) == {"server", "server_ca"}
        assert 364 * DAY < left["server"] <= 365 * DAY

        soon = issue_cert(ca, "server", hosts=hosts, valid_days=7)
        _write(tmp_path, soon, ca)
        with caplog.at_level(logging.WARNING, "raftlog.security"):
            assert agent.reload()["tls"] == ["server"]
        assert "expires in 7.0 days" in caplog.text
        serial = x509.load_pem_x509_certificate(soon.cert_pem).serial_number
        assert await asyncio.to_thread(_presented, grpc_port, client_tls, "h2") == serial
        assert await asyncio.to_thread(_presented, http_port, client_tls, "http/1.1") == serial
        left = await asyncio.to_thread(_expiry, agent.metrics_addr)
        assert 6.9 * DAY < left["server"] <= 7 * DAY

        (tmp_path / "cert.pem").write_bytes(b"garbage")  # refused: nothing changes
        assert agent.reload()["tls"] == []
        assert await asyncio.to_thread(_presented, grpc_port, client_tls, "h2") == serial
    finally:
        await agent.shutdown()


async def test_an_open_http_follow_stream_is_refused_after_the_acl_drops_its_subject(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    import json

    import aiohttp

    acl = write_example_acl(tmp_path / "acl")
    server, root = dev_certs["server"], dev_certs["root"]
    agent = Agent(
        AgentConfig(
            data_dir=tmp_path / "data",
            rpc_port=0,
            http_port=free_port(),
            acl_model_file=acl[0],
            acl_policy_file=acl[1],
            shutdown_timeout_s=5,
            **agent_tls(server),
        )
    )
    await agent.start()

    def session(files: CertFiles) -> aiohttp.ClientSession:
        ctx = client_ssl_context(TLSConfig(files.cert_file, files.key_file, files.ca_file))
        return aiohttp.ClientSession(
            f"https://{agent.http_addr}", connector=aiohttp.TCPConnector(ssl=ctx)
        )

    try:
        async with session(root) as s, session(server) as producer:
            record = {"records": [{"value": "a", "encoding": "utf8"}]}
            assert (await producer.post("/v1/records", json=record)).status == 200
            follow = await s.get("/v1/records?offset=0&follow=true&encoding=utf8")
            assert json.loads(await asyncio.wait_for(follow.content.readline(), 10))["offset"] == 0
            policy = acl[1].read_text()
            acl[1].write_text(policy.replace("p, root, *, consume\n", ""))
            assert agent.reload()["acl"]
            assert (await producer.post("/v1/records", json=record)).status == 200
            line = json.loads(await asyncio.wait_for(follow.content.readline(), 10))
            assert line["error"]["reason"] == "PERMISSION_DENIED", line
            assert (await s.get("/v1/records?offset=0")).status == 403
    finally:
        await agent.shutdown()

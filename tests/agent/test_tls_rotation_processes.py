"""Certificate rotation on a running 3-node cluster of real agents, under load (issue 18,
item 2): SIGHUP after new files; no request fails.

One cluster, in order:

1. The nodes start with certificates that expire about a minute later: each logs the
   14-day warning.
2. A broken file (a key that does not match) on one node: refused, logged, nothing changes.
3. New node certificates from the same CA: new handshakes (gRPC and Raft) get them.
4. A new CA: first trusted beside the old one (a bundle of both), then the node
   certificates come from it; a client whose certificate the new CA signed is served.
5. The first certificates expire: the cluster goes on, and new handshakes still succeed.

A client produces and reads all along; every request must succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import socket
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from raftlog.agent.devcluster import ClusterFiles, DevCluster
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.auth import write_example_acl
from raftlog.client import LogClient
from raftlog.security import CertPair, TLSConfig, client_ssl_context, generate_ca, issue_cert
from raftlog.security.peer_identity import DEV_NODES_WILDCARD
from support.client_nodes import FAST
from support.cluster import AGENT_ARGS, start_cluster
from support.wait import wait_until

NAMES = ("n1", "n2", "n3")
#: The node certificates name every node (the membership check refuses a member whose
#: certificate does not name it), as the development certificate does.
HOSTS = ("127.0.0.1", "localhost", DEV_NODES_WILDCARD)
#: Lifetime of the first node certificates (s): enough for the bring-up and the rotation
#: (about 3 s here alone; the test fails, saying so, if they expire before the rotation).
FIRST_LIFETIME_S = 25
RELOADED = "TLS reload (server): new material in use"


class TlsDir:
    """A certificate, key and CA bundle written as files (one node's, or the client's)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.tls = TLSConfig(root / "cert.pem", root / "key.pem", root / "ca.pem")

    def write(self, pair: CertPair | None, *cas: CertPair) -> None:
        if pair is not None:  # key first, then certificate, each replaced atomically
            _atomic(self.tls.key_file, pair.key_pem)
            _atomic(self.tls.cert_file, pair.cert_pem)
        if cas:
            _atomic(self.tls.ca_file, b"".join(ca.cert_pem for ca in cas))

    @property
    def flags(self) -> tuple[str, ...]:
        t = self.tls
        files = (str(t.cert_file), str(t.key_file), str(t.ca_file))
        return tuple(
            arg
            for role in ("server", "peer")
            for flag, path in zip(("cert", "key", "ca"), files, strict=True)
            for arg in (f"--{role}-tls-{flag}-file", path)
        )


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _node_cert(ca: CertPair, **kwargs: object) -> CertPair:
    return issue_cert(ca, "server", hosts=HOSTS, **kwargs)  # type: ignore[arg-type]


def _serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def _presented(addr: str, client: TLSConfig, *, raft: bool) -> x509.Certificate:
    """The certificate a node presents to a new connection on its one port: the gRPC
    server's (relayed TLS), or with ``raft`` the Raft transport's (the mux's handshake)."""
    host, _, port = addr.rpartition(":")
    ctx = client_ssl_context(client)
    if not raft:
        ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        if raft:
            raw.sendall(b"\x01")
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


class Load:
    """Produce and read back in a loop through one client; every failure is kept."""

    def __init__(self, client: LogClient) -> None:
        self.client = client
        self.done = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            value = b"record-%d" % n
            try:
                offset = await self.client.produce(value)
                record = await self.client.consume(offset)
                if record.value != value:
                    self.failures.append(f"offset {offset}: read {record.value!r}")
                self.done += 1
            except Exception as exc:
                self.failures.append(f"request {n}: {exc!r}")
            n += 1

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self._task, 30)


@pytest.mark.slow
async def test_rotation_of_certificates_and_ca_under_load(tmp_path: Path) -> None:
    ca1 = generate_ca("raftlog CA 1")
    started = dt.datetime.now(dt.UTC)
    # valid for one day, of which all but FIRST_LIFETIME_S seconds have passed
    first_expiry = started + dt.timedelta(seconds=FIRST_LIFETIME_S)
    short = dict(not_before=first_expiry - dt.timedelta(days=1), valid_days=1)
    nodes = {name: TlsDir(tmp_path / "tls" / name) for name in NAMES}
    for files in nodes.values():
        files.write(_node_cert(ca1, **short), ca1)
    client_files = TlsDir(tmp_path / "tls" / "client")
    client_files.write(issue_cert(ca1, "root", server=False), ca1)
    acl = write_example_acl(tmp_path / "acl")
    first = nodes["n1"].tls
    c = DevCluster(
        tmp_path,
        ClusterFiles(first.cert_file, first.key_file, first.ca_file, acl[0], acl[1]),
        agent_args=AGENT_ARGS,
    )
    c.client_tls = client_files.tls
    for name in NAMES:
        node = c.add_node(name)
        node.extra = nodes[name].flags
    client: LogClient | None = None
    load: Load | None = None
    try:
        await start_cluster(c)
        for name in NAMES:
            assert "TLS certificate server" in c.log_text(name), c.log_text(name)[-2000:]
            assert "expires in 0.0 days" in c.log_text(name)
        client = await LogClient(
            [c.nodes[n].rpc_addr for n in NAMES], tls=client_files.tls, config=FAST
        ).start()
        load = Load(client)
        await wait_until(lambda: load is not None and load.done >= 20, 30, "the first requests")

        async def sighup_all(count: int) -> None:
            for name in NAMES:
                c.signal(name, signal.SIGHUP)
            for name in NAMES:
                await wait_until(
                    lambda name=name: c.log_text(name).count(RELOADED) >= count,  # type: ignore[misc]
                    15,
                    f"{name} to reload its TLS material ({count})",
                )

        def presented(name: str, *, raft: bool = False, tls: TLSConfig | None = None) -> int:
            return _presented(
                c.nodes[name].rpc_addr, tls or client_files.tls, raft=raft
            ).serial_number

        # 2. a key that does not match the certificate: refused, nothing changes
        before = presented("n1")
        broken = nodes["n1"].tls.key_file.read_bytes()
        nodes["n1"].tls.key_file.write_bytes(_node_cert(ca1).key_pem)
        c.signal("n1", signal.SIGHUP)
        await wait_until(
            lambda: "refused the new material" in c.log_text("n1"), 15, "n1 to refuse the key"
        )
        assert "key does not match the certificate" in c.log_text("n1")
        assert presented("n1") == before
        assert await c.servers("n1", client_files.tls)  # still serving new connections
        nodes["n1"].tls.key_file.write_bytes(broken)

        # 3. new node certificates from the same CA, before the first ones expire
        fresh = {name: _node_cert(ca1) for name in NAMES}
        for name in NAMES:
            nodes[name].write(fresh[name])
        await sighup_all(1)
        assert dt.datetime.now(dt.UTC) < first_expiry, "too slow: rotated after the expiry"
        for name in NAMES:
            assert presented(name) == _serial(fresh[name].cert_pem)
            assert presented(name, raft=True) == _serial(fresh[name].cert_pem)

        # 4. a new CA: trusted beside the old one first, then it signs the node certificates
        ca2 = generate_ca("raftlog CA 2")
        for name in NAMES:
            nodes[name].write(None, ca1, ca2)
        await sighup_all(2)
        client_files.write(None, ca1, ca2)  # the client trusts both too (new channels)
        by_ca2 = {name: _node_cert(ca2) for name in NAMES}
        for name in NAMES:
            nodes[name].write(by_ca2[name])
        await sighup_all(3)
        new_client = TlsDir(tmp_path / "tls" / "client2")
        new_client.write(issue_cert(ca2, "root", server=False), ca2)
        for name in NAMES:
            assert presented(name, tls=new_client.tls) == _serial(by_ca2[name].cert_pem)
            assert presented(name, raft=True) == _serial(by_ca2[name].cert_pem)
            assert await c.servers(name, new_client.tls)

        # 5. the first certificates expire; the cluster and new handshakes carry on
        await wait_until(
            lambda: dt.datetime.now(dt.UTC) > first_expiry + dt.timedelta(seconds=1),
            FIRST_LIFETIME_S + 5,
            "the first certificates to expire",
            interval=0.5,
        )
        done = load.done
        await wait_until(lambda: load is not None and load.done >= done + 20, 30, "more requests")
        assert await c.wait_for(new_client.tls, members=3, timeout_s=20, every=True)
        await load.stop()
        assert load.failures == [], load.failures[:5]
        assert load.done >= 40

        # 6. new Raft connections after the first certificates expired: a follower restarts
        #    and the leader dials it with its reloaded client context (the certificate of
        #    its old context has expired: the follower would refuse it)
        leader = await c.wait_for(new_client.tls, members=3, timeout_s=20, every=True)
        follower = next(n for n in NAMES if n != leader)
        c.signal(follower, signal.SIGTERM)
        assert await asyncio.to_thread(c.wait_exit, follower, 20) == 0
        c.start(follower)
        await c.wait_for(new_client.tls, members=3, timeout_s=40, every=True)
        fresh = await LogClient([c.nodes[leader].rpc_addr], tls=new_client.tls, config=FAST).start()
        try:
            offset = await fresh.produce(b"after the restart")
        finally:
            await fresh.close()
        async with c.channel(follower, new_client.tls) as channel:
            stub = log_pb2_grpc.LogStub(channel)  # type: ignore[no-untyped-call]

            async def replicated() -> bool:
                try:
                    reply = await stub.Consume(log_pb2.ConsumeRequest(offset=offset), timeout=2)
                except grpc.aio.AioRpcError:
                    return False
                return bool(reply.record.value == b"after the restart")

            await wait_until(
                replicated, 30, "the restarted follower to get the record", interval=0.2
            )
        for name in NAMES:
            assert "Traceback" not in c.log_text(name)
    finally:
        if load is not None:
            with contextlib.suppress(Exception):
                await load.stop()
        if client is not None:
            await client.close()
        await asyncio.to_thread(c.stop_all)


@pytest.mark.slow
async def test_a_revoked_peer_is_cut_off_at_sighup(tmp_path: Path) -> None:
    """n3's certificate serial goes on the deny list of a running cluster: after SIGHUP
    its open Raft connections are closed, its redials refused, and the two others go on
    committing without it."""
    ca = generate_ca()
    nodes = {name: TlsDir(tmp_path / "tls" / name) for name in NAMES}
    certs = {name: _node_cert(ca) for name in NAMES}
    for name in NAMES:
        nodes[name].write(certs[name], ca)
    client_files = TlsDir(tmp_path / "tls" / "client")
    client_files.write(issue_cert(ca, "root", server=False), ca)
    deny = tmp_path / "deny.txt"
    deny.write_text("")
    acl = write_example_acl(tmp_path / "acl")
    first = nodes["n1"].tls
    c = DevCluster(
        tmp_path,
        ClusterFiles(first.cert_file, first.key_file, first.ca_file, acl[0], acl[1]),
        agent_args=(*AGENT_ARGS, "--deny-list-file", str(deny)),
    )
    c.client_tls = client_files.tls
    for name in NAMES:
        c.add_node(name).extra = nodes[name].flags
    try:
        await start_cluster(c)
        async with LogClient(
            [c.nodes[n].rpc_addr for n in ("n1", "n2")], tls=client_files.tls, config=FAST
        ) as client:
            await client.produce(b"before")
            revoked = _serial(certs["n3"].cert_pem)
            deny.write_text(f"serial:{revoked:X}  # n3's key leaked\n")
            for name in NAMES:
                c.signal(name, signal.SIGHUP)
            for name in NAMES:
                await wait_until(
                    lambda name=name: "deny list reloaded" in c.log_text(name),  # type: ignore[misc]
                    20,
                    f"{name} to reload its deny list",
                )
            # the leader (followers do not talk to each other) refuses n3 from then on
            refused = f"certificate serial {revoked:X} is on the deny list"
            await wait_until(
                lambda: any(refused in c.log_text(n) for n in ("n1", "n2")), 20, "n3 refused"
            )
            # the two others still make a quorum
            offsets = [await client.produce(b"after-%d" % i) for i in range(5)]
            async with c.channel("n3", client_files.tls) as channel:
                stub = log_pb2_grpc.LogStub(channel)  # type: ignore[no-untyped-call]
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stub.Consume(log_pb2.ConsumeRequest(offset=offsets[-1]), timeout=5)
            # n3 serves what it has: nothing after its revocation
            assert missing.value.code() == grpc.StatusCode.OUT_OF_RANGE, missing.value
    finally:
        await asyncio.to_thread(c.stop_all)

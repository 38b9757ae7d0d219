"""Reloadable TLS material and the deny list, over real TLS on 127.0.0.1 (issue 18)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from raftlog.security import CertPair, TLSConfig, client_ssl_context, generate_ca, issue_cert
from raftlog.security.certs import renew_leaf, write_dev_certs
from raftlog.security.denylist import DenyList, DenyListError, parse_deny_list
from raftlog.security.grpc_tls import grpc_channel_credentials, grpc_dynamic_server_credentials
from raftlog.security.reload import ReloadableTLS, TLSReloadError, load_tls


class Files:
    """One role's certificate, key and CA files in a directory, rewritten by tests."""

    def __init__(self, root: Path, name: str) -> None:
        self.tls = TLSConfig(
            root / f"{name}.pem", root / f"{name}-key.pem", root / f"{name}-ca.pem"
        )

    def write(self, pair: CertPair, *cas: CertPair) -> None:
        self.tls.key_file.write_bytes(pair.key_pem)
        self.tls.cert_file.write_bytes(pair.cert_pem)
        self.tls.ca_file.write_bytes(b"".join(ca.cert_pem for ca in cas))


def serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


@pytest.fixture
def ca() -> CertPair:
    return generate_ca()


def leaf(ca: CertPair, name: str = "server", **kwargs: object) -> CertPair:
    return issue_cert(ca, name, hosts=["127.0.0.1", "localhost"], **kwargs)  # type: ignore[arg-type]


# -- refusing bad material ------------------------------------------------------------------


def test_bad_material_is_refused_with_its_reason(tmp_path: Path, ca: CertPair) -> None:
    files = Files(tmp_path, "s")
    good, other = leaf(ca), leaf(ca)
    files.write(good, ca)
    assert load_tls(files.tls).cert_pem == good.cert_pem

    files.write(CertPair(good.cert_pem, other.key_pem), ca)  # key of another certificate
    with pytest.raises(TLSReloadError, match="key does not match the certificate"):
        load_tls(files.tls)

    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    files.write(leaf(ca, not_before=long_ago, valid_days=1), ca)
    with pytest.raises(TLSReloadError, match="certificate expired at"):
        load_tls(files.tls)

    files.write(leaf(generate_ca()), ca)  # signed by a CA that is not in the bundle
    with pytest.raises(TLSReloadError, match="is not in the CA bundle"):
        load_tls(files.tls)

    files.write(good, ca)
    files.tls.key_file.unlink()
    with pytest.raises(TLSReloadError, match="cannot read"):
        load_tls(files.tls)

    files.write(good, ca)
    files.tls.cert_file.write_bytes(b"not a certificate")
    with pytest.raises(TLSReloadError, match="not a PEM certificate"):
        load_tls(files.tls)


def test_a_refused_reload_keeps_the_loaded_material(
    tmp_path: Path, ca: CertPair, caplog: pytest.LogCaptureFixture
) -> None:
    files = Files(tmp_path, "s")
    good = leaf(ca)
    files.write(good, ca)
    material = ReloadableTLS(files.tls, "server")
    files.write(CertPair(leaf(ca).cert_pem, good.key_pem), ca)
    with caplog.at_level(logging.ERROR, "raftlog.security"):
        assert material.reload() is False
    assert "TLS reload (server): refused the new material" in caplog.text
    assert "key does not match" in caplog.text
    assert material.generation == 0 and material.current.cert_pem == good.cert_pem
    files.write(good, ca)  # unchanged files: nothing to do
    assert material.reload() is False and material.generation == 0


# -- new handshakes use new material, open connections stay ---------------------------------


async def _serve(material: ReloadableTLS) -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=material.server_context)
    return server, server.sockets[0].getsockname()[1]


async def _dial(port: int, client: TLSConfig) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ssl_context(client), server_hostname="127.0.0.1"
        ),
        5,
    )


async def _presented_serial(port: int, client: TLSConfig) -> int | None:
    """The serial of the certificate the server presents; None if the handshake fails."""
    try:
        reader, writer = await _dial(port, client)
        writer.write(b"ping\n")
        await writer.drain()
        # TLS 1.3: a refused client certificate shows up as an alert or EOF on first read
        if await asyncio.wait_for(reader.readline(), 5) != b"ping\n":
            writer.close()
            return None
    except (ssl.SSLError, ConnectionError):
        return None
    ssl_obj = writer.get_extra_info("ssl_object")
    der = ssl_obj.getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der).serial_number


async def test_certificate_and_ca_rotation_on_a_listening_ssl_server(
    tmp_path: Path, ca: CertPair
) -> None:
    server_files, old_client, new_client = (
        Files(tmp_path, "s"),
        Files(tmp_path, "c1"),
        Files(tmp_path, "c2"),
    )
    first = leaf(ca)
    server_files.write(first, ca)
    old_client.write(leaf(ca, "root"), ca)
    material = ReloadableTLS(server_files.tls, "server")
    server, port = await _serve(material)
    try:
        assert await _presented_serial(port, old_client.tls) == serial_of(first.cert_pem)
        reader, open_conn = await _dial(port, old_client.tls)  # stays open across reloads

        # 1. a new certificate from the same CA
        second = leaf(ca)
        server_files.write(second, ca)
        assert material.reload() is True
        assert await _presented_serial(port, old_client.tls) == serial_of(second.cert_pem)

        # 2. a new CA, trusted beside the old one (bundle), then a certificate it signed
        new_ca = generate_ca("raftlog CA 2")
        new_client.write(leaf(new_ca, "root"), new_ca, ca)
        assert await _presented_serial(port, new_client.tls) is None  # CA 2 unknown yet
        third = leaf(new_ca)
        server_files.write(third, ca, new_ca)
        assert material.reload() is True
        assert await _presented_serial(port, new_client.tls) == serial_of(third.cert_pem)
        old_client.write(leaf(ca, "root"), ca, new_ca)
        assert await _presented_serial(port, old_client.tls) == serial_of(third.cert_pem)

        # 3. the old CA dropped: its clients are refused from the next handshake on
        server_files.write(third, new_ca)
        assert material.reload() is True
        assert await _presented_serial(port, old_client.tls) is None

        # the connection opened before every reload still works
        open_conn.write(b"still here\n")
        await open_conn.drain()
        assert await asyncio.wait_for(reader.readline(), 5) == b"still here\n"
        open_conn.close()
    finally:
        server.close()
        await server.wait_closed()


# -- gRPC: dynamic server credentials -------------------------------------------------------


async def test_grpc_server_follows_reloads_and_ignores_a_broken_file(
    tmp_path: Path, ca: CertPair
) -> None:
    server_files, client = Files(tmp_path, "s"), Files(tmp_path, "c")
    first = leaf(ca)
    server_files.write(first, ca)
    client.write(leaf(ca, "root"), ca)
    material = ReloadableTLS(server_files.tls, "server")
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port(
        "127.0.0.1:0", grpc_dynamic_server_credentials(material.grpc_material)
    )
    await server.start()

    async def check() -> None:
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", grpc_channel_credentials(client.tls)
        ) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    async def presented() -> int | None:
        # gRPC and plain TLS share the port: a TLS handshake shows the certificate
        return await asyncio.to_thread(_tls_probe, port, client.tls)

    try:
        await check()
        assert await presented() == serial_of(first.cert_pem)
        second = leaf(ca)
        server_files.write(second, ca)
        assert material.reload()
        await check()
        assert await presented() == serial_of(second.cert_pem)
        # a broken key: refused, the server keeps serving with the second certificate
        server_files.tls.key_file.write_bytes(leaf(ca).key_pem)
        assert not material.reload()
        await check()
        assert await presented() == serial_of(second.cert_pem)
    finally:
        await server.stop(None)


def _tls_probe(port: int, client: TLSConfig) -> int | None:
    import socket

    ctx = client_ssl_context(client)
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number if der else None


# -- expiry ---------------------------------------------------------------------------------


def test_expiry_seconds_and_the_14_day_warning(
    tmp_path: Path, ca: CertPair, caplog: pytest.LogCaptureFixture
) -> None:
    files = Files(tmp_path, "s")
    files.write(leaf(ca, valid_days=10), ca)
    with caplog.at_level(logging.WARNING, "raftlog.security"):
        material = ReloadableTLS(files.tls, "server")
    assert "TLS certificate server" in caplog.text and "expires in 10.0 days" in caplog.text
    left = material.expiry_seconds()
    assert 9.9 * 86400 < left["server"] < 10 * 86400
    assert 364 * 86400 < left["server_ca"] < 365 * 86400
    caplog.clear()
    files.write(leaf(ca, valid_days=30), ca)
    with caplog.at_level(logging.WARNING, "raftlog.security"):
        assert material.reload()
    assert "expires in" not in caplog.text
    assert material.warn_expiry() == []


def test_renew_leaf_keeps_subject_hosts_and_usages(tmp_path: Path) -> None:
    files = write_dev_certs(tmp_path, clients=("root",), valid_days=3)
    before = x509.load_pem_x509_certificate(files["server"].cert_file.read_bytes())
    renewed = renew_leaf(tmp_path, "server", valid_days=90)
    after = x509.load_pem_x509_certificate(renewed.cert_file.read_bytes())
    assert after.subject == before.subject and after.serial_number != before.serial_number
    san = x509.SubjectAlternativeName
    assert after.extensions.get_extension_for_class(san).value == (
        before.extensions.get_extension_for_class(san).value
    )
    assert after.not_valid_after_utc - after.not_valid_before_utc == dt.timedelta(days=90)
    load_tls(TLSConfig(renewed.cert_file, renewed.key_file, renewed.ca_file))  # a valid pair
    client = renew_leaf(tmp_path, "root")
    cert = x509.load_pem_x509_certificate(client.cert_file.read_bytes())
    assert cert.subject.rfc4514_string() == "CN=root,O=raftlog"


# -- the deny list --------------------------------------------------------------------------


def test_deny_list_format_and_reload(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    entries = parse_deny_list("# revoked\nserial: 0A:1b  # laptop\nsubject:alice\n\n")
    assert entries.serials == {0x0A1B} and entries.subjects == {"alice"}
    with pytest.raises(DenyListError, match=r"deny:2: expected"):
        parse_deny_list("subject:bob\nbob\n", "deny")
    with pytest.raises(DenyListError, match="not a hex serial"):
        parse_deny_list("serial:xyz")

    path = tmp_path / "deny.txt"
    path.write_text("subject:alice\n")
    deny = DenyList(path)
    assert deny.refuses("alice", None) == "certificate subject 'alice' is on the deny list"
    assert deny.refuses("bob", "0a1b") is None
    assert deny.refuses_peercert({"subject": ((("commonName", "alice"),),), "serialNumber": "A1B"})
    assert not deny.refuses_peercert(
        {"subject": ((("commonName", "bob"),),), "serialNumber": "A1B"}
    )
    path.write_text("subject:alice\nserial:0A1B\n")
    assert deny.reload() and deny.generation == 1
    assert deny.refuses("bob", "0A1B") == "certificate serial A1B is on the deny list"
    path.write_text("what is this\n")
    with caplog.at_level(logging.ERROR, "raftlog.security"):
        assert not deny.reload()
    assert "deny list reload refused" in caplog.text
    assert deny.refuses("bob", 0x0A1B) is not None and deny.generation == 1
    assert DenyList().refuses("alice", 1) is None

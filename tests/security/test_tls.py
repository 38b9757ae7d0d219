"""Mutual TLS with generated certificates over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import pytest

from raftlog.security import (
    TLSConfig,
    TLSConfigError,
    client_ssl_context,
    generate_ca,
    issue_cert,
    peer_common_name,
    server_ssl_context,
    write_dev_certs,
)


def _files(tmp: Path, name: str, pair_cert: bytes, pair_key: bytes, ca: bytes) -> TLSConfig:
    (tmp / f"{name}.pem").write_bytes(pair_cert)
    (tmp / f"{name}-key.pem").write_bytes(pair_key)
    (tmp / f"{name}-ca.pem").write_bytes(ca)
    return TLSConfig(tmp / f"{name}.pem", tmp / f"{name}-key.pem", tmp / f"{name}-ca.pem")


async def _handshake(server: TLSConfig, client: TLSConfig) -> str | None:
    """One TLS connection; the client CN the server saw, or None when the server refused.

    With TLS 1.3 the client finishes its handshake before the server has checked the client
    certificate, so refusal shows up as an alert or EOF on the client's first read.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((peer_common_name(writer.get_extra_info("peercert")) or "?").encode() + b"\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ssl_context(server))
    port = srv.sockets[0].getsockname()[1]
    try:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_ssl_context(client), server_hostname="127.0.0.1"
                ),
                5,
            )
            line = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
        except (ssl.SSLError, ConnectionError):
            return None
        return line.decode().strip() or None
    finally:
        srv.close()
        await srv.wait_closed()


async def test_dev_certs_give_mutual_tls_with_subject(tmp_path: Path) -> None:
    files = write_dev_certs(tmp_path)
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    server = TLSConfig(files["server"].cert_file, files["server"].key_file, files["server"].ca_file)
    root = TLSConfig(files["root"].cert_file, files["root"].key_file, files["root"].ca_file)
    assert await _handshake(server, root) == "root"


async def test_client_of_another_ca_is_refused(tmp_path: Path) -> None:
    ca, other = generate_ca(), generate_ca("other CA")
    srv = issue_cert(ca, "server", hosts=["127.0.0.1"])
    intruder = issue_cert(other, "root", server=False)
    server = _files(tmp_path, "server", srv.cert_pem, srv.key_pem, ca.cert_pem)
    client = _files(tmp_path, "client", intruder.cert_pem, intruder.key_pem, ca.cert_pem)
    assert await _handshake(server, client) is None


async def test_expired_client_certificate_is_refused(tmp_path: Path) -> None:
    ca = generate_ca()
    srv = issue_cert(ca, "server", hosts=["127.0.0.1"])
    old = issue_cert(
        ca, "root", server=False, valid_days=1, not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    )
    server = _files(tmp_path, "server", srv.cert_pem, srv.key_pem, ca.cert_pem)
    client = _files(tmp_path, "client", old.cert_pem, old.key_pem, ca.cert_pem)
    assert await _handshake(server, client) is None


def test_validate_names_the_missing_file(tmp_path: Path) -> None:
    cfg = TLSConfig(tmp_path / "a.pem", tmp_path / "b.pem", tmp_path / "c.pem")
    with pytest.raises(TLSConfigError, match=r"peer_tls\.cert_file: no such file"):
        cfg.validate("peer_tls")

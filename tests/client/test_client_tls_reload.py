"""The client library takes part in certificate rotation: before it opens a channel it
re-reads its TLS files if they changed; files it cannot use are refused (issue 18)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from raftlog.client import LogClient
from raftlog.security import CertFiles, CertPair, TLSConfig, issue_cert
from support.api_node import running_node
from support.client_nodes import FAST


async def test_client_picks_up_renewed_files_and_refuses_broken_ones(
    tmp_path: Path, dev_certs: dict[str, CertFiles], caplog: pytest.LogCaptureFixture
) -> None:
    ca_files = dev_certs["server"]
    ca = CertPair(
        Path(ca_files.ca_file).read_bytes(),
        (Path(ca_files.ca_file).parent / "ca-key.pem").read_bytes(),
    )
    mine = tmp_path / "client"
    mine.mkdir()
    tls = TLSConfig(mine / "cert.pem", mine / "key.pem", Path(ca_files.ca_file))

    def write(pair: CertPair) -> None:
        (mine / "key.pem").write_bytes(pair.key_pem)
        (mine / "cert.pem").write_bytes(pair.cert_pem)

    first = issue_cert(ca, "root", server=False)
    write(first)
    async with running_node(tmp_path, dev_certs) as node:
        client = await LogClient([node.addr], tls=tls, config=FAST).start()
        try:
            assert await client.produce(b"a") == 0
            assert client.reload_tls() is False  # nothing changed
            write(issue_cert(ca, "root", server=False, valid_days=30))
            assert client.reload_tls() is True
            assert await client.produce(b"b") == 1
            (mine / "key.pem").write_bytes(issue_cert(ca, "root").key_pem)  # mismatched
            with caplog.at_level(logging.WARNING, "raftlog.client"):
                assert client.reload_tls() is False
            assert "refused, keeping the old" in caplog.text
            assert await client.produce(b"c") == 2
        finally:
            await client.close()

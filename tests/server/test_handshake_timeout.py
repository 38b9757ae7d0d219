"""A client that never finishes its TLS handshake is disconnected after the configured time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from raftlog.security import CertFiles
from raftlog.server import ServerConfig
from raftlog.server.config import ServerConfigError
from support.api_node import running_node


async def test_stalled_handshake_is_dropped(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    async with running_node(
        tmp_path, dev_certs, config=ServerConfig(handshake_timeout_s=0.5)
    ) as node:
        host, port = node.addr.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        started = time.monotonic()
        writer.write(b"\x16\x03\x01")  # the first bytes of a TLS record, then silence
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)  # EOF once the server gives up
        waited = time.monotonic() - started
        writer.close()
        assert data == b""
        assert waited < 5, f"stalled handshake held for {waited:.1f} s"


def test_handshake_timeout_must_be_positive() -> None:
    with pytest.raises(ServerConfigError, match="handshake_timeout_s"):
        ServerConfig(handshake_timeout_s=0).validate()

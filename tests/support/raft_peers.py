"""Raft peers over real TCP+TLS on 127.0.0.1 for in-process tests: the peer TLS of the
session's dev certificates, a listening transport, and routers on transports (one per
node, for tests of many Raft groups per node)."""

from __future__ import annotations

from collections.abc import Iterable

from raftlog.raft.groups import GroupRouter
from raftlog.raft.transport_tcp import TcpTransport, TcpTransportConfig
from raftlog.security import CertFiles, TLSConfig


def peer_tls(dev_certs: dict[str, CertFiles]) -> TLSConfig:
    """The peer TLS every test node uses: the dev ``server`` certificate (CN "server")."""
    s = dev_certs["server"]
    return TLSConfig(s.cert_file, s.key_file, s.ca_file)


async def serving_transport(node_id: str, tls: TLSConfig) -> tuple[TcpTransport, str]:
    """A TCP transport listening on a free port of 127.0.0.1 that accepts peers whose
    certificate is the dev server's; it and its HOST:PORT."""
    t = TcpTransport(
        TcpTransportConfig(node_id=node_id, tls=tls, close_timeout=1.0),
        authorize=lambda cn: cn == "server",
    )
    return t, await t.serve("127.0.0.1", 0)


async def router(node_id: str, tls: TLSConfig) -> tuple[GroupRouter, str]:
    """A GroupRouter on a serving transport, and its address."""
    t, address = await serving_transport(node_id, tls)
    return GroupRouter(t), address


async def routers(
    ids: Iterable[str], tls: TLSConfig
) -> tuple[dict[str, GroupRouter], dict[str, str]]:
    """A GroupRouter on a serving transport per node id, and every node's address."""
    out: dict[str, GroupRouter] = {}
    addresses: dict[str, str] = {}
    for i in ids:
        out[i], addresses[i] = await router(i, tls)
    return out, addresses

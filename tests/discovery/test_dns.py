"""The DNS resolver of --join-dns against a real DNS server on 127.0.0.1 (dnslib)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from raftlog.discovery.dns import DNSError, JoinName, parse_join_dns, resolve
from support.dns_server import dns_server


async def test_a_and_aaaa_records_sorted_and_changes_seen() -> None:
    with dns_server() as (zone, addr):
        host, port = addr.split(":")
        server = (host, int(port))
        assert await resolve("raftlog.ns.svc.cluster.local", server, 2.0) == []
        zone.set("raftlog.ns.svc.cluster.local", "127.0.0.3", "::1", "127.0.0.2")
        got = await resolve("raftlog.ns.svc.cluster.local.", server, 2.0)
        assert got == ["127.0.0.2", "127.0.0.3", "::1"]
        zone.add("raftlog.ns.svc.cluster.local", "127.0.0.4")
        assert "127.0.0.4" in await resolve("raftlog.ns.svc.cluster.local", server, 2.0)
        assert ("raftlog.ns.svc.cluster.local", "AAAA") in zone.queries


async def test_a_silent_server_times_out() -> None:
    # a UDP socket that never answers: the query's own timeout bounds the wait
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(DNSError, match="no answer"):
            await resolve("x.example", silent.getsockname(), 0.3)
        assert loop.time() - start < 2.0
    finally:
        silent.close()


async def test_system_resolver() -> None:
    assert "127.0.0.1" in await resolve("localhost", None, 5.0)


def test_parse_join_dns() -> None:
    assert parse_join_dns("svc.ns.svc.cluster.local", 8401) == JoinName(
        "svc.ns.svc.cluster.local", 8401
    )
    assert parse_join_dns("svc:7946", 8401) == JoinName("svc", 7946)
    for bad in ("", ":1", "svc:0", "a b:1", "svc:x"):
        with pytest.raises(ValueError):
            parse_join_dns(bad, 8401)

"""DNS join: the A/AAAA records of a name (a Kubernetes headless service) as join addresses.

:func:`resolve` asks either the system resolver (``loop.getaddrinfo``, in its thread pool)
or one DNS server given as HOST:PORT (queries built and parsed with dnslib, sent over UDP
with asyncio, each bounded by a timeout; no retries beyond the caller's loop). The join loop
itself lives in the agent (:mod:`raftlog.agent.dns_join`): resolve, join what answers,
re-resolve until joined or its bounded wait runs out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, DNSRecord


class DNSError(OSError):
    """A name could not be resolved (no answer in time, a server error)."""


@dataclass(frozen=True)
class JoinName:
    """``NAME[:PORT]`` of ``--join-dns``: the name to resolve and the gossip port to join."""

    name: str
    port: int


def parse_join_dns(value: str, default_port: int) -> JoinName:
    """``NAME[:PORT]`` -> :class:`JoinName` (PORT defaults to ``default_port``)."""
    name, sep, port = value.rpartition(":")
    if not sep:
        name, port = value, ""
    name = name.strip().rstrip(".")
    if not name or any(c.isspace() for c in name) or ":" in name:
        raise ValueError(f"expected NAME[:PORT], got {value!r}")
    if port and (not port.isdigit() or not 0 < int(port) <= 65535):
        raise ValueError(f"expected NAME[:PORT] with a port 1-65535, got {value!r}")
    return JoinName(name, int(port) if port else default_port)


class _OneAnswer(asyncio.DatagramProtocol):
    def __init__(self, query_id: int) -> None:
        self.query_id = query_id
        self.answer: asyncio.Future[DNSRecord] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            reply = DNSRecord.parse(data)
        except Exception:  # a stray or garbled datagram: keep waiting for ours
            return
        if reply.header.id == self.query_id and not self.answer.done():
            self.answer.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(DNSError(f"DNS query failed: {exc}"))


async def _query(name: str, qtype: str, server: tuple[str, int], timeout_s: float) -> list[str]:
    query = DNSRecord.question(name, qtype)
    query.header.id = random.randrange(1 << 16)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _OneAnswer(query.header.id), remote_addr=server
    )
    try:
        transport.sendto(query.pack())
        try:
            reply = await asyncio.wait_for(protocol.answer, timeout_s)
        except TimeoutError:
            raise DNSError(
                f"no answer from DNS server {server[0]}:{server[1]} for {name} {qtype} "
                f"within {timeout_s} s"
            ) from None
    finally:
        transport.close()
    rcode = reply.header.rcode
    if rcode == RCODE.NXDOMAIN:
        return []
    if rcode != RCODE.NOERROR:
        raise DNSError(f"DNS server {server[0]}:{server[1]}: {RCODE[rcode]} for {name} {qtype}")
    wanted = getattr(QTYPE, qtype)
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == wanted]


async def resolve(name: str, server: tuple[str, int] | None, timeout_s: float) -> list[str]:
    """The IPv4 and IPv6 addresses of ``name``, sorted, deduplicated ([] for no records).

    ``server``: the DNS server to ask (HOST, PORT); None = the system resolver. Raises
    :class:`DNSError` when no answer comes within ``timeout_s`` seconds.
    """
    found: set[str] = set()
    if server is None:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), timeout_s
            )
        except TimeoutError:
            raise DNSError(
                f"the system resolver did not answer for {name} in {timeout_s} s"
            ) from None
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
                return []
            raise DNSError(f"cannot resolve {name}: {exc}") from exc
        found = {str(info[4][0]) for info in infos}
    else:
        results = await asyncio.gather(
            _query(name, "A", server, timeout_s), _query(name, "AAAA", server, timeout_s)
        )
        found = {addr for result in results for addr in result}
    return sorted(found, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))


def host_port(host: str, port: int) -> str:
    """HOST:PORT, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

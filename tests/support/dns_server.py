"""A real DNS server on 127.0.0.1 for tests (dnslib's, UDP, in a thread): A/AAAA records
the test sets and changes while nodes resolve them."""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections.abc import Iterator
from typing import Any

from dnslib import AAAA, QTYPE, RR, A, DNSLabel
from dnslib.server import DNSLogger, DNSServer

from raftlog.agent.devcluster import free_port


class Zone:
    """name -> addresses; answers A and AAAA from it (NXDOMAIN for unknown names)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, list[str]] = {}
        self.queries: list[tuple[str, str]] = []

    def set(self, name: str, *addresses: str) -> None:
        with self._lock:
            self._records[name.rstrip(".").lower()] = list(addresses)

    def add(self, name: str, address: str) -> None:
        with self._lock:
            self._records.setdefault(name.rstrip(".").lower(), []).append(address)

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname: DNSLabel = request.q.qname
        qtype = QTYPE[request.q.qtype]
        name = str(qname).rstrip(".").lower()
        with self._lock:
            self.queries.append((name, qtype))
            addresses = self._records.get(name)
        if addresses is None:
            reply.header.rcode = 3  # NXDOMAIN
            return reply
        for address in addresses:
            version = ipaddress.ip_address(address).version
            if qtype == "A" and version == 4:
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(address), ttl=1))
            elif qtype == "AAAA" and version == 6:
                reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA(address), ttl=1))
        return reply


@contextlib.contextmanager
def dns_server() -> Iterator[tuple[Zone, str]]:
    """A running server: (its zone, its HOST:PORT on 127.0.0.1); stopped on exit."""
    zone = Zone()
    port = free_port()
    server = DNSServer(
        zone,
        address="127.0.0.1",
        port=port,
        logger=DNSLogger("-request,-reply,-truncated,-data,-recv,-send"),
    )
    server.start_thread()
    try:
        yield zone, f"127.0.0.1:{port}"
    finally:
        server.stop()
        server.server.server_close()

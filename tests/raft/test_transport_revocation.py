"""Revocation on the Raft transport over real TLS on 127.0.0.1 (issue 18, item 4): a peer
whose certificate serial is on the deny list is refused at the handshake, on both sides,
and an open connection to it is closed once the reloaded list names it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography import x509

from raftlog.raft.transport_tcp import TcpTransport, TcpTransportConfig
from raftlog.security import CertPair, TLSConfig, generate_ca, issue_cert
from raftlog.security.denylist import DenyList
from support.wait import wait_until


class Inbox:
    def __init__(self) -> None:
        self.items: list[bytes] = []

    def __call__(self, payload: bytes) -> None:
        self.items.append(payload)

    async def wait_for(self, pred: Callable[[list[bytes]], bool]) -> None:
        await wait_until(lambda: pred(self.items), 10, "the payloads")


class Nodes:
    """Creates transports and closes every one of them at the end of a test."""

    def __init__(self) -> None:
        self.made: list[TcpTransport] = []

    async def make(self, node_id: str, tls: TLSConfig) -> tuple[TcpTransport, Inbox]:
        config = TcpTransportConfig(
            node_id=node_id,
            tls=tls,
            connect_timeout=2.0,
            handshake_timeout=1.0,
            close_timeout=2.0,
            backoff_initial=0.02,
            backoff_max=0.1,
        )
        t = TcpTransport(config, authorize=lambda subject: subject == "server")
        self.made.append(t)
        inbox = Inbox()
        t.set_handler(inbox)
        await t.serve("127.0.0.1", 0)
        await t.start()
        return t, inbox


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    n = Nodes()
    try:
        yield n
    finally:
        for t in n.made:
            await t.close()


def _peer(root: Path, ca: CertPair, name: str) -> tuple[TLSConfig, int]:
    pair = issue_cert(ca, "server", hosts=["127.0.0.1", "localhost"])
    (root / f"{name}.pem").write_bytes(pair.cert_pem)
    (root / f"{name}-key.pem").write_bytes(pair.key_pem)
    (root / "ca.pem").write_bytes(ca.cert_pem)
    serial = x509.load_pem_x509_certificate(pair.cert_pem).serial_number
    return TLSConfig(root / f"{name}.pem", root / f"{name}-key.pem", root / "ca.pem"), serial


def _with_deny_list(t: TcpTransport, deny: DenyList) -> TcpTransport:
    t.check_certificate = deny.refuses_peercert
    return t


async def test_a_revoked_peer_is_refused_at_the_handshake_on_both_sides(
    tmp_path: Path, nodes: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="raftlog.raft.transport")
    ca = generate_ca()
    good_tls, _ = _peer(tmp_path, ca, "good")
    revoked_tls, revoked_serial = _peer(tmp_path, ca, "revoked")
    deny_file = tmp_path / "deny.txt"
    deny_file.write_text(f"serial:{revoked_serial:x}\n")
    deny = DenyList(deny_file)

    # the revoked peer dials: the listener refuses it
    good, inbox = await nodes.make("good", good_tls)
    _with_deny_list(good, deny)
    revoked, revoked_inbox = await nodes.make("revoked", revoked_tls)
    assert good.listen_address is not None and revoked.listen_address is not None
    revoked.update_peers({"good": good.listen_address})
    revoked.send("good", b"append this")
    await wait_until(lambda: good.stats().refused >= 1, 10, "the listener to refuse")
    assert inbox.items == []
    # the good node dials the revoked one: its own dialer refuses the server certificate
    good.update_peers({"revoked": revoked.listen_address})
    good.send("revoked", b"vote for me")
    await wait_until(lambda: good.stats().connect_failures >= 1, 10, "the dialer to refuse")
    assert revoked_inbox.items == []
    assert any("is on the deny list" in r.getMessage() for r in caplog.records)


async def test_an_open_connection_of_a_peer_revoked_later_is_closed(
    tmp_path: Path, nodes: Nodes
) -> None:
    ca = generate_ca()
    a_tls, _ = _peer(tmp_path, ca, "a")
    b_tls, b_serial = _peer(tmp_path, ca, "b")
    deny_file = tmp_path / "deny.txt"
    deny_file.write_text("")
    deny = DenyList(deny_file)
    a, a_inbox = await nodes.make("a", a_tls)
    b, _ = await nodes.make("b", b_tls)
    _with_deny_list(a, deny)
    assert a.listen_address is not None
    b.update_peers({"a": a.listen_address})
    b.send("a", b"one")
    await a_inbox.wait_for(lambda items: items == [b"one"])

    deny_file.write_text(f"subject:nobody\nserial:{b_serial:X}\n")
    assert deny.reload()
    assert a.recheck() == 1

    def redial_refused() -> bool:
        b.send("a", b"two")  # as Raft would keep sending: b redials, refused now
        return a.stats().refused >= 1

    await wait_until(redial_refused, 10, "the redial to be refused", interval=0.1)
    assert a_inbox.items == [b"one"]

"""Which certificates name which node (the leader's membership check, docs/security.md)."""

from __future__ import annotations

import ssl
from pathlib import Path

from raftlog.security import generate_ca, issue_cert
from raftlog.security.certs import decoded_names
from raftlog.security.peer_identity import DEV_NODES_WILDCARD, names_node


def _decoded(tmp_path: Path, common_name: str, hosts: list[str]) -> dict[str, object]:
    """A real certificate, decoded the way ``getpeercert()`` returns it."""
    pem = tmp_path / f"{common_name}.pem"
    pem.write_bytes(issue_cert(generate_ca(), common_name, hosts=hosts).cert_pem)
    return ssl._ssl._test_decode_cert(str(pem))  # type: ignore[attr-defined,no-any-return]


def test_a_certificate_names_a_node_by_common_name_or_dns_name(tmp_path: Path) -> None:
    by_cn = _decoded(tmp_path, "node-1", ["127.0.0.1"])
    assert names_node(by_cn, "node-1")
    assert not names_node(by_cn, "node-2")
    assert not names_node(by_cn, "127.0.0.1")  # an IP address names no node
    by_fqdn = _decoded(tmp_path, "server", ["raftlog-0.raftlog.svc.cluster.local"])
    assert names_node(by_fqdn, "raftlog-0")
    assert names_node(by_fqdn, "raftlog-0.raftlog.svc.cluster.local")
    assert not names_node(by_fqdn, "raftlog-1")
    assert not names_node(by_fqdn, "server-x")


def test_a_wildcard_names_every_node_without_a_dot_and_nothing_else(tmp_path: Path) -> None:
    shared = _decoded(tmp_path, "server", ["localhost", DEV_NODES_WILDCARD])
    assert names_node(shared, "n1") and names_node(shared, "rogue")
    assert not names_node(shared, "a.b")
    plain = _decoded(tmp_path, "intruder", ["localhost", "127.0.0.1"])
    assert not names_node(plain, "rogue")
    assert not names_node(None, "n1")
    assert not names_node({}, "n1")


def test_decoded_names_match_what_a_handshake_sees(tmp_path: Path) -> None:
    pair = issue_cert(generate_ca(), "server", hosts=["127.0.0.1", DEV_NODES_WILDCARD])
    pem = tmp_path / "c.pem"
    pem.write_bytes(pair.cert_pem)
    seen = ssl._ssl._test_decode_cert(str(pem))  # type: ignore[attr-defined]
    decoded = decoded_names(pair.cert_pem)
    for node in ("n1", "node-0", "a.b"):
        assert names_node(decoded, node) == names_node(seen, node)
    bare = decoded_names(issue_cert(generate_ca(), "node-7").cert_pem)
    assert names_node(bare, "node-7") and not names_node(bare, "node-8")

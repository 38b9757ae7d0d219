"""Whether a peer certificate names a node id (the membership check, docs/security.md).

A certificate as returned by ``ssl.SSLSocket.getpeercert()`` names node ``N`` when

- its subject common name is ``N``; or
- one of its DNS subject alternative names is ``N``, or starts with the label ``N``
  (``N.raftlog.svc.cluster.local``: the first label of a host name is the node); or
- one of its DNS names is a wildcard ``*.DOMAIN`` (the first label ``*`` stands for any
  single label: a certificate shared by every node of a StatefulSet, or the development
  certificate, which carries ``*.nodes.raftlog.invalid``, names every node id without a
  dot).

A certificate issued per node (CN or first DNS label = the node id) binds the id to the
key: a holder of another node's certificate cannot join under this id. A shared
certificate (a wildcard) proves membership of the cluster only.
"""

from __future__ import annotations

__all__ = ["DEV_NODES_WILDCARD", "certificate_dns_names", "names_node"]

#: The DNS name the development server/peer certificate carries so that it names every
#: node (``.invalid`` is reserved: it never resolves, RFC 2606).
DEV_NODES_WILDCARD = "*.nodes.raftlog.invalid"


def certificate_dns_names(peer_cert: dict[str, object] | None) -> list[str]:
    """The DNS subject alternative names of a ``getpeercert()`` dict."""
    if not peer_cert:
        return []
    sans = peer_cert.get("subjectAltName")
    if not isinstance(sans, tuple):
        return []
    return [str(value) for kind, value in sans if kind == "DNS"]


def _common_name(peer_cert: dict[str, object]) -> str | None:
    subject = peer_cert.get("subject")
    if not isinstance(subject, tuple):
        return None
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def names_node(peer_cert: dict[str, object] | None, node_id: str) -> bool:
    """Whether ``peer_cert`` names ``node_id`` (the rules of this module)."""
    if not peer_cert or not node_id:
        return False
    if _common_name(peer_cert) == node_id:
        return True
    for name in certificate_dns_names(peer_cert):
        first, _, rest = name.partition(".")
        if name == node_id or (rest and first == node_id):
            return True
        if first == "*" and rest and "." not in node_id:
            return True
    return False

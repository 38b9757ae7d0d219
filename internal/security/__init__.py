"""Certificates and TLS for every raftlog connection (client gRPC, Raft peers, forwarding).

- :mod:`raftlog.security.certs` makes development certificates (a CA, a server/peer
  certificate, client certificates named by subject) with the ``cryptography`` package.
- :mod:`raftlog.security.tls` turns certificate files into ``ssl`` contexts that always
  verify the other side against the cluster CA (mutual TLS). It needs only ``ssl``.
- :mod:`raftlog.security.grpc_tls` builds gRPC credentials from the same files; import it
  by name (it needs ``grpc``, which the layers below the server never import).

The names of :mod:`~raftlog.security.certs` are loaded on first use (module
``__getattr__``, PEP 562): a client that only needs :class:`TLSConfig` and its channel
credentials must not import ``cryptography`` (a client-only install may not have it, and
it slows the CLI's client commands down).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raftlog.security.tls import (
    TLSConfig,
    TLSConfigError,
    client_ssl_context,
    peer_common_name,
    server_ssl_context,
)

if TYPE_CHECKING:
    from raftlog.security.certs import (
        CertFiles,
        CertPair,
        generate_ca,
        issue_cert,
        write_dev_certs,
        write_gossip_key,
    )

#: Names served from :mod:`raftlog.security.certs`, imported when first asked for.
_CERTS_NAMES = frozenset(
    {"CertFiles", "CertPair", "generate_ca", "issue_cert", "write_dev_certs", "write_gossip_key"}
)


def __getattr__(name: str) -> Any:
    if name in _CERTS_NAMES:
        from raftlog.security import certs

        return getattr(certs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CertFiles",
    "CertPair",
    "TLSConfig",
    "TLSConfigError",
    "client_ssl_context",
    "generate_ca",
    "issue_cert",
    "peer_common_name",
    "server_ssl_context",
    "write_dev_certs",
    "write_gossip_key",
]

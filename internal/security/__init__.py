"""Certificates and TLS for every raftlog connection (client gRPC, Raft peers, forwarding).

- :mod:`raftlog.security.certs` makes development certificates (a CA, a server/peer
  certificate, client certificates named by subject) with the ``cryptography`` package.
- :mod:`raftlog.security.tls` turns certificate files into ``ssl`` contexts and gRPC
  credentials that always verify the other side against the cluster CA (mutual TLS).
"""

from raftlog.security.certs import CertFiles, CertPair, generate_ca, issue_cert, write_dev_certs
from raftlog.security.tls import (
    TLSConfig,
    TLSConfigError,
    client_ssl_context,
    grpc_channel_credentials,
    grpc_server_credentials,
    peer_common_name,
    server_ssl_context,
)

__all__ = [
    "CertFiles",
    "CertPair",
    "TLSConfig",
    "TLSConfigError",
    "client_ssl_context",
    "generate_ca",
    "grpc_channel_credentials",
    "grpc_server_credentials",
    "issue_cert",
    "peer_common_name",
    "server_ssl_context",
    "write_dev_certs",
]

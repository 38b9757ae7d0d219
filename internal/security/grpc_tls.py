"""gRPC credentials from a :class:`~raftlog.security.tls.TLSConfig`: mutual TLS, always.

Kept apart from :mod:`raftlog.security.tls` so that the code below the gRPC server (the
Raft transport and everything under ``raftlog.distributed``) never imports ``grpc``.
"""

from __future__ import annotations

import grpc

from raftlog.security.tls import TLSConfig


def grpc_server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    """gRPC server credentials that require a client certificate signed by the CA."""
    cert, key, ca = tls.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def grpc_channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    """gRPC channel credentials that present a client certificate and verify the server."""
    cert, key, ca = tls.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )

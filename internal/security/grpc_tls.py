"""gRPC credentials from a :class:`~raftlog.security.tls.TLSConfig`: mutual TLS, always.

Kept apart from :mod:`raftlog.security.tls` so that the code below the gRPC server (the
Raft transport and everything under ``raftlog.distributed``) never imports ``grpc``.
"""

from __future__ import annotations

from collections.abc import Callable

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


def grpc_dynamic_server_credentials(
    material: Callable[[], tuple[int, bytes, bytes, bytes]],
) -> grpc.ServerCredentials:
    """Server credentials that follow reloads: mutual TLS, client certificate required.

    ``material()`` returns (generation, certificate, key, CA bundle), e.g.
    :meth:`raftlog.security.reload.ReloadableTLS.grpc_material`. gRPC calls the fetcher
    on each new connection (from its own threads, so it only reads an attribute); a new
    generation gives the handshakes from then on the new certificate and CA bundle.
    """
    generation, cert, key, ca = material()
    served = [generation]

    def config(cert: bytes, key: bytes, ca: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        generation, cert, key, ca = material()
        if generation == served[0]:
            return None  # unchanged: gRPC keeps what it has
        served[0] = generation
        return config(cert, key, ca)

    # grpc's stubs type the fetcher's result without None, which its docs allow ("no change")
    return grpc.dynamic_ssl_server_credentials(
        config(cert, key, ca),
        fetch,  # type: ignore[arg-type]
        require_client_authentication=True,
    )

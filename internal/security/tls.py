"""TLS contexts that always authenticate both sides (standard library ``ssl`` only).

Every raftlog connection is mutual TLS against the cluster CA: the server side requires a
client certificate (``CERT_REQUIRED``), the client side verifies the server's certificate
and hostname. There is no option here to turn verification off; insecure mode is a separate,
explicit switch of the agent.

This module needs nothing but the standard library, so the Raft transport (which speaks
TLS on raw sockets) and a client-only install can use it; gRPC credentials built from the
same files are in :mod:`raftlog.security.grpc_tls`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class TLSConfigError(ValueError):
    """A TLS setting is missing or names a file that cannot be read."""


@dataclass(frozen=True)
class TLSConfig:
    """Certificate, key and CA files of one side of a connection (PEM).

    ``extra_ca_files`` are trusted besides ``ca_file``: a cluster node whose peer
    certificates come from another CA than its server certificate trusts both on the
    connections where both kinds of certificate meet (forwarded writes reach the gRPC
    server with a peer certificate). Default: none.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path
    extra_ca_files: tuple[Path, ...] = ()

    def ca_files(self) -> list[Path]:
        """``ca_file`` then every extra CA file."""
        return [Path(self.ca_file), *map(Path, self.extra_ca_files)]

    def validate(self, what: str = "tls") -> None:
        """Check that the three files exist and are readable; name the one that is not."""
        named = [(f, Path(getattr(self, f))) for f in ("cert_file", "key_file", "ca_file")]
        named += [(f"extra_ca_files[{i}]", Path(p)) for i, p in enumerate(self.extra_ca_files)]
        for field, path in named:
            if not path.is_file():
                raise TLSConfigError(f"{what}.{field}: no such file: {path}")
            try:
                with path.open("rb") as f:
                    f.read(1)
            except OSError as exc:
                raise TLSConfigError(f"{what}.{field}: cannot read {path}: {exc}") from exc

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(cert, key, CA bundle) bytes; the bundle holds ``ca_file`` and the extra CAs."""
        bundle = [path.read_bytes() for path in self.ca_files()]
        return (
            Path(self.cert_file).read_bytes(),
            Path(self.key_file).read_bytes(),
            b"\n".join(pem.rstrip(b"\n") for pem in bundle) + b"\n",
        )


def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server context that presents ``tls.cert_file`` and requires a CA-signed client."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    for ca in tls.ca_files():
        ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """A client context that presents ``tls.cert_file`` and verifies the server.

    Hostname checking stays on: callers pass ``server_hostname`` (the host they dialled).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    for ca in tls.ca_files():
        ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    return ctx


def peer_common_name(peer_cert: dict[str, object] | None) -> str | None:
    """The subject common name of a peer certificate as returned by ``getpeercert()``."""
    if not peer_cert:
        return None
    subject = peer_cert.get("subject")
    if not isinstance(subject, tuple):
        return None
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None

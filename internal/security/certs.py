"""Development certificates: a CA, a server/peer certificate and client certificates.

Why in-process: tests and ``raftlog cert`` make their certificates with the ``cryptography``
package, so nothing secret is ever checked in and no external tool (cfssl, openssl) is needed.

Keys are ECDSA P-256 (fast to generate, supported by gRPC's BoringSSL and by Python's ssl).
The subject used for authorization is the certificate's common name (CN).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from raftlog.security.peer_identity import DEV_NODES_WILDCARD

#: Default validity of generated certificates, in days.
DEFAULT_VALID_DAYS = 365
#: Hosts the development server certificate is valid for, by default.
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
#: Client subjects made by default: ``root`` may do everything in the example policy,
#: ``nobody`` nothing.
DEFAULT_CLIENTS: tuple[str, ...] = ("root", "nobody")
#: Common name of the development server certificate, which also serves as the peer
#: certificate (Raft and forwarding); the example policy grants it ``replicate``.
SERVER_SUBJECT = "server"
#: File name of the development gossip (Serf keyring) key.
GOSSIP_KEY_FILE = "gossip.key"


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PEM private key (PKCS#8, unencrypted)."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


@dataclass(frozen=True)
class CertFiles:
    """Paths of a certificate, its key and the CA that signed it."""

    cert_file: Path
    key_file: Path
    ca_file: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "raftlog"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def generate_ca(
    common_name: str = "raftlog development CA",
    *,
    valid_days: int = DEFAULT_VALID_DAYS,
    not_before: dt.datetime | None = None,
) -> CertPair:
    """A self-signed CA certificate that may sign leaf certificates (path length 0)."""
    key = _new_key()
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _san(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue_cert(
    ca: CertPair,
    common_name: str,
    *,
    hosts: Sequence[str] = (),
    server: bool = True,
    client: bool = True,
    valid_days: int = DEFAULT_VALID_DAYS,
    not_before: dt.datetime | None = None,
) -> CertPair:
    """A leaf certificate for ``common_name`` signed by ``ca``.

    ``hosts`` (DNS names or IP addresses) go into the subject alternative name, which TLS
    clients check against the address they dialled. ``server``/``client`` choose the
    extended key usages; a peer certificate needs both (it dials and it is dialled).
    ``not_before`` lets tests make certificates that are expired or not yet valid.
    """
    ca_cert = ca.certificate
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA key must be an ECDSA key made by generate_ca()")
    key = _new_key()
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return CertPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def decoded_names(cert_pem: bytes) -> dict[str, object]:
    """The names of a PEM certificate in the shape of ``ssl.getpeercert()`` (``subject``
    common name, ``subjectAltName`` DNS names), for
    :func:`raftlog.security.peer_identity.names_node` before any handshake."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    return {
        "subject": tuple((("commonName", cn),) for cn in cns),
        "subjectAltName": tuple(("DNS", name) for name in dns),
    }


def write_gossip_key(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``gossip.key`` (mode 0600): a base64 32-byte Serf keyring key (what ``serf
    keygen`` prints), unless the file exists (``overwrite`` makes a new one). Every node of
    a cluster must use the same key (``--serf-encrypt-key-file``)."""
    path = Path(out_dir) / GOSSIP_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite or not path.exists():
        _write(path, base64.b64encode(os.urandom(32)) + b"\n", secret=True)
    return path


def write_dev_certs(
    out_dir: str | Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    clients: Sequence[str] = DEFAULT_CLIENTS,
    valid_days: int = DEFAULT_VALID_DAYS,
    overwrite: bool = False,
) -> dict[str, CertFiles]:
    """Write a development CA, a server/peer certificate and client certificates.

    Files (the book's names): ``ca.pem``/``ca-key.pem``, ``server.pem``/``server-key.pem``,
    ``<subject>-client.pem``/``<subject>-client-key.pem``. Keys are written mode 0600. An
    existing CA is reused unless ``overwrite`` is set, so new client certificates stay valid
    for running servers. Returns the files by role: ``"server"`` and each client subject.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ca_file, ca_key_file = out / "ca.pem", out / "ca-key.pem"
    if ca_file.exists() and ca_key_file.exists() and not overwrite:
        ca = CertPair(ca_file.read_bytes(), ca_key_file.read_bytes())
    else:
        ca = generate_ca(valid_days=valid_days)
        _write(ca_key_file, ca.key_pem, secret=True)
        _write(ca_file, ca.cert_pem, secret=False)
    result: dict[str, CertFiles] = {}
    # The wildcard names every node (raftlog.security.peer_identity): one shared
    # development certificate serves every node of a dev cluster.
    server = issue_cert(
        ca, SERVER_SUBJECT, hosts=[*hosts, DEV_NODES_WILDCARD], valid_days=valid_days
    )
    _write(out / "server-key.pem", server.key_pem, secret=True)
    _write(out / "server.pem", server.cert_pem, secret=False)
    result["server"] = CertFiles(out / "server.pem", out / "server-key.pem", ca_file)
    for subject in clients:
        pair = issue_cert(ca, subject, server=False, client=True, valid_days=valid_days)
        key_file, cert_file = out / f"{subject}-client-key.pem", out / f"{subject}-client.pem"
        _write(key_file, pair.key_pem, secret=True)
        _write(cert_file, pair.cert_pem, secret=False)
        result[subject] = CertFiles(cert_file, key_file, ca_file)
    return result


def leaf_files(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """(certificate, key) paths of leaf ``name`` in a ``write_dev_certs`` directory:
    ``server.pem`` for ``"server"``, ``<name>-client.pem`` for a client subject."""
    out = Path(out_dir)
    if name == SERVER_SUBJECT:
        return out / "server.pem", out / "server-key.pem"
    return out / f"{name}-client.pem", out / f"{name}-client-key.pem"


def renew_leaf(
    out_dir: str | Path, name: str, *, valid_days: int = DEFAULT_VALID_DAYS
) -> CertFiles:
    """Issue leaf ``name`` again from the development CA in ``out_dir`` (``ca.pem``,
    ``ca-key.pem``): same subject, hosts and key usages, a new key and serial, valid from
    now for ``valid_days``. Key then certificate are each replaced atomically; send the
    node SIGHUP afterwards (a reload refuses a certificate and key that do not match, so
    a reload between the two writes changes nothing)."""
    out = Path(out_dir)
    cert_file, key_file = leaf_files(out, name)
    ca = CertPair((out / "ca.pem").read_bytes(), (out / "ca-key.pem").read_bytes())
    old = x509.load_pem_x509_certificate(cert_file.read_bytes())
    names = old.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else name
    hosts: list[str] = []
    try:
        san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts += [str(general.value) for general in san]  # in their order
    except x509.ExtensionNotFound:
        pass
    try:
        eku = old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        server, client = (
            ExtendedKeyUsageOID.SERVER_AUTH in eku,
            ExtendedKeyUsageOID.CLIENT_AUTH in eku,
        )
    except x509.ExtensionNotFound:
        server, client = True, True
    pair = issue_cert(
        ca, common_name, hosts=hosts, server=server, client=client, valid_days=valid_days
    )
    _write(key_file, pair.key_pem, secret=True)
    _write(cert_file, pair.cert_pem, secret=False)
    return CertFiles(cert_file, key_file, out / "ca.pem")

"""TLS material that can be replaced while the node runs (SIGHUP; see docs/security.md).

:class:`ReloadableTLS` holds what one :class:`~raftlog.security.tls.TLSConfig` names
(certificate, key, CA bundle), checked and turned into ``ssl`` contexts. :meth:`reload`
reads the files again; new material that fails a check (a file that cannot be read, a key
that does not match the certificate, a certificate expired or not yet valid, a
certificate whose issuer is not in the CA bundle) is refused with one log line and the
material already loaded stays in use.

Who uses the new material: every connection that starts its handshake after the reload.
Connections already open keep the session they negotiated.

- Server side (``ssl``): :attr:`ReloadableTLS.server_context` is one context that never
  changes (hand it to the mux or aiohttp once); its ``sni_callback``, which OpenSSL calls
  on every ClientHello (with or without SNI), switches the handshake to the context of the
  latest material, certificate and CA store both.
- Client side (``ssl``): :meth:`ReloadableTLS.client_context` returns the latest context;
  call it for each new connection.
- gRPC: :meth:`ReloadableTLS.grpc_material` gives (generation, cert, key, CA) for
  :func:`raftlog.security.grpc_tls.grpc_dynamic_server_credentials`.

The checks parse certificates with ``cryptography`` (imported when first needed, so that
importing this module costs a client nothing).
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from raftlog.security.tls import TLSConfig, client_ssl_context, server_ssl_context

if TYPE_CHECKING:
    from cryptography import x509

logger = logging.getLogger("raftlog.security")

#: A certificate that expires within this many seconds is warned about.
EXPIRY_WARNING_S = 14 * 86400.0


class TLSReloadError(ValueError):
    """New TLS material was refused; the message names the file and the reason."""


@dataclass(frozen=True)
class LoadedTLS:
    """One checked generation of TLS material."""

    generation: int
    server: ssl.SSLContext
    client: ssl.SSLContext
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    #: Expiry of the leaf certificate and of the CA in the bundle that expires first.
    cert_not_after: dt.datetime
    ca_not_after: dt.datetime


def load_tls(tls: TLSConfig, *, generation: int = 0, now: dt.datetime | None = None) -> LoadedTLS:
    """Read and check the files of ``tls``; raise :class:`TLSReloadError` naming the problem."""
    from cryptography import x509

    now = now or dt.datetime.now(dt.UTC)
    try:
        cert_pem, key_pem, ca_pem = tls.read()
    except OSError as exc:
        raise TLSReloadError(f"cannot read {exc.filename or 'a TLS file'}: {exc.strerror}") from exc
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise TLSReloadError(f"{tls.cert_file}: not a PEM certificate: {exc}") from exc
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise TLSReloadError(f"{tls.ca_file}: not a PEM CA bundle: {exc}") from exc
    if now >= leaf.not_valid_after_utc:
        raise TLSReloadError(
            f"{tls.cert_file}: certificate expired at {leaf.not_valid_after_utc.isoformat()}"
        )
    if now < leaf.not_valid_before_utc:
        raise TLSReloadError(
            f"{tls.cert_file}: certificate not valid before {leaf.not_valid_before_utc.isoformat()}"
        )
    if not any(_issued_by(leaf, ca) for ca in cas):
        raise TLSReloadError(
            f"{tls.cert_file}: issuer {leaf.issuer.rfc4514_string()!r} is not in the CA "
            f"bundle ({', '.join(str(p) for p in tls.ca_files())})"
        )
    try:
        server = server_ssl_context(tls)
        client = client_ssl_context(tls)
    except ssl.SSLError as exc:
        reason = "the key does not match the certificate" if "MISMATCH" in str(exc) else exc
        raise TLSReloadError(f"{tls.cert_file} / {tls.key_file}: {reason}") from exc
    except OSError as exc:
        raise TLSReloadError(f"cannot load {tls.cert_file} / {tls.key_file}: {exc}") from exc
    return LoadedTLS(
        generation=generation,
        server=server,
        client=client,
        cert_pem=cert_pem,
        key_pem=key_pem,
        ca_pem=ca_pem,
        cert_not_after=leaf.not_valid_after_utc,
        ca_not_after=min(ca.not_valid_after_utc for ca in cas),
    )


def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``leaf`` (issuer name and signature)."""
    from cryptography.exceptions import InvalidSignature

    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class ReloadableTLS:
    """The TLS material of one role (``name``: "server", "peer", ...), reloadable.

    The constructor loads the files and raises :class:`TLSReloadError` if they are bad (a
    node does not start on bad material); :meth:`reload` never raises. ``warn=False``: no
    expiry warnings (a role that reuses another role's certificate, already reported).
    """

    def __init__(self, tls: TLSConfig, name: str, *, warn: bool = True) -> None:
        self.tls = tls
        self.name = name
        self.warn = warn
        self._lock = threading.Lock()
        self._current = load_tls(tls)
        self._listeners: list[Callable[[LoadedTLS], None]] = []
        # One context for listeners that never changes; each handshake is switched to the
        # latest material's context by the SNI callback (called on every ClientHello).
        self._front = server_ssl_context(tls)
        self._front.sni_callback = self._switch
        self.warn_expiry()

    def _switch(self, ssl_obj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        ssl_obj.context = self._current.server

    @property
    def current(self) -> LoadedTLS:
        return self._current

    @property
    def generation(self) -> int:
        return self._current.generation

    @property
    def server_context(self) -> ssl.SSLContext:
        """The server context to listen with (follows every reload)."""
        return self._front

    def client_context(self) -> ssl.SSLContext:
        """The client context of the latest material (for the next connection)."""
        return self._current.client

    def grpc_material(self) -> tuple[int, bytes, bytes, bytes]:
        """(generation, certificate, key, CA bundle) of the latest material."""
        cur = self._current
        return cur.generation, cur.cert_pem, cur.key_pem, cur.ca_pem

    def on_reload(self, listener: Callable[[LoadedTLS], None]) -> None:
        """Call ``listener`` with each new generation (after it is in place)."""
        self._listeners.append(listener)

    def reload(self) -> bool:
        """Read the files again; True when new material is now in use.

        Unchanged files change nothing (False). Bad files are refused with an error log
        line and change nothing (False)."""
        with self._lock:
            old = self._current
            try:
                new = load_tls(self.tls, generation=old.generation + 1)
            except TLSReloadError as exc:
                logger.error(
                    "TLS reload (%s): refused the new material, keeping the loaded one: %s",
                    self.name,
                    exc,
                )
                return False
            if (new.cert_pem, new.key_pem, new.ca_pem) == (old.cert_pem, old.key_pem, old.ca_pem):
                return False
            self._current = new
        logger.info(
            "TLS reload (%s): new material in use for new connections (certificate %s, expires %s)",
            self.name,
            self.tls.cert_file,
            new.cert_not_after.isoformat(),
        )
        for listener in self._listeners:
            try:
                listener(new)
            except Exception:
                logger.exception("TLS reload (%s): a listener failed", self.name)
        self.warn_expiry()
        return True

    def expiry_seconds(self, now: dt.datetime | None = None) -> dict[str, float]:
        """Seconds until expiry: ``{name: leaf, name + "_ca": first CA to expire}``."""
        now = now or dt.datetime.now(dt.UTC)
        cur = self._current
        return {
            self.name: (cur.cert_not_after - now).total_seconds(),
            f"{self.name}_ca": (cur.ca_not_after - now).total_seconds(),
        }

    def warn_expiry(self, now: dt.datetime | None = None) -> list[str]:
        """Log a warning for each certificate expiring within 14 days; their names."""
        warned: list[str] = []
        if not self.warn:
            return warned
        for which, left in self.expiry_seconds(now).items():
            if left < EXPIRY_WARNING_S:
                warned.append(which)
                when = (
                    f"expires in {left / 86400.0:.1f} days"
                    if left >= 0
                    else f"expired {-left / 86400.0:.1f} days ago"
                )
                logger.warning(
                    "TLS certificate %s (%s) %s: renew it and send SIGHUP",
                    which,
                    self.tls.ca_file if which.endswith("_ca") else self.tls.cert_file,
                    when,
                )
        return warned


def files_of(tls: TLSConfig) -> list[Path]:
    """Every file ``tls`` names."""
    return [Path(tls.cert_file), Path(tls.key_file), *tls.ca_files()]

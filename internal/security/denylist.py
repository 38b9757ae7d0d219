"""Revocation: a deny list of certificate serial numbers and subjects (standard library only).

The file (``--deny-list-file``) holds one entry a line; ``#`` starts a comment::

    # a leaked laptop key
    serial:4F:1A:09:C3...     (hex, colons and case do not matter)
    subject:alice             (the certificate's common name)

A certificate is refused when its serial or its subject is listed: at the handshake of a
Raft connection (both sides), on every gRPC call and every message of an open stream, and
on every HTTP request. The file is read again on reload (SIGHUP); a file that cannot be
read or holds a malformed line is refused with a log line and the list loaded before stays.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("raftlog.security")


class DenyListError(ValueError):
    """The deny list file cannot be read or has a malformed line (the message says where)."""


def normalize_serial(serial: str | int) -> int:
    """A serial number as an int, from an int or hex text (``4F:1A``, ``0x4f1a``, ``4F1A``)."""
    if isinstance(serial, int):
        return serial
    text = serial.strip().lower().replace(":", "")
    text = text.removeprefix("0x")
    return int(text, 16)


@dataclass(frozen=True)
class DenyEntries:
    serials: frozenset[int] = frozenset()
    subjects: frozenset[str] = frozenset()


def parse_deny_list(text: str, source: str = "deny list") -> DenyEntries:
    """Parse the file format above; raise :class:`DenyListError` on a malformed line."""
    serials: set[int] = set()
    subjects: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, sep, value = line.partition(":")
        kind, value = kind.strip().lower(), value.strip()
        if not sep or not value or kind not in ("serial", "subject"):
            raise DenyListError(
                f"{source}:{number}: expected 'serial:<hex>' or 'subject:<name>', got {raw!r}"
            )
        if kind == "subject":
            subjects.add(value)
            continue
        try:
            serials.add(normalize_serial(value))
        except ValueError:
            raise DenyListError(f"{source}:{number}: {value!r} is not a hex serial") from None
    return DenyEntries(frozenset(serials), frozenset(subjects))


class DenyList:
    """The deny list of one node; ``path=None`` denies nothing. :attr:`generation` grows
    with each reload that changed the entries."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.generation = 0
        self._lock = threading.Lock()
        self._entries = self._read() if self.path is not None else DenyEntries()

    def _read(self) -> DenyEntries:
        assert self.path is not None
        try:
            text = self.path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DenyListError(f"deny list {self.path}: cannot read it: {exc}") from exc
        return parse_deny_list(text, str(self.path))

    @property
    def entries(self) -> DenyEntries:
        return self._entries

    def reload(self) -> bool:
        """Read the file again; True when the entries changed. Never raises."""
        if self.path is None:
            return False
        with self._lock:
            try:
                new = self._read()
            except DenyListError as exc:
                logger.error("deny list reload refused, keeping the loaded list: %s", exc)
                return False
            if new == self._entries:
                return False
            self._entries = new
            self.generation += 1
        logger.info(
            "deny list reloaded from %s: %d serials, %d subjects",
            self.path,
            len(new.serials),
            len(new.subjects),
        )
        return True

    def refuses(self, subject: str | None, serial: str | int | None) -> str | None:
        """Why this certificate is refused (None: it is not listed)."""
        entries = self._entries
        if subject is not None and subject in entries.subjects:
            return f"certificate subject {subject!r} is on the deny list"
        if serial is not None and entries.serials:
            try:
                number = normalize_serial(serial)
            except ValueError:
                return None
            if number in entries.serials:
                return f"certificate serial {number:X} is on the deny list"
        return None

    def refuses_peercert(self, peercert: dict[str, object] | None) -> str | None:
        """:meth:`refuses` for a certificate as ``ssl`` decodes it (``getpeercert()``)."""
        from raftlog.security.tls import peer_common_name

        if not peercert:
            return None
        serial = peercert.get("serialNumber")
        return self.refuses(peer_common_name(peercert), serial if isinstance(serial, str) else None)

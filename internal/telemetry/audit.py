"""The audit log: one JSON object per line, in a file of its own (``--audit-log PATH``).

Off by default. What it records (``event``):

- ``call``: every gRPC call and HTTP API request the node refused (``decision``
  ``denied``: the ACL said no, or the client had no certificate subject) and every call of
  the admin service, allowed or not;
- ``raft``: every Raft connection the transport refused after the TLS handshake (the
  subject may not replicate, a bad hello), with the ``reason``;
- ``membership``: every change the leader made to Raft membership (``decision`` ``added``,
  ``promoted`` or ``removed``) and every member it refused to add (``decision``
  ``refused``, with the ``reason``).

Each line carries ``time`` (UTC, ISO 8601 with microseconds), ``event``, ``subject`` (the
certificate common name, ``-`` when there is none), ``peer`` (the remote address),
``method`` (the rpc, or the membership action), ``decision`` and, for calls, the gRPC
``code``. Never a payload, a certificate or a key: callers hand over only those facts,
and :meth:`AuditLog.record` accepts strings and numbers only.

Lines are written whole, under a lock, and flushed at once (a crash loses at most the
line being written). A failing write is logged once per failure streak, never raised:
auditing must not take the node down.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
from pathlib import Path
from typing import IO, Protocol

__all__ = ["NO_AUDIT", "AuditLog", "AuditSink", "NoAudit"]

log = logging.getLogger("raftlog.audit")


class AuditSink(Protocol):
    """Where audit records go (an :class:`AuditLog`, or :data:`NO_AUDIT`)."""

    def record(
        self,
        event: str,
        *,
        subject: str,
        peer: str,
        method: str,
        decision: str,
        **details: str | int | float,
    ) -> None: ...


class NoAudit:
    """The audit log when it is off: records nothing."""

    def record(
        self,
        event: str,
        *,
        subject: str,
        peer: str,
        method: str,
        decision: str,
        **details: str | int | float,
    ) -> None:
        return None


NO_AUDIT = NoAudit()


class AuditLog:
    """Appends JSON lines to ``path`` (created mode 0600 if missing; its folder too)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file: IO[str] | None = os.fdopen(fd, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._failing = False
        #: Records written (for tests and metrics).
        self.written = 0

    def record(
        self,
        event: str,
        *,
        subject: str,
        peer: str,
        method: str,
        decision: str,
        **details: str | int | float,
    ) -> None:
        """Write one line; never raises."""
        entry: dict[str, str | int | float] = {
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"),
            "event": event,
            "subject": subject or "-",
            "peer": peer or "-",
            "method": method,
            "decision": decision,
        }
        for key, value in details.items():
            if isinstance(value, str | int | float) and key not in entry:
                entry[key] = value
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.write(line)
                self._file.flush()
            except (OSError, ValueError) as exc:
                if not self._failing:
                    log.error("audit log %s: write failed: %s", self.path, exc)
                self._failing = True
                return
            self._failing = False
            self.written += 1

    def close(self) -> None:
        """Flush and close the file; later records are dropped. Idempotent."""
        with self._lock:
            file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as exc:
                log.error("audit log %s: close failed: %s", self.path, exc)

"""Log lines as JSON objects (``--log-format json``), one per line.

Each line carries ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``,
``node_id`` and ``message``, plus the structured fields a call site passes in ``extra``
when they apply (:data:`STRUCTURED_FIELDS`: ``term``, ``peer``, ``offset``, ...), and
``exception`` with the traceback when there is one.

What is logged is what the call sites write: raftlog logs ids, addresses, offsets and
counts, never record payloads, producer keys or certificate material (a test holds the
node to that at every level).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

#: ``extra`` keys copied into a JSON line when a record carries them.
STRUCTURED_FIELDS: tuple[str, ...] = (
    "term",
    "leader",
    "peer",
    "offset",
    "index",
    "method",
    "code",
    "subject",
    "duration_ms",
    "role",
)


class NodeIdFilter(logging.Filter):
    """Stamps ``node_id`` on every record that passes a handler (set once per process)."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node_id"):
            record.node_id = self.node_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; see the module docstring for the keys."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z"
        line: dict[str, Any] = {
            "time": stamp,
            "level": record.levelname.lower(),
            "logger": record.name,
            "node_id": getattr(record, "node_id", ""),
            "message": record.getMessage(),
        }
        for key in STRUCTURED_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)

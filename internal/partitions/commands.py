"""Controller commands as log entries: one command and the leader's time, as JSON.

An entry of the controller group's Raft log is::

    {"command": "<class name>", "fields": {...}, "now": <seconds>}     (UTF-8, sorted keys)

``now`` is stamped once, by the node that proposes the entry, so that every node applies
the command at the same time (``ClusterMetadata.apply`` never reads a clock). Decoding is
strict: an entry that is not exactly one of the commands (unknown name, a field missing or
extra) is a :class:`CommandDecodeError`, which the state machine turns into a rejection,
never an exception, since a Raft state machine must apply every committed entry.
Field values are not checked here: :meth:`ClusterMetadata.apply` checks them and rejects.
Standard library only, like the rest of the package.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from raftlog.partitions.metadata import (
    Command,
    CreateTopic,
    DeleteTopic,
    ForgetNode,
    LearnerAdded,
    LearnerCaughtUp,
    LearnerPromoted,
    NodeDown,
    NodeUp,
    ReplicaRemoved,
    SetRetention,
    TopicSpec,
)

#: Every command class by its name on the wire.
COMMANDS: dict[str, type[Command]] = {
    cls.__name__: cls
    for cls in (
        CreateTopic,
        DeleteTopic,
        SetRetention,
        NodeUp,
        NodeDown,
        ForgetNode,
        LearnerAdded,
        LearnerCaughtUp,
        LearnerPromoted,
        ReplicaRemoved,
    )
}


class CommandDecodeError(ValueError):
    """Bytes that are not an encoded command."""


def encode_command(command: Command, now: float) -> bytes:
    """The log entry of ``command`` applied at ``now`` (seconds)."""
    if type(command).__name__ not in COMMANDS:
        raise TypeError(f"not a controller command: {command!r}")
    fields = dataclasses.asdict(command)
    doc = {"command": type(command).__name__, "fields": fields, "now": now}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def decode_command(data: bytes) -> tuple[Command, float]:
    """``(command, now)`` of an entry :func:`encode_command` wrote; CommandDecodeError for
    anything else."""
    try:
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or set(doc) != {"command", "fields", "now"}:
            raise CommandDecodeError("an entry has exactly command, fields and now")
        cls = COMMANDS.get(doc["command"]) if isinstance(doc["command"], str) else None
        if cls is None:
            raise CommandDecodeError(f"unknown command {doc['command']!r}")
        fields = doc["fields"]
        if not isinstance(fields, dict):
            raise CommandDecodeError("fields must be an object")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(fields) != names:
            raise CommandDecodeError(f"{cls.__name__} takes exactly {sorted(names)}")
        if cls is CreateTopic:
            fields = {**fields, "spec": _spec(fields["spec"])}
        now = doc["now"]
        if isinstance(now, bool) or not isinstance(now, int | float):
            raise CommandDecodeError("now must be a number of seconds")
        return cls(**fields), float(now)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CommandDecodeError(f"not a command entry: {exc}") from None


def _spec(raw: Any) -> TopicSpec:
    names = {f.name for f in dataclasses.fields(TopicSpec)}
    if not isinstance(raw, dict) or set(raw) != names:
        raise CommandDecodeError(f"a topic spec has exactly {sorted(names)}")
    return TopicSpec(**raw)

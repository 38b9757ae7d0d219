"""The Raft stable store: the hard state (term, vote, a few extra fields), saved atomically.

Raft's safety depends on this file: a node that forgets its vote may vote twice in a term.
So a save is durable before it returns (write a temp file, fsync it, rename it over the
old file, fsync the directory), a torn or corrupt file is detected by a checksum and
reported as :class:`CorruptStableStateError` (never silently reset to term 0), and a missing
file means "fresh node" (``load`` returns ``None``), which is how the runtime decides to
bootstrap exactly once.

File format (text, one header line then a canonical JSON body)::

    raftlog-stable 1 <sha256 hex of the body>\\n
    {"extra":{"commit":12},"term":5,"voted_for":"n2"}
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from raftlog.log.fileio import atomic_write

#: Default file name of the hard state inside the store's directory.
DEFAULT_FILENAME = "raft-state"
#: First word of the header line.
_MAGIC = "raftlog-stable"
#: Version of the file format.
_VERSION = 1
#: Largest stable file we are willing to parse, in bytes (the record is tiny).
_MAX_FILE_BYTES = 1024 * 1024

#: Values allowed in :attr:`StableState.extra`: JSON scalars.
ExtraValue = int | str | bool | None


class StableStoreError(Exception):
    """The stable store cannot be read or written."""


def os_error_of(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write: ``exc`` itself, or the one a
    :class:`StableStoreError` wraps (the hard state's file could not be written); else
    None. The runtime tells a full disk (ENOSPC: refuse, retry, resume) and a failing one
    (EIO: stop) by it, wherever the write failed."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, StableStoreError) and isinstance(exc.__cause__, OSError):
        return exc.__cause__
    return None


class CorruptStableStateError(StableStoreError):
    """The stable file exists but is torn, altered or not ours; it is never reset silently.

    An operator must look: restoring it from a backup, or removing the node from the cluster
    and re-adding it with an empty data directory, are the safe ways out.
    """


@dataclass(frozen=True)
class StableState:
    """Raft hard state: the current term, the vote cast in it, and small extra fields.

    ``extra`` holds JSON scalars by name (for example ``{"commit": 12}``); it is stored and
    returned as given, read-only.
    """

    term: int
    voted_for: str | None = None
    extra: Mapping[str, ExtraValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    def validate(self) -> None:
        """Check field types and ranges; the message says which field is wrong."""
        if not isinstance(self.term, int) or isinstance(self.term, bool) or self.term < 0:
            raise ValueError(f"stable state term must be an integer >= 0, got {self.term!r}")
        if self.voted_for is not None and (
            not isinstance(self.voted_for, str) or not self.voted_for
        ):
            raise ValueError(
                f"stable state voted_for must be a non-empty node id or None, "
                f"got {self.voted_for!r}"
            )
        for key, value in self.extra.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"stable state extra keys must be non-empty strings: {key!r}")
            if value is not None and not isinstance(value, int | str | bool):
                raise ValueError(
                    f"stable state extra[{key!r}] must be an int, str, bool or None, "
                    f"got {type(value).__name__}"
                )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StableState):
            return NotImplemented
        return (self.term, self.voted_for, dict(self.extra)) == (
            other.term,
            other.voted_for,
            dict(other.extra),
        )

    def __hash__(self) -> int:
        return hash((self.term, self.voted_for, tuple(sorted(self.extra.items()))))


def encode_state(state: StableState) -> bytes:
    """The file bytes for ``state`` (header with checksum, then canonical JSON)."""
    state.validate()
    body = json.dumps(
        {"term": state.term, "voted_for": state.voted_for, "extra": dict(state.extra)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    digest = hashlib.sha256(body).hexdigest()
    return f"{_MAGIC} {_VERSION} {digest}\n".encode("ascii") + body


def decode_state(data: bytes, where: str = "stable state") -> StableState:
    """Parse and verify file bytes; :class:`CorruptStableStateError` says what is wrong."""
    header, sep, body = data.partition(b"\n")
    if not sep:
        raise CorruptStableStateError(f"{where}: no header line (torn or not a stable file)")
    parts = header.split(b" ")
    if len(parts) != 3 or parts[0] != _MAGIC.encode("ascii"):
        raise CorruptStableStateError(f"{where}: bad header {header[:64]!r}")
    if parts[1] != str(_VERSION).encode("ascii"):
        raise CorruptStableStateError(
            f"{where}: format version {parts[1]!r} is not supported (expected {_VERSION})"
        )
    if hashlib.sha256(body).hexdigest().encode("ascii") != parts[2]:
        raise CorruptStableStateError(f"{where}: checksum mismatch (torn write or bit rot)")
    try:
        raw = json.loads(body.decode("utf-8"))
        if not isinstance(raw, dict) or set(raw) != {"term", "voted_for", "extra"}:
            raise ValueError(f"unexpected fields {sorted(raw) if isinstance(raw, dict) else raw}")
        if not isinstance(raw["extra"], dict):
            raise ValueError("extra is not an object")
        state = StableState(raw["term"], raw["voted_for"], raw["extra"])
        state.validate()
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptStableStateError(f"{where}: checksum ok but content invalid: {exc}") from exc
    return state


class StableStore:
    """The hard state of one node in ``directory``/``filename``.

    ``fsync`` (default True) makes each save durable before it returns; turn it off only in
    tests and benchmarks that measure without durability. Saves are serialised by a lock,
    so concurrent saves never interleave their temp files; async saves are applied in the
    order they were called (the last call wins).
    The async methods run the file work in a thread so the event loop never blocks.
    """

    def __init__(
        self, directory: str | Path, *, filename: str = DEFAULT_FILENAME, fsync: bool = True
    ) -> None:
        if not filename or "/" in filename or filename.startswith("."):
            raise ValueError(f"stable store filename must be a plain file name, got {filename!r}")
        self.directory = Path(directory)
        self.path = self.directory / filename
        self.fsync = fsync
        self._lock = threading.Lock()
        self._async_lock = asyncio.Lock()  # FIFO: async saves land in call order

    def load_sync(self) -> StableState | None:
        """The saved state, or ``None`` when this node never saved one (fresh node)."""
        with self._lock:
            try:
                with self.path.open("rb") as f:
                    data = f.read(_MAX_FILE_BYTES + 1)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise StableStoreError(f"cannot read {self.path}: {exc}") from exc
            if len(data) > _MAX_FILE_BYTES:
                raise CorruptStableStateError(f"{self.path}: larger than {_MAX_FILE_BYTES} bytes")
            return decode_state(data, str(self.path))

    def save_sync(self, state: StableState) -> None:
        """Write ``state`` atomically and (with ``fsync``) durably."""
        data = encode_state(state)
        with self._lock:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                atomic_write(self.path, data, durable=self.fsync, mode=0o600)
            except OSError as exc:
                raise StableStoreError(f"cannot save {self.path}: {exc}") from exc

    async def load(self) -> StableState | None:
        """:meth:`load_sync` in a worker thread."""
        return await asyncio.to_thread(self.load_sync)

    async def save(self, state: StableState) -> None:
        """:meth:`save_sync` in a worker thread; returns once the state is durable."""
        async with self._async_lock:
            await asyncio.to_thread(self.save_sync, state)

    def exists(self) -> bool:
        """Whether a state file exists (it may still be corrupt; ``load`` tells)."""
        return self.path.exists()

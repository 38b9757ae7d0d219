"""Configuration of the commit log."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from raftlog.log.errors import ConfigError

#: Size of one frame header in the store: u32 payload length + u32 checksum (bytes).
FRAME_HEADER_BYTES = 8
#: Size of one index entry: u32 relative offset + u32 store position (bytes). A position
#: fits in 32 bits because a record starts only in a store smaller than
#: ``max_store_bytes``, which is at most :data:`MAX_STORE_BYTES`.
INDEX_ENTRY_BYTES = 8
#: Largest ``max_store_bytes``: store positions are u32 in the index.
MAX_STORE_BYTES = 1 << 32

MIB = 1 << 20


class SyncPolicy(enum.Enum):
    """When appended records are fsynced.

    - ``ALWAYS``: ``append_batch`` returns only after the records are fsynced. Concurrent
      appenders share one fsync (group commit). The default.
    - ``INTERVAL``: records are fsynced at most ``sync_interval_s`` seconds after they were
      written; appends return as soon as the bytes are in the page cache.
    - ``NEVER``: the log never fsyncs on its own (the OS writes back when it likes);
      :meth:`~raftlog.log.log.Log.sync` still works for callers that batch durability.
    """

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


@dataclass(frozen=True)
class LogConfig:
    """Settings of one commit log (one directory of segments).

    Attributes:
        max_store_bytes: most bytes (frame headers included) one segment's store file
            holds; a batch that does not fit is split and the rest goes to a new segment.
            A single record larger than this gets a segment of its own. Default 64 MiB;
            at most 4 GiB (index positions are 32-bit).
        max_index_bytes: size of a segment's preallocated index file, in bytes; a multiple
            of 8 (one entry per record). A segment is also sealed when its index is full.
            The file is sparse while the segment is active and cut to its real size when
            the segment is closed. Default 32 MiB = 4,194,304 entries, enough for a full
            64 MiB store of 8-byte records.
        initial_offset: offset of the first record of a new, empty log. Default 0.
        sync: durability policy, see :class:`SyncPolicy`. Default ``ALWAYS``.
        sync_interval_s: with ``INTERVAL``, the longest time in seconds a written record
            waits for its fsync. Default 0.2 s.
        sync_timeout_s: longest time in seconds an appender waits for its fsync before
            getting a :class:`~raftlog.log.errors.DurabilityError`. Default 30 s.
    """

    max_store_bytes: int = 64 * MIB
    max_index_bytes: int = INDEX_ENTRY_BYTES * (1 << 22)
    initial_offset: int = 0
    sync: SyncPolicy = SyncPolicy.ALWAYS
    sync_interval_s: float = 0.2
    sync_timeout_s: float = 30.0

    @property
    def max_index_entries(self) -> int:
        """How many records one segment's index can hold."""
        return self.max_index_bytes // INDEX_ENTRY_BYTES

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field whose value is unusable."""
        if not isinstance(self.max_store_bytes, int) or self.max_store_bytes <= 0:
            raise ConfigError(
                f"max_store_bytes must be a positive number of bytes, got {self.max_store_bytes!r}"
            )
        if self.max_store_bytes > MAX_STORE_BYTES:
            raise ConfigError(
                f"max_store_bytes must be at most {MAX_STORE_BYTES} bytes (4 GiB: index "
                f"positions are 32-bit), got {self.max_store_bytes}"
            )
        if not isinstance(self.max_index_bytes, int) or self.max_index_bytes < INDEX_ENTRY_BYTES:
            raise ConfigError(
                f"max_index_bytes must be at least {INDEX_ENTRY_BYTES} bytes (one index entry), "
                f"got {self.max_index_bytes!r}"
            )
        if self.max_index_bytes % INDEX_ENTRY_BYTES:
            raise ConfigError(
                f"max_index_bytes must be a multiple of {INDEX_ENTRY_BYTES} (the size of one "
                f"index entry), got {self.max_index_bytes}"
            )
        if self.max_index_entries > 1 << 32:
            raise ConfigError(
                f"max_index_bytes allows {self.max_index_entries} entries per segment, but "
                "relative offsets are 32-bit: at most 4294967296 entries"
            )
        if not isinstance(self.initial_offset, int) or self.initial_offset < 0:
            raise ConfigError(
                f"initial_offset must be a non-negative integer, got {self.initial_offset!r}"
            )
        if self.initial_offset >= 1 << 63:
            raise ConfigError(f"initial_offset must be below 2**63, got {self.initial_offset}")
        if not isinstance(self.sync, SyncPolicy):
            raise ConfigError(
                f"sync must be a SyncPolicy (always, interval or never), got {self.sync!r}"
            )
        for name in ("sync_interval_s", "sync_timeout_s"):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")

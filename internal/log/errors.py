"""Named errors of the commit log.

Every error the log raises derives from :class:`LogError`, so callers can catch the whole
family at once and map it to a gRPC status code in one place.
"""

from __future__ import annotations


class LogError(Exception):
    """Base class of every commit-log error."""


class ConfigError(LogError, ValueError):
    """A :class:`~raftlog.log.config.LogConfig` field has a value the log cannot work with.

    The message names the field and says what is wrong with it.
    """


class OffsetOutOfRangeError(LogError, IndexError):
    """The requested offset is not held by the log.

    ``lowest`` and ``highest`` are the offsets the log does hold at the time of the call
    (``highest == lowest - 1`` when the log is empty), so a client can correct itself.
    """

    def __init__(self, offset: int, lowest: int, highest: int) -> None:
        self.offset = offset
        self.lowest = lowest
        self.highest = highest
        if highest < lowest:
            held = f"the log is empty (next offset {lowest})"
        else:
            held = f"the log holds offsets {lowest}..{highest}"
        super().__init__(f"offset {offset} is out of range: {held}")

    def __reduce__(self) -> tuple[type[OffsetOutOfRangeError], tuple[int, int, int]]:
        return (type(self), (self.offset, self.lowest, self.highest))


class CorruptRecordError(LogError):
    """A stored record failed its checksum or framing check when it was read.

    The log never serves such a record. Recovery on open cuts a corrupt tail; this error is
    what remains for damage in the middle of a segment (bit rot), found only when read.
    """

    def __init__(self, offset: int, reason: str) -> None:
        self.offset = offset
        self.reason = reason
        super().__init__(f"record at offset {offset} is corrupt: {reason}")


class RecordTooLargeError(LogError, ValueError):
    """A record is larger than a frame can describe (4 GiB - 1) or than the store allows."""


class LogClosedError(LogError):
    """The log was closed (or removed) and cannot be used any more."""


class DurabilityError(LogError):
    """An fsync failed or timed out, or records were truncated before they became durable.

    After an fsync failure the log refuses further appends: the kernel may have dropped the
    dirty pages, so nothing written since the last good fsync can be trusted to be on disk.
    """


class SnapshotFormatError(LogError):
    """A stream given to :meth:`~raftlog.log.log.Log.restore` is not a valid log snapshot."""

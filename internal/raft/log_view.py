"""The core's in-memory view of the log: compacted prefix, persisted part, unpersisted tail.

Indexes: entries ``offset+1 .. last_index`` are held in memory; everything up to ``offset`` is
compacted into a snapshot (the term of ``offset`` is remembered so that AppendEntries right
after it can still be checked). Three cursors walk the log: ``stable`` (highest index the
runtime has persisted, acknowledged through ``advance``), ``in_progress`` (highest index handed
out in a Ready but not yet acknowledged) and, for committed entries, ``applying``/``applied``.

This class does no I/O; the runtime's log store holds the durable copy.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence

from raftlog.raft.types import Entry, SnapshotMeta


class LogInvariantError(AssertionError):
    """The log was asked to do something that would break Raft (e.g. drop a committed entry)."""


class RaftLog:
    """Entries plus commit/apply/persist cursors. See the module docstring."""

    def __init__(
        self,
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        commit: int = 0,
        applied: int = 0,
    ) -> None:
        ents = list(entries)
        for a, b in itertools.pairwise(ents):
            if b.index != a.index + 1:
                raise LogInvariantError(f"log entries not contiguous at {a.index} -> {b.index}")
        self.snapshot: SnapshotMeta | None = snapshot
        """The newest snapshot this node has (sent to followers that are too far behind)."""
        self.pending_snapshot: SnapshotMeta | None = None
        """A snapshot received from the leader that the runtime has not installed yet."""
        snap_index = snapshot.index if snapshot else 0
        if ents and snapshot is not None:
            # Keep only entries that continue the snapshot consistently.
            if ents[0].index > snap_index + 1:
                raise LogInvariantError(
                    f"log starts at {ents[0].index}, after a gap above snapshot {snap_index}"
                )
            if ents[-1].index <= snap_index:
                ents = []
            elif ents[0].index <= snap_index:
                at = ents[snap_index - ents[0].index]
                ents = ents[snap_index - ents[0].index + 1 :] if at.term == snapshot.term else []
        if ents:
            if snapshot is not None and ents[0].index == snap_index + 1:
                self.offset, self.offset_term = snap_index, snapshot.term
            elif ents[0].index == 1:
                self.offset, self.offset_term = 0, 0
            else:
                # The term of the entry before the first one is unknown: keep that first entry
                # only as the "offset" so that its term is known.
                self.offset, self.offset_term = ents[0].index, ents[0].term
                ents = ents[1:]
        else:
            self.offset = snap_index
            self.offset_term = snapshot.term if snapshot else 0
        self._entries: list[Entry] = ents
        # Running byte sizes (Entry.size()) of the entries held: ``_cum[i]`` is the total up
        # to and including ``_entries[i]``, ``_base_cum`` the total before the first one, so
        # the bytes of any range are one subtraction (the byte-based snapshot trigger and
        # trailing window use them; a sum over the entries would cost O(entries) a round).
        self._base_cum = 0
        self._cum: list[int] = list(itertools.accumulate(e.size() for e in ents))
        self.stable = self.last_index
        self.in_progress = self.last_index
        self.committed = min(max(commit, snap_index), self.last_index)
        self.applied = max(applied, snap_index)
        if self.applied > self.committed:
            self.committed = min(self.applied, self.last_index)
        self.applying = self.applied
        self.listener: Callable[[int, Sequence[Entry]], None] | None = None
        """Called as ``listener(after, entries)`` after ``append`` cut the log after ``after``
        and added ``entries`` (the core tracks membership changes with it)."""

    # -- queries -------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.offset + 1

    @property
    def last_index(self) -> int:
        return self.offset + len(self._entries)

    @property
    def last_term(self) -> int:
        t = self.term(self.last_index)
        assert t is not None
        return t

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted away or not (yet) in the log."""
        if index == self.offset:
            return self.offset_term
        if self.offset < index <= self.last_index:
            return self._entries[index - self.offset - 1].term
        return None

    def _cum_at(self, index: int) -> int:
        """Running byte total through ``index`` (``offset <= index <= last_index``)."""
        return self._base_cum if index <= self.offset else self._cum[index - self.offset - 1]

    def bytes_between(self, lo: int, hi: int) -> int:
        """Bytes (``Entry.size()``) of the entries held in ``lo..hi`` (inclusive; indexes
        outside what is held count nothing)."""
        lo = max(lo, self.offset + 1)
        hi = min(hi, self.last_index)
        if hi < lo:
            return 0
        return self._cum_at(hi) - self._cum_at(lo - 1)

    def index_keeping(self, upto: int, max_bytes: int) -> int:
        """The lowest index ``t >= offset`` such that the entries ``t+1..upto`` hold at
        most ``max_bytes`` (compacting through ``t`` keeps a trailing window of that size)."""
        upto = min(upto, self.last_index)
        if upto <= self.offset:
            return self.offset
        target = self._cum_at(upto) - max_bytes
        if self._base_cum >= target:
            return self.offset
        return self.offset + 1 + bisect.bisect_left(self._cum, target)

    def match_term(self, index: int, term: int) -> bool:
        t = self.term(index)
        return t is not None and t == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's voting rule (§5.4.1): is a log ending at (last_index, last_term) at least as
        up to date as ours?"""
        mine = self.last_term
        return last_term > mine or (last_term == mine and last_index >= self.last_index)

    def entry(self, index: int) -> Entry:
        return self._entries[index - self.offset - 1]

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry] | None:
        """Entries ``lo..hi-1`` (at least one if any, then up to ``max_bytes``); None if ``lo``
        is compacted."""
        if lo <= self.offset:
            return None
        hi = min(hi, self.last_index + 1)
        if lo >= hi:
            return []
        ents = self._entries[lo - self.offset - 1 : hi - self.offset - 1]
        if max_bytes is None:
            return ents
        size = 0
        for n, e in enumerate(ents):
            size += e.size()
            if n > 0 and size > max_bytes:
                return ents[:n]
        return ents

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry whose term differs from ours (or that we lack); 0 if none."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, with that term.

        Used for fast backtracking: entries above it cannot match a log whose entry at
        ``index`` has term ``term``, so a whole term is skipped per round trip.
        """
        idx = min(index, self.last_index)
        while idx >= self.offset:
            t = self.term(idx)
            if t is None:
                break
            if t <= term:
                return idx, t
            idx -= 1
        return self.offset, self.offset_term

    # -- mutations -----------------------------------------------------------------------

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> int | None:
        """AppendEntries receiver rules: if the entry before ``entries`` matches, append them
        (cutting any conflicting suffix), advance commit and return the new last index."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        ci = self.find_conflict(entries)
        if ci:
            if ci <= self.committed:
                raise LogInvariantError(
                    f"entry {ci} conflicts with the committed prefix (commit {self.committed})"
                )
            self.append(entries[ci - prev_index - 1 :])
        self.commit_to(min(commit, last_new))
        return last_new

    def append(self, entries: Sequence[Entry]) -> int:
        """Append entries, first cutting our log after ``entries[0].index - 1``."""
        if not entries:
            return self.last_index
        after = entries[0].index - 1
        if after < self.committed:
            raise LogInvariantError(f"cannot truncate below commit {self.committed} (at {after})")
        if after > self.last_index:
            raise LogInvariantError(f"gap: appending {after + 1} after {self.last_index}")
        del self._entries[after - self.offset :]
        del self._cum[after - self.offset :]
        self._entries.extend(entries)
        total = self._cum[-1] if self._cum else self._base_cum
        cum = self._cum
        for e in entries:
            total += e.size()
            cum.append(total)
        self.stable = min(self.stable, after)
        self.in_progress = min(self.in_progress, after)
        if self.listener is not None:
            self.listener(after, entries)
        return self.last_index

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index:
                raise LogInvariantError(f"commit {index} beyond last index {self.last_index}")
            self.committed = index

    def unstable_entries(self) -> list[Entry]:
        """Entries not yet handed to the runtime for persisting."""
        return self._entries[self.in_progress - self.offset :]

    def stable_to(self, index: int, term: int) -> None:
        """The runtime persisted entries up to (index, term); ignored if they were replaced."""
        if self.match_term(index, term) and index > self.stable:
            self.stable = index
            self.in_progress = max(self.in_progress, index)

    def next_committed(self, limit: int) -> list[Entry]:
        """Committed, persisted entries not yet handed out for applying (at most ``limit``)."""
        lo = max(self.applying + 1, self.first_index)
        hi = min(self.committed, self.stable, lo + limit - 1)
        if hi < lo:
            return []
        return self._entries[lo - self.offset - 1 : hi - self.offset]

    def compact(self, index: int) -> None:
        """Forget entries up to ``index`` (they are in a snapshot)."""
        if index <= self.offset:
            return
        if index > self.applied or index > self.stable:
            raise LogInvariantError(f"cannot compact to {index} beyond applied/persisted")
        t = self.term(index)
        assert t is not None
        k = index - self.offset
        self._base_cum = self._cum[k - 1]
        del self._entries[:k]
        del self._cum[:k]
        self.offset, self.offset_term = index, t

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self._entries = []
        self._cum = []
        self._base_cum = 0
        self.offset, self.offset_term = snapshot.index, snapshot.term
        self.committed = snapshot.index
        self.stable = self.in_progress = snapshot.index
        self.applying = max(self.applying, snapshot.index)
        self.snapshot = snapshot
        self.pending_snapshot = snapshot

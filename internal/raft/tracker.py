"""The leader's view of each follower's replication progress, with flow control.

A follower is in one of three states (as in etcd-io/raft):

- PROBE: we do not know where its log ends; send one AppendEntries at a time and wait for
  the answer (or a heartbeat response) before sending the next.
- REPLICATE: its log matches ours up to ``match``; stream AppendEntries optimistically
  (``next`` runs ahead of ``match``) while fewer than ``max_inflight_msgs`` are unacknowledged.
- SNAPSHOT: it needs a snapshot; send nothing until the runtime reports the transfer's end.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class ProgressState(enum.Enum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


@dataclass(slots=True)
class Inflights:
    """Last indexes of the AppendEntries sent but not acknowledged, oldest first."""

    capacity: int
    _items: deque[int] = field(default_factory=deque)

    def add(self, last_index: int) -> None:
        self._items.append(last_index)

    def free_le(self, index: int) -> None:
        """Forget every message whose entries are all acknowledged by ``index``."""
        while self._items and self._items[0] <= index:
            self._items.popleft()

    def free_first_one(self) -> None:
        if self._items:
            self._items.popleft()

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def __len__(self) -> int:
        return len(self._items)

    def reset(self) -> None:
        self._items.clear()


@dataclass(slots=True)
class Progress:
    """Replication progress of one peer, seen from the leader."""

    match: int
    next: int
    inflights: Inflights
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    """In PROBE: an AppendEntries is out; wait for its answer or a heartbeat response."""
    pending_snapshot: int = 0
    recent_active: bool = False
    """Heard from within the current check-quorum period."""

    def reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self.reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self.reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self.reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self.reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to ``index`` arrived; False if it was stale."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejection of the AppendEntries whose previous index was ``rejected`` arrived;
        move ``next`` back (to just after ``match_hint``). False if the rejection was stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    @property
    def paused(self) -> bool:
        """True if nothing more may be sent to this peer for now (flow control)."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full
        return True

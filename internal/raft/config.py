"""Configuration of the Raft core (a frozen dataclass checked by ``validate()``)."""

from __future__ import annotations

from dataclasses import dataclass

from raftlog.raft.errors import ConfigError
from raftlog.raft.types import NodeId


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Settings of one Raft node. Times are counted in ticks: the runtime decides how long a
    tick lasts (for example 100 ms), so the core never reads a clock.

    Attributes:
        id: this node's id (non-empty string; never its address).
        election_tick: a follower that hears no leader for a random number of ticks in
            ``[election_tick, 2 * election_tick)`` starts an election; a check-quorum leader
            that heard from no quorum within ``election_tick`` ticks steps down. Default 10.
        heartbeat_tick: ticks between leader heartbeats; must be less than
            ``election_tick`` (at least 3 heartbeats per election timeout is advisable).
            Default 1.
        max_inflight_msgs: flow-control window: how many AppendEntries a leader keeps in
            flight to one follower before waiting for acknowledgements. Default 256.
        max_size_per_msg: byte budget of the entries in one AppendEntries (at least one
            entry is always sent, whatever its size). Default 1 MiB.
        pre_vote: run a pre-vote round before a real election, so that a node that was
            partitioned away cannot disrupt the cluster by raising the term. Default True.
        check_quorum: a leader steps down if it has not heard from a quorum within an
            election timeout, and followers that recently heard a leader ignore votes
            (leader stickiness). Default True.
        snapshot_threshold: once this many entries have been applied since the last
            snapshot, ``RaftCore.should_snapshot()`` becomes true and the runtime should take
            a snapshot. 0 disables the hint. Default 8192 entries.
        snapshot_trailing_entries: entries kept in the log below a new snapshot, so that a
            follower lagging only slightly still catches up from the log, not from a
            snapshot. Default 1024 entries.
        snapshot_chunk_bytes: size of the chunks in which the runtime streams a snapshot to
            a follower (the core itself never sees snapshot data). Default 1 MiB.
        max_committed_per_ready: at most this many committed entries are handed to the
            state machine in one Ready, bounding the work of one apply step. Default 4096.
    """

    id: NodeId
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_inflight_msgs: int = 256
    max_size_per_msg: int = 1 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    snapshot_threshold: int = 8192
    snapshot_trailing_entries: int = 1024
    snapshot_chunk_bytes: int = 1 << 20
    max_committed_per_ready: int = 4096

    def validate(self) -> RaftConfig:
        """Check every field alone and against the others; return self or raise ConfigError."""
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError(f"id must be a non-empty string, got {self.id!r}")
        if self.heartbeat_tick < 1:
            raise ConfigError(f"heartbeat_tick must be at least 1 tick, got {self.heartbeat_tick}")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError(
                f"election_tick ({self.election_tick}) must be greater than heartbeat_tick "
                f"({self.heartbeat_tick}), or followers would time out between heartbeats"
            )
        if self.max_inflight_msgs < 1:
            raise ConfigError(f"max_inflight_msgs must be at least 1, got {self.max_inflight_msgs}")
        if self.max_size_per_msg < 1:
            raise ConfigError(f"max_size_per_msg must be >= 1 byte, got {self.max_size_per_msg}")
        if self.snapshot_threshold < 0:
            raise ConfigError(
                f"snapshot_threshold must be >= 0 (0 disables), got {self.snapshot_threshold}"
            )
        if self.snapshot_trailing_entries < 0:
            raise ConfigError(
                f"snapshot_trailing_entries must be >= 0, got {self.snapshot_trailing_entries}"
            )
        if self.snapshot_chunk_bytes < 1:
            raise ConfigError(
                f"snapshot_chunk_bytes must be at least 1 byte, got {self.snapshot_chunk_bytes}"
            )
        if self.max_committed_per_ready < 1:
            raise ConfigError(
                f"max_committed_per_ready must be at least 1, got {self.max_committed_per_ready}"
            )
        return self

"""Configuration of the Raft core (:class:`RaftConfig`) and of its asyncio runtime
(:class:`NodeConfig`): frozen dataclasses checked by ``validate()``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raftlog.log import LogConfig
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
        snapshot_bytes: once entries holding this many bytes (``Entry.size()``) have been
            applied since the last snapshot, ``should_snapshot()`` becomes true too,
            whatever their number: the log the core holds in memory is bounded in bytes
            (an entry may carry a whole produce batch). 0 disables it. Default 32 MiB.
        snapshot_trailing_bytes: at most this many bytes of entries are kept below a new
            snapshot, even when ``snapshot_trailing_entries`` would keep more. 0 for no
            byte bound. Default 8 MiB.
        snapshot_trailing_entries: entries kept in the log below a new snapshot, so that a
            follower lagging only slightly still catches up from the log, not from a
            snapshot. Default 1024 entries.
        snapshot_chunk_bytes: size of the chunks in which the runtime streams a snapshot to
            a follower (the core itself never sees snapshot data). Default 1 MiB.
        max_committed_per_ready: at most this many committed entries are handed to the
            state machine in one Ready, bounding the work of one apply step. Default 4096.
        defer_commit_broadcast: when the leader's commit index moves, do not send every
            follower an empty append at once to tell it (etcd-io/raft's way): mark it
            (``RaftCore.commit_unsent``) and let the next append or heartbeat carry it, or
            the runtime's ``RaftCore.broadcast_commit()``, whichever comes first. With
            writes arriving one at a time this saves two messages per follower per write
            (the empty append and its answer); followers learn of a commit a little later,
            which Raft allows (commit knowledge is monotonic and only advisory to them).
            Default False.
        quiesce_after_ticks: a leader whose group has been idle this many ticks in a row
            (nothing proposed, every replica holding and knowing every committed entry, no
            read, transfer or snapshot under way) sends its followers a QUIESCE heartbeat and
            stops ticking; a follower that got it and holds everything stops counting
            election time. Any message wakes a node, and so do a proposal, a read or a
            transfer on the leader. So an idle group sends nothing: what makes many idle
            partitions per node cheap. The price: a follower of a quiesced group no longer
            notices on its own that the leader died; the runtime must tell it
            (``RaftCore.wake_quiesced``, from its node-level failure detection). 0 never
            quiesces. Default 0.
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
    snapshot_bytes: int = 32 << 20
    snapshot_trailing_bytes: int = 8 << 20
    snapshot_chunk_bytes: int = 1 << 20
    max_committed_per_ready: int = 4096
    defer_commit_broadcast: bool = False
    quiesce_after_ticks: int = 0

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
        if self.quiesce_after_ticks < 0:
            raise ConfigError(
                f"quiesce_after_ticks must be >= 0 (0 never quiesces), got "
                f"{self.quiesce_after_ticks}"
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
        if self.snapshot_bytes < 0:
            raise ConfigError(
                f"snapshot_bytes must be >= 0 (0 disables), got {self.snapshot_bytes}"
            )
        if self.snapshot_trailing_bytes < 0:
            raise ConfigError(
                f"snapshot_trailing_bytes must be >= 0 (0: no byte bound), got "
                f"{self.snapshot_trailing_bytes}"
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


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Settings of one :class:`RaftNode`. Times in seconds, sizes in bytes.

    Attributes:
        raft: the core's settings (``raft.id`` is this node's id; election and heartbeat
            timeouts are counted in ticks of ``tick_interval``).
        data_dir: directory of the node's state for :meth:`RaftNode.on_disk`:
            ``raft-log/`` (log store), ``stable/`` (term and vote), ``snapshots/``.
            Created if missing. None (the default) for a node given its stores.
        tick_interval: length of one Raft tick. Default 0.05 s, so with the core's defaults
            (election_tick 10, heartbeat_tick 1) heartbeats go out every 50 ms and a
            follower starts an election after 0.5-1 s without a leader.
        fsync: make log writes, the hard state and snapshots durable before acting on them.
            Default True; False only for tests and benchmarks that measure without it.
        request_timeout: default bound of ``propose``, membership changes, transfers and
            read barriers when the caller gives none. Default 10 s.
        snapshot_retain: complete snapshots kept on disk. Default 2.
        snapshot_ack_timeout: how long a snapshot sender waits for the acknowledgement of
            one chunk before resending it. Default 5 s.
        snapshot_send_attempts: sends of one chunk before the stream is given up (the core
            then retries the whole snapshot later). Default 3.
        snapshot_idle_timeout: a partly received snapshot with no chunk for this long is
            dropped. Default 30 s.
        snapshot_retry_delay: wait after a failed local snapshot before trying again.
            Default 1 s.
        disk_full_retry_delay: after a write or an fsync failed with ENOSPC (a full disk),
            how long the node waits before writing the same entries again; meanwhile it
            refuses new writes with DiskFullError. Default 0.5 s.
        close_timeout: bound of each stage of :meth:`RaftNode.close` (finishing the
            current round, stopping tasks, closing the transport, closing the log).
            Default 5 s, so close returns within about 20 s in the worst case.
        log_config: engine settings of the log store (segment sizes); None for the
            defaults of :func:`raftlog.raft.logstore.default_log_config`.
        seed: seed of the election-timeout randomness; None draws one from the OS.
        commit_broadcast_delay: with a value above 0, a leader tells its followers of a new
            commit index at most this long after it moved (sooner when an append or a
            heartbeat carries it), instead of at once (``RaftConfig.defer_commit_broadcast``,
            turned on by the node for it). Must be below ``tick_interval``. Default 0 (at
            once); the agent uses :data:`raftlog.raft.node.AGENT_COMMIT_BROADCAST_DELAY`.
    """

    raft: RaftConfig
    data_dir: Path | None = None
    tick_interval: float = 0.05
    fsync: bool = True
    request_timeout: float = 10.0
    snapshot_retain: int = 2
    snapshot_ack_timeout: float = 5.0
    snapshot_send_attempts: int = 3
    snapshot_idle_timeout: float = 30.0
    snapshot_retry_delay: float = 1.0
    disk_full_retry_delay: float = 0.5
    close_timeout: float = 5.0
    commit_broadcast_delay: float = 0.0
    log_config: LogConfig | None = None
    seed: int | None = None

    def validate(self) -> NodeConfig:
        """Check every field alone and against the others; return self or raise
        ConfigError saying what is wrong."""
        self.raft.validate()
        if self.data_dir is not None and not str(self.data_dir):
            raise ConfigError("data_dir must name a directory")
        for name in (
            "tick_interval",
            "request_timeout",
            "snapshot_ack_timeout",
            "snapshot_idle_timeout",
            "snapshot_retry_delay",
            "disk_full_retry_delay",
            "close_timeout",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.tick_interval > 10:
            raise ConfigError(
                f"tick_interval of {self.tick_interval} s is too long: elections would take "
                f"{self.tick_interval * self.raft.election_tick} s or more"
            )
        if self.snapshot_idle_timeout < self.snapshot_ack_timeout:
            raise ConfigError(
                f"snapshot_idle_timeout ({self.snapshot_idle_timeout} s) must be at least "
                f"snapshot_ack_timeout ({self.snapshot_ack_timeout} s), or a receiver would "
                "drop a stream whose sender is still waiting to resend"
            )
        if not isinstance(self.snapshot_retain, int) or self.snapshot_retain < 1:
            raise ConfigError(f"snapshot_retain must be at least 1, got {self.snapshot_retain!r}")
        if self.snapshot_send_attempts < 1:
            raise ConfigError(
                f"snapshot_send_attempts must be at least 1, got {self.snapshot_send_attempts}"
            )
        delay = self.commit_broadcast_delay
        if not isinstance(delay, int | float) or not 0 <= delay < self.tick_interval:
            raise ConfigError(
                f"commit_broadcast_delay must be at least 0 s and below tick_interval "
                f"({self.tick_interval} s: heartbeats carry the commit anyway), got {delay!r}"
            )
        return self

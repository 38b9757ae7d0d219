"""The node's telemetry, wired to its parts: what ``/metrics`` reports and when it is ready.

:class:`NodeTelemetry` owns the node's :class:`~raftlog.telemetry.NodeMetrics`, its
tracer provider (only with an OTLP endpoint) and the plain-HTTP listener (only with
``--metrics-addr``). :func:`register_cluster_metrics` adds the scrape-time metrics of a
cluster member (Raft, commit log, Serf, mux, forwarding, producers); every callback reads
the part's own counters, so the hot path pays nothing for them, and returns None (metric
left out of that scrape) while the part is not built yet or is gone.

The size of the data directory is measured in a thread before each scrape (and for the
admin Status call); nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from raftlog.config import AgentConfig
from raftlog.telemetry import MetricsServer, NodeMetrics, build_tracer_provider
from raftlog.telemetry.budget import LatencyBudget
from raftlog.telemetry.tracing import TRACER_NAME

if TYPE_CHECKING:
    from raftlog.agent.cluster import ClusterNode
    from raftlog.distributed import DistributedLog
    from raftlog.log import Log
    from raftlog.raft import RaftNode
    from raftlog.server import LocalLog

logger = logging.getLogger("raftlog.agent")

#: Longest a tracer provider may take to flush its last spans at shutdown (seconds).
TRACE_FLUSH_TIMEOUT_S = 5.0


def _tree_bytes(root: Path) -> int:
    """Blocking: bytes allocated on disk to the files under ``root`` (0 if it does not
    exist). Allocated blocks, not apparent sizes: index files are preallocated sparse
    files whose apparent size is far beyond what they hold."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue  # removed meanwhile (a segment dropped, a snapshot replaced)
    return total


class DiskUsage:
    """Bytes of a node's data directory, measured in a thread, the last value kept."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.last: int | None = None

    async def measure(self) -> int:
        """Walk the directory now (off the event loop) and return its size in bytes."""
        self.last = await asyncio.to_thread(_tree_bytes, self.root)
        return self.last


class NodeTelemetry:
    """Metrics, traces and the HTTP listener of one node, built from its config."""

    def __init__(self, config: AgentConfig, version: str = "") -> None:
        self.config = config
        self.metrics = NodeMetrics(config.node_name, version)
        self.disk = DiskUsage(config.data_dir)
        self.metrics.callbacks.gauge(
            "raftlog_disk_bytes",
            "Bytes this node's data directory takes on disk (allocated blocks: commit log, "
            "Raft log, snapshots).",
            lambda: self.disk.last,
        )
        endpoint = config.tracing_endpoint()
        self.tracer_provider: TracerProvider | None = None
        self.tracer: trace.Tracer | None = None
        if endpoint:
            self.use_tracer_provider(
                build_tracer_provider(config.node_name, otlp_endpoint=endpoint)
            )
        #: The latency budget (debug setting ``latency_budget``; None when off).
        self.budget: LatencyBudget | None = None
        if config.latency_budget:
            self.metrics.enable_stage_histogram()
            self.budget = LatencyBudget(observer=self.metrics)
        self.server: MetricsServer | None = None
        self._ready: Callable[[], tuple[bool, str]] = lambda: (False, "starting")

    def use_tracer_provider(self, provider: TracerProvider) -> None:
        """Trace with ``provider`` (tests pass one with an in-memory exporter); :meth:`close`
        shuts it down (flushing its spans)."""
        self.tracer_provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME)

    def set_readiness(self, ready: Callable[[], tuple[bool, str]]) -> None:
        """What /readyz answers from now on."""
        self._ready = ready

    def readiness(self) -> tuple[bool, str]:
        """What /readyz answers now: (ready, reason)."""
        return self._ready()

    async def start(self) -> None:
        """Serve /metrics, /healthz and /readyz when ``metrics_addr`` is set."""
        addr = self.config.metrics_addr
        if not addr:
            return
        host, _, port = addr.rpartition(":")
        server = MetricsServer(
            self.metrics,
            self.readiness,
            host.strip("[]"),
            int(port),
            before_scrape=self._before_scrape,
            budget=self.budget,
        )
        await server.start()
        self.server = server
        logger.info("metrics, /healthz and /readyz on http://%s (plain HTTP)", server.address)

    async def _before_scrape(self) -> None:
        await self.disk.measure()

    async def close(self) -> None:
        """Stop the listener, flush the spans still buffered (bounded). Idempotent."""
        server, self.server = self.server, None
        if server is not None:
            await server.close()
        provider, self.tracer_provider = self.tracer_provider, None
        if provider is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(provider.shutdown), TRACE_FLUSH_TIMEOUT_S)
            except TimeoutError:
                logger.warning("spans not flushed within %.0f s", TRACE_FLUSH_TIMEOUT_S)


def register_tls_metrics(metrics: NodeMetrics, expiry: Callable[[], Mapping[str, float]]) -> None:
    """``raftlog_tls_certificate_expiry_seconds{certificate}``: seconds until each
    certificate of the node expires (``server``, ``peer``, and ``server_ca``/``peer_ca``
    for the first CA of each bundle to expire); negative once expired."""

    def read() -> Mapping[tuple[str, ...], float] | None:
        found = expiry()
        return {(name,): left for name, left in found.items()} or None

    metrics.callbacks.gauge(
        "raftlog_tls_certificate_expiry_seconds",
        "Seconds until each TLS certificate of this node expires (reloaded on SIGHUP).",
        read,
        labels=("certificate",),
    )


def register_cluster_metrics(metrics: NodeMetrics, cluster: ClusterNode) -> None:
    """Add the scrape-time metrics of a cluster member (see the module docstring)."""
    cb = metrics.callbacks

    def node_attr(read: Callable[[RaftNode], float]) -> Callable[[], float | None]:
        def value() -> float | None:
            node = cluster.node
            return None if node is None or node.closed else read(node)

        return value

    cb.gauge("raftlog_raft_term", "Current Raft term.", node_attr(lambda n: n.term))
    cb.gauge(
        "raftlog_raft_commit_index",
        "Highest Raft index known committed on a quorum.",
        node_attr(lambda n: n.commit_index),
    )
    cb.gauge(
        "raftlog_raft_applied_index",
        "Highest Raft index applied to the commit log here.",
        node_attr(lambda n: n.applied_index),
    )
    cb.gauge(
        "raftlog_raft_last_index",
        "Last index of the Raft log here.",
        node_attr(lambda n: n.last_index),
    )
    cb.gauge(
        "raftlog_raft_snapshot_index",
        "Index of the newest snapshot here (0 = none).",
        node_attr(lambda n: n.snapshot_index),
    )
    cb.gauge(
        "raftlog_raft_leader",
        "1 if this node is the leader, else 0 (the cluster's sum should be exactly 1).",
        node_attr(lambda n: 1.0 if n.is_leader else 0.0),
    )
    cb.gauge(
        "raftlog_raft_leader_known",
        "1 if this node knows a leader, else 0.",
        node_attr(lambda n: 1.0 if n.leader_id else 0.0),
    )

    def stats(attr: str) -> Callable[[], float | None]:
        return node_attr(lambda n: getattr(n.stats, attr))

    cb.counter(
        "raftlog_raft_snapshots_sent", "Snapshots streamed to followers.", stats("snapshots_sent")
    )
    cb.counter(
        "raftlog_raft_snapshots_received",
        "Snapshots received from a leader and installed.",
        stats("snapshots_received"),
    )
    cb.counter("raftlog_raft_snapshots_taken", "Snapshots taken here.", stats("snapshots_taken"))
    cb.counter(
        "raftlog_raft_snapshot_send_failures",
        "Snapshot streams to followers that failed.",
        stats("snapshot_send_failures"),
    )
    cb.counter("raftlog_raft_rounds", "Ready rounds handled by the Raft runtime.", stats("rounds"))
    cb.counter("raftlog_raft_fsyncs", "Rounds that synced the Raft log to disk.", stats("syncs"))
    cb.counter(
        "raftlog_raft_entries_applied",
        "Raft entries applied to the commit log here.",
        stats("entries_applied"),
    )

    def scrub(attr: str) -> Callable[[], float | None]:
        def value() -> float | None:
            dlog = cluster.dlog
            return None if dlog is None else float(getattr(dlog.scrubber.stats, attr))

        return value

    for name, attr, doc in (
        (
            "raftlog_scrub_bytes",
            "scrubbed_bytes",
            "Bytes of sealed segments the scrubber re-read and verified (bytes).",
        ),
        ("raftlog_scrub_passes", "passes", "Full scrub passes over the sealed segments."),
        (
            "raftlog_scrub_corrupt_records",
            "corrupt_records",
            "Damaged records found here (by the scrubber, a read or a checkpoint-hash vote).",
        ),
        (
            "raftlog_repaired_records",
            "repaired_records",
            "Damaged records rewritten here from a replica's verified copy.",
        ),
        (
            "raftlog_repair_failures",
            "repair_failures",
            "Repair attempts that found no verified copy yet (retried).",
        ),
        (
            "raftlog_checkpoint_hashes_checked",
            "checkpoint_hashes_checked",
            "Checkpoint hashes this replica compared with its own content.",
        ),
        (
            "raftlog_checkpoint_hash_mismatches",
            "checkpoint_hash_mismatches",
            "Checkpoint hashes that differed from this replica's content.",
        ),
    ):
        cb.counter(name, doc, scrub(attr))
    cb.gauge(
        "raftlog_damaged_records",
        "Records known damaged here now (reads of them answer DATA_LOSS until repaired).",
        lambda: None if cluster.dlog is None else float(len(cluster.dlog.scrubber.damaged)),
    )

    def follower_lag() -> Mapping[tuple[str, ...], float] | None:
        node = cluster.node
        if node is None or node.closed or not node.is_leader:
            return None
        status = node.status()
        last = status.last_index
        return {
            (peer,): float(max(0, last - progress.match))
            for peer, progress in status.progress.items()
            if peer != status.id
        }

    cb.gauge(
        "raftlog_raft_follower_lag_entries",
        "On the leader: entries each member's log is behind the leader's last entry.",
        follower_lag,
        labels=("peer",),
    )

    def members() -> Mapping[tuple[str, ...], float] | None:
        node = cluster.node
        if node is None or node.closed:
            return None
        membership = node.membership
        voters = len(membership.voters)
        return {("voter",): float(voters), ("learner",): float(len(membership) - voters)}

    cb.gauge(
        "raftlog_raft_members",
        "Members of the Raft configuration this node knows, by suffrage.",
        members,
        labels=("suffrage",),
    )

    def dlog_attr(read: Callable[[DistributedLog], float]) -> Callable[[], float | None]:
        def value() -> float | None:
            dlog = cluster.dlog
            return None if dlog is None else read(dlog)

        return value

    cb.gauge(
        "raftlog_log_lowest_offset",
        "Lowest offset the commit log holds here.",
        dlog_attr(lambda d: d.lowest_offset),
    )
    cb.gauge(
        "raftlog_log_highest_offset",
        "Highest committed offset applied here (lowest - 1 when empty).",
        dlog_attr(lambda d: d.highest_offset),
    )
    cb.counter(
        "raftlog_forwarded_writes",
        "Writes this follower forwarded to the leader (batches, not records).",
        dlog_attr(lambda d: d.forwarded),
    )
    cb.counter(
        "raftlog_idempotent_duplicates",
        "Idempotent retries answered from this node's table without a Raft round.",
        dlog_attr(lambda d: d.duplicates_short_circuited),
    )

    def commit_log() -> Log | None:
        fsm = cluster.fsm
        return None if fsm is None else fsm.log

    def segments() -> float | None:
        log = commit_log()
        return None if log is None or log.closed else float(len(log.segments))

    def store_bytes() -> float | None:
        log = commit_log()
        if log is None or log.closed:
            return None
        return float(sum(seg.store.size for seg in log.segments))

    cb.gauge("raftlog_log_segments", "Segments of the commit log here.", segments)
    cb.gauge(
        "raftlog_log_store_bytes",
        "Bytes of the commit log's store files (records and framing) here.",
        store_bytes,
    )
    cb.gauge(
        "raftlog_idempotent_producers",
        "Idempotent producers tracked in the deduplication table here.",
        lambda: None if cluster.fsm is None else float(len(cluster.fsm.producers)),
    )

    def serf_members() -> Mapping[tuple[str, ...], float] | None:
        membership = cluster.serf_view()
        if membership is None:
            return None
        counts = dict.fromkeys(("alive", "leaving", "left", "failed"), 0.0)
        for member in membership.values():
            counts[member.status] = counts.get(member.status, 0.0) + 1
        return {(status,): n for status, n in counts.items()}

    cb.gauge(
        "raftlog_serf_members",
        "Serf members this node sees, by status (alive, leaving, left, failed).",
        serf_members,
        labels=("status",),
    )

    def mux_connections() -> Mapping[tuple[str, ...], float] | None:
        mux = cluster.mux
        if mux is None:
            return None
        m = mux.metrics
        return {
            ("grpc",): float(m.relayed),
            ("raft",): float(m.raft),
            ("rejected",): float(m.rejected),
            ("timed_out",): float(m.timed_out),
            ("closed_early",): float(m.closed_early),
        }

    cb.counter(
        "raftlog_mux_connections",
        "Connections the mux accepted, by kind: grpc, raft, or refused (rejected, "
        "timed_out, closed_early).",
        mux_connections,
        labels=("kind",),
    )
    cb.gauge(
        "raftlog_mux_open_relays",
        "gRPC connections relayed through the mux now.",
        lambda: None if cluster.mux is None else float(cluster.mux.metrics.active_relays),
    )


def register_local_metrics(metrics: NodeMetrics, local: Callable[[], LocalLog | None]) -> None:
    """The commit-log metrics of a single node (no Raft)."""
    cb = metrics.callbacks

    def offsets(read: Callable[[LocalLog], int]) -> Callable[[], float | None]:
        def value() -> float | None:
            log = local()
            return None if log is None else float(read(log))

        return value

    cb.gauge(
        "raftlog_log_lowest_offset",
        "Lowest offset the commit log holds here.",
        offsets(lambda local: local.lowest_offset),
    )
    cb.gauge(
        "raftlog_log_highest_offset",
        "Highest offset in the commit log here (lowest - 1 when empty).",
        offsets(lambda local: local.highest_offset),
    )


def leader_readiness(cluster: ClusterNode) -> Callable[[], tuple[bool, str]]:
    """/readyz of a cluster member: serving, and a leader is known."""

    def ready() -> tuple[bool, str]:
        node, server = cluster.node, cluster.server
        if node is None or server is None or node.closed:
            return False, "starting or stopping"
        if not node.leader_id:
            return False, "no leader known"
        return True, ""

    return ready

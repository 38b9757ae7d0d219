"""The Prometheus metrics of one node: a registry of its own and the hot-path instruments.

Each node owns a :class:`NodeMetrics` (never the process-global registry, so tests can run
several nodes in one process). Two kinds of metric live in it:

- instruments updated as things happen, kept to once per call or per batch (never per
  record): gRPC calls, records and bytes produced and consumed, proposal latency, Raft's
  append batch sizes, fsync latency and leader changes;
- everything else is read at scrape time through :attr:`NodeMetrics.callbacks` (a
  :class:`~raftlog.telemetry.collect.CallbackCollector`) from the parts that already keep
  the number: Raft's term and indexes, the commit log's offsets and size, the mux's
  counters, Serf's member view.

Names follow the Prometheus conventions: prefix ``raftlog_``, base units (seconds,
bytes), ``_total`` on counters. Labels are bounded sets (gRPC method and status code, peer
id, member status, connection kind), never per record or per client.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from raftlog.telemetry.collect import CallbackCollector

#: Latency buckets of calls and proposals (seconds): 0.5 ms to 10 s.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: fsync buckets (seconds): 50 µs to 2.5 s.
FSYNC_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5,
)  # fmt: skip
#: Latency-budget stage buckets (seconds): 10 µs to 100 ms.
STAGE_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1,
)  # fmt: skip
#: Entries per Raft append round: 1 to 8192.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

#: The content type of the text exposition format served on /metrics.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class NodeMetrics:
    """Every metric of one node, in a registry of its own.

    ``node_id`` becomes the ``node_id`` label of ``raftlog_node_info`` (and nothing else:
    Prometheus adds the scrape target's ``instance`` label to every series).
    """

    def __init__(self, node_id: str, version: str = "") -> None:
        self.node_id = node_id
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        info = Gauge(
            "raftlog_node_info",
            "Always 1; labels name this node (join on it in dashboards).",
            ["node_id", "version"],
            registry=registry,
        )
        info.labels(node_id, version).set(1)
        #: Gauges and counters read at scrape time; the agent adds them.
        self.callbacks = CallbackCollector()
        registry.register(self.callbacks)

        self.grpc_requests = Counter(
            "raftlog_grpc_requests",
            "gRPC calls served, by full method name and final status code.",
            ["method", "code"],
            registry=registry,
        )
        self.grpc_duration = Histogram(
            "raftlog_grpc_request_duration_seconds",
            "Time from a call's start to its status, by full method name (seconds).",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.produced_records = Counter(
            "raftlog_produced_records",
            "Records acknowledged to producers by this node (forwarded calls are counted "
            "by the node the client called, not again by the leader).",
            registry=registry,
        )
        self.produced_bytes = Counter(
            "raftlog_produced_bytes",
            "Payload bytes of the records counted in raftlog_produced_records_total.",
            registry=registry,
        )
        self.consumed_records = Counter(
            "raftlog_consumed_records", "Records sent to consumers.", registry=registry
        )
        self.consumed_bytes = Counter(
            "raftlog_consumed_bytes",
            "Payload bytes of the records sent to consumers.",
            registry=registry,
        )
        self.proposal_seconds = Histogram(
            "raftlog_raft_proposal_commit_seconds",
            "On the leader: time from proposing a batch to Raft until it is committed on a "
            "quorum and applied here (seconds).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.append_entries = Histogram(
            "raftlog_raft_append_batch_entries",
            "Entries written to the Raft log per round (one write and one fsync each).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.fsync_seconds = Histogram(
            "raftlog_raft_fsync_seconds",
            "Time of one durable write of the Raft log and hard state (seconds).",
            buckets=FSYNC_BUCKETS,
            registry=registry,
        )
        self.leader_changes = Counter(
            "raftlog_raft_leader_changes",
            "Times this node saw the leader change (to another node or to none).",
            registry=registry,
        )
        self._calls: dict[tuple[str, str], Callable[[float], None]] = {}
        self._call_counts: dict[tuple[str, str], Callable[[], None]] = {}

        self._stages: Histogram | None = None
        self._stage_observers: dict[str, Callable[[float], None]] = {}

    def enable_stage_histogram(self) -> None:
        """Register ``raftlog_debug_request_stage_seconds{stage}`` (the latency budget's
        durations, debug: only when ``latency_budget`` is on)."""
        if self._stages is None:
            self._stages = Histogram(
                "raftlog_debug_request_stage_seconds",
                "Debug (latency_budget): duration of each stage of an acknowledged unary "
                "Produce (see raftlog.telemetry.budget.STAGES), in seconds.",
                ["stage"],
                buckets=STAGE_BUCKETS,
                registry=self.registry,
            )

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One latency-budget duration (:class:`raftlog.telemetry.budget.StageObserver`)."""
        observe = self._stage_observers.get(stage)
        if observe is None:
            if self._stages is None:
                return
            observe = self._stages.labels(stage).observe
            self._stage_observers[stage] = observe
        observe(seconds)

    # -- hot path: once per call or per batch ----------------------------------------------

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        """One gRPC call ended with status ``code`` after ``seconds``."""
        key = (method, code)
        count = self._call_counts.get(key)
        if count is None:
            count = self.grpc_requests.labels(method, code).inc
            self._call_counts[key] = count
        count()
        observe = self._calls.get((method, ""))
        if observe is None:
            observe = self.grpc_duration.labels(method).observe
            self._calls[method, ""] = observe
        observe(seconds)

    def produced(self, records: int, nbytes: int) -> None:
        """A produce request of ``records`` records, ``nbytes`` payload bytes, succeeded."""
        self.produced_records.inc(records)
        self.produced_bytes.inc(nbytes)

    def consumed(self, records: int, nbytes: int) -> None:
        """``records`` records of ``nbytes`` payload bytes went to a consumer."""
        self.consumed_records.inc(records)
        self.consumed_bytes.inc(nbytes)

    def observe_proposal(self, seconds: float) -> None:
        """A batch proposed by this leader was committed and applied after ``seconds``."""
        self.proposal_seconds.observe(seconds)

    # The Raft runtime's observer (raftlog.raft's RaftMetrics protocol, by structure).

    def raft_appended(self, entries: int) -> None:
        """A round wrote ``entries`` entries to the Raft log."""
        self.append_entries.observe(entries)

    def raft_synced(self, seconds: float) -> None:
        """A round's durable write (fsync) took ``seconds``."""
        self.fsync_seconds.observe(seconds)

    def raft_leader_changed(self, term: int, leader: str) -> None:
        """The leader this node knows of changed (``leader`` is "" when none is known)."""
        self.leader_changes.inc()

    # -- exposition ------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (what /metrics serves)."""
        return generate_latest(self.registry)

"""The latency budget of one acknowledged write: where the time of a Produce goes.

A debug instrument (setting ``latency_budget``, default off; docs/performance.md). When it
is on, the outermost server interceptor opens a :class:`RequestTrace` for every unary
Produce and makes it the current one (a context variable, so the handler, the
DistributedLog and ``RaftNode.propose_batch`` running in the call's task find it without a
parameter). The Raft runtime stamps the trace as the proposal goes through it; when the call
ends the stamps become durations per stage, kept in a :class:`LatencyBudget` (the newest
``keep`` samples of each stage) and, when metrics are on, in the Prometheus histogram
``raftlog_debug_request_stage_seconds{stage}``.

The stages of one write on the leader, in order (each is the time between two stamps)::

    start ─ interceptors ─> handler ─ handler ─> proposed ─ queue ─> placed
      placed ─ send ─> sent ─ write ─> written ─ fsync ─> synced      (leader's own disk)
      sent ─ replicate ─> acked                    (first follower ack: network + its fsync)
      max(synced, acked) ─ commit ─> committed     (the round that sees the commit)
      committed ─ apply ─> applied ─ wake ─> resumed ─ respond ─> end
    server = end - start

A follower reports its side of a round: ``follower_fsync`` (its fsync) and
``follower_round`` (the append received -> its acknowledgement sent). Time outside the
server (client stack, TLS, kernel, the mux relay) is the client's latency minus ``server``.

Stamps are ``time.perf_counter_ns()``; one trace costs about a dozen of them (about 2 us).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Protocol

#: Stage -> what it measures (the order is the order of the path).
STAGES: dict[str, str] = {
    "interceptors": "server interceptors (observability, authentication, Casbin, decoding)",
    "handler": "the handler up to the proposal (checks, encoding the batch)",
    "queue": "proposal queued -> handed to the Raft core by the driver (event-loop hop)",
    "send": "appends to the followers encoded and handed to the transport",
    "write": "the leader's write of the entry to its Raft log (page cache)",
    "fsync": "the leader's fsync of its Raft log (in a worker thread)",
    "replicate": "append sent -> first follower acknowledgement received (the quorum of 3)",
    "commit": "the later of own fsync and quorum ack -> the round that applies the entry",
    "apply": "the state machine's apply (commit log write, producer table)",
    "wake": "proposal answered -> the handler resumes",
    "respond": "the handler resumes -> the call returns its response",
    "server": "interceptor entry -> call returns (the whole server side)",
    "follower_fsync": "on a follower: its fsync of the appended entries",
    "follower_round": "on a follower: append received -> acknowledgement sent",
}

#: Stamps of the leader path, in order (see the module docstring).
_SPANS: tuple[tuple[str, str, str], ...] = (
    ("interceptors", "start", "handler"),
    ("handler", "handler", "proposed"),
    ("queue", "proposed", "placed"),
    ("send", "placed", "sent"),
    ("write", "sent", "written"),
    ("fsync", "written", "synced"),
    ("replicate", "sent", "acked"),
    ("apply", "committed", "applied"),
    ("wake", "applied", "resumed"),
    ("respond", "resumed", "end"),
    ("server", "start", "end"),
)

#: Newest samples kept per stage (default 10,000).
DEFAULT_KEEP = 10_000


class StageObserver(Protocol):
    """Where a budget also reports each duration (the node's Prometheus histogram)."""

    def observe_stage(self, stage: str, seconds: float) -> None: ...


class LatencyBudget:
    """The newest ``keep`` durations (seconds) of every stage, with their percentiles."""

    def __init__(self, keep: int = DEFAULT_KEEP, observer: StageObserver | None = None) -> None:
        self._samples: dict[str, deque[float]] = {s: deque(maxlen=keep) for s in STAGES}
        self.observer = observer

    def observe(self, stage: str, seconds: float) -> None:
        self._samples[stage].append(seconds)
        if self.observer is not None:
            self.observer.observe_stage(stage, seconds)

    def record(self, trace: RequestTrace) -> None:
        """Turn a finished trace's stamps into durations (stages it did not reach: none)."""
        stamps = trace.stamps
        for stage, a, b in _SPANS:
            t0, t1 = stamps.get(a), stamps.get(b)
            if t0 is not None and t1 is not None and t1 >= t0:
                self.observe(stage, (t1 - t0) / 1e9)
        committed = stamps.get("committed")
        if committed is not None:
            before = max((stamps[k] for k in ("synced", "acked") if k in stamps), default=None)
            if before is not None and committed >= before:
                self.observe("commit", (committed - before) / 1e9)

    def summary(self) -> dict[str, dict[str, float]]:
        """Stage -> {count, p50_ms, p99_ms, mean_ms} of the samples kept (stages with none
        are left out)."""
        out: dict[str, dict[str, float]] = {}
        for stage, samples in self._samples.items():
            if samples:
                s = sorted(samples)
                n = len(s)
                out[stage] = {
                    "count": float(n),
                    "p50_ms": s[min(n - 1, n // 2)] * 1e3,
                    "p99_ms": s[min(n - 1, int(0.99 * n))] * 1e3,
                    "mean_ms": sum(s) / n * 1e3,
                }
        return out

    def reset(self) -> None:
        for samples in self._samples.values():
            samples.clear()


class RequestTrace:
    """The stamps (``time.perf_counter_ns()``) of one call, by name; the first stamp of a
    name wins (a stage is measured to the first time it happened)."""

    __slots__ = ("budget", "stamps")

    def __init__(self, budget: LatencyBudget) -> None:
        self.budget = budget
        self.stamps: dict[str, int] = {"start": time.perf_counter_ns()}

    def mark(self, name: str, at: int | None = None) -> None:
        if name not in self.stamps:
            self.stamps[name] = time.perf_counter_ns() if at is None else at

    def finish(self) -> None:
        self.mark("end")
        self.budget.record(self)


#: The trace of the call running in this task, if the budget is on.
CURRENT: ContextVar[RequestTrace | None] = ContextVar("raftlog_request_trace", default=None)


def mark(name: str) -> None:
    """Stamp ``name`` on the current call's trace (nothing when there is none)."""
    trace = CURRENT.get()
    if trace is not None:
        trace.mark(name)


def mark_all(traces: Iterable[RequestTrace], name: str) -> None:
    """Stamp ``name`` (one clock read for all) on every trace of ``traces``."""
    at = time.perf_counter_ns()
    for trace in traces:
        trace.mark(name, at)


__all__ = [
    "CURRENT",
    "DEFAULT_KEEP",
    "STAGES",
    "LatencyBudget",
    "RequestTrace",
    "StageObserver",
    "mark",
    "mark_all",
]

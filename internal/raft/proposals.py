"""Proposals in flight on a :class:`RaftNode`: queued, placed in the log, answered.

A proposal is queued when a caller makes it, handed to the core with every other queued
proposal in one call at the start of the driver's next round (one ticket, so the core's
per-call cost is paid once per round), then answered when its last entry is applied, or
failed when its entries are overwritten by another leader, folded into an installed
snapshot, or when its deadline passes.

Deadlines: proposals with the default timeout expire in the order they were made (a FIFO,
pruned from the front as they are answered); proposals with their own timeout sit in a
heap. The node checks both on every tick, so a timeout fires at most one tick late.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from raftlog.raft.core import RaftCore
from raftlog.raft.errors import ProposalTimeoutError, RaftError
from raftlog.raft.types import Entry, EntryType, ProposalTicket
from raftlog.telemetry.budget import RequestTrace


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """A committed and applied proposal: where it landed and what the state machine said."""

    index: int
    term: int
    result: Any


class Proposal:
    """A proposal waiting for its entries ``first..last`` (of ``term``) to be applied.

    Until it is handed to the core, ``items`` holds its data and ``first`` is 0. Once
    placed, ``items`` is dropped (the core and the log store hold the entries; a proposal
    waiting for its answer, or sitting in the deadline FIFO after its answer, must not keep
    a second copy of a whole batch alive).
    """

    __slots__ = ("deadline", "first", "future", "items", "last", "results", "term", "trace")

    def __init__(
        self,
        items: Sequence[bytes],
        future: asyncio.Future[list[ApplyResult]],
        deadline: float,
        trace: RequestTrace | None = None,
    ) -> None:
        self.items = items
        #: The latency-budget trace of the call that made it (budget on only).
        self.trace = trace
        self.future = future
        self.deadline = deadline
        self.term = 0
        self.first = 0
        self.last = 0
        self.results: list[ApplyResult] = []

    def place(self, ticket: ProposalTicket, first: int) -> None:
        self.term = ticket.term
        self.first = first
        self.last = first + len(self.items) - 1
        self.items = ()

    def __lt__(self, other: Proposal) -> bool:  # for the deadline heap
        return self.deadline < other.deadline


def _timed_out() -> ProposalTimeoutError:
    return ProposalTimeoutError("proposal not committed and applied in time (it may still commit)")


class ProposalTracker:
    """Every proposal of one node from the call to its answer (see the module docstring).

    ``lost`` makes the error of a proposal whose entry another leader replaced (the node
    passes a NotLeaderError naming the leader it knows now).
    """

    def __init__(self, lost: Callable[[], BaseException]) -> None:
        self._lost = lost
        #: Raft index -> the proposal that owns the entry there.
        self._pending: dict[int, Proposal] = {}
        self._pending_max = 0
        self._queued: list[Proposal] = []
        self._fifo: deque[Proposal] = deque()
        self._deadlines: list[tuple[float, int, Proposal]] = []
        self._deadline_seq = itertools.count()
        #: Traces (latency budget) of the proposals placed by the last :meth:`flush`, for
        #: the driver's round; and of the placed ones still waiting for an answer.
        self.placed_traces: list[RequestTrace] = []
        self.traced: dict[int, RequestTrace] = {}

    # -- state ----------------------------------------------------------------------------

    @property
    def has_queued(self) -> bool:
        """Proposals wait to be handed to the core."""
        return bool(self._queued)

    @property
    def has_pending(self) -> bool:
        """Placed proposals wait for their entries to apply."""
        return bool(self._pending)

    @property
    def has_deadlines(self) -> bool:
        return bool(self._deadlines or self._fifo)

    # -- intake ---------------------------------------------------------------------------

    def queue(self, p: Proposal, *, default_timeout: bool) -> None:
        """Queue ``p`` for the next round; its deadline joins the FIFO when it has the
        default timeout (deadlines in call order), else the heap."""
        self._queued.append(p)
        if default_timeout:
            self._fifo.append(p)
        else:
            heapq.heappush(self._deadlines, (p.deadline, next(self._deadline_seq), p))

    def flush(self, core: RaftCore) -> None:
        """Hand every queued proposal to the core as one batch of entries."""
        queued, self._queued = self._queued, []
        live = [p for p in queued if not p.future.done()]
        if not live:
            return
        data: list[bytes] = []
        for p in live:
            data.extend(p.items)
        try:
            ticket = core.propose(data)
        except RaftError as exc:
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        at = ticket.first_index
        pending = self._pending
        for p in live:
            p.place(ticket, at)
            for i in range(at, p.last + 1):
                pending[i] = p
            at = p.last + 1
            if p.trace is not None:
                p.trace.mark("placed")
                self.placed_traces.append(p.trace)
                self.traced[p.last] = p.trace
        self._pending_max = max(self._pending_max, ticket.last_index)

    def track(self, p: Proposal, ticket: ProposalTicket) -> None:
        """Track a proposal the caller already stepped into the core (membership changes)."""
        p.place(ticket, ticket.first_index)
        self._pending[ticket.first_index] = p
        self._pending_max = max(self._pending_max, ticket.last_index)
        heapq.heappush(self._deadlines, (p.deadline, next(self._deadline_seq), p))

    # -- answers --------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Fail proposals whose deadline is at or before ``now``."""
        fifo = self._fifo
        while fifo and (fifo[0].future.done() or fifo[0].deadline <= now):
            p = fifo.popleft()
            if not p.future.done():
                p.future.set_exception(_timed_out())
        heap = self._deadlines
        if len(heap) > 4096 and len(heap) > 4 * (len(self._pending) + len(self._queued)):
            # Most entries belong to proposals already answered: rebuild from the live ones
            # so that the heap stays proportional to what is in flight.
            heap = [d for d in heap if not d[2].future.done()]
            heapq.heapify(heap)
            self._deadlines = heap
        while heap and heap[0][0] <= now:
            _, _, p = heapq.heappop(heap)
            if not p.future.done():
                p.future.set_exception(_timed_out())

    def applied(self, committed: Sequence[Entry], results: Sequence[Any]) -> None:
        """``committed`` were applied; ``results`` are the state machine's answers for its
        NORMAL entries, in order. Answer every proposal whose last entry is among them."""
        pending = self._pending
        if not pending:
            return
        j = 0  # position in results of the next NORMAL entry
        for e in committed:
            result = None
            if e.type is EntryType.NORMAL:
                result = results[j]
                j += 1
            p = pending.pop(e.index, None)
            if p is None or p.future.done():
                continue
            if e.term != p.term:
                self.fail(p, self._lost())
                continue
            p.results.append(ApplyResult(e.index, e.term, result))
            if e.index == p.last:
                if p.trace is not None:
                    p.trace.mark("applied")
                p.future.set_result(p.results)
        if not pending:
            self._pending_max = 0

    def take_placed_traces(self) -> list[RequestTrace]:
        """The traces placed since the last call (the driver stamps them in its round)."""
        traces, self.placed_traces = self.placed_traces, []
        return traces

    def mark_traced(self, through: int, name: str) -> None:
        """Stamp ``name`` on the traces of placed proposals whose last entry is at or below
        ``through``; they leave :attr:`traced` once stamped ``committed``."""
        traced = self.traced
        if not traced:
            return
        done = [i for i in traced if i <= through]
        if not done:
            return
        at = time.perf_counter_ns()
        for i in done:
            traced[i].mark(name, at)
            if name == "committed":
                del traced[i]

    def fail(self, p: Proposal, exc: BaseException) -> None:
        if not p.future.done():
            p.future.set_exception(exc)
        for i in range(p.first, p.last + 1):
            if self._pending.get(i) is p:
                del self._pending[i]

    def drop_overwritten(self, entry_term: Callable[[int], int | None], first: int) -> None:
        """Entries from ``first`` were replaced: fail proposals whose entry is gone."""
        if first > self._pending_max:
            return
        for index, p in list(self._pending.items()):
            if index >= first and entry_term(index) != p.term:
                self.fail(p, self._lost())

    def fail_through(self, index: int, exc: Callable[[int], BaseException]) -> None:
        """Fail every proposal with an entry at or below ``index`` (an installed snapshot
        replaced them: whether they committed is unknown here)."""
        for i, p in list(self._pending.items()):
            if i <= index:
                self.fail(p, exc(i))

    def fail_queued(self, exc: BaseException) -> None:
        """Fail the proposals not yet handed to the core (no entry was made for them, so
        they certainly did not commit); their deadlines go when they expire."""
        queued, self._queued = self._queued, []
        for p in queued:
            if not p.future.done():
                p.future.set_exception(exc)

    def fail_all(self, exc: BaseException) -> None:
        for p in [*self._pending.values(), *self._queued]:
            if not p.future.done():
                p.future.set_exception(exc)
        self._pending.clear()
        self._queued = []
        self._deadlines = []
        self._fifo.clear()
        self._pending_max = 0
        self.placed_traces = []
        self.traced.clear()


__all__ = ["ApplyResult", "Proposal", "ProposalTracker"]

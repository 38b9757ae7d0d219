"""The idempotent producer's table: the recent sequences of each producer and their offsets.

A client that sets ``ProduceRequest.producer_id`` and ``sequence`` may retry a request whose
answer it lost; the log looks the pair up here and answers the retry with the offsets the
first attempt got instead of appending the records again.

What is remembered, per producer: the ``window`` highest sequences it has appended, each
with its (first, last) offsets. A client with several requests in flight at once (the
client's batcher) can retry any of them, in any order, as long as it never has requests
more than ``window`` sequences apart in flight (the client guarantees that, see
``ClientConfig.max_sequence_span``). A sequence that is not remembered is:

- new, when the producer's window is not full or the sequence is above its oldest entry:
  appended and remembered (the oldest entry is dropped when the window overflows);
- too old otherwise (below every remembered sequence): :class:`SequenceTooOldError`.
  It may have been appended and forgotten, so appending it could duplicate it.

Bounded memory: at most ``max_producers`` producers (the least recently used one is
forgotten to make room for a new one) and a producer not seen for ``expiry_s`` is forgotten.
A forgotten producer is a new producer: a retry that reaches the server after its producer
was forgotten is appended again. Defaults keep retries safe by a wide margin: the client
gives up on a request after ``request_timeout_s`` (30 s by default), far below the expiry.

Time is whatever the caller passes as ``now_ms`` (milliseconds). In a cluster, that is the
time the leader stamped into the Raft entry (never the replica's own clock), so every
replica expires the same producers at the same entry; the table's clock never goes back
(a stamp older than the clock, from a leader whose clock lags, counts as the clock).

The table is the same object in every replica's state machine (``CommitLogFSM``) and in
the single node (``LocalLog``); :meth:`dump` / :meth:`load` carry it through checkpoints
and snapshots.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from raftlog.domain.errors import SequenceTooOldError

#: Longest producer id, in bytes of UTF-8 (the proto's contract).
MAX_PRODUCER_ID_BYTES = 64


class ProducerConfigError(ValueError):
    """A :class:`ProducerConfig` field has an unusable value; the message names it."""


@dataclass(frozen=True)
class ProducerConfig:
    """Bounds of the producer table.

    In a cluster every replica must use the same values (they decide what an entry does
    when applied): they are fixed in code, not per-node settings.

    Attributes:
        window: sequences remembered per producer (the highest ones appended), each with
            its offsets. A client may have requests at most this many sequences apart in
            flight and still retry any of them. Default 32 (the client keeps its span at
            32 and has at most 4 batches in flight by default).
        max_producers: producers remembered at once; a new producer beyond it makes the
            least recently seen one forgotten. About 5 KiB each with a full window:
            the default 4096 bounds the table near 20 MiB.
        expiry_s: a producer not seen (no request, no retry) for this many seconds is
            forgotten. Default 3600 s (1 hour): two orders of magnitude above the client's
            default 30 s retry deadline, so a live producer's retries are always
            recognised, while producers of finished processes (each client has a new
            random id) do not pile up.
    """

    window: int = 32
    max_producers: int = 4096
    expiry_s: float = 3600.0

    def validate(self) -> ProducerConfig:
        """Raise ProducerConfigError naming the first unusable field; return self."""
        for name in ("window", "max_producers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ProducerConfigError(f"{name} must be a positive integer, got {value!r}")
        value = self.expiry_s
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ProducerConfigError(
                f"expiry_s must be a positive number of seconds, got {value!r}"
            )
        return self


def producer_id_problem(producer_id: str, sequence: int) -> str:
    """What is wrong with this (producer id, sequence) pair, or "" when it is usable.

    An empty producer id means "not idempotent" and then the sequence must be 0."""
    if not producer_id:
        return "" if sequence == 0 else "sequence is set but producer_id is empty"
    size = len(producer_id.encode("utf-8", "surrogatepass"))
    if size > MAX_PRODUCER_ID_BYTES:
        return f"producer_id is {size} bytes of UTF-8, more than {MAX_PRODUCER_ID_BYTES}"
    if sequence <= 0:
        return "sequence must be >= 1 with a producer_id (a retry reuses its sequence)"
    return ""


class _Producer:
    __slots__ = ("last_seen_ms", "seqs")

    def __init__(self, last_seen_ms: int) -> None:
        self.last_seen_ms = last_seen_ms
        #: sequence -> (first, last) offsets, the window's highest sequences.
        self.seqs: dict[int, tuple[int, int]] = {}


class _Undo:
    """What a table looked like before the changes since :meth:`ProducerTable.begin`."""

    __slots__ = ("clock_ms", "evicted", "expired", "order", "saved")

    def __init__(self, clock_ms: int, expired: int, evicted: int) -> None:
        self.clock_ms, self.expired, self.evicted = clock_ms, expired, evicted
        #: The producer ids in their order before the first change of order (or None).
        self.order: list[str] | None = None
        #: producer id -> its state before it first changed (a copy).
        self.saved: dict[str, _Producer] = {}


def _copy(p: _Producer) -> _Producer:
    c = _Producer(p.last_seen_ms)
    c.seqs = dict(p.seqs)
    return c


class ProducerTable:
    """producer id -> its recent sequences; least recently seen first (see module docs)."""

    def __init__(self, config: ProducerConfig | None = None) -> None:
        self.config = (config or ProducerConfig()).validate()
        self._producers: OrderedDict[str, _Producer] = OrderedDict()
        self._expiry_ms = int(self.config.expiry_s * 1000)
        #: The table's time in ms: the highest ``now_ms`` seen (never goes back).
        self.clock_ms = 0
        #: Producers forgotten because idle / because the table was full (for stats, tests).
        self.expired = 0
        self.evicted = 0
        self._undo: _Undo | None = None

    # -- all or nothing: the state machine applies a batch of entries at once --------------

    def begin(self) -> None:
        """Remember the table as it is now: :meth:`rollback` returns to it, :meth:`commit`
        keeps the changes made since. The state machine brackets one apply with them, so
        an append that fails (a full disk) leaves the table as if nothing was applied."""
        self._undo = _Undo(self.clock_ms, self.expired, self.evicted)

    def commit(self) -> None:
        self._undo = None

    def rollback(self) -> None:
        undo, self._undo = self._undo, None
        if undo is None:
            return
        self.clock_ms, self.expired, self.evicted = undo.clock_ms, undo.expired, undo.evicted
        if undo.order is None:
            return  # every change moves a producer: no order change, nothing changed
        current, saved = self._producers, undo.saved
        self._producers = OrderedDict((pid, saved.get(pid) or current[pid]) for pid in undo.order)

    def _before_change(self, producer_id: str) -> None:
        undo = self._undo
        if undo is None:
            return
        if undo.order is None:
            undo.order = list(self._producers)
        if producer_id not in undo.saved:
            p = self._producers.get(producer_id)
            if p is not None:
                undo.saved[producer_id] = _copy(p)

    def __len__(self) -> int:
        return len(self._producers)

    def __contains__(self, producer_id: object) -> bool:
        return producer_id in self._producers

    def advance(self, now_ms: int) -> None:
        """Move the clock to ``now_ms`` (if later) and forget producers idle too long."""
        self.clock_ms = max(self.clock_ms, now_ms)
        horizon = self.clock_ms - self._expiry_ms
        producers = self._producers
        while producers:
            pid, oldest = next(iter(producers.items()))
            if oldest.last_seen_ms >= horizon:
                break
            self._before_change(pid)
            del producers[pid]
            self.expired += 1

    def lookup(self, producer_id: str, sequence: int) -> tuple[int, int] | None:
        """The offsets remembered for this pair, or None; changes nothing."""
        producer = self._producers.get(producer_id)
        if producer is None:
            return None
        return producer.seqs.get(sequence)

    def check(self, producer_id: str, sequence: int) -> tuple[int, int] | None:
        """Offsets of a duplicate, None for a new sequence; SequenceTooOldError otherwise."""
        producer = self._producers.get(producer_id)
        if producer is None:
            return None
        seen = producer.seqs.get(sequence)
        if seen is not None:
            self._before_change(producer_id)
            producer.last_seen_ms = self.clock_ms
            self._producers.move_to_end(producer_id)
            return seen
        seqs = producer.seqs
        if len(seqs) >= self.config.window:
            oldest = min(seqs)
            if sequence < oldest:
                raise SequenceTooOldError(producer_id, sequence, oldest)
        return None

    def record(self, producer_id: str, sequence: int, first: int, last: int) -> None:
        """Remember that ``sequence`` of ``producer_id`` was appended at first..last."""
        producers = self._producers
        self._before_change(producer_id)
        producer = producers.get(producer_id)
        if producer is None:
            if len(producers) >= self.config.max_producers:
                self._before_change(next(iter(producers)))
                producers.popitem(last=False)
                self.evicted += 1
            producer = producers[producer_id] = _Producer(self.clock_ms)
        else:
            producer.last_seen_ms = self.clock_ms
            producers.move_to_end(producer_id)
        seqs = producer.seqs
        seqs[sequence] = (first, last)
        if len(seqs) > self.config.window:
            del seqs[min(seqs)]

    # -- persistence -------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The table as plain lists and numbers (JSON and msgpack both carry it)."""
        return {
            "clock_ms": self.clock_ms,
            "producers": [
                [pid, p.last_seen_ms, [[s, f, la] for s, (f, la) in p.seqs.items()]]
                for pid, p in self._producers.items()
            ],
        }

    def load(self, data: Any) -> None:
        """Replace the table's contents with a :meth:`dump`; ValueError if malformed."""
        try:
            clock = int(data["clock_ms"])
            producers: OrderedDict[str, _Producer] = OrderedDict()
            for pid, last_seen, seqs in data["producers"]:
                if not isinstance(pid, str):
                    raise ValueError(f"producer id {pid!r} is not a string")
                producer = _Producer(int(last_seen))
                for s, f, la in seqs:
                    producer.seqs[int(s)] = (int(f), int(la))
                producers[pid] = producer
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed producer table: {exc!r}") from exc
        self.clock_ms = clock
        self._producers = producers

    def clear(self) -> None:
        """Forget every producer (the clock stays)."""
        self._producers.clear()

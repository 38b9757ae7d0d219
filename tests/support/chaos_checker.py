"""The checker of the chaos harness: judges a :class:`~support.chaos_harness.History`
against the replicas' final logs.

Rules (what raftlog promises, docs/reliability.md):

- every acknowledged value is in the final log, at the offset it was acknowledged with;
- no value is in the log more than once: neither from the raw calls (never retried) nor
  from the load-balancing client, whose retries reuse its producer id and sequence (the
  idempotent producer: the leader answers a retry of an appended request with its first
  offsets instead of appending it again). Both are counted apart, and both fail the run;
- every replica holds the identical sequence; offsets are dense (a replica's read returns
  offset i at position i);
- every value in the log was sent by some producer (nothing invented);
- every record a consumer saw is the record the final log holds at that offset (no dirty
  read: a replica never served a value that was not committed there), and each
  uninterrupted stream saw consecutive offsets;
- a linearizable read of an offset acknowledged before the read began returns that
  offset's acknowledged value: an answer that differs, or OUT_OF_RANGE, is a stale read
  (a failed read, UNAVAILABLE or a timeout, proves nothing and is allowed);
- no node exited on its own (crash).
"""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass, field
from typing import Any

from support.chaos_harness import History


@dataclass
class Verdict:
    """Counts and the first few examples of each violation."""

    attempted: int = 0
    acknowledged: int = 0
    acknowledged_raw: int = 0
    lost: int = 0
    wrong_offset: int = 0
    duplicated_client: int = 0
    duplicated_raw: int = 0
    divergent_replicas: int = 0
    gaps: int = 0
    invented: int = 0
    dirty_reads: int = 0
    out_of_order_reads: int = 0
    linearizable_reads: int = 0
    linearizable_answered: int = 0
    stale_reads: int = 0
    records_read: int = 0
    final_length: int = 0
    crashes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def note(self, text: str) -> None:
        if len(self.problems) < 40:
            self.problems.append(text)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check(history: History, logs: dict[str, list[str]]) -> Verdict:
    """Judge ``history`` against the replicas' final ``logs`` (name -> values by offset)."""
    v = Verdict()
    names = sorted(logs)
    reference = logs[names[0]]
    v.final_length = len(reference)
    for name in names[1:]:
        if logs[name] != reference:
            v.divergent_replicas += 1
            first = next(
                (i for i, (a, b) in enumerate(zip(reference, logs[name], strict=False)) if a != b),
                min(len(reference), len(logs[name])),
            )
            v.note(
                f"replica {name} differs from {names[0]} at offset {first} "
                f"(lengths {len(logs[name])} vs {len(reference)})"
            )
    for name in names:
        holes = [x for x in logs[name] if x.startswith("<offset ")]
        if holes:
            v.gaps += len(holes)
            v.note(f"replica {name} served offsets out of place: {holes[:3]}")

    where: dict[str, list[int]] = collections.defaultdict(list)
    for offset, value in enumerate(reference):
        where[value].append(offset)

    sent = {op.value for op in history.ops}
    v.attempted = len(history.ops)
    for op in history.ops:
        found = where.get(op.value, [])
        raw = op.worker.startswith("raw-")
        if len(found) > 1:
            if raw:
                v.duplicated_raw += 1
                v.note(f"{op.value} (sent once, never retried) is at offsets {found}")
            else:
                v.duplicated_client += len(found) - 1
                v.note(
                    f"{op.value} (client, idempotent producer) is at offsets {found}: a retry "
                    "was appended again"
                )
        if op.result != "ok":
            continue
        v.acknowledged += 1
        v.acknowledged_raw += raw
        if not found:
            v.lost += 1
            v.note(f"acknowledged {op.value} at {op.offset} ({op.worker}) is lost")
        elif op.offset not in found:
            v.wrong_offset += 1
            v.note(f"acknowledged {op.value} at {op.offset}, but the log has it at {found}")
    for offset, value in enumerate(reference):
        if value != "sentinel" and value not in sent and not value.startswith("<offset "):
            v.invented += 1
            v.note(f"offset {offset} holds {value!r}, which no producer sent")

    for reader, segments in history.reads.items():
        for segment in segments:
            prev: int | None = None
            for offset, value in segment:
                v.records_read += 1
                if prev is not None and offset != prev + 1:
                    v.out_of_order_reads += 1
                    v.note(f"{reader} read offset {offset} right after {prev}")
                prev = offset
                if offset >= len(reference) or reference[offset] != value:
                    v.dirty_reads += 1
                    held = reference[offset] if offset < len(reference) else "nothing"
                    v.note(f"{reader} read {value!r} at {offset}; the final log holds {held!r}")
    for read in history.lin_reads:
        v.linearizable_reads += 1
        if read.got is not None:
            v.linearizable_answered += 1
            if read.got != read.expected:
                v.stale_reads += 1
                v.note(
                    f"linearizable read of {read.offset} at t={read.t} returned {read.got!r}, "
                    f"acknowledged there before: {read.expected!r}"
                )
        elif "OffsetOutOfRange" in read.error or "OUT_OF_RANGE" in read.error:
            v.stale_reads += 1
            v.note(
                f"linearizable read of {read.offset} at t={read.t} found nothing there "
                f"({read.error}), yet {read.expected!r} was acknowledged at it before"
            )
    v.crashes = len(history.crashes)
    for crash in history.crashes:
        v.note(f"node crash: {crash}")
    return v

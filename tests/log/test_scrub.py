"""The commit log's side of scrubbing: find a flipped byte in a sealed segment, rewrite the
record in place, the content digest, and the pacing math."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from raftlog.log import CorruptRecordError, Log, LogConfig, LogError, SyncPolicy, framing
from raftlog.log.scrub import (
    Damage,
    Span,
    hash_span,
    hash_span_per_record,
    new_digest,
    pace_delay,
    range_digest,
    read_span,
    rewrite_frame,
    spans_of,
)

SMALL = LogConfig(max_store_bytes=200, max_index_bytes=8 * 16, sync=SyncPolicy.NEVER)


def recs(n: int) -> list[bytes]:
    return [b"record-%05d" % i for i in range(n)]


def flip(path: Path, position: int) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0x10]))


def test_scrub_finds_a_flipped_byte_and_the_rewrite_repairs_it(tmp_path: Path) -> None:
    log = Log.open(tmp_path, SMALL)
    log.append_batch_nosync(recs(40))
    assert len(log.segments) > 2
    sealed = spans_of(log, log.lowest_offset, log.next_offset, sealed_only=True)
    assert sealed[-1].first + sealed[-1].count == log.segments[-1].base_offset
    victim = sealed[1]
    offset = victim.first + 2
    position, size = victim.frame(2)
    flip(victim.path, position + 8 + 3)  # a payload byte
    found = [d for span in sealed for d in read_span(span)[1]]
    assert [d.offset for d in found] == [offset] and "checksum" in found[0].reason
    with pytest.raises(CorruptRecordError) as info:
        log.read(offset)
    assert info.value.offset == offset
    records, _ = read_span(victim)
    assert records[2] is None and records[1] == b"record-%05d" % (offset - 1)
    rewrite_frame(victim.path, position, size, b"record-%05d" % offset)
    assert log.read(offset) == b"record-%05d" % offset
    assert all(not read_span(span)[1] for span in sealed)
    log.close_sync()


def test_a_damaged_length_header_is_found_too(tmp_path: Path) -> None:
    log = Log.open(tmp_path, SMALL)
    log.append_batch_nosync(recs(20))
    span = spans_of(log, 0, log.segments[0].next_offset, sealed_only=True)[0]
    position, size = span.frame(1)
    flip(span.path, position)  # the length field
    _, damage = read_span(span)
    assert [d.offset for d in damage] == [1] and "header says" in damage[0].reason
    rewrite_frame(span.path, position, size, b"record-00001")
    assert log.read(1) == b"record-00001"
    log.close_sync()


def test_rewrite_refuses_a_record_of_another_length(tmp_path: Path) -> None:
    log = Log.open(tmp_path, SMALL)
    log.append_batch_nosync(recs(20))
    span = spans_of(log, 0, 5)[0]
    position, size = span.frame(0)
    with pytest.raises(LogError, match="does not fit"):
        rewrite_frame(span.path, position, size, b"longer-than-the-frame")
    assert log.read(0) == b"record-00000"
    log.close_sync()


def test_the_digest_is_on_payloads_whatever_the_segments(tmp_path: Path) -> None:
    small = Log.open(tmp_path / "a", SMALL)
    big = Log.open(tmp_path / "b", LogConfig(sync=SyncPolicy.NEVER))
    small.append_batch_nosync(recs(50))
    big.append_batch_nosync(recs(50))
    digests = []
    for log in (small, big):
        payloads: list[bytes] = []
        for span in spans_of(log, 5, 45):
            for part in span.split(64):
                got, damage = read_span(part)
                assert not damage and (part.count == 1 or part.nbytes <= 64)
                payloads += [r for r in got if r is not None]
        assert payloads == recs(50)[5:45]
        digests.append(range_digest(payloads))
    assert digests[0] == digests[1] == range_digest(recs(50)[5:45])
    # streamed a chunk at a time (what a replica does, in a thread): the same digest
    h = new_digest()
    for span in spans_of(small, 5, 45):
        for part in span.split(100):
            assert hash_span(part, h) == []
    assert h.digest() == digests[0]
    assert range_digest(recs(50)[5:45]) != range_digest([*recs(50)[5:44], b"record-00045"])
    # the length prefix keeps record boundaries in the digest
    assert range_digest([b"ab", b"c"]) != range_digest([b"a", b"bc"])
    small.close_sync()
    big.close_sync()


@pytest.mark.parametrize(
    ("done", "elapsed", "rate", "delay"),
    [
        (1_000_000, 0.0, 1_000_000.0, 1.0),  # 1 MB at 1 MB/s: one second
        (1_000_000, 0.4, 1_000_000.0, 0.6),  # part of it already spent reading
        (1_000_000, 2.0, 1_000_000.0, 0.0),  # slower than the rate: no pause
        (500_000, 0.0, 2_000_000.0, 0.25),
        (10, 0.0, 0.0, 0.0),  # no rate: unpaced
    ],
)
def test_pacing(done: int, elapsed: float, rate: float, delay: float) -> None:
    assert pace_delay(done, elapsed, rate) == pytest.approx(delay)


def test_a_damaged_span_is_not_hashed(tmp_path: Path) -> None:
    log = Log.open(tmp_path, SMALL)
    log.append_batch_nosync(recs(20))
    span = spans_of(log, 0, 5)[0]
    flip(span.path, span.frame(3)[0] + 9)
    h = new_digest()
    empty = h.digest()
    damage = hash_span(span, h)
    assert [d.offset for d in damage] == [3] and h.digest() == empty
    log.close_sync()


def digest_and_damage(
    fn: Callable[[Span, hashlib.blake2b], list[Damage]], spans: list[Span]
) -> tuple[bytes, list[tuple[int, str]]]:
    h = new_digest()
    found: list[tuple[int, str]] = []
    for span in spans:
        found += [(d.offset, d.reason) for d in fn(span, h)]
    return h.digest(), found


@pytest.mark.parametrize("damage", ["none", "payload", "length", "check", "cut"])
def test_the_span_at_a_time_hash_matches_the_record_at_a_time_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """``hash_span`` checks and hashes a span in one go (native helper, or numpy without
    it); it gives the digest and the damage ``hash_span_per_record`` gives, for records of
    every size (empty ones too), over spans cut anywhere, with a damaged payload, length,
    check, or a frame cut short."""
    rng = random.Random(7)
    log = Log.open(tmp_path, LogConfig(max_store_bytes=64 << 10, sync=SyncPolicy.NEVER))
    for _ in range(30):
        log.append_batch_nosync(
            [
                rng.randbytes(rng.choice([0, 1, 7, 8, 9, 100, 1500]))
                for _ in range(rng.randint(1, 90))
            ]
        )
    spans = [p for s in spans_of(log, 3, log.next_offset) for p in s.split(rng.randint(50, 4000))]
    victim = spans[len(spans) // 2]
    position, size = victim.frame(victim.count // 2)
    if damage == "payload" and size > 8:
        flip(victim.path, position + 8)
    elif damage == "length":
        flip(victim.path, position)
    elif damage == "check":
        flip(victim.path, position + 5)
    elif damage == "cut":  # the last frame claims bytes beyond the end of the file
        spans[-1] = Span(spans[-1].path, spans[-1].first, spans[-1].positions, spans[-1].end + 16)
    reference = digest_and_damage(hash_span_per_record, spans)
    assert digest_and_damage(hash_span, spans) == reference
    monkeypatch.setattr(framing, "NATIVE", False)
    assert framing.native_module() is None
    assert digest_and_damage(hash_span, spans) == reference
    assert bool(reference[1]) == (damage != "none" and not (damage == "payload" and size <= 8))
    log.close_sync()

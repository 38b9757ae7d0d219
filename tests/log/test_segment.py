"""Unit tests of Segment: appends, limits, reads, suffix truncation, recovery basics."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from raftlog.log import CorruptRecordError, LogConfig, Segment
from raftlog.log.framing import encode_batch


def _append(seg: Segment, recs: list[bytes]) -> int:
    data, sizes = encode_batch(recs)
    return seg.append_encoded(data, sizes)


def test_append_read_and_batch_read(tmp_path: Path) -> None:
    seg = Segment.create(tmp_path, 100, LogConfig())
    recs = [b"rec-%d" % i * (i % 4) for i in range(50)]
    assert _append(seg, recs[:20]) == 100
    assert _append(seg, recs[20:]) == 120
    assert seg.next_offset == 150
    assert [seg.read(100 + i) for i in range(50)] == recs
    assert seg.read_batch(110, 10**9, 1000) == recs[10:]
    assert seg.read_batch(110, 10**9, 5) == recs[10:15]
    seg.close()


def test_is_maxed_by_store_bytes_and_by_index_entries(tmp_path: Path) -> None:
    by_bytes = Segment.create(tmp_path, 0, LogConfig(max_store_bytes=100))
    _append(by_bytes, [b"x" * 50])
    assert not by_bytes.is_maxed
    _append(by_bytes, [b"x" * 50])
    assert by_bytes.is_maxed
    by_entries = Segment.create(tmp_path, 10, LogConfig(max_index_bytes=24))
    _append(by_entries, [b"a", b"b"])
    assert not by_entries.is_maxed
    _append(by_entries, [b"c"])
    assert by_entries.is_maxed
    by_bytes.close()
    by_entries.close()


def test_fit_counts_whole_frames_and_takes_one_when_empty(tmp_path: Path) -> None:
    seg = Segment.create(tmp_path, 0, LogConfig(max_store_bytes=100))
    ends = np.cumsum(np.array([30, 30, 30, 30], dtype=np.uint64))
    assert seg.fit(ends, 0, 0) == 3  # 90 bytes fit, 120 do not
    huge = np.array([1000], dtype=np.uint64)
    assert seg.fit(huge, 0, 0) == 1  # an empty segment takes even an oversized record
    seg.close()


def test_truncate_after_inside_a_segment(tmp_path: Path) -> None:
    seg = Segment.create(tmp_path, 5, LogConfig())
    _append(seg, [b"a", b"bb", b"ccc", b"dddd"])
    seg.truncate_after(6)
    assert seg.next_offset == 7
    assert seg.store.size == 2 * 8 + 3
    assert _append(seg, [b"new"]) == 7
    assert seg.read(7) == b"new"
    seg.truncate_after(4)
    assert seg.count == 0 and seg.store.size == 0
    seg.close()


def test_read_detects_a_flipped_payload_byte(tmp_path: Path) -> None:
    seg = Segment.create(tmp_path, 0, LogConfig())
    _append(seg, [b"alpha", b"bravo", b"charlie"])
    path = seg.store.path
    raw = bytearray(path.read_bytes())
    raw[8 + 5 + 8 + 2] ^= 0x40  # inside "bravo"
    path.write_bytes(bytes(raw))
    assert seg.read(0) == b"alpha"
    with pytest.raises(CorruptRecordError) as info:
        seg.read(1)
    assert info.value.offset == 1
    # a batch serves the intact records before the damaged one, then refuses it
    assert seg.read_batch(0, 1000, 10) == [b"alpha"]
    with pytest.raises(CorruptRecordError) as info:
        seg.read_batch(1, 1000, 10)
    assert info.value.offset == 1
    seg.close()


def test_recover_clean_segment_keeps_index(tmp_path: Path) -> None:
    seg = Segment.create(tmp_path, 0, LogConfig())
    _append(seg, [b"r%d" % i for i in range(10)])
    seg.close()
    seg, report = Segment.recover(tmp_path, 0, LogConfig(), None)
    assert report.records == 10 and not report.index_rebuilt and report.cut_bytes == 0
    assert seg.read(9) == b"r9"
    seg.close()


def test_recover_rebuilds_a_missing_index_and_cuts_a_torn_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seg = Segment.create(tmp_path, 0, LogConfig())
    _append(seg, [b"r%d" % i for i in range(10)])
    seg.close()
    seg.index.path.unlink()
    with seg.store.path.open("ab") as f:
        f.write(b"\x10\x00\x00\x00garbage")  # header promises 16 bytes, 7 follow
    with caplog.at_level(logging.WARNING, logger="raftlog.log"):
        seg, report = Segment.recover(tmp_path, 0, LogConfig(), None)
    assert report.records == 10
    assert report.index_rebuilt
    assert report.cut_bytes == 11
    assert "torn frame" in report.cut_reason
    assert any("cut 11 bytes" in r.getMessage() for r in caplog.records)
    assert seg.read(9) == b"r9"
    seg.close()


@pytest.mark.parametrize("damage", ["short", "longer_than_store", "wrong_position"])
def test_recover_repairs_a_damaged_index(tmp_path: Path, damage: str) -> None:
    """An index cut short, one that lists more records than its store holds (the store
    lost its tail, the index did not), and one whose entry points at the wrong frame are
    each repaired from the store (rebuilt, or cut back to its valid prefix): every record
    reads back, nothing more, appends go on."""
    records = [b"record-%02d" % i for i in range(20)]
    seg = Segment.create(tmp_path, 0, LogConfig())
    _append(seg, records)
    seg.close()
    index, store = seg.index.path, seg.store.path
    frame = store.stat().st_size // 20
    kept = records
    if damage == "short":
        with index.open("r+b") as f:
            f.truncate(8 * 7 + 5)  # 7 whole entries and part of an eighth
    elif damage == "longer_than_store":
        with store.open("r+b") as f:
            f.truncate(frame * 15)  # the store lost its last 5 frames
        kept = records[:15]
    else:
        raw = bytearray(index.read_bytes())
        raw[8 * 9 + 4 : 8 * 9 + 8] = (frame * 3).to_bytes(4, "little")  # entry 9 -> frame 3
        index.write_bytes(bytes(raw))
    seg, report = Segment.recover(tmp_path, 0, LogConfig(), None)
    if damage == "longer_than_store":  # the valid prefix stays, the stale entries go
        assert any("stale entries" in note for note in report.notes), report
    else:
        assert report.index_rebuilt, report
    assert report.records == len(kept)
    assert [seg.read(i) for i in range(len(kept))] == kept
    with pytest.raises(Exception):  # noqa: B017 - past the end: the segment's own error
        seg.read(len(kept))
    _append(seg, [b"after"])
    assert seg.read(len(kept)) == b"after"
    seg.close()
    seg, report = Segment.recover(tmp_path, 0, LogConfig(), None)
    assert not report.index_rebuilt and report.records == len(kept) + 1
    seg.close()


def test_recover_ignores_a_preallocated_zero_index(tmp_path: Path) -> None:
    config = LogConfig(max_index_bytes=8 * 1000)
    seg = Segment.create(tmp_path, 0, config)
    _append(seg, [b"one", b"two"])
    # Simulate a crash: the index stays preallocated and the store grew past it.
    seg.store.append(encode_batch([b"three"])[0])
    assert seg.index.path.stat().st_size == 8 * 1000
    seg, report = Segment.recover(tmp_path, 0, config, None)
    assert report.records == 3
    assert [seg.read(i) for i in range(3)] == [b"one", b"two", b"three"]
    seg.close()

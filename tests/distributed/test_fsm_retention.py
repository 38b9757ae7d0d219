"""Retention in the state machine: the ``T`` entry, the logical lowest offset, the
segments deleted below it, and the lowest offset across restarts and snapshots."""

from __future__ import annotations

import io
import json
from pathlib import Path

import msgpack
import pytest

from raftlog.distributed import (
    CommitLogFSM,
    FSMError,
    Retention,
    decode_batch,
    decode_entry,
    encode_batch,
    encode_idempotent_batch,
    encode_retention,
)
from raftlog.distributed.fsm import CHECKPOINT_FILE
from raftlog.domain.protocols import Appended
from raftlog.log import LogConfig, OffsetOutOfRangeError
from raftlog.raft import Entry, Membership, Server, SnapshotMeta

#: Small segments: 10 records of 100 bytes (+ 8 bytes of framing) fill one.
SMALL = LogConfig(max_store_bytes=1080, max_index_bytes=12 * 64)


def batch(index: int, first: int, n: int) -> Entry:
    return Entry(1, index, data=encode_batch([b"%099d" % (first + i) for i in range(n)]))


def cut(index: int, lowest: int) -> Entry:
    return Entry(1, index, data=encode_retention(lowest, 1234))


def segment_bases(fsm: CommitLogFSM) -> list[int]:
    return [s.base_offset for s in fsm.log.segments]


def test_retention_entry_round_trips_and_is_validated() -> None:
    assert decode_entry(encode_retention(42, 7)) == Retention(42, 7)
    bad = [
        b"T" + msgpack.packb([2, 1, 0]),  # unknown version
        b"T" + msgpack.packb([1, -1, 0]),  # negative offset
        b"T" + msgpack.packb([1, "x", 0]),
        b"T" + msgpack.packb([1, 1]),
    ]
    for data in bad:
        with pytest.raises(FSMError):
            decode_entry(data)
    with pytest.raises(FSMError):
        decode_batch(encode_retention(1, 0))


def test_apply_moves_the_lowest_offset_and_drops_whole_segments(tmp_path: Path) -> None:
    fsm = CommitLogFSM.open(tmp_path, SMALL)
    fsm.apply([batch(1, 0, 35)])  # segments at 0, 10, 20, 30
    assert segment_bases(fsm) == [0, 10, 20, 30]
    # in the middle of a segment: the lowest is exact, the segment partly below stays
    assert fsm.apply([cut(2, 15)]) == [15]
    assert fsm.lowest_offset == 15
    assert segment_bases(fsm) == [10, 20, 30]
    assert json.loads((tmp_path / CHECKPOINT_FILE).read_bytes())["lowest"] == 15
    # never backwards, never past the records applied before the entry (deterministic)
    assert fsm.apply([cut(3, 5), cut(4, 1000), batch(5, 35, 5)]) == [15, 35, 35]
    assert fsm.lowest_offset == 35 and fsm.highest_offset == 39
    assert segment_bases(fsm) == [30]  # the active segment always stays
    fsm.log.close_sync()


async def test_lowest_offset_survives_a_restart_and_a_crash(tmp_path: Path) -> None:
    fsm = CommitLogFSM.open(tmp_path, SMALL)
    fsm.bind_loop()
    fsm.apply([batch(1, 0, 35), cut(2, 12)])
    await fsm.close()
    again = CommitLogFSM.open(tmp_path, SMALL)
    assert again.lowest_offset == 12 and again.applied_index() == 2
    assert segment_bases(again) == [10, 20, 30]
    again.bind_loop()
    again.apply([batch(3, 35, 10), cut(4, 25)])
    assert again._prune_task is not None
    await again._prune_task  # a checkpoint first, then the segments below go
    assert segment_bases(again) == [20, 30, 40]
    again.apply([batch(5, 45, 10), cut(6, 50)])  # applied, never checkpointed
    again.log.close_sync()  # a crash: the prune task never ran
    third = CommitLogFSM.open(tmp_path, SMALL)
    assert third.lowest_offset == 25 and third.applied_index() == 4
    assert third.highest_offset == 44  # cut back to the checkpoint: Raft replays 5 and 6
    with pytest.raises(OffsetOutOfRangeError):
        third.log.read(19)  # the segment wholly below the lowest is gone for good
    assert third.apply([batch(5, 45, 10), cut(6, 50)]) == [45, 50]
    assert third.lowest_offset == 50
    third.log.close_sync()


def sent(fsm: CommitLogFSM, resume: int = 0) -> bytes:
    """What a follower that holds everything below ``resume`` receives for a snapshot taken
    now (a snapshot by reference, streamed with the records it lacks)."""
    stream = fsm.snapshot_stream(b"".join(fsm.snapshot()), resume)
    assert stream is not None
    return b"".join(stream)


def test_a_snapshot_carries_the_lowest_offset(tmp_path: Path) -> None:
    src = CommitLogFSM.open(tmp_path / "src", SMALL)
    src.apply([batch(1, 0, 35), cut(2, 17)])
    data = sent(src)
    dst = CommitLogFSM.open(tmp_path / "dst", SMALL)
    dst.restore(io.BytesIO(data), SnapshotMeta(2, 1, Membership.of([Server("n1", "a")])))
    assert dst.lowest_offset == 17 and dst.highest_offset == 34
    assert dst.log.read(17) == src.log.read(17)
    # the follower restored from it applies the next entries like the leader
    assert dst.apply([cut(3, 31)]) == src.apply([cut(3, 31)]) == [31]
    src.log.close_sync()
    dst.log.close_sync()
    reopened = CommitLogFSM.open(tmp_path / "dst", SMALL)
    assert reopened.lowest_offset == 31  # checkpointed before its segments went
    reopened.log.close_sync()


def test_the_producer_table_stays_right_across_retention(tmp_path: Path) -> None:
    fsm = CommitLogFSM.open(tmp_path / "a", SMALL)
    first = Entry(1, 1, data=encode_idempotent_batch([b"p1"] * 15, "prod", 1, 1000))
    assert fsm.apply([first, batch(2, 15, 20), cut(3, 30)]) == [Appended(0, 14), 15, 30]
    # a retry of the dropped batch is still recognised (its offsets, nothing appended)
    retry = Entry(1, 4, data=encode_idempotent_batch([b"p1"] * 15, "prod", 1, 2000))
    assert fsm.apply([retry]) == [Appended(0, 14, duplicate=True)]
    assert fsm.highest_offset == 34
    # and a follower restored from a snapshot taken now agrees on both
    data = sent(fsm)
    other = CommitLogFSM.open(tmp_path / "b", SMALL)
    other.restore(io.BytesIO(data), SnapshotMeta(4, 1, Membership.of([Server("n1", "a")])))
    assert other.lowest_offset == 30
    assert other.producers.lookup("prod", 1) == (0, 14)
    fsm.log.close_sync()
    other.log.close_sync()

"""CommitLogFSM alone: offsets from batches, checkpoints, crash recovery, snapshot/restore,
and the idempotent producer's table (dedup, window, expiry, persistence, entry formats)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import msgpack
import pytest

from raftlog.distributed import (
    Batch,
    CommitLogFSM,
    FSMError,
    decode_batch,
    decode_entry,
    encode_batch,
    encode_idempotent_batch,
)
from raftlog.distributed.fsm import CHECKPOINT_FILE, SNAPSHOT_MAGIC, SNAPSHOT_MAGIC_REF
from raftlog.domain.errors import SequenceTooOldError
from raftlog.domain.producers import ProducerConfig
from raftlog.domain.protocols import Appended
from raftlog.raft import Entry, Membership, Server, SnapshotMeta


def entries(first_index: int, batches: list[list[bytes]]) -> list[Entry]:
    return [Entry(1, first_index + i, data=encode_batch(b)) for i, b in enumerate(batches)]


def all_records(fsm: CommitLogFSM) -> list[bytes]:
    log = fsm.log
    return [log.read(o) for o in range(log.lowest_offset, fsm.highest_offset + 1)]


def test_apply_returns_each_batch_first_offset_and_skips_replays(tmp_path: Path) -> None:
    fsm = CommitLogFSM.open(tmp_path)
    assert fsm.apply(entries(1, [[b"a", b"b"], [b"c"], [b"d", b"e", b"f"]])) == [0, 2, 3]
    assert fsm.applied_index() == 3 and fsm.highest_offset == 5
    # a replay of applied entries (after a restart) appends nothing
    assert fsm.apply(entries(2, [[b"c"], [b"d", b"e", b"f"], [b"g"]])) == [None, None, 6]
    assert all_records(fsm) == [b"a", b"b", b"c", b"d", b"e", b"f", b"g"]
    with pytest.raises(FSMError):
        fsm.apply([Entry(1, 9, data=b"Xjunk")])
    fsm.log.close_sync()


async def test_restart_resumes_from_the_checkpoint_and_cuts_the_rest(tmp_path: Path) -> None:
    fsm = CommitLogFSM.open(tmp_path)
    fsm.bind_loop()
    fsm.apply(entries(1, [[b"a"], [b"b", b"c"]]))
    await fsm.checkpoint()
    fsm.apply(entries(3, [[b"lost-1"], [b"lost-2"]]))  # applied, never checkpointed
    fsm.log.close_sync()  # a crash: no closing checkpoint
    again = CommitLogFSM.open(tmp_path)
    assert again.applied_index() == 2
    assert all_records(again) == [b"a", b"b", b"c"]
    # Raft replays entries 3 and 4: they land at the same offsets as before
    assert again.apply(entries(3, [[b"lost-1"], [b"lost-2"]])) == [3, 4]
    await again.close()  # a clean close checkpoints everything
    third = CommitLogFSM.open(tmp_path)
    assert third.applied_index() == 4 and third.highest_offset == 4
    third.log.close_sync()


def test_without_a_checkpoint_the_log_is_rebuilt_by_raft(tmp_path: Path) -> None:
    fsm = CommitLogFSM.open(tmp_path)
    fsm.apply(entries(1, [[b"a"], [b"b"]]))
    fsm.log.close_sync()
    assert not (tmp_path / CHECKPOINT_FILE).exists()
    again = CommitLogFSM.open(tmp_path)
    assert again.applied_index() == 0
    assert again.highest_offset < again.log.lowest_offset  # emptied: Raft replays from 1
    assert again.apply(entries(1, [[b"a"], [b"b"]])) == [0, 1]
    again.log.close_sync()


def test_snapshot_restores_an_identical_log_elsewhere(tmp_path: Path) -> None:
    src = CommitLogFSM.open(tmp_path / "src")
    src.apply(entries(1, [[b"r%d" % i for i in range(50)], [b"x" * 3000], [b"tail"]]))
    stored = b"".join(src.snapshot())  # by reference: metadata only
    assert len(stored) < 200
    stream = src.snapshot_stream(stored, 0)  # what a follower holding nothing receives
    assert stream is not None
    data = b"".join(stream)
    src.apply(entries(4, [[b"after-the-snapshot"]]))  # not in the captured stream
    dst = CommitLogFSM.open(tmp_path / "dst")
    dst.apply(entries(1, [[b"stale"]]))
    meta = SnapshotMeta(3, 1, Membership.of([Server("n1", "a")]))
    dst.restore(io.BytesIO(data), meta)
    assert dst.applied_index() == 3
    assert all_records(dst) == all_records(src)[:-1]
    assert dst.apply(entries(4, [[b"after-the-snapshot"]])) == [src.highest_offset]
    assert (tmp_path / "dst" / CHECKPOINT_FILE).exists()
    src.log.close_sync()
    dst.log.close_sync()
    reopened = CommitLogFSM.open(tmp_path / "dst")
    assert reopened.applied_index() == 3 and reopened.highest_offset == 51
    reopened.log.close_sync()


# -- the idempotent producer ----------------------------------------------------------------

HOUR_MS = 3_600_000


def idem(index: int, pid: str, seq: int, records: list[bytes], stamp_ms: int = 1000) -> Entry:
    return Entry(1, index, data=encode_idempotent_batch(records, pid, seq, stamp_ms))


def test_a_duplicate_apply_returns_the_first_offsets_and_appends_nothing(tmp_path: Path) -> None:
    fsm = CommitLogFSM.open(tmp_path)
    out = fsm.apply(
        [
            idem(1, "p", 1, [b"a", b"b"]),
            Entry(1, 2, data=encode_batch([b"plain"])),
            idem(2 + 1, "p", 1, [b"a", b"b"]),  # a retry in the same round
            idem(4, "q", 1, [b"c"]),
        ]
    )
    assert out == [Appended(0, 1), 2, Appended(0, 1, duplicate=True), Appended(3, 3)]
    assert fsm.apply([idem(5, "p", 1, [b"a", b"b"])]) == [Appended(0, 1, duplicate=True)]
    assert all_records(fsm) == [b"a", b"b", b"plain", b"c"]
    fsm.log.close_sync()


def test_window_keeps_the_highest_sequences_and_refuses_older_unknown_ones(
    tmp_path: Path,
) -> None:
    fsm = CommitLogFSM.open(tmp_path, producers=ProducerConfig(window=4))
    # out of order, as several batches in flight may commit
    out = fsm.apply([idem(i, "p", s, [b"%d" % s]) for i, s in enumerate([2, 1, 4, 3, 6], 1)])
    assert [r.first for r in out] == [0, 1, 2, 3, 4]
    # window: 2, 3, 4, 6 (1 dropped). 5 is new (above the oldest); 3 a duplicate; 1 too old
    res = fsm.apply([idem(6, "p", 5, [b"5"]), idem(7, "p", 3, [b"3"]), idem(8, "p", 1, [b"1"])])
    assert res[0] == Appended(5, 5)
    assert res[1] == Appended(3, 3, duplicate=True)
    assert isinstance(res[2], SequenceTooOldError) and res[2].oldest == 3
    assert all_records(fsm) == [b"2", b"1", b"4", b"3", b"6", b"5"]
    fsm.log.close_sync()


def test_expiry_follows_the_stamps_in_the_entries_never_the_local_clock(tmp_path: Path) -> None:
    config = ProducerConfig(expiry_s=3600, max_producers=2)
    replicas = [CommitLogFSM.open(tmp_path / n, producers=config) for n in ("a", "b")]
    stream = [
        idem(1, "old", 1, [b"x"], stamp_ms=0),
        idem(2, "p", 1, [b"y"], stamp_ms=HOUR_MS // 2),
        idem(3, "p", 2, [b"z"], stamp_ms=HOUR_MS + 1),  # "old" idle for more than 1 h
        idem(4, "old", 1, [b"x"], stamp_ms=5),  # a stamp from a lagging clock: clock stays
        idem(5, "q", 1, [b"q"], stamp_ms=HOUR_MS + 2),  # table full (2): LRU "p" goes
        idem(6, "p", 1, [b"y"], stamp_ms=HOUR_MS + 3),
    ]
    results = [r.apply(stream) for r in replicas]
    assert results[0] == results[1]
    # "old" expired: its retry is a new append; "p" evicted by "q": the same
    assert [x.duplicate for x in results[0]] == [False] * 6
    assert replicas[0].producers.dump() == replicas[1].producers.dump()
    assert replicas[0].producers.expired == 1 and replicas[0].producers.evicted >= 1
    for r in replicas:
        r.log.close_sync()


async def test_the_table_survives_a_checkpoint_and_a_restart(tmp_path: Path) -> None:
    fsm = CommitLogFSM.open(tmp_path)
    fsm.bind_loop()
    fsm.apply([idem(1, "p", 1, [b"a"]), idem(2, "p", 2, [b"b", b"c"])])
    await fsm.checkpoint()
    after = [idem(3, "p", 3, [b"d"]), idem(4, "r", 7, [b"e"])]
    fsm.apply(after)  # applied, never checkpointed
    table = fsm.producers.dump()
    fsm.log.close_sync()  # crash
    again = CommitLogFSM.open(tmp_path)
    assert again.applied_index() == 2
    assert again.producers.lookup("p", 2) == (1, 2) and again.producers.lookup("p", 3) is None
    # Raft replays 3 and 4: the same table as before the crash
    assert again.apply(after) == [Appended(3, 3), Appended(4, 4)]
    assert again.producers.dump() == table
    assert again.apply([idem(5, "r", 7, [b"e"])]) == [Appended(4, 4, duplicate=True)]
    await again.close()
    third = CommitLogFSM.open(tmp_path)
    assert third.producers.lookup("r", 7) == (4, 4) and third.applied_index() == 5
    third.log.close_sync()


def test_the_table_travels_in_snapshots_and_old_snapshots_still_restore(tmp_path: Path) -> None:
    src = CommitLogFSM.open(tmp_path / "src")
    src.apply([idem(1, "p", 1, [b"a", b"b"]), Entry(1, 2, data=encode_batch([b"c"]))])
    stored = b"".join(src.snapshot())
    assert stored.startswith(SNAPSHOT_MAGIC_REF)
    stream = src.snapshot_stream(stored, 0)
    assert stream is not None
    data = b"".join(stream)
    meta = SnapshotMeta(2, 1, Membership.of([Server("n1", "a")]))
    dst = CommitLogFSM.open(tmp_path / "dst")
    dst.apply([idem(1, "p", 1, [b"stale"])])
    dst.restore(io.BytesIO(data), meta)
    assert all_records(dst) == [b"a", b"b", b"c"]
    assert dst.apply([idem(3, "p", 1, [b"a", b"b"])]) == [Appended(0, 1, duplicate=True)]
    dst.log.close_sync()
    reopened = CommitLogFSM.open(tmp_path / "dst")  # the restore's checkpoint has the table
    assert reopened.producers.lookup("p", 1) == (0, 1)
    reopened.log.close_sync()
    # a snapshot written before the table existed: the commit log's stream alone
    old = b"".join(src.log.reader().chunks())
    legacy = CommitLogFSM.open(tmp_path / "legacy")
    legacy.restore(io.BytesIO(old), meta)
    assert all_records(legacy) == [b"a", b"b", b"c"] and len(legacy.producers) == 0
    legacy.log.close_sync()
    src.log.close_sync()


def test_entry_encodings_old_batches_still_decode(tmp_path: Path) -> None:
    # bytes of a plain batch as written before the idempotent producer existed
    legacy = b"B" + msgpack.packb([b"x", b"yz"], use_bin_type=True)
    assert legacy == encode_batch([b"x", b"yz"])
    assert decode_entry(legacy) == Batch([b"x", b"yz"])
    assert decode_batch(legacy) == [b"x", b"yz"]
    new = encode_idempotent_batch([b"r"], "prod-\u00e9", 2**64 - 1, 123)
    assert decode_entry(new) == Batch([b"r"], "prod-\u00e9", 2**64 - 1, 123)
    assert decode_batch(new) == [b"r"]
    for junk in (b"I" + msgpack.packb([9, 0, "p", 1, []]), b"I\xc1", b"Z"):
        with pytest.raises(FSMError):
            decode_entry(junk)
    # an old checkpoint (no table) still opens, with an empty table
    fsm = CommitLogFSM.open(tmp_path)
    fsm.apply(entries(1, [[b"a"]]))
    fsm.log.close_sync()
    (tmp_path / CHECKPOINT_FILE).write_text(json.dumps({"index": 1, "next_offset": 1}))
    again = CommitLogFSM.open(tmp_path)
    assert again.applied_index() == 1 and len(again.producers) == 0
    again.log.close_sync()


def test_an_apply_whose_append_fails_changes_nothing_and_can_be_applied_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk fails the commit log's append (all or nothing); the runtime applies the
    same entries again once there is room. The producer table must then be exactly as if
    the failed attempt never happened, or the retry would call its own records
    duplicates (and replicas would disagree)."""
    import errno

    config = ProducerConfig(window=2, max_producers=2, expiry_s=3600)
    first = [idem(1, "p", 1, [b"a"]), idem(2, "q", 1, [b"b"]), idem(3, "p", 2, [b"c"])]
    stream = [
        idem(4, "p", 3, [b"d"]),  # drops p's sequence 1 from its window
        idem(5, "r", 1, [b"e"], stamp_ms=2000),  # evicts the least recently seen (q)
        idem(6, "p", 2, [b"c"]),  # a duplicate: moves p to the end
        Entry(1, 7, data=encode_batch([b"plain"])),
    ]
    healthy = CommitLogFSM.open(tmp_path / "healthy", producers=config)
    full = CommitLogFSM.open(tmp_path / "full", producers=config)
    for fsm in (healthy, full):
        fsm.apply(first)
    expected = healthy.apply(stream)
    real = full.log.append_batch_nosync

    def no_space(records: list[bytes]) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(full.log, "append_batch_nosync", no_space)
    with pytest.raises(OSError, match="No space"):
        full.apply(stream)
    assert full.applied_index() == 3 and full.log.next_offset == 3
    monkeypatch.setattr(full.log, "append_batch_nosync", real)
    assert full.apply(stream) == expected
    assert full.producers.dump() == healthy.producers.dump()
    assert [full.log.read(o) for o in range(full.log.next_offset)] == [
        healthy.log.read(o) for o in range(healthy.log.next_offset)
    ]


# -- snapshots by reference, catch-up, recovery point ---------------------------------------


async def test_a_snapshot_by_reference_checkpoints_before_it_is_handed_out(tmp_path: Path) -> None:
    fsm = CommitLogFSM.open(tmp_path)
    fsm.bind_loop()
    fsm.apply(entries(1, [[b"r%d" % i for i in range(30)], [b"x"]]))
    chunks = iter(fsm.snapshot())
    fsm.apply(entries(3, [[b"after"]]))  # applied after the capture: not in this snapshot
    head = next(chunks)  # produced only once the commit log is fsynced and checkpointed
    state = json.loads((tmp_path / CHECKPOINT_FILE).read_bytes())
    assert (state["index"], state["next_offset"]) == (2, 31)
    assert head.startswith(SNAPSHOT_MAGIC_REF) and len(head) < 200
    fsm.log.close_sync()  # a crash: the records of the snapshot survive, Raft needs no replay
    again = CommitLogFSM.open(tmp_path)
    assert again.applied_index() == 2 and again.highest_offset == 30
    # restoring our own snapshot (a restart that found it newer) keeps the log as it is
    again.restore(io.BytesIO(head), SnapshotMeta(2, 1, Membership.of([Server("n1", "a")])))
    assert again.highest_offset == 30
    again.log.close_sync()


async def test_catch_up_sends_only_the_records_the_follower_lacks(tmp_path: Path) -> None:
    batches = [[b"%03d-" % b + b"y" * 95 for _ in range(10)] for b in range(20)]
    src = CommitLogFSM.open(tmp_path / "src")
    src.apply(entries(1, batches))
    stored = b"".join(src.snapshot())
    dst = CommitLogFSM.open(tmp_path / "dst")
    dst.bind_loop()
    dst.apply(entries(1, batches[:12]))  # the follower holds the first 12 batches
    resume = await dst.resume_point()
    assert resume == 120
    stream = src.snapshot_stream(stored, resume)
    assert stream is not None
    data = b"".join(stream)
    lacked = sum(len(r) + 8 for b in batches[12:] for r in b)  # records + their framing
    assert lacked <= len(data) < lacked + 300
    dst.restore(io.BytesIO(data), SnapshotMeta(20, 1, Membership.of([Server("n1", "a")])))
    assert all_records(dst) == all_records(src)
    assert dst.applied_index() == 20
    # a follower that holds nothing gets everything
    empty = CommitLogFSM.open(tmp_path / "empty")
    stream = src.snapshot_stream(stored, 0)
    assert stream is not None
    empty.restore(io.BytesIO(b"".join(stream)), SnapshotMeta(20, 1, Membership.of([])))
    assert all_records(empty) == all_records(src)
    for f in (src, dst, empty):
        f.log.close_sync()


def test_a_snapshot_of_format_1_still_restores(tmp_path: Path) -> None:
    src = CommitLogFSM.open(tmp_path / "src")
    src.apply([idem(1, "p", 1, [b"a", b"b"])])
    packed = msgpack.packb({"v": 1, "producers": src.producers.dump()}, use_bin_type=True)
    import struct

    v1 = struct.pack("<8sQ", SNAPSHOT_MAGIC, len(packed)) + packed
    v1 += b"".join(src.log.reader().chunks())
    dst = CommitLogFSM.open(tmp_path / "dst")
    dst.restore(io.BytesIO(v1), SnapshotMeta(1, 1, Membership.of([])))
    assert all_records(dst) == [b"a", b"b"] and dst.producers.lookup("p", 1) == (0, 1)
    src.log.close_sync()
    dst.log.close_sync()


async def test_reopening_trusts_the_segments_below_the_checkpoint(tmp_path: Path) -> None:
    from raftlog.log import LogConfig

    cfg = LogConfig(max_store_bytes=2000, max_index_bytes=8 * 64)
    fsm = CommitLogFSM.open(tmp_path, cfg)
    fsm.bind_loop()
    fsm.apply(entries(1, [[b"z" * 50 for _ in range(10)] for _ in range(20)]))
    await fsm.checkpoint()
    fsm.apply(entries(21, [[b"w" * 50 for _ in range(10)]]))  # after the checkpoint
    fsm.log.close_sync()
    again = CommitLogFSM.open(tmp_path, cfg)
    reports = again.log.recovery
    assert sum(r.trusted for r in reports) >= len(reports) - 2
    assert again.applied_index() == 20 and again.highest_offset == 199
    again.log.close_sync()

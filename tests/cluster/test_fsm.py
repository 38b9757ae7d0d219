"""CommitLogFSM alone: offsets from batches, checkpoints, crash recovery, snapshot/restore."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from raftlog.distributed import CommitLogFSM, FSMError, encode_batch
from raftlog.distributed.fsm import CHECKPOINT_FILE
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
    data = b"".join(src.snapshot())
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

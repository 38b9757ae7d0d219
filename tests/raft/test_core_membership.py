"""Membership changes, leadership transfer, snapshots and InstallSnapshot."""

from __future__ import annotations

import itertools

import pytest

from raftlog.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeInProgressError,
    ConfChangeType,
    LeadershipTransferInProgressError,
    MessageType,
    Role,
    SnapshotError,
    Suffrage,
    TransferError,
)
from raftlog.raft.testing import MemCluster
from support.raft_config import raft_config


def change(c: MemCluster, kind: ConfChangeType, node: str) -> None:
    lead = c.wait_leader()
    lead.c.propose_conf_change(ConfChange(kind, node, f"mem://{node}"))
    c.stabilize()
    c.tick(2)


# -- membership --------------------------------------------------------------------------


def test_add_learner_catch_up_then_promote() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    for i in range(10):
        lead.propose([b"%d" % i])
    c.stabilize()
    c.add_node("d")  # empty state: waits to be contacted
    change(c, ConfChangeType.ADD_LEARNER, "d")
    d = c.nodes["d"]
    assert d.c.membership.get("d") is not None
    assert d.c.membership.get("d").suffrage is Suffrage.LEARNER  # type: ignore[union-attr]
    assert d.state == lead.state
    assert lead.c.status().progress["d"].match == lead.c.last_index
    assert lead.c.caught_up_learners() == ["d"]
    assert c.nodes["b"].c.caught_up_learners() == []
    # A learner never campaigns.
    c.tick(30, nodes=["d"])
    assert d.c.role is Role.FOLLOWER
    change(c, ConfChangeType.PROMOTE_LEARNER, "d")
    assert lead.c.membership.voters == ("a", "b", "c", "d")
    assert d.c.membership.is_voter("d")


def test_added_voter_counts_for_commit_once_appended() -> None:
    c = MemCluster(["a", "b"], config=raft_config())
    lead = c.elect("a")
    c.add_node("c")
    change(c, ConfChangeType.ADD_VOTER, "c")
    # Voters a, b, c: with b and c down, nothing commits any more.
    c.nodes["b"].crash()
    c.nodes["c"].crash()
    before = lead.c.commit_index
    lead.propose([b"x"])
    c.stabilize()
    assert lead.c.commit_index == before
    c.nodes["c"].start()
    c.tick(3)
    assert lead.c.commit_index == lead.c.last_index


def test_one_change_at_a_time_and_not_before_commit_in_term() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    c.drop_if = lambda m: m.type is MessageType.APPEND_RESP
    a = c.nodes["a"]
    a.c.campaign()
    c.stabilize()
    assert a.c.role is Role.LEADER
    with pytest.raises(ConfChangeInProgressError):
        a.c.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "c"))
    c.drop_if = None
    c.tick(2)
    c.drop_if = lambda m: m.type is MessageType.APPEND_RESP
    a.c.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "c"))
    with pytest.raises(ConfChangeInProgressError):
        a.c.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d", "mem://d"))
    c.drop_if = None


def test_invalid_changes_are_named_errors() -> None:
    c = MemCluster(["a", "b"], config=raft_config())
    lead = c.elect("a").c
    with pytest.raises(ConfChangeError):
        lead.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, "b", "mem://b"))
    with pytest.raises(ConfChangeError):
        lead.propose_conf_change(ConfChange(ConfChangeType.PROMOTE_LEARNER, "b"))
    with pytest.raises(ConfChangeError):
        lead.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "zz"))
    with pytest.raises(ConfChangeError):
        lead.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d"))


def test_remove_follower() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    change(c, ConfChangeType.REMOVE, "c")
    assert lead.c.membership.voters == ("a", "b")
    assert "c" not in lead.c.status().progress
    # c no longer counts: with only a and b, both are needed; c can't help or harm.
    c.nodes["b"].crash()
    lead.propose([b"x"])
    c.stabilize()
    assert lead.c.commit_index < lead.c.last_index
    # The removed node knows it was removed and does not disturb anyone.
    c.tick(50, nodes=["c"])
    assert c.nodes["c"].c.role is Role.FOLLOWER


def test_removed_leader_steps_down_and_others_elect() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    lead.c.propose_conf_change(ConfChange(ConfChangeType.REMOVE, "a"))
    c.stabilize()
    assert lead.c.role is Role.FOLLOWER
    assert not lead.c.membership.is_voter("a")
    c.tick(30)
    new = c.leader()
    assert new is not None and new.id in {"b", "c"}
    t = new.propose([b"after"])
    c.stabilize()
    assert t is not None and new.acked == {t.first_index: b"after"}
    assert lead.c.role is Role.FOLLOWER  # never campaigns again


def test_membership_change_rolled_back_with_truncated_entry() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    lead.propose([b"x"])
    c.stabilize()
    c.isolate("a")
    lead.c.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "z", "mem://z"))
    c.stabilize()
    assert "z" in lead.c.membership  # effective when appended, even uncommitted
    c.tick(25, nodes=["a"])
    c.partition(["b", "c"], ["a"])
    c.tick(30, nodes=["b", "c"])
    c.heal()
    c.tick(5)
    assert "z" not in c.nodes["a"].c.membership, "overwritten change must be rolled back"


# -- leadership transfer -----------------------------------------------------------------


def test_transfer_to_named_voter() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    assert lead.c.transfer_leadership("c") == "c"
    c.stabilize()
    assert c.nodes["c"].c.role is Role.LEADER
    assert lead.c.role is Role.FOLLOWER and lead.c.leader_id == "c"


def test_transfer_to_most_caught_up_voter_after_catch_up() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    c.drop_if = lambda m: m.dst == "b" and m.type is MessageType.APPEND
    for i in range(5):
        lead.propose([b"%d" % i])
    c.stabilize()
    c.drop_if = None
    assert lead.c.transfer_leadership() == "c"
    c.stabilize()
    assert c.nodes["c"].c.role is Role.LEADER
    # A lagging target is caught up first, then TimeoutNow.
    c.drop_if = lambda m: m.dst == "b" and m.type is MessageType.APPEND
    new = c.nodes["c"]
    new.propose([b"more"])
    c.stabilize()
    c.drop_if = None
    new.c.transfer_leadership("b")
    with pytest.raises(LeadershipTransferInProgressError):
        new.c.propose([b"refused"])
    c.stabilize()
    assert c.nodes["b"].c.role is Role.LEADER


def test_transfer_abandoned_when_target_is_down() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    c.nodes["c"].crash()
    lead.c.transfer_leadership("c")
    c.tick(10, nodes=["a", "b"])
    assert lead.c.role is Role.LEADER
    assert lead.propose([b"ok again"]) is not None
    with pytest.raises(TransferError):
        lead.c.transfer_leadership("nobody")


# -- snapshots ---------------------------------------------------------------------------


def test_should_snapshot_at_threshold_and_compact() -> None:
    c = MemCluster(["a"], config=raft_config(snapshot_threshold=0, snapshot_trailing_entries=2))
    lead = c.elect("a")
    for i in range(10):
        lead.propose([b"%d" % i])
    c.stabilize()
    core = lead.c
    meta = core.snapshot_meta()
    assert meta.index == core.applied_index and meta.membership.voters == ("a",)
    through = core.compact(meta)
    assert through == meta.index - 2
    assert core.status().first_index == through + 1
    with pytest.raises(SnapshotError):
        core.snapshot_meta(meta.index + 100)


def test_should_snapshot_fires_at_the_threshold_only() -> None:
    """One entry applied per round: a snapshot is taken exactly every ``snapshot_threshold``
    applied entries, never earlier; a threshold of 0 never asks for one."""
    c = MemCluster(["a"], config=raft_config(snapshot_threshold=5, snapshot_trailing_entries=0))
    lead = c.elect("a")
    taken: list[int] = []
    for i in range(23):
        lead.propose([b"%d" % i])
        c.stabilize()
        snap = lead.disk.snapshot
        base = snap.index if snap else 0
        assert lead.c.applied_index - base < 5
        assert not lead.c.should_snapshot()
        if snap is not None and (not taken or taken[-1] != snap.index):
            taken.append(snap.index)
    assert len(taken) >= 4
    assert [b - a for a, b in itertools.pairwise(taken)] == [5] * (len(taken) - 1)

    off = MemCluster(["a"], config=raft_config(snapshot_threshold=0))
    lead = off.elect("a")
    for i in range(23):
        lead.propose([b"%d" % i])
        off.stabilize()
        assert not lead.c.should_snapshot()
    assert lead.disk.snapshot is None


def test_lagging_follower_catches_up_by_install_snapshot() -> None:
    c = MemCluster(
        ["a", "b", "c"], config=raft_config(snapshot_threshold=5, snapshot_trailing_entries=0)
    )
    lead = c.elect("a")
    c.nodes["c"].crash()
    for i in range(30):
        lead.propose([b"%d" % i])
        c.stabilize()
    assert lead.disk.snapshot is not None
    assert lead.c.status().first_index > 2, "the log was compacted"
    sent: list[MessageType] = []
    c.drop_if = lambda m: sent.append(m.type) is not None
    c.nodes["c"].start()
    c.tick(5)
    c.drop_if = None
    assert MessageType.SNAPSHOT in sent
    follower = c.nodes["c"]
    assert follower.disk.snapshot is not None
    assert follower.state == lead.state
    assert follower.c.applied_index == lead.c.applied_index
    # It keeps replicating normally afterwards, and survives a restart from its snapshot.
    lead.propose([b"tail"])
    c.stabilize()
    c.tick(2)
    follower.crash()
    follower.start()
    c.tick(3)
    assert follower.state == lead.state


def test_learner_added_after_compaction_gets_snapshot() -> None:
    c = MemCluster(
        ["a", "b"], config=raft_config(snapshot_threshold=4, snapshot_trailing_entries=1)
    )
    lead = c.elect("a")
    for i in range(20):
        lead.propose([b"%d" % i])
        c.stabilize()
    c.add_node("n")
    change(c, ConfChangeType.ADD_LEARNER, "n")
    c.tick(3)
    n = c.nodes["n"]
    assert n.disk.snapshot is not None
    assert n.state == lead.state
    assert n.c.membership == lead.c.membership


def test_failed_snapshot_stream_is_retried() -> None:
    c = MemCluster(
        ["a", "b", "c"], config=raft_config(snapshot_threshold=5, snapshot_trailing_entries=0)
    )
    lead = c.elect("a")
    c.nodes["c"].crash()
    for i in range(20):
        lead.propose([b"%d" % i])
        c.stabilize()
    failures: list[int] = []

    def drop_first_snapshot(m: object) -> bool:
        from raftlog.raft import Message

        assert isinstance(m, Message)
        if m.type is MessageType.SNAPSHOT and not failures:
            failures.append(1)
            return True  # the stream failed: the cluster reports it to the leader
        return False

    c.drop_if = drop_first_snapshot
    c.nodes["c"].start()
    c.tick(3)
    assert failures == [1]
    assert lead.c.status().progress["c"].state != "SNAPSHOT"
    c.tick(5)
    assert c.nodes["c"].state == lead.state


def test_stale_or_matching_snapshot_is_not_installed() -> None:
    from raftlog.raft import Message, SnapshotMeta

    c = MemCluster(["a", "b"], config=raft_config())
    lead = c.elect("a")
    lead.propose([b"x", b"y"])
    c.stabilize()
    c.tick(2)
    b = c.nodes["b"].c
    term = lead.c.term
    # Older than b's commit: acknowledged with the commit index, not installed.
    stale = SnapshotMeta(1, 1, lead.c.membership)
    b.step(Message(MessageType.SNAPSHOT, "a", "b", term, snapshot=stale))
    rd = b.ready()
    assert rd.snapshot is None
    assert [(m.type, m.index) for m in rd.messages] == [(MessageType.APPEND_RESP, b.commit_index)]
    b.advance(rd)
    # Matching b's log beyond commit: b just commits up to it.
    c.isolate("b")
    lead.propose([b"z"])
    c.stabilize()
    c.heal()
    c.queue.clear()
    b_last = b.last_index
    meta = SnapshotMeta(b_last, term, lead.c.membership)
    b.step(Message(MessageType.SNAPSHOT, "a", "b", term, snapshot=meta))
    rd = b.ready()
    assert rd.snapshot is None and b.commit_index == b_last
    b.advance(rd)


def test_should_snapshot_by_bytes_whatever_the_number_of_entries() -> None:
    """Big entries: a snapshot comes once ``snapshot_bytes`` of them are applied (the entry
    threshold is off), and compaction keeps at most ``snapshot_trailing_bytes`` below it,
    so the log held in memory is bounded in bytes (issue 12)."""
    entry = b"x" * 1000  # Entry.size() = 1016
    c = MemCluster(
        ["a"],
        config=raft_config(
            snapshot_threshold=0,
            snapshot_bytes=10_000,
            snapshot_trailing_bytes=2_500,
            snapshot_trailing_entries=1000,
        ),
    )
    lead = c.elect("a")
    for _ in range(60):
        lead.propose([entry])
        c.stabilize()
        status = lead.c.status()
        held = status.last_index - status.first_index + 1
        assert held <= (10_000 + 2_500) // 1016 + 3, held
    snap = lead.disk.snapshot
    assert snap is not None and snap.index > 40
    assert lead.c.status().first_index >= snap.index - 2  # 2 entries (2,032 B) kept below


def test_raft_log_byte_sums_follow_appends_truncations_and_compaction() -> None:
    from raftlog.raft import Entry
    from raftlog.raft.log_view import RaftLog

    lg = RaftLog(entries=[Entry(1, i, data=b"a" * i) for i in range(1, 6)])
    size = {i: i + 16 for i in range(1, 6)}  # Entry.size(): data + 16
    assert lg.bytes_between(1, 5) == sum(size.values())
    assert lg.bytes_between(2, 3) == size[2] + size[3]
    lg.append([Entry(2, 4, data=b"b" * 100)])  # a new leader cut 4..5
    assert lg.bytes_between(4, 4) == 116 and lg.bytes_between(1, 9) == 17 + 18 + 19 + 116
    lg.stable_to(4, 2)
    lg.commit_to(4)
    lg.applied = 4
    lg.compact(2)
    assert lg.bytes_between(1, 4) == 19 + 116  # compacted entries count nothing
    assert lg.index_keeping(4, 116) == 3  # keep only entry 4
    assert lg.index_keeping(4, 1000) == 2  # everything held fits

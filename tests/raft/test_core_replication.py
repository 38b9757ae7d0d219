"""Scripted replication scenarios: commit, batching, flow control, backtracking, restarts,
ReadIndex."""

from __future__ import annotations

import pytest

from raftlog.raft import (
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NotLeaderError,
    PersistentState,
    RaftConfig,
    RaftCore,
    ReadyOutstandingError,
    Role,
)
from raftlog.raft.testing import MemCluster
from support.raft_config import raft_config


def test_entries_commit_and_apply_everywhere_in_order() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    tickets = [lead.propose([f"v{i}".encode()]) for i in range(20)]
    c.stabilize()
    c.tick(2)  # heartbeats carry the final commit index
    expected = [(t.first_index, f"v{i}".encode()) for i, t in enumerate(tickets) if t]
    for n in c.nodes.values():
        assert n.state == expected, n.id
    assert len(lead.acked) == 20
    c.check_logs()


def test_no_op_appended_on_election_and_commits_earlier_entries() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    t = lead.c.term
    last = lead.c.last_index
    assert lead.c.entries(last, last + 1)[0] == Entry(t, last, EntryType.NOOP, b"")
    assert lead.c.commit_index == last


def test_proposals_before_ready_are_batched_into_one_append_per_follower() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    for i in range(5):
        lead.c.propose([f"p{i}".encode()])
    rd = lead.c.ready()
    apps = [m for m in rd.messages if m.type is MessageType.APPEND]
    assert sorted(m.dst for m in apps) == ["b", "c"]
    assert all(len(m.entries) == 5 for m in apps)
    assert len(rd.entries) == 5 and rd.must_sync
    with pytest.raises(ReadyOutstandingError):
        lead.c.ready()
    assert not lead.c.has_ready()
    lead.c.propose([b"late"])  # coalesced into the next Ready
    lead.c.advance(rd)
    rd2 = lead.c.ready()
    assert [e.data for e in rd2.entries] == [b"late"]


def test_flow_control_window_and_byte_budget() -> None:
    c = MemCluster(["a", "b"], config=raft_config(max_inflight_msgs=3, max_size_per_msg=100))
    lead = c.elect("a")
    c.drop_if = lambda m: m.dst == "a"  # b never acknowledges
    sent: list[Message] = []
    for _ in range(10):
        lead.c.propose([bytes(60), bytes(60)])  # each entry alone fills a message
        rd = lead.c.ready()
        sent += [m for m in rd.messages if m.type is MessageType.APPEND and m.entries]
        lead.disk.append(rd.entries)
        lead.c.advance(rd)
    assert len(sent) == 3, "no more than max_inflight_msgs appends in flight"
    assert all(len(m.entries) == 1 for m in sent), "byte budget: one 76-byte entry per message"
    c.drop_if = None
    c.queue.clear()
    c.tick(3)
    assert c.nodes["b"].c.last_index == lead.c.last_index


def test_conflicting_suffix_is_overwritten_and_backtracking_is_per_term() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    c.isolate("a")
    for i in range(50):  # uncommitted entries that will be overwritten
        lead.c.propose([f"old{i}".encode()])
    c.stabilize()
    c.tick(25, nodes=["a"])  # the old leader steps down (check quorum)
    c.partition(["b", "c"], ["a"])
    c.tick(40, nodes=["b", "c"])
    new = c.leader()
    assert new is not None and new.id in {"b", "c"}
    for i in range(5):
        new.propose([f"new{i}".encode()])
    c.stabilize()
    rejects: list[Message] = []
    c.drop_if = lambda m: rejects.append(m) is not None  # never drops; records
    c.heal()
    c.tick(5)
    c.drop_if = None
    n_rejects = sum(1 for m in rejects if m.type is MessageType.APPEND_RESP and m.reject)
    assert n_rejects <= 3, f"fast backtracking should skip the whole stale term ({n_rejects})"
    a = c.nodes["a"]
    assert a.c.last_index == new.c.last_index
    assert [d for _, d in a.state if d.startswith(b"old")] == []
    c.check_logs()


def test_restart_recovers_term_vote_and_log_from_disk() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    lead.propose([b"x"])
    c.stabilize()
    b = c.nodes["b"]
    before = (b.c.term, b.c.vote, b.c.last_index)
    b.crash()
    b.start()
    assert (b.c.term, b.c.vote, b.c.last_index) == before
    c.tick(3)
    assert b.state == lead.state


def test_restart_gives_committed_entries_again_after_applied() -> None:
    ents = tuple(Entry(1, i, EntryType.NORMAL, b"e%d" % i) for i in range(1, 6))
    core = RaftCore(
        RaftConfig(id="a"),
        PersistentState(HardState(1, "", 4), None, ents, applied=2),
    )
    rd = core.ready()
    assert [e.index for e in rd.committed_entries] == [3, 4]
    assert rd.hard_state is None and not rd.entries and not rd.must_sync


def test_read_index_confirms_leadership_with_a_heartbeat_round() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    lead.propose([b"x"])
    c.stabilize()
    commit = lead.c.commit_index
    lead.c.read_index(b"r1")
    rd = lead.c.ready()
    assert not rd.read_states
    beats = [m for m in rd.messages if m.type is MessageType.HEARTBEAT]
    assert {m.context for m in beats} == {b"r1"}
    lead.c.advance(rd)
    resp = Message(MessageType.HEARTBEAT_RESP, "b", "a", lead.c.term, context=b"r1")
    lead.c.step(resp)
    rd = lead.c.ready()
    assert [(r.index, r.context) for r in rd.read_states] == [(commit, b"r1")]
    lead.c.advance(rd)
    with pytest.raises(NotLeaderError):
        c.nodes["b"].c.read_index(b"r2")


def test_read_index_unanswered_on_isolated_leader() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    c.isolate("a")
    lead.c.read_index(b"r1")
    seen = []
    for _ in range(30):
        lead.c.tick()
        while lead.c.has_ready():
            rd = lead.c.ready()
            seen += rd.read_states
            lead.c.advance(rd)
    assert seen == []
    assert lead.c.role is not Role.LEADER


def test_read_index_waits_for_commit_in_new_term() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    c.drop_if = lambda m: m.type is MessageType.APPEND_RESP
    a = c.nodes["a"]
    a.c.campaign()
    c.stabilize()
    assert a.c.role is Role.LEADER and a.c.commit_index < a.c.last_index
    noop = a.c.last_index
    a.c.read_index(b"early")
    c.tick(2)
    assert a.reads == [], "no answer before an entry of the new term commits"
    c.drop_if = None
    c.tick(3)
    assert a.c.commit_index == a.c.last_index
    assert [r.context for r in a.reads] == [b"early"]
    assert a.reads[0].index == noop


def test_leader_counts_itself_only_after_its_write_is_acknowledged() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    core = lead.c
    t = core.propose([b"x"])
    rd = core.ready()  # the leader's write of x is now "in flight"
    apps = [m for m in rd.messages if m.type is MessageType.APPEND]
    assert apps and all(m.entries[-1].index == t.last_index for m in apps)
    # One follower acknowledges before the leader's own write finished: not a majority.
    core.step(Message(MessageType.APPEND_RESP, "b", "a", core.term, index=t.last_index))
    assert core.commit_index < t.last_index
    lead.disk.append(rd.entries)
    core.advance(rd)
    assert core.commit_index == t.last_index


def test_committed_entries_are_handed_out_in_bounded_batches() -> None:
    c = MemCluster(["a"], config=raft_config(max_committed_per_ready=3))
    lead = c.elect("a")
    lead.propose([b"%d" % i for i in range(10)])
    sizes = []
    core = lead.c
    while core.has_ready():
        rd = core.ready()
        lead.disk.append(rd.entries)
        if rd.committed_entries:
            sizes.append(len(rd.committed_entries))
        core.advance(rd)
    assert max(sizes) == 3 and sum(sizes) >= 10


def test_ready_says_which_messages_may_go_before_the_fsync() -> None:
    """The rule lives in the core (Ready.messages_before_persist): a leader's AppendEntries
    of its durable term may go early; the votes of an election, and acknowledgements, wait."""
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    lead.c.propose([b"x"])
    rd = lead.c.ready()
    assert rd.messages_before_persist
    assert all(m.type is MessageType.APPEND for m in rd.messages_before_persist)
    assert all(m.term == lead.c.term for m in rd.messages_before_persist)
    assert not rd.messages_after_persist
    assert rd.messages == rd.messages_before_persist
    lead.c.advance(rd)
    # A follower's acknowledgement promises durable entries: it must wait.
    follower = c.nodes["b"].c
    for m in rd.messages_before_persist:
        if m.dst == "b":
            follower.step(m)
    frd = follower.ready()
    assert not frd.messages_before_persist
    assert [m.type for m in frd.messages_after_persist] == [MessageType.APPEND_RESP]
    follower.advance(frd)
    # A campaign raises the term: none of its messages may leave before the new term is
    # durable.
    c.nodes["c"].c.campaign()
    crd = c.nodes["c"].c.ready()
    assert not crd.messages_before_persist and crd.messages_after_persist


def test_deferred_commit_broadcast_waits_for_the_next_append_or_the_runtime() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config(defer_commit_broadcast=True))
    lead = c.elect("a")
    lead.c.broadcast_commit()
    c.stabilize()
    sent: list[Message] = []
    send = c.send

    def counting(m: Message) -> None:
        sent.append(m)
        send(m)

    c.send = counting  # type: ignore[method-assign]
    t = lead.propose([b"x"])
    assert t is not None
    c.stabilize()
    # committed on the leader, but no empty appends went out to say so
    assert lead.c.commit_index == t.last_index
    assert lead.c.commit_unsent
    apps = [m for m in sent if m.type is MessageType.APPEND]
    assert sorted(m.dst for m in apps) == ["b", "c"] and all(m.entries for m in apps)
    assert all(c.nodes[f].c.commit_index < t.last_index for f in "bc")
    # the next write's appends carry the commit index
    t2 = lead.propose([b"y"])
    assert t2 is not None
    c.stabilize()
    assert all(c.nodes[f].c.commit_index >= t.last_index for f in "bc")
    # or the runtime sends it (its timer): empty appends with the commit index
    assert lead.c.commit_unsent
    sent.clear()
    lead.c.broadcast_commit()
    assert not lead.c.commit_unsent
    c.stabilize()
    empties = [m for m in sent if m.type is MessageType.APPEND and not m.entries]
    assert sorted(m.dst for m in empties) == ["b", "c"]
    assert all(m.commit == t2.last_index for m in empties)
    assert all(c.nodes[f].c.commit_index == t2.last_index for f in "bc")


def test_commit_broadcast_at_once_by_default() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    t = lead.propose([b"x"])
    assert t is not None
    c.stabilize()
    assert not lead.c.commit_unsent
    assert all(c.nodes[f].c.commit_index == t.last_index for f in "bc")

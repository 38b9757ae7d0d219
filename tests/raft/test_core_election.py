"""Scripted election scenarios: basic elections, pre-vote, check-quorum, leader stickiness."""

from __future__ import annotations

import pytest

from raftlog.raft import (
    Message,
    MessageType,
    NotLeaderError,
    PersistentState,
    RaftConfig,
    RaftCore,
    Role,
)
from raftlog.raft.testing import MemCluster
from support.raft_config import raft_config


def test_single_node_elects_itself_and_commits() -> None:
    c = MemCluster(["a"], config=raft_config())
    lead = c.wait_leader()
    assert lead.id == "a"
    t = lead.propose([b"x", b"y"])
    c.stabilize()
    assert t is not None
    assert lead.state[-2:] == [(t.first_index, b"x"), (t.last_index, b"y")]
    assert lead.acked == {t.first_index: b"x", t.last_index: b"y"}


def test_three_nodes_elect_exactly_one_leader_by_timeout() -> None:
    c = MemCluster(["a", "b", "c"], seed=3, config=raft_config())
    lead = c.wait_leader()
    leaders = [n for n in c.nodes.values() if n.c.role is Role.LEADER]
    assert leaders == [lead]
    assert all(n.c.leader_id == lead.id for n in c.nodes.values())
    assert len({n.c.term for n in c.nodes.values()}) == 1


def test_fresh_node_without_membership_never_campaigns() -> None:
    core = RaftCore(RaftConfig(id="z", election_tick=3), PersistentState())
    for _ in range(100):
        core.tick()
    assert core.role is Role.FOLLOWER and core.term == 0
    assert not [m for m in core.ready().messages]


def test_follower_rejects_proposals_with_leader_hint() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    c.elect("a")
    with pytest.raises(NotLeaderError) as info:
        c.nodes["b"].c.propose([b"x"])
    assert info.value.leader_id == "a"
    assert info.value.leader_address == "mem://a"


def test_vote_granted_once_per_term() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config(pre_vote=False, check_quorum=False))
    b = c.nodes["c"].c
    term = b.term + 1
    for cand in ("a", "b"):
        b.step(Message(MessageType.VOTE, cand, "c", term, index=1, log_term=1))
    rd = b.ready()
    resps = [(m.dst, m.reject) for m in rd.messages if m.type is MessageType.VOTE_RESP]
    assert resps == [("a", False), ("b", True)]
    assert rd.hard_state is not None and rd.hard_state.vote == "a"
    assert rd.must_sync


def test_pre_vote_keeps_isolated_node_term() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    term = lead.c.term
    c.isolate("c")
    c.tick(60)
    assert c.nodes["c"].c.term == term, "pre-vote must not raise the term of a lonely node"
    assert c.nodes["c"].c.role is Role.PRE_CANDIDATE
    c.heal()
    c.tick(20)
    assert lead.c.role is Role.LEADER and lead.c.term == term
    assert c.nodes["c"].c.leader_id == "a"


def test_without_pre_vote_isolated_node_raises_term_and_disrupts() -> None:
    # The control experiment for the test above: the same scenario without pre-vote and
    # check-quorum deposes the leader when the isolated node comes back.
    c = MemCluster(["a", "b", "c"], config=raft_config(pre_vote=False, check_quorum=False))
    lead = c.elect("a")
    term = lead.c.term
    c.isolate("c")
    c.tick(60)
    assert c.nodes["c"].c.term > term
    c.heal()
    c.tick(30)
    assert max(n.c.term for n in c.nodes.values()) > term


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    c.isolate("a")
    c.tick(9, nodes=["a"])
    assert lead.c.role is Role.LEADER  # acknowledgements of this period are still fresh
    c.tick(11, nodes=["a"])  # within two election timeouts
    assert lead.c.role is Role.FOLLOWER
    with pytest.raises(NotLeaderError):
        lead.c.propose([b"x"])


def test_leader_stays_without_check_quorum_when_isolated() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config(check_quorum=False))
    lead = c.elect("a")
    c.isolate("a")
    c.tick(30, nodes=["a"])
    assert lead.c.role is Role.LEADER


def test_leader_stickiness_followers_ignore_votes_while_in_lease() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config(pre_vote=False))
    lead = c.elect("a")
    term = lead.c.term
    b = c.nodes["b"].c
    last = b.last_index
    b.step(
        Message(MessageType.VOTE, "c", "b", term + 5, index=last, log_term=b.entry_term(last) or 0)
    )
    assert b.term == term and b.vote != "c"
    assert b.leader_id == "a"
    c.stabilize()
    assert lead.c.role is Role.LEADER and lead.c.term == term


def test_partitioned_minority_cannot_elect_and_majority_can() -> None:
    c = MemCluster(["a", "b", "c", "d", "e"], seed=5, config=raft_config())
    lead = c.elect("a")
    c.partition(["a", "b"], ["c", "d", "e"])
    c.tick(40)
    assert lead.c.role is not Role.LEADER  # check-quorum
    new = [n for n in c.nodes.values() if n.c.role is Role.LEADER]
    assert len(new) == 1 and new[0].id in {"c", "d", "e"}
    c.heal()
    c.tick(10)
    final = c.wait_leader()
    assert final.id == new[0].id


def test_candidate_with_stale_log_loses() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    c.isolate("c")
    lead.propose([b"1", b"2"])
    c.stabilize()
    c.heal()
    # c's log lacks the two entries: nobody may vote for it.
    c.nodes["c"].c.campaign()
    c.stabilize()
    assert c.nodes["c"].c.role is not Role.LEADER
    assert lead.c.role is Role.LEADER

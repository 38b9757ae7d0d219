"""Quiescence (RaftConfig.quiesce_after_ticks): an idle group stops sending anything, wakes
on any message, proposal or read, survives a lost QUIESCE, and elects a new leader once
the runtime reports a quiesced group's leader down (deterministic, MemCluster)."""

from __future__ import annotations

from collections import Counter

import pytest

from raftlog.raft import ConfigError, Message, MessageType, RaftConfig, Role
from raftlog.raft.testing import MemCluster
from support.raft_config import raft_config

QUIET = 3


def cluster(**overrides: object) -> tuple[MemCluster, Counter[MessageType]]:
    """A 3-node cluster with quiescence after QUIET idle ticks, and a count of every
    message sent, by type."""
    c = MemCluster(["a", "b", "c"], config=raft_config(quiesce_after_ticks=QUIET, **overrides))
    sent: Counter[MessageType] = Counter()
    send = c.send

    def counting(m: Message) -> None:
        sent[m.type] += 1
        send(m)

    c.send = counting  # type: ignore[method-assign]
    return c, sent


def quiet(c: MemCluster) -> bool:
    return all(n.c.quiesced for n in c.nodes.values() if n.alive)


def test_an_idle_group_goes_quiet_and_sends_nothing() -> None:
    c, sent = cluster()
    lead = c.elect("a")
    c.tick(QUIET + 1)
    assert quiet(c), {n.id: n.c.quiesced for n in c.nodes.values()}
    assert sent[MessageType.QUIESCE] == 2
    sent.clear()
    c.tick(100)  # ten election timeouts
    assert sum(sent.values()) == 0, sent
    assert lead.c.role is Role.LEADER and all(n.c.leader_id == "a" for n in c.nodes.values())


def test_without_the_setting_heartbeats_go_on() -> None:
    c = MemCluster(["a", "b", "c"], config=raft_config())
    c.elect("a")
    c.tick(50)
    assert not any(n.c.quiesced for n in c.nodes.values())


def test_a_proposal_wakes_the_group_commits_and_it_goes_quiet_again() -> None:
    c, _ = cluster()
    lead = c.elect("a")
    c.tick(QUIET + 1)
    assert quiet(c)
    ticket = lead.propose([b"wake"])
    assert ticket is not None
    c.stabilize()
    assert not any(n.c.quiesced for n in c.nodes.values())
    c.tick(QUIET + 2)
    for n in c.nodes.values():
        assert n.c.commit_index >= ticket.last_index, n.id
    assert quiet(c)
    c.check_logs()


def test_a_read_on_a_quiet_leader_is_answered() -> None:
    c, _ = cluster()
    lead = c.elect("a")
    c.tick(QUIET + 1)
    assert quiet(c)
    lead.c.read_index(b"r1")
    c.stabilize()
    assert [r.context for r in lead.reads] == [b"r1"]


def test_a_lost_quiesce_wakes_the_leader_through_the_pre_vote_and_settles() -> None:
    """A follower that never got QUIESCE times out and pre-votes; that wakes the leader,
    whose heartbeat keeps the follower, and the group goes quiet again: same leader, same
    term (pre-votes change no term)."""
    c, sent = cluster()
    lead = c.elect("a")
    term = lead.c.term
    c.drop_if = lambda m: m.type is MessageType.QUIESCE and m.dst == "c"
    c.tick(QUIET + 1)
    c.drop_if = None
    assert lead.c.quiesced and not c.nodes["c"].c.quiesced
    c.tick(40)
    assert sent[MessageType.PRE_VOTE] >= 1
    assert quiet(c)
    assert lead.c.role is Role.LEADER and lead.c.term == term


def test_a_dead_leader_is_replaced_once_the_runtime_reports_it() -> None:
    c, _ = cluster()
    c.elect("a")
    c.tick(QUIET + 1)
    assert quiet(c)
    c.nodes["a"].crash()
    c.tick(60)  # quiet followers notice nothing on their own
    assert all(n.c.leader_id == "a" for n in (c.nodes["b"], c.nodes["c"]))
    for n in ("b", "c"):
        c.nodes[n].c.wake_quiesced("a")
    for _ in range(40):
        c.tick()
        lead = c.leader()
        if lead is not None and lead.id != "a":
            break
    lead = c.leader()
    assert lead is not None and lead.id in ("b", "c")
    ticket = lead.propose([b"after"])
    assert ticket is not None
    c.stabilize()
    c.tick(2)
    assert all(n.c.commit_index >= ticket.last_index for n in (c.nodes["b"], c.nodes["c"]))
    c.check_logs()


def test_wake_quiesced_about_another_node_changes_nothing() -> None:
    c, _ = cluster()
    c.elect("a")
    c.tick(QUIET + 1)
    c.nodes["b"].c.wake_quiesced("c")
    assert c.nodes["b"].c.quiesced


def test_an_isolated_quiet_leader_is_replaced_and_steps_down_when_woken() -> None:
    c, _ = cluster()
    old = c.elect("a")
    c.tick(QUIET + 1)
    c.isolate("a")
    for n in ("b", "c"):
        c.nodes[n].c.wake_quiesced("a")
    for _ in range(40):
        c.tick(nodes=["b", "c"])
        if c.nodes["b"].c.role is Role.LEADER or c.nodes["c"].c.role is Role.LEADER:
            break
    assert any(c.nodes[n].c.role is Role.LEADER for n in ("b", "c")), "no new leader"
    assert old.propose([b"lost"]) is not None  # wakes the old leader; it cannot commit
    c.tick(25, nodes=["a"])
    assert old.c.role is not Role.LEADER  # check-quorum stepped it down
    c.heal()
    c.tick(5)
    assert c.leader() is not None  # a leader after the heal (the new one or a successor)
    c.check_logs()


def test_quiesce_messages_survive_the_wire_codec() -> None:
    c, sent = cluster()
    c.wire = True
    c.elect("a")
    c.tick(QUIET + 1)
    assert quiet(c) and sent[MessageType.QUIESCE] == 2


def test_a_negative_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="quiesce_after_ticks"):
        RaftConfig(id="a", quiesce_after_ticks=-1).validate()

"""One test per safety property of the Raft paper (Figure 3), plus the Figure 8 scenario.

Each property is also asserted continuously by ``SafetyChecker`` in every scenario and in
the randomized simulation; these tests show each one in a focused situation.
"""

from __future__ import annotations

import pytest

from raftlog.raft import Entry, EntryType, Message, MessageType, RaftConfig, RaftCore, Role, quorum
from raftlog.raft.testing import Faults, MemCluster, SafetyViolation
from support.raft_config import raft_config

FIVE = ["s1", "s2", "s3", "s4", "s5"]


def test_election_safety_at_most_one_leader_per_term() -> None:
    """Simultaneous candidates over a reordering network never both win a term."""
    for seed in range(40):
        c = MemCluster(
            FIVE,
            seed=seed,
            config=raft_config(pre_vote=False, check_quorum=False),
            faults=Faults(reorder=True, duplicate=0.2),
        )
        for _ in range(3):
            for n in c.rng.sample(FIVE, 3):
                c.nodes[n].c.campaign()
            c.stabilize()
        c.wait_leader()
        leaders_by_term: dict[int, set[str]] = {}
        for n in c.nodes.values():
            if n.c.role is Role.LEADER:
                leaders_by_term.setdefault(n.c.term, set()).add(n.id)
        assert all(len(v) == 1 for v in leaders_by_term.values()), (seed, leaders_by_term)
        assert c.checker.leaders, "some election must have succeeded"


def test_leader_append_only_ignores_stale_appends() -> None:
    """A leader never overwrites or deletes its entries, even when told to by a stale
    leader of an older term."""
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    lead.propose([b"x", b"y"])
    c.stabilize()
    core = lead.c
    before = core.entries(1, core.last_index + 1)
    old_term = core.term - 1
    core.step(
        Message(
            MessageType.APPEND,
            "b",
            "a",
            old_term,
            index=1,
            log_term=1,
            entries=(Entry(old_term, 2, EntryType.NORMAL, b"evil"),),
            commit=2,
        )
    )
    assert core.role is Role.LEADER
    assert core.entries(1, core.last_index + 1) == before
    # ... and the checker notices a leader whose log shrinks.
    with pytest.raises(SafetyViolation, match="append-only"):
        c.checker.check_leader_append_only("a", core.term, 2, lambda i: 1)


def test_leader_append_only_checker_catches_a_leader_that_drops_its_own_entry() -> None:
    """Control for the simulation's append-only check: a (mutant) leader that loses an
    uncommitted entry of its own term is caught at its next round, not only when a fake
    log is handed to the checker."""
    c = MemCluster(["a", "b", "c"], config=raft_config())
    lead = c.elect("a")
    c.isolate("a")  # nothing commits: the entries stay the leader's own, uncommitted
    lead.propose([b"x", b"y"])
    c.stabilize()
    assert lead.c.last_index > lead.c.log.committed
    del lead.c.log._entries[-1]  # the mutation: the leader's log shrinks
    with pytest.raises(SafetyViolation, match="append-only"):
        c.tick()  # the leader's next round


def test_log_matching_rejects_mismatched_previous_entry() -> None:
    """AppendEntries is accepted only if the previous entry matches; afterwards logs agree."""
    core = RaftCore(RaftConfig(id="b"))
    m = Message(
        MessageType.APPEND,
        "a",
        "b",
        2,
        index=0,
        log_term=0,
        entries=(Entry(1, 1, EntryType.NORMAL, b"1"), Entry(2, 2, EntryType.NORMAL, b"2")),
    )
    core.step(m)
    bad = Message(
        MessageType.APPEND,
        "a",
        "b",
        2,
        index=2,
        log_term=1,  # we hold term 2 at index 2
        entries=(Entry(2, 3, EntryType.NORMAL, b"3"),),
    )
    core.step(bad)
    resps = [x for x in core.ready().messages if x.type is MessageType.APPEND_RESP]
    assert [(r.reject, r.index) for r in resps] == [(False, 2), (True, 2)]
    assert resps[1].hint_index == 1 and resps[1].hint_term == 1
    assert core.last_index == 2
    with pytest.raises(SafetyViolation, match="log matching"):
        MemCluster.check_logs_static({"a": {1: 1, 2: 2, 3: 3}, "b": {1: 1, 2: 5, 3: 3}})


def test_leader_completeness_stale_node_cannot_lead() -> None:
    """Committed entries are in the log of every later leader: a node that missed them is
    refused votes, and the node that wins holds them."""
    c = MemCluster(FIVE, config=raft_config())
    lead = c.elect("s1")
    c.partition(["s1", "s2", "s3"], ["s4", "s5"])
    t = lead.propose([b"committed"])
    c.stabilize()
    assert t is not None and lead.acked
    c.nodes["s1"].crash()
    c.heal()
    for stale in ("s4", "s5"):
        c.nodes[stale].c.campaign()
        c.stabilize()
        assert c.nodes[stale].c.role is not Role.LEADER
    new = c.wait_leader()
    assert new.id in {"s2", "s3"}
    assert new.c.entry_term(t.first_index) == t.term
    with pytest.raises(SafetyViolation, match="leader completeness"):
        c.checker.on_leader("s4", 999, lambda i: 0 if i == t.first_index else None)


def _figure8(broken_commit: bool) -> MemCluster:
    drop_term = {"t": -1}
    c = MemCluster(FIVE, config=raft_config(pre_vote=False, check_quorum=False, max_size_per_msg=1))

    def drop(m: Message) -> bool:
        # s5's appends never leave it; s1's term-4 entries are dropped wherever they would
        # be accepted (a receiver lacking index 3 may see them, and will reject them).
        if m.type is not MessageType.APPEND:
            return False
        if m.src == "s5":
            return True
        has_new = any(e.term == drop_term["t"] for e in m.entries)
        return has_new and c.nodes[m.dst].alive and c.nodes[m.dst].c.last_index >= 3

    s1 = c.elect("s1")  # term 2
    c.stabilize()
    # (a) s1 replicates X at index 3 to s2 only.
    c.partition(["s1", "s2"], ["s3", "s4", "s5"])
    x = s1.propose([b"X"])
    c.stabilize()
    assert x is not None and x.first_index == 3
    # (b) s1 crashes; s5 wins term 3 with s3, s4 and appends its no-op at 3, unreplicated.
    s1.crash()
    c.drop_if = drop
    c.partition(["s3", "s4", "s5"], ["s1"], ["s2"])
    c.elect("s5")
    c.nodes["s5"].crash()
    # (c) s1 restarts and wins term 4 with s2, s3; X (term 2) reaches s3 but s1's term-4
    # no-op does not: X is on a majority, yet must not be committed by counting.
    s1.start()
    c.partition(["s1", "s2", "s3"], ["s4"], ["s5"])
    drop_term["t"] = 4
    s1.c.campaign()
    c.stabilize()
    if s1.c.role is not Role.LEADER:
        s1.c.campaign()
        c.stabilize()
    assert s1.c.role is Role.LEADER and s1.c.term == 4
    assert c.nodes["s3"].c.entry_term(3) == 2, "X reached s3"
    # s2 holds X too; its answer to s1's (dropped) append would acknowledge index 3.
    s1.c.step(Message(MessageType.APPEND_RESP, "s2", "s1", 4, index=3))
    c.stabilize()
    assert s1.c.status().progress["s2"].match == 3
    assert s1.c.status().progress["s3"].match == 3
    if not broken_commit:
        assert s1.c.commit_index == 2, "an old-term entry is never committed by counting"
    # (d) s1 crashes; s5 (last entry term 3) wins with s3, s4 and overwrites X.
    s1.crash()
    c.drop_if = None
    c.nodes["s5"].start()
    c.partition(["s2", "s3", "s4", "s5"], ["s1"])
    for _ in range(3):  # s2 and s3 voted for s1 in term 4: s5 needs term 5
        if c.nodes["s5"].c.role is not Role.LEADER:
            c.nodes["s5"].c.campaign()
            c.stabilize()
    c.tick(3, nodes=["s2", "s3", "s4", "s5"])
    return c


def test_state_machine_safety_figure_8() -> None:
    c = _figure8(broken_commit=False)
    s5 = c.nodes["s5"]
    assert s5.c.role is Role.LEADER
    for n in ("s2", "s3", "s4", "s5"):
        node = c.nodes[n]
        assert node.c.entry_term(3) == 3
        assert b"X" not in [d for _, d in node.state]
    assert 3 in c.checker.applied and c.checker.applied[3][0] == 3


def test_state_machine_safety_violation_is_detected_when_commit_rule_broken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Make the checker prove it can fail: commit old-term entries by counting (the bug
    Figure 8 warns about) and the same scenario must be reported."""

    def commit_by_counting_any_term(self: RaftCore) -> bool:
        match = {i: p.match for i, p in self._prs.items()}
        mci = quorum.committed_index(self.membership.voters, match)
        if mci <= self.log.committed:
            return False
        self.log.commit_to(mci)
        return True

    monkeypatch.setattr(RaftCore, "_maybe_commit", commit_by_counting_any_term)
    with pytest.raises(SafetyViolation):
        _figure8(broken_commit=True)


def test_state_machine_safety_checker_detects_divergent_apply() -> None:
    c = MemCluster(["a", "b"], config=raft_config())
    chk = c.checker
    chk.on_restart("x", 0)
    chk.on_restart("y", 0)
    chk.on_apply("x", Entry(1, 1, EntryType.NORMAL, b"a"))
    with pytest.raises(SafetyViolation, match="state machine safety"):
        chk.on_apply("y", Entry(1, 1, EntryType.NORMAL, b"b"))
    with pytest.raises(SafetyViolation, match="state machine safety"):
        chk.on_apply("x", Entry(1, 3, EntryType.NORMAL, b"gap"))
    with pytest.raises(SafetyViolation, match="election safety"):
        chk.on_leader("p", 7, lambda i: None)
        chk.on_leader("q", 7, lambda i: None)

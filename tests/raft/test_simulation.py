"""Randomized, seeded simulation of 3- and 5-node clusters under faults.

Each case is reproducible from its seed (shown in the test id and in the failure message):
    RAFTLOG_SIM_SEEDS=200 pytest tests/raft/test_simulation.py      # more seeds
    RAFTLOG_SIM_SEED=17 pytest tests/raft/test_simulation.py         # just one seed
    RAFTLOG_SIM_STEPS=20000 ...                                      # longer runs
"""

from __future__ import annotations

import os

import pytest

from raftlog.raft import RaftCore, ReadState, quorum
from raftlog.raft.log_view import RaftLog
from raftlog.raft.simulation import SimConfig, SimReport, simulate
from raftlog.raft.testing import SafetyViolation

SEEDS = int(os.environ.get("RAFTLOG_SIM_SEEDS", "200"))
STEPS = int(os.environ.get("RAFTLOG_SIM_STEPS", "3000"))
ONLY = os.environ.get("RAFTLOG_SIM_SEED")
SEED_LIST = [int(ONLY)] if ONLY else list(range(SEEDS))


def run(seed: int, sc: SimConfig) -> SimReport:
    try:
        return simulate(seed, sc)
    except Exception as exc:  # a safety violation, or the core itself crashing
        pytest.fail(
            f"simulation failed with seed={seed} nodes={sc.nodes} steps={sc.steps} "
            f"(reproduce: RAFTLOG_SIM_SEED={seed}): {exc!r}"
        )


@pytest.mark.parametrize("seed", SEED_LIST, ids=lambda s: f"seed{s}")
def test_three_nodes(seed: int) -> None:
    rep = run(seed, SimConfig(nodes=3, steps=STEPS))
    assert rep.leaders >= 1
    assert rep.crashes > 0 and rep.partitions > 0


@pytest.mark.parametrize("seed", SEED_LIST, ids=lambda s: f"seed{s}")
def test_five_nodes_with_membership_changes(seed: int) -> None:
    rep = run(1000 + seed, SimConfig(nodes=5, steps=STEPS, membership=0.01))
    assert rep.leaders >= 1


@pytest.mark.parametrize("seed", SEED_LIST[:50], ids=lambda s: f"seed{s}")
def test_three_nodes_deferred_commit_broadcast(seed: int) -> None:
    """Leaders that tell followers of commits late (the agent's setting) stay safe."""
    rep = run(3000 + seed, SimConfig(nodes=3, steps=STEPS, defer_commit_broadcast=True))
    assert rep.leaders >= 1 and rep.acked > 0


@pytest.mark.parametrize(
    ("check_quorum", "pre_vote"), [(False, True), (True, False), (False, False)]
)
def test_three_nodes_other_election_settings(check_quorum: bool, pre_vote: bool) -> None:
    for seed in SEED_LIST[:8]:
        run(
            2000 + seed,
            SimConfig(nodes=3, steps=STEPS, check_quorum=check_quorum, pre_vote=pre_vote),
        )


def test_simulation_exercises_the_interesting_paths() -> None:
    """Over a handful of seeds the faults actually happen and work gets done, so a passing
    run means something."""
    reps = [run(s, SimConfig(nodes=5, steps=STEPS, membership=0.01)) for s in range(4)]
    assert sum(r.acked for r in reps) > 100
    assert sum(r.snapshots_sent for r in reps) > 0
    assert sum(r.conf_changes for r in reps) > 0
    assert sum(r.transfers for r in reps) > 0
    assert sum(r.reads for r in reps) > 0
    assert max(r.max_term for r in reps) > 3


def test_simulation_is_reproducible() -> None:
    sc = SimConfig(nodes=3, steps=1500)
    assert simulate(5, sc) == simulate(5, sc)


def _first_failure(sc: SimConfig, seeds: int) -> int | None:
    for s in range(seeds):
        try:
            simulate(s, sc)
        except SafetyViolation:
            return s
    return None


def test_simulation_catches_a_broken_vote_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Granting votes to candidates with stale logs must be caught by the checker."""
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, i, t: True)
    assert _first_failure(SimConfig(nodes=3, steps=3000), 10) is not None


def test_simulation_catches_a_broken_quorum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Committing on half the voters (not a majority) must be caught."""
    monkeypatch.setattr(quorum, "majority", lambda n: n // 2)
    assert _first_failure(SimConfig(nodes=3, steps=3000), 10) is not None


def test_simulation_catches_lost_acknowledged_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader that 'forgets' to replicate (acknowledging entries only it holds) loses
    acknowledged writes when it crashes: the end-of-run check must notice."""

    def commit_alone(self: RaftCore) -> bool:
        if self.log.stable <= self.log.committed:
            return False
        self.log.commit_to(self.log.stable)
        return True

    monkeypatch.setattr(RaftCore, "_maybe_commit", commit_alone)
    assert _first_failure(SimConfig(nodes=3, steps=3000), 10) is not None


def test_simulation_catches_reads_without_a_quorum_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answering ReadIndex from the local commit index (no heartbeat round) serves stale
    reads on a deposed leader: the linearizability check must notice."""

    def read_locally(self: RaftCore, ctx: bytes) -> None:
        self._read_states.append(ReadState(self.log.committed, ctx))

    monkeypatch.setattr(RaftCore, "_start_read", read_locally)
    # Without check-quorum a deposed leader keeps believing it leads, which widens the
    # window in which a local read is stale.
    sc = SimConfig(nodes=3, steps=4000, read=0.1, check_quorum=False)
    assert _first_failure(sc, 60) is not None


def test_persist_before_send_check_rejects_undurable_promises() -> None:
    from raftlog.raft import Message, MessageType
    from raftlog.raft.testing import MemCluster

    c = MemCluster(["a", "b"])
    a = c.nodes["a"]
    with pytest.raises(SafetyViolation, match="persist-before-send"):
        a._check_persisted(Message(MessageType.VOTE_RESP, "a", "b", 5))
    with pytest.raises(SafetyViolation, match="persist-before-send"):
        a._check_persisted(Message(MessageType.APPEND_RESP, "a", "b", 1, index=7))
    a._check_persisted(Message(MessageType.PRE_VOTE, "a", "b", 9))  # future term is fine

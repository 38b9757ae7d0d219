"""Randomized, seeded simulation of clusters of Raft cores under faults.

:func:`simulate` drives a :class:`raftlog.raft.testing.MemCluster` through message loss,
duplication, reordering, partitions, crashes, restarts, leadership transfers and membership
changes, all drawn from one ``random.Random(seed)``, and checks Raft's safety properties as
it goes (:class:`raftlog.raft.testing.SafetyChecker`). A failing seed replays exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from raftlog.raft.config import RaftConfig
from raftlog.raft.core import RaftCore
from raftlog.raft.errors import RaftError
from raftlog.raft.testing import Faults, MemCluster, MemNode, SafetyViolation
from raftlog.raft.types import (
    Message,
    MessageType,
    NodeId,
    Role,
)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Knobs of :func:`simulate` (probabilities are per step)."""

    nodes: int = 3
    steps: int = 3000
    drop: float = 0.05
    duplicate: float = 0.03
    reorder: bool = True
    overtake: float = 0.2
    tick: float = 0.2
    propose: float = 0.06
    crash: float = 0.004
    restart: float = 0.006
    partition: float = 0.004
    heal: float = 0.003
    transfer: float = 0.002
    read: float = 0.02
    """Probability of a ReadIndex request on a leader; each answer is checked to cover
    every write acknowledged before the request (linearizable reads)."""
    membership: float = 0.0
    """Probability of attempting a membership change (remove a voter, add it back as a
    learner, promote a learner) on the leader."""
    early_send: bool = True
    crash_mid_ready: float = 0.002
    finish_prob: float = 0.5
    """Per step, probability that a node's outstanding write completes (async writes)."""
    """Probability, per Ready, of a crash after taking it and before persisting it."""
    snapshot_threshold: int = 12
    election_tick: int = 10
    check_quorum: bool = True
    pre_vote: bool = True
    check_every: int = 200
    settle_ticks: int = 400
    defer_commit_broadcast: bool = False
    """Leaders defer telling followers of a new commit (RaftConfig.defer_commit_broadcast)."""
    commit_broadcast: float = 0.05
    """With defer_commit_broadcast: probability per step that a leader's runtime sends its
    unsent commit index (its timer firing)."""


@dataclass(slots=True)
class SimReport:
    seed: int
    leaders: int = 0
    max_term: int = 0
    proposed: int = 0
    acked: int = 0
    applied: int = 0
    crashes: int = 0
    partitions: int = 0
    snapshots_sent: int = 0
    conf_changes: int = 0
    transfers: int = 0
    reads: int = 0


def simulate(seed: int, sc: SimConfig) -> SimReport:
    """Run one seeded simulation; raise SafetyViolation/AssertionError on any failure.

    Faults: message loss, duplication, reordering, partitions, crashes and restarts from the
    in-memory disk (what Ready asked to persist), leadership transfers and, optionally,
    membership changes. At the end the network heals, every node restarts, and every
    acknowledged proposal must be applied, in the same order, on every member.
    """
    ids = [f"n{i}" for i in range(1, sc.nodes + 1)]

    def config(i: NodeId) -> RaftConfig:
        return RaftConfig(
            id=i,
            election_tick=sc.election_tick,
            heartbeat_tick=2,
            max_inflight_msgs=8,
            max_size_per_msg=256,
            snapshot_threshold=sc.snapshot_threshold,
            snapshot_trailing_entries=3,
            check_quorum=sc.check_quorum,
            pre_vote=sc.pre_vote,
            defer_commit_broadcast=sc.defer_commit_broadcast,
        )

    faults = Faults(drop=sc.drop, duplicate=sc.duplicate, reorder=sc.reorder, overtake=sc.overtake)
    c = MemCluster(ids, seed=seed, config=config, faults=faults)
    c.wire = True
    rng = c.rng
    rep = SimReport(seed)
    for node in c.nodes.values():
        node.early_send = sc.early_send
        node.crash_mid_ready = sc.crash_mid_ready
        node.finish_prob = sc.finish_prob
    counter = 0
    removed: list[NodeId] = []
    read_need: dict[bytes, int] = {}
    read_seen: dict[NodeId, int] = {}

    def snapshot_sends(m: Message) -> bool:
        if m.type is MessageType.SNAPSHOT:
            rep.snapshots_sent += 1
        return False

    c.drop_if = snapshot_sends
    actions = [
        ("tick", sc.tick),
        ("propose", sc.propose),
        ("crash", sc.crash),
        ("restart", sc.restart),
        ("partition", sc.partition),
        ("heal", sc.heal),
        ("transfer", sc.transfer),
        ("read", sc.read),
        ("membership", sc.membership),
        ("commit", sc.commit_broadcast if sc.defer_commit_broadcast else 0.0),
    ]
    for step in range(sc.steps):
        r = rng.random()
        action = "deliver"
        for name, p in actions:
            if r < p:
                action = name
                break
            r -= p
        alive = [n for n in c.nodes.values() if n.alive]
        down = [n for n in c.nodes.values() if not n.alive]
        leaders = [n for n in alive if n.c.role is Role.LEADER]
        if action == "tick" and alive:
            rng.choice(alive).c.tick()
        elif action == "propose" and leaders:
            lead = rng.choice(leaders)
            batch = []
            for _ in range(rng.randint(1, 3)):
                counter += 1
                batch.append(f"s{seed}-{counter}".encode())
            if lead.propose(batch) is not None:
                rep.proposed += len(batch)
        elif action == "crash" and alive:
            rng.choice(alive).crash()
            rep.crashes += 1
        elif action == "restart" and down:
            rng.choice(down).start()
        elif action == "partition":
            shuffled = ids[:]
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(ids) - 1)
            c.partition(shuffled[:cut], shuffled[cut:])
            rep.partitions += 1
        elif action == "heal":
            c.heal()
        elif action == "transfer" and leaders:
            try:
                rng.choice(leaders).c.transfer_leadership()
                rep.transfers += 1
            except RaftError:
                pass
        elif action == "read" and leaders:
            counter += 1
            ctx = f"r{counter}".encode()
            need = max((max(n.acked, default=0) for n in c.nodes.values()), default=0)
            try:
                rng.choice(leaders).c.read_index(ctx)
                read_need[ctx] = need
            except RaftError:
                pass
        elif action == "commit" and leaders:
            for lead in leaders:
                if lead.c.commit_unsent:
                    lead.c.broadcast_commit()
        elif action == "membership" and leaders:
            if _membership_step(rng.choice(leaders).c, rng, removed):
                rep.conf_changes += 1
        else:
            c.deliver_next()
        c.process()
        for n in c.nodes.values():
            for rs in n.reads[read_seen.get(n.id, 0) :]:
                if rs.index < read_need[rs.context]:
                    raise SafetyViolation(
                        f"linearizability: read {rs.context!r} on {n.id} at index {rs.index} "
                        f"misses a write acknowledged at {read_need[rs.context]}"
                    )
                rep.reads += 1
            read_seen[n.id] = len(n.reads)
        if step % sc.check_every == 0:
            c.check_logs()

    _settle(c, sc)
    rep.leaders = len(c.checker.leaders)
    rep.max_term = max(c.checker.leaders, default=0)
    rep.applied = max(len(n.state) for n in c.nodes.values())
    rep.acked = sum(len(n.acked) for n in c.nodes.values())
    return rep


def _membership_step(core: RaftCore, rng: random.Random, removed: list[NodeId]) -> bool:
    from raftlog.raft.types import ConfChange, ConfChangeType

    m = core.membership
    learners = list(m.learners)
    try:
        if learners and rng.random() < 0.5:
            core.propose_conf_change(ConfChange(ConfChangeType.PROMOTE_LEARNER, learners[0]))
        elif removed and rng.random() < 0.6:
            back = removed[0]
            core.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, back, f"mem://{back}"))
            removed.remove(back)
        elif len(m.voters) > 3:
            victim = rng.choice(m.voters)
            core.propose_conf_change(ConfChange(ConfChangeType.REMOVE, victim))
            removed.append(victim)
        else:
            return False
    except RaftError:
        return False
    return True


def _settle(c: MemCluster, sc: SimConfig) -> None:
    """Heal everything and check that every acknowledged proposal is applied everywhere."""
    c.heal()
    c.drop_if = None
    c.faults = Faults(reorder=sc.reorder, overtake=sc.overtake)
    for n in c.nodes.values():
        n.crash_mid_ready = 0.0
        n.finish_prob = 1.0
        if not n.alive:
            n.start()
    c.stabilize()
    lead: MemNode | None = None
    members: list[MemNode] = []
    for _ in range(sc.settle_ticks):
        c.tick()
        lead = c.leader()
        if lead is None or lead.c.commit_index != lead.c.last_index:
            continue
        members = [c.nodes[i] for i in lead.c.membership.ids]
        if all(n.applied == lead.c.commit_index for n in members):
            break
    else:
        status = {n.id: n.c.status() for n in c.nodes.values()}
        raise AssertionError(f"liveness: the healed cluster did not converge: {status}")
    assert lead is not None
    c.check_logs()
    expected = lead.state
    acked: dict[int, bytes] = {}
    for n in c.nodes.values():
        acked.update(n.acked)
    for n in members:
        if n.state != expected:
            raise SafetyViolation(f"{n.id} applied a different sequence than leader {lead.id}")
    have = dict(expected)
    for index, data in sorted(acked.items()):
        if have.get(index) != data:
            raise SafetyViolation(
                f"acknowledged proposal {data!r} at index {index} is not applied "
                f"(found {have.get(index)!r})"
            )

"""The move planner: the next steps that bring every partition to the ring's placement.

The controller leader calls :func:`plan` whenever its state changes (and on a timer, for
grace periods that expire), carries out the steps it returns, and records each one in the
controller log with the matching command (:attr:`Step.command`). Planning is a pure
function of (:class:`ClusterMetadata`, ``now``, ``grace_s``): a new controller leader
plans the same steps from the same state.

A replica moves in four recorded steps, never more than one change in flight per
partition (docs/partitions.md, "The controller's metadata and moves")::

    AddLearner(new)   -> LearnerAdded      new receives the log, does not vote
    (leader reports)  -> LearnerCaughtUp   new has caught up
    Promote(new)      -> LearnerPromoted   new votes: R + 1 voters for a moment
    RemoveReplica(old)-> ReplicaRemoved    back to R voters, on the target nodes

Adding before removing keeps a partition at ``min(R, live nodes)`` voters or more through a
move. A voter on a node that is down is left alone for ``grace_s`` seconds after its
``down_since`` (a restart or a short partition should not copy a whole log); after that it
is replaced, and removed once its replacement votes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from raftlog.partitions.metadata import (
    ClusterMetadata,
    LearnerAdded,
    LearnerPromoted,
    PartitionKey,
    ReplicaRemoved,
)
from raftlog.partitions.ring import preferred_leaders

#: Seconds a down node's replicas are kept before they are replaced elsewhere. 30 s rides
#: out a process restart or a brief network partition (Serf marks a node failed within a
#: few seconds), without leaving a partition one failure from unavailability for long.
DEFAULT_GRACE_S: Final = 30.0


@dataclass(frozen=True)
class AddLearner:
    """Add ``node`` to the partition's group as a learner (it starts copying the log).
    Record :class:`LearnerAdded` first, then ask the group."""

    topic: str
    partition: int
    node: str

    @property
    def command(self) -> LearnerAdded:
        """The command that records this step."""
        return LearnerAdded(self.topic, self.partition, self.node)


@dataclass(frozen=True)
class Promote:
    """Make the caught-up learner ``node`` a voter; record :class:`LearnerPromoted` once
    the group's configuration change has committed."""

    topic: str
    partition: int
    node: str

    @property
    def command(self) -> LearnerPromoted:
        """The command that records this step."""
        return LearnerPromoted(self.topic, self.partition, self.node)


@dataclass(frozen=True)
class RemoveReplica:
    """Remove ``node`` (a voter no longer wanted, or a learner whose move is abandoned)
    from the partition's group; record :class:`ReplicaRemoved` once it has committed."""

    topic: str
    partition: int
    node: str

    @property
    def command(self) -> ReplicaRemoved:
        """The command that records this step."""
        return ReplicaRemoved(self.topic, self.partition, self.node)


Step: TypeAlias = AddLearner | Promote | RemoveReplica


def plan(metadata: ClusterMetadata, now: float, grace_s: float = DEFAULT_GRACE_S) -> list[Step]:
    """The next step of every partition not at its target, sorted by (topic, partition).

    The target is :meth:`ClusterMetadata.target`: the ring's replicas over the live nodes,
    ``R`` capped at the live nodes. For each partition, at most one step:

    1. A learner is in flight: remove it if its node is down or no longer a target (the
       membership changed under the move); promote it once caught up; else wait.
    2. More voters than the target size: remove one voter that is not a target, never one
       still within its grace period: first one down for ``grace_s`` or more, else a live
       one if as many live voters as the target size remain (by node id).
    3. Fewer target nodes among the voters than wanted, beyond the slots kept for voters
       within their grace period: add the first missing target node (ring order) as a
       learner.

    ``now`` and ``grace_s`` are seconds (``grace_s`` default :data:`DEFAULT_GRACE_S`, 30).
    Partitions not placed yet and every partition when no node is live get no step.
    Raises :class:`ValueError` for a ``grace_s`` that is negative or not a number.
    """
    if not grace_s >= 0:  # also catches NaN
        raise ValueError(f"grace_s is a number of seconds >= 0, not {grace_s!r}")
    steps: list[Step] = []
    for key, target in sorted(metadata.target().items()):
        step = _next_step(metadata, key, target, now, grace_s)
        if step is not None:
            steps.append(step)
    return steps


def _next_step(
    metadata: ClusterMetadata,
    key: PartitionKey,
    target: tuple[str, ...],
    now: float,
    grace_s: float,
) -> Step | None:
    topic, partition = key
    current = metadata.assignments[key]
    if not current.voters:
        return None
    if current.learner is not None:
        learner = current.learner
        if learner not in metadata.live or learner not in target:
            return RemoveReplica(topic, partition, learner)
        return Promote(topic, partition, learner) if current.caught_up else None
    held = [
        v
        for v in current.voters
        if v in metadata.down_since and now - metadata.down_since[v] < grace_s
    ]
    stale = [v for v in current.voters if v not in target and v not in held]
    if stale and len(current.voters) > len(target):
        gone = sorted(v for v in stale if v not in metadata.live)
        if gone:
            return RemoveReplica(topic, partition, gone[0])
        # A live voter goes only if as many live voters as the target wants remain: with a
        # voter held in its grace period, removing it could leave the data on down nodes.
        live_voters = [v for v in current.voters if v in metadata.live]
        if len(live_voters) - 1 >= len(target):
            return RemoveReplica(topic, partition, sorted(stale)[0])
    missing = [n for n in target if n not in current.voters]
    if len(missing) > len(held):
        return AddLearner(topic, partition, missing[0])
    return None


def preferred_of(metadata: ClusterMetadata) -> dict[PartitionKey, str]:
    """The node that should lead each partition that has a live voter:
    :func:`~raftlog.partitions.preferred_leaders` over each partition's live voters, in the
    ring's order of its target (so once converged they are the preferred leaders of the
    ring's placement)."""
    target = metadata.target()
    live_voters: dict[PartitionKey, tuple[str, ...]] = {}
    for key, assignment in sorted(metadata.assignments.items()):
        order = target.get(key, ())
        voters = [v for v in assignment.voters if v in metadata.live]
        if voters:
            live_voters[key] = tuple(
                sorted(voters, key=lambda v: (order.index(v) if v in order else len(order), v))
            )
    return preferred_leaders(live_voters)


def leaders_to_transfer(
    metadata: ClusterMetadata, current_leaders: Mapping[PartitionKey, str | None]
) -> dict[PartitionKey, str]:
    """The partitions whose leadership should move, and to which node (the preferred
    leaders of :func:`preferred_of`). A partition is listed when its current leader is
    known, differs from the preferred one, and the preferred one is live and a voter.
    Partitions unknown to ``metadata`` or without a known leader are skipped.
    """
    preferred = preferred_of(metadata)
    transfers: dict[PartitionKey, str] = {}
    for key, leader in sorted(current_leaders.items(), key=lambda item: item[0]):
        want = preferred.get(key)
        if leader is None or want is None or want == leader:
            continue
        if want in metadata.live and want in metadata.assignments[key].voters:
            transfers[key] = want
    return transfers

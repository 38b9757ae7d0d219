"""raftlog.partitions: the controller's metadata state machine and the move planner.

Scripted tests for each command and each planner rule, then a seeded simulation: random
joins, failures, recoveries, topic creations and deletions and time passing, with a driver
that carries out the planner's steps by applying the matching commands. It checks the
invariants after every command and that, once membership stops changing and the grace
period has passed, the assignment converges to the ring's placement. A failure names its
seed and replays exactly.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, fields

import pytest

from raftlog.partitions import (
    COMMANDS,
    DEFAULT_GRACE_S,
    DEFAULT_TOPIC,
    MAX_PARTITIONS,
    MAX_REPLICATION,
    AddLearner,
    Applied,
    Assignment,
    ClusterMetadata,
    Command,
    CreateTopic,
    DeleteTopic,
    ForgetNode,
    LearnerAdded,
    LearnerCaughtUp,
    LearnerPromoted,
    MetadataDecodeError,
    NodeDown,
    NodeUp,
    PartitionKey,
    Promote,
    Reason,
    Rejected,
    RemoveReplica,
    ReplicaRemoved,
    Ring,
    SetRetention,
    Step,
    TopicSpec,
    leaders_to_transfer,
    placement,
    plan,
    preferred_leaders,
)


def cluster(*nodes: str, now: float = 0.0) -> ClusterMetadata:
    """A state with ``nodes`` live and every partition on its target (settled)."""
    state = ClusterMetadata()
    for node in nodes:
        assert isinstance(state.apply(NodeUp(node), now), Applied)
    settle(state, now)
    return state


def settle(state: ClusterMetadata, now: float = 0.0) -> None:
    """Carry out plans until there is nothing left to do."""
    for _ in range(20):
        steps = plan(state, now)
        if not steps:
            return
        for step in steps:
            move_one(state, step, now)
    raise AssertionError("the plans never ran out")


def ok(state: ClusterMetadata, command: Command, now: float = 0.0) -> Applied:
    result = state.apply(command, now)
    assert isinstance(result, Applied), result
    return result


def ring_target(state: ClusterMetadata) -> dict[PartitionKey, tuple[str, ...]]:
    """The ring's placement over the live nodes, computed here from the ring module."""
    ring = Ring.of(state.live)
    target: dict[PartitionKey, tuple[str, ...]] = {}
    for topic, spec in state.topics.items():
        target.update(placement(ring, {topic: spec.partitions}, spec.replication))
    return target


def move_one(state: ClusterMetadata, step: Step, now: float = 0.0) -> None:
    """Carry out ``step`` the way a driver does (an added learner catches up at once)."""
    ok(state, step.command, now)
    if isinstance(step, AddLearner):
        ok(state, LearnerCaughtUp(step.topic, step.partition, step.node), now)


# --- the fresh state and each command ---------------------------------------------------


def test_a_fresh_state_has_the_default_topic_with_one_unplaced_partition() -> None:
    state = ClusterMetadata()
    assert DEFAULT_TOPIC == "default"
    assert state.topics == {DEFAULT_TOPIC: TopicSpec(partitions=1, replication=3)}
    assert state.assignments == {(DEFAULT_TOPIC, 0): Assignment()}
    assert plan(state, 0.0) == []


def test_the_first_node_up_places_the_default_topic_directly() -> None:
    state = ClusterMetadata()
    result = ok(state, NodeUp("a"))
    assert result.changed == ((DEFAULT_TOPIC, 0),)
    assert state.assignments[(DEFAULT_TOPIC, 0)] == Assignment(("a",), epoch=1, initial=("a",))
    assert ok(state, NodeUp("a")).changed == ()  # repeated: nothing changes


def test_create_topic_places_every_partition_on_the_ring_target() -> None:
    state = cluster("a", "b", "c", "d")
    spec = TopicSpec(partitions=5, replication=2, retention_bytes=1 << 30, retention_ms=60_000)
    result = ok(state, CreateTopic("orders", spec))
    assert result.changed == tuple(("orders", p) for p in range(5))
    assert state.topics["orders"] == spec
    want = placement(Ring.of("abcd"), {"orders": 5}, 2)
    epoch = state.epoch - 5
    for key, replicas in want.items():
        epoch += 1  # each new assignment takes the next cluster-wide epoch, in key order
        assert state.assignments[key] == Assignment(replicas, epoch=epoch, initial=replicas)


def test_a_topic_created_with_no_live_node_is_placed_on_the_next_node_up() -> None:
    state = ClusterMetadata()
    assert ok(state, CreateTopic("t", TopicSpec(2))).changed == ()
    assert state.assignments[("t", 1)] == Assignment()
    assert ok(state, NodeUp("a")).changed == ((DEFAULT_TOPIC, 0), ("t", 0), ("t", 1))
    assert state.assignments[(DEFAULT_TOPIC, 0)] == Assignment(("a",), epoch=1, initial=("a",))
    assert state.assignments[("t", 0)] == Assignment(("a",), epoch=2, initial=("a",))
    assert state.assignments[("t", 1)] == Assignment(("a",), epoch=3, initial=("a",))
    assert state.epoch == 3


def test_epochs_are_never_reused_even_by_a_topic_created_again() -> None:
    state = cluster("a", "b", "c")
    ok(state, CreateTopic("t", TopicSpec(1)))
    old = state.assignments[("t", 0)].epoch
    ok(state, DeleteTopic("t"))
    ok(state, CreateTopic("t", TopicSpec(1)))
    assert state.assignments[("t", 0)].epoch == old + 1 == state.epoch


def test_replication_is_capped_at_the_live_nodes_then_grown_by_adding() -> None:
    state = cluster("a", "b")
    ok(state, CreateTopic("t", TopicSpec(1, replication=3)))
    assert len(state.assignments[("t", 0)].voters) == 2
    ok(state, NodeUp("c"))
    steps = [s for s in plan(state, 0.0) if s.topic == "t"]
    assert steps == [AddLearner("t", 0, "c")]


def test_delete_topic_forgets_its_partitions() -> None:
    state = cluster("a", "b", "c")
    ok(state, CreateTopic("t", TopicSpec(3)))
    result = ok(state, DeleteTopic("t"))
    assert result.changed == (("t", 0), ("t", 1), ("t", 2))
    assert "t" not in state.topics
    assert set(state.assignments) == {(DEFAULT_TOPIC, 0)}
    assert ok(state, CreateTopic("t", TopicSpec(1))).changed == (("t", 0),)


def test_set_retention_replaces_both_settings() -> None:
    state = cluster("a")
    ok(state, CreateTopic("t", TopicSpec(2, 1, retention_bytes=10)))
    ok(state, SetRetention("t", None, 3_600_000))
    assert state.topics["t"] == TopicSpec(2, 1, None, 3_600_000)


def test_node_down_records_the_first_time_and_node_up_clears_it() -> None:
    state = cluster("a", "b")
    ok(state, NodeDown("a"), now=10.0)
    ok(state, NodeDown("a"), now=20.0)
    assert state.down_since == {"a": 10.0}
    assert state.live == {"b"}
    ok(state, NodeUp("a"), now=25.0)
    assert state.down_since == {}
    assert state.live == {"a", "b"}


def test_forget_node_drops_a_down_node_that_holds_nothing() -> None:
    state = cluster("a", "b", "c", "d")
    gone = state.assignments[(DEFAULT_TOPIC, 0)].voters[0]
    live = next(n for n in "abcd" if n != gone)
    ok(state, NodeDown(gone), now=0.0)
    for command, reason in [
        (ForgetNode("zz"), Reason.UNKNOWN_NODE),
        (ForgetNode(live), Reason.NODE_LIVE),
        (ForgetNode(gone), Reason.HOLDS_REPLICAS),
    ]:
        before = state.encode()
        result = state.apply(command, 1.0)
        assert isinstance(result, Rejected)
        assert result.reason is reason
        assert state.encode() == before
    settle(state, 100.0)  # past the grace period: its replicas are replaced and removed
    ok(state, ForgetNode(gone), now=100.0)
    assert state.down_since == {}
    assert state.live == set("abcd") - {gone}


def test_a_move_records_each_step_and_raises_the_epoch_each_time() -> None:
    state = cluster("a", "b", "c")
    key = (DEFAULT_TOPIC, 0)
    voters, epoch = state.assignments[key].voters, state.assignments[key].epoch
    initial = state.assignments[key].initial
    assert sorted(voters) == ["a", "b", "c"]
    ok(state, NodeUp("d"))
    assert ok(state, LearnerAdded(DEFAULT_TOPIC, 0, "d")).changed == (key,)
    # the group's initial voters stay what they were through every step
    assert state.assignments[key] == Assignment(voters, "d", False, epoch + 1, initial)
    assert state.assignments[key].replicas == (*voters, "d")
    ok(state, LearnerCaughtUp(DEFAULT_TOPIC, 0, "d"))
    assert state.assignments[key] == Assignment(voters, "d", True, epoch + 2, initial)
    assert ok(state, LearnerCaughtUp(DEFAULT_TOPIC, 0, "d")).changed == ()  # repeated
    ok(state, LearnerPromoted(DEFAULT_TOPIC, 0, "d"))
    assert state.assignments[key] == Assignment((*voters, "d"), None, False, epoch + 3, initial)
    ok(state, ReplicaRemoved(DEFAULT_TOPIC, 0, voters[0]))
    assert state.assignments[key] == Assignment((*voters[1:], "d"), None, False, epoch + 4, initial)


def test_removing_a_learner_abandons_the_move() -> None:
    state = cluster("a", "b", "c", "d")
    before = state.assignments[(DEFAULT_TOPIC, 0)]
    spare = ({"a", "b", "c", "d"} - set(before.voters)).pop()
    ok(state, LearnerAdded(DEFAULT_TOPIC, 0, spare))
    ok(state, ReplicaRemoved(DEFAULT_TOPIC, 0, spare))
    assert state.assignments[(DEFAULT_TOPIC, 0)] == Assignment(
        before.voters, epoch=before.epoch + 2, initial=before.initial
    )


# --- rejected commands change nothing --------------------------------------------------


def moving_state() -> ClusterMetadata:
    """Nodes a..d and f live, e down; topic "t" (2 partitions, R=3); partition t/0 has a
    learner (one of a..d) that has not caught up."""
    state = cluster("a", "b", "c", "d", "e", "f")
    ok(state, NodeDown("e"), now=1.0)
    ok(state, CreateTopic("t", TopicSpec(2, retention_ms=1000)))
    voters = state.assignments[("t", 0)].voters
    spare = sorted({"a", "b", "c", "d"} - set(voters))[0]
    ok(state, LearnerAdded("t", 0, spare))
    return state


def learner_of(state: ClusterMetadata) -> str:
    learner = state.assignments[("t", 0)].learner
    assert learner is not None
    return learner


def voter_of(state: ClusterMetadata, key: PartitionKey = ("t", 0)) -> str:
    return state.assignments[key].voters[0]


@dataclass(frozen=True)
class Bad:
    """A command the state rejects, built from the state, and the reason expected."""

    name: str
    reason: Reason

    def command(self, state: ClusterMetadata) -> object:
        learner = learner_of(state)
        voter = voter_of(state)
        t1 = state.assignments[("t", 1)]
        outsider = sorted({"a", "b", "c", "d"} - set(t1.voters))[0]
        return {
            "empty name": CreateTopic("", TopicSpec(1)),
            "slash in name": CreateTopic("a/b", TopicSpec(1)),
            "dot name": CreateTopic("..", TopicSpec(1)),
            "long name": CreateTopic("x" * 250, TopicSpec(1)),
            "name not a str": CreateTopic(7, TopicSpec(1)),  # type: ignore[arg-type]
            "zero partitions": CreateTopic("u", TopicSpec(0)),
            "too many partitions": CreateTopic("u", TopicSpec(MAX_PARTITIONS + 1)),
            "partitions a bool": CreateTopic("u", TopicSpec(True)),
            "zero replication": CreateTopic("u", TopicSpec(1, replication=0)),
            "too much replication": CreateTopic("u", TopicSpec(1, MAX_REPLICATION + 1)),
            "negative retention": CreateTopic("u", TopicSpec(1, retention_bytes=-1)),
            "float retention": CreateTopic("u", TopicSpec(1, retention_ms=1.5)),  # type: ignore[arg-type]
            "spec not a spec": CreateTopic("u", {"partitions": 1}),  # type: ignore[arg-type]
            "duplicate topic": CreateTopic("t", TopicSpec(1)),
            "duplicate default": CreateTopic(DEFAULT_TOPIC, TopicSpec(1)),
            "delete unknown": DeleteTopic("nope"),
            "delete default": DeleteTopic(DEFAULT_TOPIC),
            "retention unknown": SetRetention("nope", None, None),
            "retention zero": SetRetention("t", 0, None),
            "node up empty": NodeUp(""),
            "node up not a str": NodeUp(["a"]),  # type: ignore[arg-type]
            "node up lone surrogate": NodeUp("n\ud800"),
            "node up too long": NodeUp("n" * 256),
            "node down unknown": NodeDown("zz"),
            "node down unhashable": NodeDown(["a"]),  # type: ignore[arg-type]
            "forget unknown": ForgetNode("zz"),
            "forget live": ForgetNode("a"),
            "learner unknown topic": LearnerAdded("nope", 0, "a"),
            "learner unknown partition": LearnerAdded("t", 2, outsider),
            "learner negative partition": LearnerAdded("t", -1, outsider),
            "learner partition a str": LearnerAdded("t", "0", outsider),  # type: ignore[arg-type]
            "learner node unhashable": LearnerAdded("t", 1, {}),  # type: ignore[arg-type]
            "learner down node": LearnerAdded("t", 1, "e"),
            "learner never seen": LearnerAdded("t", 1, "zz"),
            "learner already voter": LearnerAdded("t", 1, t1.voters[0]),
            "learner already voter, move in flight": LearnerAdded("t", 0, voter),
            "caught up not learner": LearnerCaughtUp("t", 0, voter),
            "promote not caught up": LearnerPromoted("t", 0, learner),
            "promote not learner": LearnerPromoted("t", 1, outsider),
            "remove not replica": ReplicaRemoved("t", 1, outsider),
            "not a command": "NodeUp('a')",
        }[self.name]


BAD = [
    Bad("empty name", Reason.INVALID_ARGUMENT),
    Bad("slash in name", Reason.INVALID_ARGUMENT),
    Bad("dot name", Reason.INVALID_ARGUMENT),
    Bad("long name", Reason.INVALID_ARGUMENT),
    Bad("name not a str", Reason.INVALID_ARGUMENT),
    Bad("zero partitions", Reason.INVALID_ARGUMENT),
    Bad("too many partitions", Reason.INVALID_ARGUMENT),
    Bad("partitions a bool", Reason.INVALID_ARGUMENT),
    Bad("zero replication", Reason.INVALID_ARGUMENT),
    Bad("too much replication", Reason.INVALID_ARGUMENT),
    Bad("negative retention", Reason.INVALID_ARGUMENT),
    Bad("float retention", Reason.INVALID_ARGUMENT),
    Bad("spec not a spec", Reason.INVALID_ARGUMENT),
    Bad("duplicate topic", Reason.TOPIC_EXISTS),
    Bad("duplicate default", Reason.TOPIC_EXISTS),
    Bad("delete unknown", Reason.UNKNOWN_TOPIC),
    Bad("delete default", Reason.PROTECTED_TOPIC),
    Bad("retention unknown", Reason.UNKNOWN_TOPIC),
    Bad("retention zero", Reason.INVALID_ARGUMENT),
    Bad("node up empty", Reason.INVALID_ARGUMENT),
    Bad("node up not a str", Reason.INVALID_ARGUMENT),
    Bad("node up lone surrogate", Reason.INVALID_ARGUMENT),
    Bad("node up too long", Reason.INVALID_ARGUMENT),
    Bad("node down unknown", Reason.UNKNOWN_NODE),
    Bad("node down unhashable", Reason.UNKNOWN_NODE),
    Bad("forget unknown", Reason.UNKNOWN_NODE),
    Bad("forget live", Reason.NODE_LIVE),
    Bad("learner unknown topic", Reason.UNKNOWN_TOPIC),
    Bad("learner unknown partition", Reason.UNKNOWN_PARTITION),
    Bad("learner negative partition", Reason.UNKNOWN_PARTITION),
    Bad("learner partition a str", Reason.UNKNOWN_PARTITION),
    Bad("learner node unhashable", Reason.INVALID_ARGUMENT),
    Bad("learner down node", Reason.NODE_DOWN),
    Bad("learner never seen", Reason.NODE_DOWN),
    Bad("learner already voter", Reason.ALREADY_A_REPLICA),
    Bad("learner already voter, move in flight", Reason.ALREADY_A_REPLICA),
    Bad("caught up not learner", Reason.NOT_A_LEARNER),
    Bad("promote not caught up", Reason.NOT_CAUGHT_UP),
    Bad("promote not learner", Reason.NOT_A_LEARNER),
    Bad("remove not replica", Reason.NOT_A_REPLICA),
    Bad("not a command", Reason.UNKNOWN_COMMAND),
]


@pytest.mark.parametrize("bad", BAD, ids=lambda bad: bad.name)
def test_a_rejected_command_changes_nothing(bad: Bad) -> None:
    state = moving_state()
    before = state.encode()
    result = state.apply(bad.command(state), 5.0)
    assert isinstance(result, Rejected), result
    assert result.reason is bad.reason, result
    assert result.message
    assert state.encode() == before


def test_a_second_learner_is_refused_while_one_is_in_flight() -> None:
    state = moving_state()
    t0 = state.assignments[("t", 0)]
    free = sorted(state.live - set(t0.replicas))
    assert free, t0
    before = state.encode()
    result = state.apply(LearnerAdded("t", 0, free[0]), 5.0)
    assert isinstance(result, Rejected)
    assert result.reason is Reason.MOVE_IN_PROGRESS
    assert state.encode() == before


def test_the_last_voter_cannot_be_removed() -> None:
    state = cluster("a")
    before = state.encode()
    result = state.apply(ReplicaRemoved(DEFAULT_TOPIC, 0, "a"), 0.0)
    assert isinstance(result, Rejected)
    assert result.reason is Reason.LAST_VOTER
    assert state.encode() == before


#: every command class, in the order the codec lists them (raftlog.partitions.COMMANDS)
COMMAND_CLASSES = list(COMMANDS.values())
VALUES: list[object] = [
    *"abcdef",
    "",
    "t",
    DEFAULT_TOPIC,
    "n\ud800",
    "x" * 300,
    0,
    1,
    2,
    -1,
    2**70,
    1.5,
    math.nan,
    None,
    True,
    [],
    {},
    TopicSpec(1),
    TopicSpec(3, 2, 100, 100),
    TopicSpec(0),
    TopicSpec(2, 9),
    TopicSpec("1"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("seed", range(5))
def test_apply_never_raises_and_a_rejection_changes_nothing(seed: int) -> None:
    """Commands with fields drawn from a pool of good and bad values: each is applied or
    rejected, a rejected one leaves the same bytes, the invariants hold, planning works."""
    rng = random.Random(seed)
    sim = Sim(seed)
    sim.state = moving_state()
    accepted = 0
    for _ in range(1500):
        kind = rng.choice(COMMAND_CLASSES)
        command = kind(*(rng.choice(VALUES) for _ in fields(kind)))
        before = sim.state.encode()
        result = sim.state.apply(command, rng.choice([0.0, 5.0, 50.0]))
        if isinstance(result, Rejected):
            assert sim.state.encode() == before, (command, result)
        else:
            accepted += 1
            sim.check()
            plan(sim.state, 100.0)
            leaders_to_transfer(sim.state, {k: "a" for k in sim.state.assignments})
    assert accepted > 50


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf, 10**400, "1", None, True])
def test_a_bad_time_is_rejected(now: object) -> None:
    state = cluster("a", "b")
    before = state.encode()
    result = state.apply(NodeDown("a"), now)  # type: ignore[arg-type]
    assert isinstance(result, Rejected)
    assert result.reason is Reason.INVALID_ARGUMENT
    assert state.encode() == before


# --- snapshots --------------------------------------------------------------------------


def test_encode_decode_round_trips() -> None:
    state = moving_state()
    ok(state, LearnerCaughtUp("t", 0, learner_of(state)))
    ok(state, SetRetention("t", 1 << 20, None))
    data = state.encode()
    copy = ClusterMetadata.decode(data)
    assert copy == state
    assert copy.encode() == data
    assert ClusterMetadata.decode(ClusterMetadata().encode()) == ClusterMetadata()


def test_encode_is_sorted_json_independent_of_insertion_order() -> None:
    one = cluster("a", "b", "c", "d")
    for name in ("x", "y"):
        ok(one, CreateTopic(name, TopicSpec(2)))
    ok(one, NodeDown("d"), now=1.0)
    ok(one, NodeDown("c"), now=2.0)
    two = ClusterMetadata.decode(one.encode())
    two.live = set(reversed(sorted(two.live)))
    two.down_since = dict(reversed(two.down_since.items()))
    two.topics = dict(reversed(two.topics.items()))
    two.assignments = dict(reversed(two.assignments.items()))
    assert two == one
    assert one.encode() == two.encode()
    assert one.encode().startswith(b'{"assignments":[')


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"version": 2}',
        ClusterMetadata().encode().replace(b'"version":3', b'"version":9'),
        ClusterMetadata().encode().replace(b'"incarnation":0', b'"incarnation":1'),
        ClusterMetadata().encode().replace(b'"partitions":1', b'"partitions":2'),
        ClusterMetadata().encode().replace(b'"partitions":1', b'"partitions":0'),
        b"\xff\xfe",
        ClusterMetadata().encode().replace(b'"live":[]', b'"live":["\\ud800"]'),
        ClusterMetadata().encode().replace(b'"epoch":0', b'"epoch":-1'),
    ],
)
def test_decode_refuses_what_encode_did_not_write(data: bytes) -> None:
    with pytest.raises(MetadataDecodeError):
        ClusterMetadata.decode(data)


def test_a_topic_created_again_under_its_name_has_a_new_incarnation_kept_by_snapshots() -> None:
    state = ClusterMetadata()
    assert state.apply(NodeUp("a"), 1.0) == Applied(((DEFAULT_TOPIC, 0),))
    assert state.incarnation_of(DEFAULT_TOPIC) == 0
    assert isinstance(state.apply(CreateTopic("t", TopicSpec(2)), 2.0), Applied)
    first = state.incarnation_of("t")
    assert first == 1
    assert isinstance(state.apply(DeleteTopic("t"), 3.0), Applied)
    assert state.incarnation_of("t") == 0  # unknown again
    assert isinstance(state.apply(CreateTopic("t", TopicSpec(2)), 4.0), Applied)
    assert state.incarnation_of("t") == 2
    copy = ClusterMetadata.decode(state.encode())
    assert copy == state and copy.incarnation_of("t") == 2 and copy.topics_created == 2


def test_a_version_2_snapshot_reads_with_every_incarnation_0() -> None:
    """What the controller wrote before topics had an incarnation still restores."""
    state = ClusterMetadata()
    state.apply(NodeUp("a"), 1.0)
    state.apply(CreateTopic("t", TopicSpec(1)), 2.0)
    doc = json.loads(state.encode())
    doc["version"] = 2
    del doc["topics_created"]
    for raw in doc["topics"].values():
        del raw["incarnation"]
    old = ClusterMetadata.decode(json.dumps(doc).encode())
    assert old.topics == state.topics and old.assignments == state.assignments
    assert old.incarnation_of("t") == 0 and old.topics_created == 0


# --- the planner, rule by rule ----------------------------------------------------------


def test_a_join_moves_a_replica_add_learner_then_promote_then_remove() -> None:
    nodes = [f"n{i}" for i in range(5)]
    state = cluster(*nodes)
    ok(state, CreateTopic("t", TopicSpec(16)))
    before = {k: a.voters for k, a in state.assignments.items()}
    ok(state, NodeUp("n5"))
    target = ring_target(state)
    moving = sorted(k for k in target if set(target[k]) != set(before[k]))
    assert moving  # the ring gives the new node some replicas
    steps = plan(state, 0.0)
    assert steps == [AddLearner(t, p, "n5") for t, p in moving]
    for step in steps:
        move_one(state, step)
    steps = plan(state, 0.0)
    assert steps == [Promote(t, p, "n5") for t, p in moving]
    for step in steps:
        move_one(state, step)
    for key in moving:  # R + 1 voters for a moment: add before remove
        assert len(state.assignments[key].voters) == 4
    steps = plan(state, 0.0)
    assert steps == [
        RemoveReplica(t, p, (set(before[(t, p)]) - set(target[(t, p)])).pop()) for t, p in moving
    ]
    for step in steps:
        move_one(state, step)
    assert plan(state, 0.0) == []
    assert {k: set(a.voters) for k, a in state.assignments.items()} == {
        k: set(v) for k, v in target.items()
    }


def test_a_learner_that_has_not_caught_up_is_waited_for() -> None:
    state = cluster("a", "b", "c")
    ok(state, CreateTopic("t", TopicSpec(8)))
    ok(state, NodeUp("d"))
    step = plan(state, 0.0)[0]
    ok(state, step.command)
    assert all(s.partition != step.partition or s.topic != step.topic for s in plan(state, 0.0))


def test_a_down_voter_is_replaced_only_after_the_grace_period() -> None:
    state = cluster("a", "b", "c", "d", now=0.0)
    ok(state, CreateTopic("t", TopicSpec(8)))
    holding = sorted(k for k, a in state.assignments.items() if "a" in a.voters)
    ok(state, NodeDown("a"), now=100.0)
    assert plan(state, 100.0) == []
    assert plan(state, 100.0 + DEFAULT_GRACE_S - 0.001) == []
    steps = plan(state, 100.0 + DEFAULT_GRACE_S)
    assert sorted((s.topic, s.partition) for s in steps) == holding
    assert all(isinstance(s, AddLearner) for s in steps)
    assert plan(state, 105.0, grace_s=5.0) == steps  # the grace period is a parameter
    for step in steps:
        move_one(state, step, 200.0)
    for step in plan(state, 200.0):
        assert isinstance(step, Promote)
        move_one(state, step, 200.0)
    steps = plan(state, 200.0)
    assert steps == [RemoveReplica(t, p, "a") for t, p in holding]


def test_a_node_back_within_the_grace_period_moves_nothing() -> None:
    state = cluster("a", "b", "c", "d")
    ok(state, CreateTopic("t", TopicSpec(8)))
    before = state.encode()
    ok(state, NodeDown("b"), now=10.0)
    assert plan(state, 20.0) == []
    ok(state, NodeUp("b"), now=20.0)
    assert plan(state, 1000.0) == []
    assert state.encode() == before


def test_a_learner_on_a_node_that_went_down_is_removed_at_once() -> None:
    state = cluster("a", "b", "c", "d")
    ok(state, CreateTopic("t", TopicSpec(8)))
    ok(state, NodeUp("e"))
    step = next(s for s in plan(state, 0.0) if isinstance(s, AddLearner))
    ok(state, step.command)
    ok(state, NodeDown(step.node), now=1.0)
    key_steps = [
        s for s in plan(state, 1.0) if (s.topic, s.partition) == (step.topic, step.partition)
    ]
    assert key_steps == [RemoveReplica(step.topic, step.partition, step.node)]


def test_a_partition_shrinks_when_nodes_are_gone_for_good() -> None:
    state = cluster("a", "b", "c")
    ok(state, NodeDown("c"), now=0.0)
    assert plan(state, 10.0) == []
    assert plan(state, 30.0) == [RemoveReplica(DEFAULT_TOPIC, 0, "c")]


@pytest.mark.parametrize("grace_s", [-1.0, math.nan])
def test_a_negative_grace_period_is_refused(grace_s: float) -> None:
    with pytest.raises(ValueError, match="grace_s"):
        plan(cluster("a"), 0.0, grace_s)


def test_no_live_node_means_no_steps() -> None:
    state = cluster("a")
    ok(state, NodeDown("a"), now=0.0)
    assert plan(state, 1e9) == []


# --- leaders ------------------------------------------------------------------------------


def test_leaders_to_transfer_names_only_live_voters_that_should_lead() -> None:
    state = cluster(*(f"n{i}" for i in range(4)))
    ok(state, CreateTopic("t", TopicSpec(8)))
    preferred = preferred_leaders(ring_target(state))
    other = {
        key: next(v for v in state.assignments[key].voters if v != want)
        for key, want in preferred.items()
    }
    assert leaders_to_transfer(state, preferred) == {}
    assert leaders_to_transfer(state, other) == preferred
    assert leaders_to_transfer(state, dict.fromkeys(preferred)) == {}  # leaders unknown
    assert leaders_to_transfer(state, {("nope", 0): "n0"}) == {}
    ok(state, NodeDown("n0"), now=0.0)
    moved = leaders_to_transfer(state, other)
    assert moved
    for key, node in moved.items():
        assert node in state.live
        assert node in state.assignments[key].voters
        assert node != other[key]


# --- the simulation -----------------------------------------------------------------------

NODES = [f"n{i}" for i in range(9)]
TOPICS = [f"t{i}" for i in range(5)]
GRACE = 30.0


class Sim:
    """A controller applying commands, a driver carrying out plans, and the invariants."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.state = ClusterMetadata()
        self.log: list[tuple[Command, float]] = []
        self.now = 0.0

    def apply(self, command: Command) -> None:
        result = self.state.apply(command, self.now)
        self.log.append((command, self.now))
        assert isinstance(result, Applied), (command, result)
        self.check()

    def check(self) -> None:
        state = self.state
        assert not state.live & set(state.down_since)
        assert set(state.assignments) == {
            (t, p) for t, s in state.topics.items() for p in range(s.partitions)
        }
        for key, a in state.assignments.items():
            assert len(set(a.replicas)) == len(a.replicas), f"two replicas of {key} on one node"
            assert set(a.replicas) <= state.live | set(state.down_since), (key, a)
            assert a.voters or (a.epoch == 0 and a.learner is None), (key, a)
            assert a.learner is not None or not a.caught_up
            if state.live:
                assert a.voters, f"{key} is unplaced with live nodes"

    def want(self, key: PartitionKey) -> int:
        want = self.state.replication_of(key[0])
        assert want == min(self.state.topics[key[0]].replication, len(self.state.live))
        return want

    def drive(self, partial: bool) -> list[Step]:
        """One round: plan, carry out the steps (some of them if ``partial``), then let
        learners with a live voter to copy from catch up (some of them if ``partial``)."""
        state = self.state
        steps = plan(state, self.now, GRACE)
        keys = [(s.topic, s.partition) for s in steps]
        assert len(keys) == len(set(keys)), "two changes planned for one partition"
        for step in steps:
            if partial and self.rng.random() < 0.3:
                continue
            key = (step.topic, step.partition)
            before = state.assignments[key]
            if isinstance(step, AddLearner):
                assert before.learner is None
                assert step.node in state.live
            if isinstance(step, RemoveReplica) and step.node in before.voters:
                down = state.down_since.get(step.node)
                assert down is None or self.now - down >= GRACE, "replaced within grace"
                assert len(before.voters) > self.want(key), "remove before add"
            self.apply(step.command)
            if isinstance(step, RemoveReplica) and step.node in before.voters:
                after = state.assignments[key].voters
                assert len(after) >= self.want(key)
                live_before = len(state.live & set(before.voters))
                assert len(state.live & set(after)) >= min(self.want(key), live_before)
        for key, a in sorted(state.assignments.items()):
            if a.learner is None or a.caught_up or not state.live & set(a.voters):
                continue
            if not partial or self.rng.random() < 0.6:
                self.apply(LearnerCaughtUp(key[0], key[1], a.learner))
        return steps

    def can_fail(self, node: str) -> bool:
        """Fail ``node`` only if every partition keeps a live voter (its data survives):
        the simulation checks the planner, not Raft's quorum rules."""
        live = self.state.live - {node}
        return bool(live) and all(
            live & set(a.voters) for a in self.state.assignments.values() if a.voters
        )

    def event(self) -> None:
        rng, state = self.rng, self.state
        kind = rng.choice(
            ["join", "join", "fail", "fail", "forget", "topic", "delete", "time", "time"]
        )
        if kind == "join":
            idle = [n for n in NODES if n not in state.live]
            if idle:
                self.apply(NodeUp(rng.choice(idle)))
        elif kind == "fail":
            live = sorted(state.live)
            node = rng.choice(live)
            if self.can_fail(node):
                self.apply(NodeDown(node))
        elif kind == "forget":
            idle = [
                n
                for n in sorted(state.down_since)
                if not any(n in a.replicas for a in state.assignments.values())
            ]
            if idle:
                self.apply(ForgetNode(rng.choice(idle)))
        elif kind == "topic":
            free = [t for t in TOPICS if t not in state.topics]
            if free:
                spec = TopicSpec(rng.randint(1, 4), rng.randint(1, 3))
                self.apply(CreateTopic(rng.choice(free), spec))
        elif kind == "delete":
            used = sorted(t for t in state.topics if t != DEFAULT_TOPIC)
            if used:
                self.apply(DeleteTopic(rng.choice(used)))
        else:
            self.now += rng.uniform(1.0, 45.0)

    def converge(self) -> int:
        """Membership is fixed from now on: the rounds until nothing is left to do."""
        self.now += GRACE + 1.0
        bound = 3 * 3 + 2  # per replica of R <= 3: add, promote, remove; a learner; the end
        for round_ in range(1, bound + 1):
            steps = self.drive(partial=False)
            if not steps and all(a.learner is None for a in self.state.assignments.values()):
                return round_
        raise AssertionError(f"no convergence in {bound} rounds")


@pytest.mark.parametrize("seed", range(30))
def test_random_membership_changes_keep_the_invariants_and_converge(seed: int) -> None:
    sim = Sim(seed)
    for node in NODES[:3]:
        sim.apply(NodeUp(node))
    for _ in range(80):
        sim.event()
        for _ in range(sim.rng.randint(0, 2)):
            sim.drive(partial=True)
    sim.converge()

    state = sim.state
    target = ring_target(state)
    assert {k: set(a.voters) for k, a in state.assignments.items()} == {
        k: set(v) for k, v in target.items()
    }
    assert all(a.learner is None for a in state.assignments.values())
    first = {key: a.voters[0] for key, a in state.assignments.items()}
    moves = leaders_to_transfer(state, first)
    assert {**first, **moves} == preferred_leaders(target)

    # Determinism: the same commands give byte-identical states, and so do snapshots.
    replay = ClusterMetadata()
    for command, now in sim.log:
        assert isinstance(replay.apply(command, now), Applied)
    assert replay.encode() == state.encode()
    ok(replay, NodeDown(sorted(replay.live)[0]), now=sim.now)
    ok(state, NodeDown(sorted(state.live)[0]), now=sim.now)
    later = sim.now + GRACE
    assert plan(replay, later, GRACE) == plan(state, later, GRACE)
    assert ClusterMetadata.decode(state.encode()).encode() == state.encode()

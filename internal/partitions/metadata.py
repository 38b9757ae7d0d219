"""The controller's replicated state: nodes, topics and where every partition replica is.

A small Raft group (the controller) replicates a :class:`ClusterMetadata`. Every change is
a command, a frozen dataclass, committed to that group's log and then applied on every
controller node with :meth:`ClusterMetadata.apply`. So that every node ends in the same
state, applying is a pure function of (state, command, ``now``):

- ``now`` is the time (seconds, a float) the controller leader stamped into the entry,
  never the applying node's clock: every node records the same ``down_since``.
- A command that cannot be applied (an unknown topic, a duplicate, a bad name, a replica
  that is not there...) returns a :class:`Rejected` result naming the reason and changes
  nothing. :meth:`~ClusterMetadata.apply` never raises on a command: a Raft state machine
  must apply every committed entry, and apply it the same way on every node.

The commands, in two families:

- Facts from outside: :class:`CreateTopic`, :class:`DeleteTopic`, :class:`SetRetention`
  (an operator's admin rpc), :class:`NodeUp`, :class:`NodeDown`, :class:`ForgetNode`
  (Serf's member events).
- The steps of a replica move, recorded as they happen (docs/partitions.md, "The
  controller's metadata and moves"): :class:`LearnerAdded`, :class:`LearnerCaughtUp`,
  :class:`LearnerPromoted`, :class:`ReplicaRemoved`. :mod:`raftlog.partitions.moves` plans
  them.

A new partition is placed directly on the ring's replicas over the live nodes (it has no
data to copy, so there is nothing to move): on :class:`CreateTopic`, or, if no node was
live then, on the next :class:`NodeUp`.

:meth:`~ClusterMetadata.encode` / :meth:`~ClusterMetadata.decode` carry the state through
the controller's snapshots (sorted-key JSON: byte-identical on every node for equal
states). Standard library only, like the rest of the package.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from raftlog.partitions.ring import Ring

#: The topic that exists from the start, with 1 partition: the book's API knows nothing
#: of topics, and everything it produces and consumes is this topic's partition 0. Named
#: "default" because that is what it is (the topic used when none is named), and because
#: it is a valid name under the rules below (Kafka's): a client may name it explicitly.
DEFAULT_TOPIC: Final = "default"

#: Replication factor when a topic does not say: 3 replicas, so a partition survives one
#: node failure with a majority (2 of 3) still able to commit. Capped at the live nodes.
DEFAULT_REPLICATION: Final = 3

#: Longest topic name, in characters (Kafka's limit, which leaves room for the name in
#: file names and metric labels).
MAX_TOPIC_NAME: Final = 249

#: Most partitions a topic may have: each is a Raft group on R nodes, so this bounds the
#: groups a single command can create.
MAX_PARTITIONS: Final = 10_000

#: Highest replication factor accepted: beyond 7 replicas a Raft group's commits wait on
#: a majority of 4+ nodes for no gain in practice.
MAX_REPLICATION: Final = 7

#: Longest node id, in bytes of UTF-8 (Serf node names are host names, far shorter).
MAX_NODE_ID_BYTES: Final = 255

#: Version written by :meth:`ClusterMetadata.encode`; :meth:`ClusterMetadata.decode`
#: reads it and version 2 (before topics had an incarnation: every topic's is then 0) and
#: refuses any other.
FORMAT_VERSION: Final = 3
_READABLE_VERSIONS: Final = (2, 3)

# Kafka's legal characters. No "/" above all: the ring places a partition at
# position(f"{topic}/{partition}"), and "/" in names would let two partitions share a label.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")

#: (topic, partition number).
PartitionKey: TypeAlias = tuple[str, int]


# --- topics --------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSpec:
    """A topic's settings.

    Attributes:
        partitions: number of partitions ``P`` (numbered ``0 .. P-1``), 1 to
            :data:`MAX_PARTITIONS`. Fixed at creation: changing it would send keys to other
            partitions (docs/partitions.md).
        replication: replicas per partition ``R``, 1 to :data:`MAX_REPLICATION`, default
            :data:`DEFAULT_REPLICATION` (3). Fewer live nodes than ``R`` give fewer replicas
            (one per live node) until more nodes join.
        retention_bytes: a partition's log may be trimmed down to this many bytes (oldest
            segments first); None (the default) keeps everything.
        retention_ms: records older than this many milliseconds may be trimmed; None (the
            default) keeps them forever.
    """

    partitions: int
    replication: int = DEFAULT_REPLICATION
    retention_bytes: int | None = None
    retention_ms: int | None = None


# --- commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateTopic:
    """Create topic ``name`` with ``spec`` and place its partitions on the live nodes.

    Rejected: a bad name or spec (``INVALID_ARGUMENT``), an existing name
    (``TOPIC_EXISTS``). With no live node, the partitions wait, unplaced, for the first
    :class:`NodeUp`."""

    name: str
    spec: TopicSpec


@dataclass(frozen=True)
class DeleteTopic:
    """Forget topic ``name`` and the assignment of its partitions (the nodes then drop
    the groups). Rejected: unknown topic; :data:`DEFAULT_TOPIC` (``PROTECTED_TOPIC``: the
    book's API needs it)."""

    name: str


@dataclass(frozen=True)
class SetRetention:
    """Replace topic ``name``'s retention settings (both; None keeps everything)."""

    name: str
    retention_bytes: int | None
    retention_ms: int | None


@dataclass(frozen=True)
class NodeUp:
    """Serf saw ``node`` join or come back: it is live, may hold replicas, and any
    partition still unplaced is placed now. Repeating it changes nothing."""

    node: str


@dataclass(frozen=True)
class NodeDown:
    """Serf saw ``node`` leave or fail at ``now``: its replicas stay in their groups (it
    may come back) and are replaced only after the grace period since ``down_since``.
    Repeating it keeps the first ``down_since``. Rejected for a node never seen
    (``UNKNOWN_NODE``)."""

    node: str


@dataclass(frozen=True)
class ForgetNode:
    """Forget the down ``node`` for good (Serf reaped it, or an operator removed it), so
    that ``down_since`` does not grow with every node that ever left. Rejected for a node
    never seen (``UNKNOWN_NODE``), a live one (``NODE_LIVE``) and one that still holds a
    replica (``HOLDS_REPLICAS``: the planner removes those after the grace period)."""

    node: str


@dataclass(frozen=True)
class LearnerAdded:
    """Start a move: ``node`` becomes a learner of the partition (it receives the log but
    does not vote). Recorded before the partition's group is asked to add it, so a new
    controller leader knows the move is under way. Rejected unless ``node`` is live, not
    already a replica, and the partition has no learner (one change at a time)."""

    topic: str
    partition: int
    node: str


@dataclass(frozen=True)
class LearnerCaughtUp:
    """The partition's leader reports the learner ``node`` has caught up with its log:
    it may now be promoted without stalling commits."""

    topic: str
    partition: int
    node: str


@dataclass(frozen=True)
class LearnerPromoted:
    """The partition's group made the caught-up learner ``node`` a voter (recorded once
    the group's configuration change committed)."""

    topic: str
    partition: int
    node: str


@dataclass(frozen=True)
class ReplicaRemoved:
    """The partition's group removed ``node`` (a voter, or a learner whose move was
    abandoned). Rejected for the last voter (``LAST_VOTER``): that would lose the data."""

    topic: str
    partition: int
    node: str


#: Every command :meth:`ClusterMetadata.apply` knows.
Command: TypeAlias = (
    CreateTopic
    | DeleteTopic
    | SetRetention
    | NodeUp
    | NodeDown
    | ForgetNode
    | LearnerAdded
    | LearnerCaughtUp
    | LearnerPromoted
    | ReplicaRemoved
)


# --- results -------------------------------------------------------------------------


class Reason(enum.Enum):
    """Why a command was rejected (the state is unchanged)."""

    INVALID_ARGUMENT = "invalid_argument"
    TOPIC_EXISTS = "topic_exists"
    UNKNOWN_TOPIC = "unknown_topic"
    PROTECTED_TOPIC = "protected_topic"
    UNKNOWN_PARTITION = "unknown_partition"
    UNKNOWN_NODE = "unknown_node"
    NODE_DOWN = "node_down"
    NODE_LIVE = "node_live"
    HOLDS_REPLICAS = "holds_replicas"
    ALREADY_A_REPLICA = "already_a_replica"
    MOVE_IN_PROGRESS = "move_in_progress"
    NOT_A_LEARNER = "not_a_learner"
    NOT_CAUGHT_UP = "not_caught_up"
    NOT_A_REPLICA = "not_a_replica"
    LAST_VOTER = "last_voter"
    UNKNOWN_COMMAND = "unknown_command"


@dataclass(frozen=True)
class Applied:
    """The command was applied. ``changed``: the partitions whose assignment changed
    (their epoch went up), sorted."""

    changed: tuple[PartitionKey, ...] = ()


@dataclass(frozen=True)
class Rejected:
    """The command was not applied and changed nothing: ``reason`` for programs,
    ``message`` for people."""

    reason: Reason
    message: str


Result: TypeAlias = Applied | Rejected


class MetadataDecodeError(ValueError):
    """Bytes given to :meth:`ClusterMetadata.decode` are not an encoded state."""


# --- the state -----------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    """Where one partition's replicas are.

    Attributes:
        voters: the nodes of the partition's Raft group that vote, placement order first,
            promoted nodes after. Empty only before the partition is first placed.
        learner: the node being added (it receives the log, does not vote), or None. At
            most one: one change in flight per partition.
        caught_up: the learner has caught up with the log (:class:`LearnerCaughtUp`).
        epoch: the assignment's version, taken from the state's cluster-wide counter
            (:attr:`ClusterMetadata.epoch`) on every change: it goes up on each change of
            this partition and is never reused, not even by a topic deleted and created
            again under the same name, so a node or client can always tell a newer
            assignment from an older one. 0 = never placed.
        initial: the voters the partition's group was created with (set when it is first
            placed, never changed). Only these nodes may bootstrap the group, each with
            this same list; a node that joins later is added by the group's leader, since
            bootstrapping it would fork the group.
    """

    voters: tuple[str, ...] = ()
    learner: str | None = None
    caught_up: bool = False
    epoch: int = 0
    initial: tuple[str, ...] = ()

    @property
    def replicas(self) -> tuple[str, ...]:
        """Voters, then the learner if any."""
        return self.voters if self.learner is None else (*self.voters, self.learner)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def topic_name_problem(name: object) -> str:
    """What is wrong with ``name`` as a topic name, or "" if it is usable: 1 to
    :data:`MAX_TOPIC_NAME` characters of ``A-Z a-z 0-9 . _ -``, not "." nor ".."."""
    if not isinstance(name, str) or not name:
        return "a topic name is a non-empty string"
    if len(name) > MAX_TOPIC_NAME:
        return f"a topic name has at most {MAX_TOPIC_NAME} characters, not {len(name)}"
    if not _TOPIC_NAME.fullmatch(name) or name in {".", ".."}:
        return f"topic name {name!r} may use only A-Z a-z 0-9 . _ - (and is not . or ..)"
    return ""


def node_id_problem(node: object) -> str:
    """What is wrong with ``node`` as a node id, or "" if it is usable: 1 to
    :data:`MAX_NODE_ID_BYTES` bytes of UTF-8 (the ring hashes the UTF-8 bytes, so a string
    that has none, such as a lone surrogate, could not be placed)."""
    if not isinstance(node, str) or not node:
        return "a node id is a non-empty string"
    try:
        size = len(node.encode("utf-8"))
    except UnicodeEncodeError:
        return f"node id {node!r} is not valid UTF-8"
    if size > MAX_NODE_ID_BYTES:
        return f"a node id has at most {MAX_NODE_ID_BYTES} bytes of UTF-8, not {size}"
    return ""


def _retention_problem(retention_bytes: object, retention_ms: object) -> str:
    for label, value in (("retention_bytes", retention_bytes), ("retention_ms", retention_ms)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{label} must be None or a positive integer, not {value!r}"
    return ""


def topic_spec_problem(spec: object) -> str:
    """What is wrong with ``spec``, or "" if it is usable (bounds in :class:`TopicSpec`)."""
    if not isinstance(spec, TopicSpec):
        return f"a topic spec is a TopicSpec, not {type(spec).__name__}"
    if not _is_int(spec.partitions) or not 1 <= spec.partitions <= MAX_PARTITIONS:
        return f"partitions must be 1 to {MAX_PARTITIONS}, not {spec.partitions!r}"
    if not _is_int(spec.replication) or not 1 <= spec.replication <= MAX_REPLICATION:
        return f"replication must be 1 to {MAX_REPLICATION}, not {spec.replication!r}"
    return _retention_problem(spec.retention_bytes, spec.retention_ms)


@dataclass
class ClusterMetadata:
    """The controller group's state: nodes, topics and the assignment of every partition.

    Change it only with :meth:`apply` (every controller node applies the same commands in
    the same order and ends equal). A fresh ``ClusterMetadata()``, the state a controller
    group starts from, has no nodes and the topic :data:`DEFAULT_TOPIC` with 1 partition
    (replication :data:`DEFAULT_REPLICATION`), not yet placed.

    Attributes:
        live: the nodes Serf reports alive.
        down_since: node -> the time (seconds, the entry's ``now``) it was reported gone,
            for nodes that left or failed; it is never in ``live`` at the same time.
        topics: name -> settings.
        assignments: (topic, partition) -> :class:`Assignment`, for every partition of
            every topic.
        epoch: the last epoch given to an assignment (0 before the first placement); each
            change of an assignment takes the next one.
        incarnations: topic -> its incarnation, the value of ``topics_created`` when it
            was created (0 for the default topic): a topic deleted and created again under
            its name gets a new one, so a node can tell the replica files of the old topic
            from the new one's.
        topics_created: how many topics were ever created (never goes down).
    """

    live: set[str] = field(default_factory=set)
    down_since: dict[str, float] = field(default_factory=dict)
    topics: dict[str, TopicSpec] = field(
        default_factory=lambda: {DEFAULT_TOPIC: TopicSpec(partitions=1)}
    )
    assignments: dict[PartitionKey, Assignment] = field(
        default_factory=lambda: {(DEFAULT_TOPIC, 0): Assignment()}
    )
    epoch: int = 0
    incarnations: dict[str, int] = field(default_factory=dict)
    topics_created: int = 0

    # --- reading --------------------------------------------------------------------

    def incarnation_of(self, topic: str) -> int:
        """The incarnation of ``topic`` (0 for the default topic and unknown topics)."""
        return self.incarnations.get(topic, 0)

    def replication_of(self, topic: str) -> int:
        """The replicas a partition of ``topic`` should have now: its ``R``, capped at the
        live nodes (0 with no live node)."""
        return min(self.topics[topic].replication, len(self.live))

    def target(self) -> dict[PartitionKey, tuple[str, ...]]:
        """The ring's placement over the live nodes, each topic with its own ``R`` (capped
        at the live nodes): where every partition's voters should end up. Empty with no
        live node."""
        if not self.live:
            return {}
        ring = Ring.of(self.live)
        return {
            (topic, partition): ring.replicas(topic, partition, spec.replication)
            for topic, spec in sorted(self.topics.items())
            for partition in range(spec.partitions)
        }

    # --- applying -------------------------------------------------------------------

    def apply(self, command: object, now: float) -> Result:
        """Apply one committed command at time ``now`` (seconds, stamped by the leader).

        Returns :class:`Applied` or :class:`Rejected`; never raises for a bad command, and
        a rejected command leaves the state exactly as it was.
        """
        try:
            finite = not isinstance(now, bool) and math.isfinite(now)
        except (TypeError, OverflowError):  # not a number, or an int beyond any float
            finite = False
        if not finite:
            return Rejected(Reason.INVALID_ARGUMENT, f"now must be a finite number, not {now!r}")
        match command:
            case CreateTopic():
                return self._create_topic(command)
            case DeleteTopic():
                return self._delete_topic(command)
            case SetRetention():
                return self._set_retention(command)
            case NodeUp():
                return self._node_up(command)
            case NodeDown():
                return self._node_down(command, float(now))
            case ForgetNode():
                return self._forget_node(command)
            case LearnerAdded():
                return self._learner_added(command)
            case LearnerCaughtUp():
                return self._learner_caught_up(command)
            case LearnerPromoted():
                return self._learner_promoted(command)
            case ReplicaRemoved():
                return self._replica_removed(command)
        return Rejected(Reason.UNKNOWN_COMMAND, f"not a command: {type(command).__name__}")

    def _create_topic(self, command: CreateTopic) -> Result:
        problem = topic_name_problem(command.name) or topic_spec_problem(command.spec)
        if problem:
            return Rejected(Reason.INVALID_ARGUMENT, problem)
        if command.name in self.topics:
            return Rejected(Reason.TOPIC_EXISTS, f"topic {command.name!r} exists")
        self.topics[command.name] = command.spec
        self.topics_created += 1
        self.incarnations[command.name] = self.topics_created
        for partition in range(command.spec.partitions):
            self.assignments[(command.name, partition)] = Assignment()
        return Applied(self._place_unplaced())

    def _delete_topic(self, command: DeleteTopic) -> Result:
        if not isinstance(command.name, str) or command.name not in self.topics:
            return Rejected(Reason.UNKNOWN_TOPIC, f"no topic {command.name!r}")
        if command.name == DEFAULT_TOPIC:
            return Rejected(
                Reason.PROTECTED_TOPIC, f"topic {DEFAULT_TOPIC!r} serves the book's API"
            )
        spec = self.topics.pop(command.name)
        self.incarnations.pop(command.name, None)
        for partition in range(spec.partitions):
            del self.assignments[(command.name, partition)]
        return Applied(tuple((command.name, p) for p in range(spec.partitions)))

    def _set_retention(self, command: SetRetention) -> Result:
        if not isinstance(command.name, str) or command.name not in self.topics:
            return Rejected(Reason.UNKNOWN_TOPIC, f"no topic {command.name!r}")
        problem = _retention_problem(command.retention_bytes, command.retention_ms)
        if problem:
            return Rejected(Reason.INVALID_ARGUMENT, problem)
        spec = self.topics[command.name]
        self.topics[command.name] = TopicSpec(
            spec.partitions, spec.replication, command.retention_bytes, command.retention_ms
        )
        return Applied()

    def _node_up(self, command: NodeUp) -> Result:
        problem = node_id_problem(command.node)
        if problem:
            return Rejected(Reason.INVALID_ARGUMENT, problem)
        self.live.add(command.node)
        self.down_since.pop(command.node, None)
        return Applied(self._place_unplaced())

    def _node_down(self, command: NodeDown, now: float) -> Result:
        node = command.node
        if not isinstance(node, str) or (node not in self.live and node not in self.down_since):
            return Rejected(Reason.UNKNOWN_NODE, f"node {node!r} was never seen")
        if node in self.live:
            self.live.discard(node)
            self.down_since[node] = now
        return Applied()

    def _forget_node(self, command: ForgetNode) -> Result:
        node = command.node
        if not isinstance(node, str) or (node not in self.live and node not in self.down_since):
            return Rejected(Reason.UNKNOWN_NODE, f"node {node!r} was never seen")
        if node in self.live:
            return Rejected(Reason.NODE_LIVE, f"node {node!r} is live")
        holding = sorted(k for k, a in self.assignments.items() if node in a.replicas)
        if holding:
            return Rejected(
                Reason.HOLDS_REPLICAS, f"node {node!r} still holds {len(holding)} replicas"
            )
        del self.down_since[node]
        return Applied()

    def _place_unplaced(self) -> tuple[PartitionKey, ...]:
        """Place every partition never placed yet on the ring's replicas over the live
        nodes (no data, so no move: the group is created with these voters)."""
        unplaced = sorted(key for key, a in self.assignments.items() if not a.voters)
        if not unplaced or not self.live:
            return ()
        ring = Ring.of(self.live)
        for key in unplaced:
            voters = ring.replicas(key[0], key[1], self.topics[key[0]].replication)
            self.assignments[key] = Assignment(voters, epoch=self._next_epoch(), initial=voters)
        return tuple(unplaced)

    def _partition(self, topic: object, partition: object, node: object) -> Assignment | Rejected:
        """The assignment a move command names, or why the command is rejected."""
        problem = node_id_problem(node)
        if problem:
            return Rejected(Reason.INVALID_ARGUMENT, problem)
        if not isinstance(topic, str) or topic not in self.topics:
            return Rejected(Reason.UNKNOWN_TOPIC, f"no topic {topic!r}")
        key = (topic, partition)
        if not _is_int(partition) or key not in self.assignments:
            return Rejected(
                Reason.UNKNOWN_PARTITION, f"topic {topic!r} has no partition {partition!r}"
            )
        return self.assignments[key]

    def _learner_added(self, command: LearnerAdded) -> Result:
        found = self._partition(command.topic, command.partition, command.node)
        if isinstance(found, Rejected):
            return found
        if command.node not in self.live:
            return Rejected(Reason.NODE_DOWN, f"node {command.node!r} is not live")
        if command.node in found.replicas:
            return Rejected(Reason.ALREADY_A_REPLICA, f"{command.node!r} is already a replica")
        if found.learner is not None:
            return Rejected(
                Reason.MOVE_IN_PROGRESS, f"learner {found.learner!r} is still being added"
            )
        if not found.voters:
            return Rejected(Reason.UNKNOWN_PARTITION, "the partition is not placed yet")
        return self._set(command.topic, command.partition, found.voters, command.node, False)

    def _learner_caught_up(self, command: LearnerCaughtUp) -> Result:
        found = self._partition(command.topic, command.partition, command.node)
        if isinstance(found, Rejected):
            return found
        if found.learner != command.node:
            return Rejected(Reason.NOT_A_LEARNER, f"{command.node!r} is not the learner")
        if found.caught_up:
            return Applied()
        return self._set(command.topic, command.partition, found.voters, command.node, True)

    def _learner_promoted(self, command: LearnerPromoted) -> Result:
        found = self._partition(command.topic, command.partition, command.node)
        if isinstance(found, Rejected):
            return found
        if found.learner != command.node:
            return Rejected(Reason.NOT_A_LEARNER, f"{command.node!r} is not the learner")
        if not found.caught_up:
            return Rejected(Reason.NOT_CAUGHT_UP, f"learner {command.node!r} has not caught up")
        voters = (*found.voters, command.node)
        return self._set(command.topic, command.partition, voters, None, False)

    def _replica_removed(self, command: ReplicaRemoved) -> Result:
        found = self._partition(command.topic, command.partition, command.node)
        if isinstance(found, Rejected):
            return found
        if command.node == found.learner:
            return self._set(command.topic, command.partition, found.voters, None, False)
        if command.node not in found.voters:
            return Rejected(Reason.NOT_A_REPLICA, f"{command.node!r} holds no replica")
        if len(found.voters) == 1:
            return Rejected(Reason.LAST_VOTER, f"{command.node!r} is the last voter")
        voters = tuple(v for v in found.voters if v != command.node)
        return self._set(command.topic, command.partition, voters, found.learner, found.caught_up)

    def _next_epoch(self) -> int:
        self.epoch += 1
        return self.epoch

    def _set(
        self,
        topic: str,
        partition: int,
        voters: tuple[str, ...],
        learner: str | None,
        caught_up: bool,
    ) -> Applied:
        key = (topic, partition)
        initial = self.assignments[key].initial
        self.assignments[key] = Assignment(voters, learner, caught_up, self._next_epoch(), initial)
        return Applied((key,))

    # --- snapshots ------------------------------------------------------------------

    def encode(self) -> bytes:
        """The state as UTF-8 JSON, sorted keys and sorted lists (voters keep their order):
        equal states encode to the same bytes on every node."""
        doc = {
            "version": FORMAT_VERSION,
            "epoch": self.epoch,
            "topics_created": self.topics_created,
            "live": sorted(self.live),
            "down_since": dict(sorted(self.down_since.items())),
            "topics": {
                name: {
                    "partitions": spec.partitions,
                    "replication": spec.replication,
                    "retention_bytes": spec.retention_bytes,
                    "retention_ms": spec.retention_ms,
                    "incarnation": self.incarnation_of(name),
                }
                for name, spec in sorted(self.topics.items())
            },
            "assignments": [
                {
                    "topic": topic,
                    "partition": partition,
                    "voters": list(a.voters),
                    "learner": a.learner,
                    "caught_up": a.caught_up,
                    "epoch": a.epoch,
                    "initial": list(a.initial),
                }
                for (topic, partition), a in sorted(self.assignments.items())
            ],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def decode(cls, data: bytes) -> ClusterMetadata:
        """The state :meth:`encode` wrote. Raises :class:`MetadataDecodeError` for anything
        else (bad JSON, another version, missing fields, inconsistent assignments)."""
        try:
            doc = json.loads(data.decode("utf-8"))
            return cls._from_doc(doc)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if isinstance(exc, MetadataDecodeError):
                raise
            raise MetadataDecodeError(f"not an encoded ClusterMetadata: {exc!r}") from exc

    @classmethod
    def _from_doc(cls, doc: Mapping[str, Any]) -> ClusterMetadata:
        if doc["version"] not in _READABLE_VERSIONS:
            raise MetadataDecodeError(
                f"format version {doc['version']!r}, not one of {_READABLE_VERSIONS}"
            )
        nodes = [*doc["live"], *doc["down_since"]]
        problem = next((p for p in map(node_id_problem, nodes) if p), "")
        if problem:
            raise MetadataDecodeError(problem)
        state = cls(
            live={str(n) for n in doc["live"]},
            down_since={str(n): float(t) for n, t in doc["down_since"].items()},
            topics={},
            assignments={},
            epoch=int(doc["epoch"]),
            topics_created=int(doc["topics_created"]) if doc["version"] >= 3 else 0,
        )
        for name, raw in doc["topics"].items():
            spec = TopicSpec(
                raw["partitions"], raw["replication"], raw["retention_bytes"], raw["retention_ms"]
            )
            problem = topic_name_problem(name) or topic_spec_problem(spec)
            if problem:
                raise MetadataDecodeError(problem)
            state.topics[name] = spec
            incarnation = int(raw.get("incarnation", 0)) if doc["version"] >= 3 else 0
            if not 0 <= incarnation <= state.topics_created:
                raise MetadataDecodeError(f"topic {name!r}: incarnation {incarnation!r}")
            if incarnation:
                state.incarnations[name] = incarnation
        for raw in doc["assignments"]:
            key = (str(raw["topic"]), int(raw["partition"]))
            learner = raw["learner"]
            state.assignments[key] = Assignment(
                tuple(str(v) for v in raw["voters"]),
                None if learner is None else str(learner),
                bool(raw["caught_up"]),
                int(raw["epoch"]),
                tuple(str(v) for v in raw["initial"]),
            )
        for key, a in state.assignments.items():
            if len(set(a.replicas)) != len(a.replicas) or (a.caught_up and a.learner is None):
                raise MetadataDecodeError(f"inconsistent assignment of {key!r}: {a!r}")
            if not set(a.replicas) <= state.live | set(state.down_since):
                raise MetadataDecodeError(f"{key!r} has a replica on a node never seen")
            if not 0 <= a.epoch <= state.epoch:
                raise MetadataDecodeError(f"{key!r} has an epoch below 0 or above the state's")
        expected = {(t, p) for t, s in state.topics.items() for p in range(s.partitions)}
        if set(state.assignments) != expected or state.live & set(state.down_since):
            raise MetadataDecodeError("assignments do not match the topics, or nodes overlap")
        return state

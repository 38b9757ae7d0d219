"""raftlog.partitions: where each partition of each topic lives (the placement layer).

A topic has ``P`` partitions, each its own Raft group of ``R`` replicas. This package
decides, as pure functions of the membership, which nodes hold each partition and which of
them should lead it (docs/partitions.md):

- :class:`Ring`: the consistent-hash ring of node ids, :data:`VNODES` points per node;
  :meth:`Ring.replicas` gives a partition's ``R`` distinct nodes.
- :func:`placement`: the replicas of every partition of every topic.
- :func:`preferred_leaders`: a leader per partition, spread evenly over the nodes.
- :func:`moved`: how many replicas a change of placement creates (its copying cost).
- :class:`ClusterMetadata`: the controller group's replicated state (nodes, topics, the
  assignment of every partition), changed only by applying commands
  (:class:`CreateTopic`, :class:`NodeDown`, :class:`LearnerAdded`, ...).
- :func:`encode_command` / :func:`decode_command`: a command and its time as a controller
  log entry.
- :func:`plan`: the next move steps (:class:`AddLearner`, :class:`Promote`,
  :class:`RemoveReplica`) towards the ring's placement; :func:`preferred_of` and
  :func:`leaders_to_transfer`.

The key -> partition rule (Kafka's murmur2) is part of the wire contract, in
:mod:`raftlog.api.partitioning`, so that clients can route without this package.

Imports allowed here: the standard library only, so any layer may use it.
"""

from raftlog.partitions.commands import (
    COMMANDS,
    CommandDecodeError,
    decode_command,
    encode_command,
)
from raftlog.partitions.metadata import (
    DEFAULT_REPLICATION,
    DEFAULT_TOPIC,
    MAX_NODE_ID_BYTES,
    MAX_PARTITIONS,
    MAX_REPLICATION,
    MAX_TOPIC_NAME,
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
    Reason,
    Rejected,
    ReplicaRemoved,
    Result,
    SetRetention,
    TopicSpec,
    node_id_problem,
    topic_name_problem,
    topic_spec_problem,
)
from raftlog.partitions.moves import (
    DEFAULT_GRACE_S,
    AddLearner,
    Promote,
    RemoveReplica,
    Step,
    leaders_to_transfer,
    plan,
    preferred_of,
)
from raftlog.partitions.ring import (
    VNODES,
    EmptyRingError,
    Placement,
    Ring,
    moved,
    partition_label,
    placement,
    position,
    preferred_leaders,
)

__all__ = [
    "COMMANDS",
    "DEFAULT_GRACE_S",
    "DEFAULT_REPLICATION",
    "DEFAULT_TOPIC",
    "MAX_NODE_ID_BYTES",
    "MAX_PARTITIONS",
    "MAX_REPLICATION",
    "MAX_TOPIC_NAME",
    "VNODES",
    "AddLearner",
    "Applied",
    "Assignment",
    "ClusterMetadata",
    "Command",
    "CommandDecodeError",
    "CreateTopic",
    "DeleteTopic",
    "EmptyRingError",
    "ForgetNode",
    "LearnerAdded",
    "LearnerCaughtUp",
    "LearnerPromoted",
    "MetadataDecodeError",
    "NodeDown",
    "NodeUp",
    "PartitionKey",
    "Placement",
    "Promote",
    "Reason",
    "Rejected",
    "RemoveReplica",
    "ReplicaRemoved",
    "Result",
    "Ring",
    "SetRetention",
    "Step",
    "TopicSpec",
    "decode_command",
    "encode_command",
    "leaders_to_transfer",
    "moved",
    "node_id_problem",
    "partition_label",
    "placement",
    "plan",
    "position",
    "preferred_leaders",
    "preferred_of",
    "topic_name_problem",
    "topic_spec_problem",
]

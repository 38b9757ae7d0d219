"""raftlog.partitions: where each partition of each topic lives (the placement layer).

A topic has ``P`` partitions, each its own Raft group of ``R`` replicas. This package
decides, as pure functions of the membership, which nodes hold each partition and which of
them should lead it (docs/partitions.md):

- :class:`Ring`: the consistent-hash ring of node ids, :data:`VNODES` points per node;
  :meth:`Ring.replicas` gives a partition's ``R`` distinct nodes.
- :func:`placement`: the replicas of every partition of every topic.
- :func:`preferred_leaders`: a leader per partition, spread evenly over the nodes.
- :func:`moved`: how many replicas a change of placement creates (its copying cost).

The key -> partition rule (Kafka's murmur2) is part of the wire contract, in
:mod:`raftlog.api.partitioning`, so that clients can route without this package.

Imports allowed here: the standard library only, so any layer may use it.
"""

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
    "VNODES",
    "EmptyRingError",
    "Placement",
    "Ring",
    "moved",
    "partition_label",
    "placement",
    "position",
    "preferred_leaders",
]

"""The Raft config factory of the core's tests (one definition, was four).

``raft_config(**overrides)`` returns what :class:`raftlog.raft.testing.MemCluster` takes as
``config``: a function from a node id to that node's :class:`RaftConfig`. The base settings
are the ones the scripted scenarios count ticks against: elections after 10-19 ticks, and
no automatic snapshots (tests that want them say so).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raftlog.raft import NodeId, RaftConfig

#: Settings every scripted core test starts from.
BASE: dict[str, Any] = {"election_tick": 10, "snapshot_threshold": 0}


def raft_config(**overrides: Any) -> Callable[[NodeId], RaftConfig]:
    """A per-node config factory: :data:`BASE` with ``overrides`` (RaftConfig fields)."""
    settings = {**BASE, **overrides}

    def make(node_id: NodeId) -> RaftConfig:
        return RaftConfig(id=node_id, **settings)

    return make


__all__ = ["BASE", "raft_config"]

"""What the Raft runtime tells an observer as it runs (for metrics): :class:`RaftMetrics`.

The runtime calls these once per round or per event, never per entry, from the event loop:

- ``raft_appended(entries)``: a round wrote ``entries`` entries to the log store;
- ``raft_synced(seconds)``: a round's durable write (log fsync and/or hard state) took
  ``seconds`` of wall time (``time.perf_counter``, not the node's clock: an injected test
  clock does not move during I/O);
- ``raft_leader_changed(term, leader)``: the leader this node knows of changed (``leader``
  is ``NO_NODE``, the empty string, when none is known).

:data:`NO_METRICS` (the default) does nothing. ``raftlog.telemetry.NodeMetrics`` implements
the protocol with Prometheus histograms and a counter; the agent passes it to the node.
"""

from __future__ import annotations

from typing import Protocol

from raftlog.raft.types import NodeId


class RaftMetrics(Protocol):
    """An observer of the runtime's rounds and leadership (see the module docstring)."""

    def raft_appended(self, entries: int) -> None: ...

    def raft_synced(self, seconds: float) -> None: ...

    def raft_leader_changed(self, term: int, leader: NodeId) -> None: ...


class NoMetrics:
    """The default observer: ignores everything."""

    def raft_appended(self, entries: int) -> None:
        return None

    def raft_synced(self, seconds: float) -> None:
        return None

    def raft_leader_changed(self, term: int, leader: NodeId) -> None:
        return None


#: The shared no-op observer.
NO_METRICS: RaftMetrics = NoMetrics()

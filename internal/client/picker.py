"""The picker: which server gets the next call.

- Produce (and GetOffsets) go to the leader. With no leader known, or the leader marked
  down, any other live server is tried: a follower forwards the write to the leader or
  answers NOT_LEADER naming it, and the client follows the hint.
- Consume is spread round-robin over the followers that are not marked down, so reads do
  not load the leader; with no live follower (a single node, or every follower down) the
  leader serves them.
- With no member known yet, the bootstrap addresses stand in for the members.

The picker holds no connections and does no I/O: it reads a :class:`ClusterView` (the
resolver) and keeps only its round-robin position, so it is tested on plain data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from raftlog.client.resolver import ServerInfo


class ClusterView(Protocol):
    """What the picker needs to know about the cluster (implemented by the resolver)."""

    @property
    def servers(self) -> tuple[ServerInfo, ...]:
        """The members as last learned."""
        ...

    @property
    def leader(self) -> str:
        """The leader's address, '' if unknown."""
        ...

    @property
    def bootstrap(self) -> tuple[str, ...]:
        """The addresses the client was given."""
        ...

    def is_down(self, addr: str) -> bool:
        """True while ``addr`` is avoided after a failed call."""
        ...


class Picker:
    """Chooses a server per call; round-robin state only."""

    def __init__(self) -> None:
        self._turn = 0

    def _round_robin(self, addrs: Sequence[str]) -> str:
        addr = addrs[self._turn % len(addrs)]
        self._turn += 1
        return addr

    @staticmethod
    def _all(view: ClusterView) -> list[str]:
        members = [s.rpc_addr for s in view.servers]
        return members or list(view.bootstrap)

    def for_produce(self, view: ClusterView) -> str:
        """The leader; else (unknown or down) another live server, round-robin."""
        leader = view.leader
        if leader and not view.is_down(leader):
            return leader
        live = [a for a in self._all(view) if a != leader and not view.is_down(a)]
        if live:
            return self._round_robin(live)
        if leader:
            return leader
        return self._round_robin(self._all(view))

    def for_consume(self, view: ClusterView) -> str:
        """A live voting follower, round-robin; else a live learner; else the leader; else any.

        Learners come after voters because a learner may still be catching up (it is not
        part of the quorum), so its log can be far behind the leader's.
        """
        leader = view.leader
        followers = [
            s
            for s in view.servers
            if s.rpc_addr != leader and not s.is_leader and not view.is_down(s.rpc_addr)
        ]
        voters = [s.rpc_addr for s in followers if not s.is_learner]
        if voters:
            return self._round_robin(voters)
        learners = [s.rpc_addr for s in followers if s.is_learner]
        if learners:
            return self._round_robin(learners)
        if leader and not view.is_down(leader):
            return leader
        live = [a for a in self._all(view) if not view.is_down(a)]
        return self._round_robin(live or self._all(view))

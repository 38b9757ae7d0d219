"""Where the replicas of each partition live, and which replica should lead it.

A topic has ``P`` partitions; each partition is its own Raft group of ``R`` replicas on
``R`` distinct nodes. This module decides those nodes with a consistent-hash ring, so that
a node joining or leaving moves only the replicas it must (about ``1/N`` of them, not
most of them as ``hash % N`` would), and every node computes the same answer from the same
membership, with no coordination and in any order of joins.

The ring (the numbers are the defaults)::

    position(label) = first 8 bytes of blake2b(label, digest_size=8), big-endian: [0, 2**64)
    node n          -> VNODES = 64 points, at position(f"{n}#{i}") for i in 0..63
    partition       -> position(f"{topic}/{partition}"), then clockwise (increasing
                       positions, wrapping from 2**64 - 1 to 0) from the first point at or
                       after it, the owners of the points met, skipping nodes already taken,
                       until R distinct nodes (or every node, if there are fewer than R)

Virtual nodes spread each node over the ring, so each owns close to ``1/N`` of it (with 64
points, nodes ``n0 .. n{N-1}`` own between 0.75x and 1.28x of ``1/N`` for N from 3 to 16; the
spread shrinks like ``1/sqrt(VNODES)``), and a leaving node's share is spread over many
nodes rather than dumped on its one successor.

:func:`preferred_leaders` then picks one replica of each partition to lead it, so that
leadership (and with it the write load) is spread evenly: no node leads more than
``ceil(partitions / nodes)`` whenever some choice of leaders allows that.

Everything here is a pure function of its arguments: no clock, no randomness, no I/O.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, TypeAlias

#: Points each node gets on the ring. More points even out the nodes' shares (the spread
#: of shares shrinks like ``1/sqrt(VNODES)``) at the price of a larger ring to build.
VNODES: Final = 64

#: (topic, partition number) -> its replicas, in ring order (the first is met first
#: walking clockwise from the partition's position).
Placement: TypeAlias = dict[tuple[str, int], tuple[str, ...]]


class EmptyRingError(ValueError):
    """A replica was asked of a ring without nodes: there is nowhere to place it."""


def position(label: str) -> int:
    """The point of ``label`` on the ring, an unsigned 64-bit int.

    blake2b (standard library, keyed by nothing) is used for its spread, not its secrecy:
    any node, in any process and any Python version, computes the same position (unlike
    ``hash()``, which is salted per process).
    """
    digest = hashlib.blake2b(label.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def partition_label(topic: str, partition: int) -> str:
    """The label hashed for a partition's position: ``"{topic}/{partition}"``."""
    return f"{topic}/{partition}"


def _points_of(node: str, vnodes: int) -> list[tuple[int, str]]:
    return [(position(f"{node}#{i}"), node) for i in range(vnodes)]


class Ring:
    """An immutable consistent-hash ring of node ids, ``vnodes`` points per node.

    Build one with :meth:`of`; :meth:`with_node` and :meth:`without_node` return new rings.
    Two rings with the same nodes and the same ``vnodes`` are equal and place every
    partition the same way, whatever order the nodes were added in: points that collide
    are ordered by node id.
    """

    __slots__ = ("_nodes", "_owners", "_positions", "_vnodes")

    def __init__(self, points: Sequence[tuple[int, str]], nodes: frozenset[str], vnodes: int):
        """Internal: ``points`` sorted ascending. Use :meth:`of`."""
        self._nodes = nodes
        self._vnodes = vnodes
        self._positions = tuple(p for p, _ in points)
        self._owners = tuple(n for _, n in points)

    @classmethod
    def of(cls, nodes: Iterable[str], vnodes: int = VNODES) -> Ring:
        """The ring of ``nodes`` (duplicates count once), ``vnodes`` points each.

        Raises :class:`ValueError` for ``vnodes < 1`` or an empty node id.
        """
        if vnodes < 1:
            raise ValueError(f"a node needs at least 1 point on the ring, not vnodes={vnodes}")
        names = frozenset(nodes)
        for node in names:
            _check_node(node)
        points = sorted(p for node in names for p in _points_of(node, vnodes))
        return cls(points, names, vnodes)

    @property
    def nodes(self) -> frozenset[str]:
        """The node ids on the ring."""
        return self._nodes

    @property
    def vnodes(self) -> int:
        """Points per node."""
        return self._vnodes

    def with_node(self, node: str) -> Ring:
        """This ring plus ``node`` (the same ring if it is already on it)."""
        _check_node(node)
        if node in self._nodes:
            return self
        points = sorted(
            [*zip(self._positions, self._owners, strict=True), *_points_of(node, self._vnodes)]
        )
        return Ring(points, self._nodes | {node}, self._vnodes)

    def without_node(self, node: str) -> Ring:
        """This ring minus ``node`` (the same ring if it is not on it)."""
        if node not in self._nodes:
            return self
        points = [(p, n) for p, n in zip(self._positions, self._owners, strict=True) if n != node]
        return Ring(points, self._nodes - {node}, self._vnodes)

    def replicas(self, topic: str, partition: int, r: int) -> tuple[str, ...]:
        """The ``r`` distinct nodes that hold ``partition`` of ``topic``, in ring order.

        Walks clockwise from the partition's position and takes the owners of the points
        it meets, skipping nodes already taken. ``r`` is capped at the number of nodes
        (a 2-node ring gives 2 replicas for ``r=3``). Joining a node changes at most one
        replica of each partition (the new node replaces the last one), and so does a
        node leaving.

        Raises :class:`EmptyRingError` if the ring has no nodes, :class:`ValueError` for
        ``r < 1`` or a negative partition number.
        """
        if r < 1:
            raise ValueError(f"a partition needs at least 1 replica, not r={r}")
        if partition < 0:
            raise ValueError(f"partition numbers start at 0, not {partition}")
        if not self._nodes:
            raise EmptyRingError(
                f"no nodes on the ring to place {partition_label(topic, partition)!r} on"
            )
        want = min(r, len(self._nodes))
        count = len(self._owners)
        start = bisect_left(self._positions, position(partition_label(topic, partition)))
        chosen: list[str] = []
        for step in range(count):
            owner = self._owners[(start + step) % count]
            if owner not in chosen:
                chosen.append(owner)
                if len(chosen) == want:
                    break
        return tuple(chosen)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return (self._nodes, self._vnodes) == (other._nodes, other._vnodes)

    def __hash__(self) -> int:
        return hash((self._nodes, self._vnodes))

    def __repr__(self) -> str:
        return f"Ring.of({sorted(self._nodes)!r}, vnodes={self._vnodes})"


def _check_node(node: str) -> None:
    if not node:
        raise ValueError("a node id is a non-empty string")


def placement(ring: Ring, topics: Mapping[str, int], r: int) -> Placement:
    """The replicas of every partition of every topic: ``topics`` maps a topic to its
    partition count ``P`` (partitions ``0 .. P-1``), ``r`` is the replication factor.

    The keys come in sorted order (topic, then partition number). Raises
    :class:`ValueError` for a topic with fewer than 1 partition, and whatever
    :meth:`Ring.replicas` raises.
    """
    result: Placement = {}
    for topic in sorted(topics):
        count = topics[topic]
        if count < 1:
            raise ValueError(f"topic {topic!r} needs at least 1 partition, not {count}")
        for partition in range(count):
            result[(topic, partition)] = ring.replicas(topic, partition, r)
    return result


def moved(
    before: Mapping[tuple[str, int], Sequence[str]],
    after: Mapping[tuple[str, int], Sequence[str]],
) -> int:
    """How many replica slots of ``after`` are new: for each partition of ``after``, the
    replicas that were not replicas of it in ``before``. Each is a replica that must be
    created and caught up (a copy of the partition's data), which is the cost of a change.

    A partition new in ``after`` counts all its replicas; a partition gone from ``after``
    counts nothing (dropping a replica copies no data); reordering a partition's replicas
    counts nothing.
    """
    return sum(len(set(replicas) - set(before.get(key, ()))) for key, replicas in after.items())


def preferred_leaders(
    placement: Mapping[tuple[str, int], Sequence[str]],
) -> dict[tuple[str, int], str]:
    """For each partition, the replica that should lead its Raft group.

    Let ``T`` be the number of partitions and ``N`` the number of nodes holding at least
    one replica; the fair share is ``cap = ceil(T / N)``.

    1. A greedy pass over the partitions in sorted order picks, among a partition's
       replicas in ring order, the first whose leader count is below ``cap``; if all are at
       ``cap``, the replica with the fewest leaders (the first in ring order on a tie).
    2. A repair pass then moves leadership off any node above ``cap`` along a chain of
       partitions (node a hands a partition to b, b hands one to c, ... until a node below
       ``cap``), each hop to another replica of the partition. Such a chain exists
       whenever the load can be lowered (this is an augmenting path, as in bipartite
       matching), so after the pass no node leads more than ``cap`` if any choice of
       leaders allows it. If none does (say ``R = 1`` and a node holds more than ``cap``
       partitions), the bound is raised by one and the pass repeated, so the result always
       has the lowest maximum possible.

    Deterministic: the same placement gives the same leaders (partitions are visited in
    sorted order, replicas in ring order, overloaded nodes in sorted order). Raises
    :class:`ValueError` for a partition without replicas.
    """
    order = sorted(placement)
    if not order:
        return {}
    for key in order:
        if not placement[key]:
            raise ValueError(f"partition {key!r} has no replicas to lead it")
    counts: dict[str, int] = dict.fromkeys(
        sorted({node for key in order for node in placement[key]}), 0
    )
    cap = -(-len(order) // len(counts))
    leaders: dict[tuple[str, int], str] = {}
    for key in order:
        replicas = placement[key]
        pick = next((node for node in replicas if counts[node] < cap), None)
        if pick is None:
            pick = min(replicas, key=lambda node: counts[node])
        leaders[key] = pick
        counts[pick] += 1
    repair = _Leadership(placement, leaders, counts)
    bound = cap
    while not repair.rebalance(bound):
        bound += 1
    return leaders


class _Leadership:
    """The leaders chosen so far and each node's count, with the repair pass."""

    def __init__(
        self,
        placement: Mapping[tuple[str, int], Sequence[str]],
        leaders: dict[tuple[str, int], str],
        counts: dict[str, int],
    ):
        self.placement = placement
        self.order = sorted(placement)
        self.leaders = leaders
        self.counts = counts

    def rebalance(self, bound: int) -> bool:
        """Shift leadership along chains until no node leads more than ``bound``; False if
        a node above ``bound`` has no chain to a node below it (then no choice of leaders
        meets ``bound``: the nodes it reaches hold, between them, more than ``bound`` each of
        partitions that have no replica elsewhere)."""
        while True:
            over = [node for node in sorted(self.counts) if self.counts[node] > bound]
            if not over:
                return True
            chain = self.chain(over[0], bound)
            if chain is None:
                return False
            for key, node in chain:
                self.leaders[key] = node
            self.counts[over[0]] -= 1
            self.counts[chain[-1][1]] += 1

    def chain(self, source: str, bound: int) -> list[tuple[tuple[str, int], str]] | None:
        """The shortest chain of (partition, new leader) hand-overs from ``source`` to a
        node leading fewer than ``bound`` partitions (breadth first, deterministic), or
        None if there is none."""
        led: dict[str, list[tuple[str, int]]] = {}
        for key in self.order:
            led.setdefault(self.leaders[key], []).append(key)
        came_from: dict[str, tuple[str, tuple[str, int]]] = {}
        queue = deque([source])
        seen = {source}
        while queue:
            node = queue.popleft()
            for key in led.get(node, []):
                for other in self.placement[key]:
                    if other in seen:
                        continue
                    seen.add(other)
                    came_from[other] = (node, key)
                    if self.counts[other] < bound:
                        return self._unwind(source, other, came_from)
                    queue.append(other)
        return None

    @staticmethod
    def _unwind(
        source: str, target: str, came_from: Mapping[str, tuple[str, tuple[str, int]]]
    ) -> list[tuple[tuple[str, int], str]]:
        chain: list[tuple[tuple[str, int], str]] = []
        step = target
        while step != source:
            previous, via = came_from[step]
            chain.append((via, step))
            step = previous
        chain.reverse()
        return chain

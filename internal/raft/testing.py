"""Deterministic in-memory clusters of Raft cores, and a safety checker, for tests.

Like hashicorp/raft's ``testing.go``: a :class:`MemCluster` wires :class:`MemNode` s (a core,
an in-memory "disk" that survives crashes, and a toy state machine) through a fake network
with fault hooks (drop, duplicate, reorder, partition). Everything is driven by one seeded
``random.Random``, so a run is reproducible from its seed. :class:`SafetyChecker` asserts
the safety properties of the Raft paper as the cluster runs. The randomized simulation over
these clusters is :mod:`raftlog.raft.simulation`.

The runtime helper may reuse :class:`SafetyChecker` with real nodes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from raftlog.raft.codec import decode_message, encode_message
from raftlog.raft.config import RaftConfig
from raftlog.raft.core import RaftCore, Ready, bootstrap_state
from raftlog.raft.errors import RaftError
from raftlog.raft.fsm import SnapshotSource
from raftlog.raft.types import (
    Entry,
    EntryType,
    HardState,
    Membership,
    Message,
    MessageType,
    NodeId,
    PersistentState,
    ProposalTicket,
    ReadState,
    Role,
    Server,
    SnapshotMeta,
)


class SafetyViolation(AssertionError):
    """A Raft safety property was broken."""


# ======================================================================================
# Safety checker
# ======================================================================================


@dataclass(slots=True)
class SafetyChecker:
    """Collects observations and raises SafetyViolation as soon as one breaks Raft.

    - Election safety: at most one leader per term (:meth:`on_leader`).
    - Leader append-only: a leader never removes or changes entries of its own log
      (:meth:`check_leader_append_only`).
    - Log matching: two logs holding an entry with the same index and term are identical up
      to it (:meth:`check_log_matching`).
    - Leader completeness: a new leader holds every entry applied anywhere (applied implies
      committed) (:meth:`on_leader`).
    - State machine safety: no two nodes apply different entries at one index, and each node
      applies indexes in order without gaps (:meth:`on_apply`).
    """

    leaders: dict[int, NodeId] = field(default_factory=dict)
    applied: dict[int, tuple[int, EntryType, bytes]] = field(default_factory=dict)
    node_applied: dict[NodeId, int] = field(default_factory=dict)
    leader_tails: dict[tuple[NodeId, int], tuple[int, int]] = field(default_factory=dict)

    def on_leader(self, node: NodeId, term: int, log_term: Callable[[int], int | None]) -> None:
        """``node`` is leader in ``term``; ``log_term(i)`` reads its log (None if compacted)."""
        other = self.leaders.setdefault(term, node)
        if other != node:
            raise SafetyViolation(f"election safety: {other!r} and {node!r} both lead term {term}")
        for index, (t, _, _) in self.applied.items():
            got = log_term(index)
            if got is not None and got != t:
                raise SafetyViolation(
                    f"leader completeness: leader {node!r} of term {term} has term {got} at "
                    f"index {index}, but an entry of term {t} was committed there"
                )

    def on_restart(self, node: NodeId, applied: int) -> None:
        """``node`` restarted (or restored a snapshot) with its state machine at ``applied``."""
        self.node_applied[node] = applied

    def on_apply(self, node: NodeId, entry: Entry) -> None:
        prev = self.node_applied.get(node, 0)
        if entry.index != prev + 1:
            raise SafetyViolation(
                f"state machine safety: {node!r} applied index {entry.index} after {prev}"
            )
        self.node_applied[node] = entry.index
        seen = self.applied.setdefault(entry.index, (entry.term, entry.type, entry.data))
        if seen != (entry.term, entry.type, entry.data):
            raise SafetyViolation(
                f"state machine safety: {node!r} applied {entry!r} at index {entry.index}, "
                f"another node applied term {seen[0]} data {seen[2]!r}"
            )

    def check_leader_append_only(
        self, node: NodeId, term: int, last_index: int, log_term: Callable[[int], int | None]
    ) -> None:
        """Called while ``node`` leads ``term``: its log must only have grown."""
        key = (node, term)
        prev = self.leader_tails.get(key)
        if prev is not None:
            p_index, p_term = prev
            got = log_term(p_index)
            if last_index < p_index or (got is not None and got != p_term):
                raise SafetyViolation(
                    f"leader append-only: leader {node!r} of term {term} had ({p_index}, "
                    f"{p_term}) in its log, now last index {last_index} with term {got} there"
                )
        t = log_term(last_index)
        if t is not None:
            self.leader_tails[key] = (last_index, t)

    @staticmethod
    def check_log_matching(logs: dict[NodeId, dict[int, int]]) -> None:
        """``logs`` maps node -> {index: term} of the entries it holds in memory."""
        nodes = sorted(logs)
        for n, a in enumerate(nodes):
            for b in nodes[n + 1 :]:
                la, lb = logs[a], logs[b]
                common = [i for i in la if i in lb and la[i] == lb[i]]
                if not common:
                    continue
                top = max(common)
                for i in la:
                    if i <= top and i in lb and la[i] != lb[i]:
                        raise SafetyViolation(
                            f"log matching: {a!r} and {b!r} agree at index {top} but differ at "
                            f"{i} (terms {la[i]} vs {lb[i]})"
                        )


# ======================================================================================
# In-memory nodes
# ======================================================================================


@dataclass(slots=True)
class MemDisk:
    """What survives a crash: exactly what Ready asked to persist and advance confirmed."""

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    snapshot_data: tuple[tuple[int, bytes], ...] = ()
    incoming: dict[tuple[int, int], tuple[tuple[int, bytes], ...]] = field(default_factory=dict)

    def append(self, entries: Iterable[Entry]) -> None:
        ents = list(entries)
        if not ents:
            return
        first = ents[0].index
        if self.entries:
            base = self.entries[0].index
            if first - base > len(self.entries):
                raise SafetyViolation(f"disk log gap: appending {first} after {self.last_index}")
            del self.entries[max(first - base, 0) :]
        self.entries.extend(ents)

    @property
    def last_index(self) -> int:
        if self.entries:
            return self.entries[-1].index
        return self.snapshot.index if self.snapshot else 0

    def holds(self, index: int) -> bool:
        """True if entry ``index`` is on disk (in the log or covered by the snapshot)."""
        if self.snapshot is not None and index <= self.snapshot.index:
            return True
        return bool(self.entries) and self.entries[0].index <= index <= self.entries[-1].index

    def truncate_prefix(self, through: int) -> None:
        if self.entries:
            del self.entries[: max(0, through - self.entries[0].index + 1)]


class MemNode:
    """A core with an in-memory disk and a state machine that records applied data."""

    def __init__(
        self,
        config: RaftConfig,
        checker: SafetyChecker,
        rng: random.Random,
        disk: MemDisk | None = None,
    ) -> None:
        self.config = config
        self.id = config.id
        self.early_send = False
        """Send the leader's APPEND/HEARTBEAT/TIMEOUT_NOW of its durable term before
        persisting (as the asyncio runtime does)."""
        self.crash_mid_ready = 0.0
        """Probability of crashing after a Ready was taken (and early messages sent) but
        before anything was persisted."""
        self.finish_prob = 1.0
        """Probability that an outstanding Ready's write completes at a given process()."""
        self._pending: tuple[Ready, list[Message]] | None = None
        self.checker = checker
        self.rng = rng
        self.disk = disk if disk is not None else MemDisk()
        self.core: RaftCore | None = None
        self.state: list[tuple[int, bytes]] = []
        """The state machine: (index, data) of every NORMAL entry applied, in order."""
        self.applied = 0
        self.tickets: list[ProposalTicket] = []
        self.acked: dict[int, bytes] = {}
        """Proposals this node acknowledged (as leader): index -> data."""
        self._proposed: dict[int, tuple[int, bytes]] = {}
        self._led_term = 0
        self.reads: list[ReadState] = []
        """ReadIndex answers this node received, in order."""
        self.start()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        d = self.disk
        self.state = list(d.snapshot_data)
        self.applied = d.snapshot.index if d.snapshot else 0
        self.checker.on_restart(self.id, self.applied)
        state = PersistentState(d.hard_state, d.snapshot, tuple(d.entries), self.applied)
        self.core = RaftCore(self.config, state, random.Random(self.rng.random()))
        self._proposed = {}

    def crash(self) -> None:
        """Lose everything volatile; the disk stays."""
        self.core = None
        self._pending = None
        self.disk.incoming.clear()

    @property
    def alive(self) -> bool:
        return self.core is not None

    @property
    def c(self) -> RaftCore:
        assert self.core is not None, f"node {self.id} is down"
        return self.core

    # -- driving ----------------------------------------------------------------------

    def propose(self, data: list[bytes]) -> ProposalTicket | None:
        try:
            t = self.c.propose(data)
        except RaftError:
            return None
        for n, d in enumerate(data):
            self._proposed[t.first_index + n] = (t.term, d)
        return t

    def process(self, send: Callable[[Message], None]) -> bool:
        """Run the Ready/advance cycle until quiet; returns True if anything happened.

        With ``finish_prob`` < 1 writes are asynchronous: a Ready stays outstanding (its
        early messages already sent, nothing persisted) until a later call finishes it, and
        the core keeps taking messages meanwhile, as with the asyncio runtime's fsync.
        """
        core = self.c
        did = False
        while True:
            if self._pending is not None:
                if self.finish_prob < 1.0 and self.rng.random() >= self.finish_prob:
                    return True
                self._finish(send)
                did = True
                if self.core is None:
                    return did
            if not core.has_ready():
                break
            did = True
            self._begin(send)
            if self.core is None:
                return did
        if core.role is Role.LEADER:
            self.checker.check_leader_append_only(
                self.id, core.term, core.last_index, core.entry_term
            )
        return did

    def _begin(self, send: Callable[[Message], None]) -> None:
        rd = self.c.ready()
        late = list(rd.messages)
        if self.early_send:
            # What the core allows before the write is durable (Ready.messages_before_persist).
            for m in rd.messages_before_persist:
                send(m)
            late = list(rd.messages_after_persist)
        self._pending = (rd, late)
        if self.crash_mid_ready and self.rng.random() < self.crash_mid_ready:
            self.crash()  # the Ready is lost: nothing persisted, applied or advanced

    def _finish(self, send: Callable[[Message], None]) -> None:
        assert self._pending is not None
        rd, late = self._pending
        self._pending = None
        core = self.c
        self._persist(rd)
        for m in late:
            self._check_persisted(m)
            send(m)
        self._apply(rd)
        core.advance(rd)
        ss = rd.soft_state
        if ss.role is Role.LEADER and ss.term != self._led_term:
            self._led_term = ss.term
            self.checker.on_leader(self.id, ss.term, core.entry_term)
        if core.should_snapshot():
            self.take_snapshot()

    def _persist(self, rd: Ready) -> None:
        d = self.disk
        if rd.snapshot is not None:
            key = (rd.snapshot.index, rd.snapshot.term)
            d.snapshot = rd.snapshot
            d.snapshot_data = d.incoming.pop(key)
            d.entries = []
        d.append(rd.entries)
        if rd.hard_state is not None:
            d.hard_state = rd.hard_state

    def _check_persisted(self, m: Message) -> None:
        """Persist-before-send: what a message promises must already be on the disk."""
        d = self.disk
        hs = d.hard_state
        # A vote is safe once durable, or once a later term is durable (no more votes in
        # the older term are possible then).
        if m.type is MessageType.VOTE_RESP and not m.reject:
            if hs.term < m.term or (hs.term == m.term and hs.vote != m.dst):
                raise SafetyViolation(f"persist-before-send: vote for {m.dst} not durable ({hs})")
        elif m.type is MessageType.VOTE:
            if hs.term < m.term or (hs.term == m.term and hs.vote != self.id):
                raise SafetyViolation(f"persist-before-send: candidacy not durable ({hs})")
        elif (
            m.type is MessageType.APPEND_RESP
            and not m.reject
            and m.index > 0
            and not d.holds(m.index)
        ):
            raise SafetyViolation(
                f"persist-before-send: {self.id} acknowledged index {m.index} not on disk"
            )
        pre = (MessageType.PRE_VOTE, MessageType.PRE_VOTE_RESP)  # speak of a future term
        if m.term > hs.term and m.type not in pre:
            raise SafetyViolation(f"persist-before-send: term {m.term} sent, {hs.term} durable")

    def _apply(self, rd: Ready) -> None:
        self.reads.extend(rd.read_states)
        if rd.snapshot is not None:
            self.state = list(self.disk.snapshot_data)
            self.applied = rd.snapshot.index
            self.checker.on_restart(self.id, self.applied)
        for e in rd.committed_entries:
            self.checker.on_apply(self.id, e)
            self.applied = e.index
            if e.type is EntryType.NORMAL:
                self.state.append((e.index, e.data))
            mine = self._proposed.pop(e.index, None)
            if mine is not None and mine == (e.term, e.data):
                self.acked[e.index] = e.data

    def take_snapshot(self) -> None:
        meta = self.c.snapshot_meta()
        self.disk.snapshot = meta
        self.disk.snapshot_data = tuple(self.state)
        through = self.c.compact(meta)
        self.disk.truncate_prefix(through)


# ======================================================================================
# Cluster and network
# ======================================================================================


@dataclass(slots=True)
class Faults:
    """Network fault knobs (probabilities in [0, 1])."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: bool = False
    """Interleave the links at random (each link stays FIFO unless ``overtake`` says)."""
    overtake: float = 0.0
    """With reordering: probability that a message overtakes older ones on its own link."""


class MemCluster:
    """Nodes plus a message queue between them. Deterministic for a given seed."""

    def __init__(
        self,
        ids: Iterable[NodeId],
        seed: int = 0,
        config: Callable[[NodeId], RaftConfig] | None = None,
        bootstrap: bool = True,
        faults: Faults | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.checker = SafetyChecker()
        self.faults = faults if faults is not None else Faults()
        self.queue: list[Message] = []
        self.groups: dict[NodeId, int] | None = None
        self.drop_if: Callable[[Message], bool] | None = None
        self.wire = False
        """Pass every message through encode_message/decode_message (the wire codec)."""
        self._config = config if config is not None else (lambda i: RaftConfig(id=i))
        ids = list(ids)
        self.membership = Membership.of(Server(i, f"mem://{i}") for i in ids)
        self.nodes: dict[NodeId, MemNode] = {}
        for i in ids:
            self.add_node(i, bootstrap=bootstrap)

    def add_node(self, node_id: NodeId, bootstrap: bool = False) -> MemNode:
        disk = MemDisk()
        if bootstrap:
            st = bootstrap_state(self.membership)
            disk.hard_state, disk.entries = st.hard_state, list(st.entries)
        node = MemNode(self._config(node_id), self.checker, self.rng, disk)
        self.nodes[node_id] = node
        return node

    # -- network ----------------------------------------------------------------------

    def send(self, m: Message) -> None:
        if self.wire:
            data = encode_message(m)
            m = decode_message(data)
        if self.rng.random() < self.faults.drop:
            self._dropped(m)
            return
        self.queue.append(m)
        if self.rng.random() < self.faults.duplicate:
            self.queue.append(m)

    def connected(self, a: NodeId, b: NodeId) -> bool:
        return self.groups is None or self.groups.get(a) == self.groups.get(b)

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Split the network: nodes talk only within their group (unlisted nodes: alone)."""
        self.groups = {}
        for n, g in enumerate(groups):
            for i in g:
                self.groups[i] = n

    def isolate(self, node_id: NodeId) -> None:
        self.partition([i for i in self.nodes if i != node_id], [node_id])

    def heal(self) -> None:
        self.groups = None

    def _dropped(self, m: Message) -> None:
        if m.type is MessageType.SNAPSHOT:
            src = self.nodes.get(m.src)
            if src is not None and src.alive:
                src.c.report_snapshot(m.dst, success=False)

    def deliver(self, m: Message) -> None:
        dst = self.nodes.get(m.dst)
        if dst is None or not dst.alive or not self.connected(m.src, m.dst):
            # What a transport notices (a refused or broken connection) is reported.
            src = self.nodes.get(m.src)
            if m.type is MessageType.APPEND and src is not None and src.alive:
                src.c.report_unreachable(m.dst)
            self._dropped(m)
            return
        if self.drop_if is not None and self.drop_if(m):
            self._dropped(m)
            return
        if m.type is MessageType.SNAPSHOT:
            # The runtime's job, modelled: stream the stored snapshot, then tell both cores.
            src = self.nodes.get(m.src)
            if src is None or not src.alive or m.snapshot is None:
                return
            if src.disk.snapshot != m.snapshot:
                src.c.report_snapshot(m.dst, success=False)
                return
            dst.disk.incoming[(m.snapshot.index, m.snapshot.term)] = src.disk.snapshot_data
            dst.c.step(m)
            src.c.report_snapshot(m.dst, success=True)
            return
        dst.c.step(m)

    def deliver_next(self) -> bool:
        """Deliver one queued message (a random one if reordering); False if none."""
        if not self.queue:
            return False
        k = 0
        if self.faults.reorder:
            k = self.rng.randrange(len(self.queue))
            if self.rng.random() >= self.faults.overtake:
                # Keep the link FIFO: take the oldest message on the chosen link.
                src, dst = self.queue[k].src, self.queue[k].dst
                k = next(n for n, m in enumerate(self.queue) if m.src == src and m.dst == dst)
        m = self.queue.pop(k)
        self.deliver(m)
        return True

    # -- driving ----------------------------------------------------------------------

    def process(self) -> bool:
        did = False
        for node in self.nodes.values():
            if node.alive:
                did = node.process(self.send) or did
        return did

    def stabilize(self, max_rounds: int = 10_000) -> None:
        """Process and deliver until no node has work and no message is queued."""
        for _ in range(max_rounds):
            did = self.process()
            if not self.queue and not did:
                return
            while self.deliver_next():
                pass
        raise AssertionError("cluster did not stabilize")

    def tick(self, n: int = 1, nodes: Iterable[NodeId] | None = None) -> None:
        """Tick the given (default: all live) nodes ``n`` times, stabilizing after each."""
        which = list(nodes) if nodes is not None else list(self.nodes)
        for _ in range(n):
            for i in which:
                if self.nodes[i].alive:
                    self.nodes[i].c.tick()
            self.stabilize()

    def leader(self) -> MemNode | None:
        """The live leader with the highest term, if any."""
        best: MemNode | None = None
        for n in self.nodes.values():
            if n.alive and n.c.role is Role.LEADER and (best is None or n.c.term > best.c.term):
                best = n
        return best

    def elect(self, node_id: NodeId) -> MemNode:
        """Make ``node_id`` campaign and run the election to completion."""
        self.nodes[node_id].c.campaign()
        self.stabilize()
        node = self.nodes[node_id]
        assert node.c.role is Role.LEADER, f"{node_id} did not win: {node.c.status()}"
        return node

    def wait_leader(self, max_ticks: int = 500) -> MemNode:
        for _ in range(max_ticks):
            lead = self.leader()
            if lead is not None and all(
                n.c.leader_id == lead.id
                for n in self.nodes.values()
                if n.alive and self.connected(n.id, lead.id) and n.id in lead.c.membership
            ):
                return lead
            self.tick()
        raise AssertionError("no leader emerged")

    @staticmethod
    def check_logs_static(logs: dict[NodeId, dict[int, int]]) -> None:
        SafetyChecker.check_log_matching(logs)

    def check_logs(self) -> None:
        logs: dict[NodeId, dict[int, int]] = {}
        for n in self.nodes.values():
            if n.alive:
                c = n.c
                lo = c.log.first_index
                logs[n.id] = {e.index: e.term for e in c.entries(lo, c.last_index + 1)}
        self.checker.check_log_matching(logs)


# ======================================================================================
# A state machine for runtime tests
# ======================================================================================


class ListFSM:
    """A replicated list of byte strings, for runtime tests (a :class:`StateMachine`);
    ``apply`` returns each item's position. ``indexes`` holds the Raft index of each item."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.indexes: list[int] = []
        self.restores = 0

    def applied_index(self) -> int:
        return 0

    def apply(self, entries: Sequence[Entry]) -> Sequence[Any]:
        out = []
        for e in entries:
            assert not self.indexes or e.index > self.indexes[-1], "applied out of order"
            self.items.append(e.data)
            self.indexes.append(e.index)
            out.append(len(self.items) - 1)
        return out

    def snapshot(self) -> Iterable[bytes]:
        data = msgpack.packb([list(self.items), list(self.indexes)], use_bin_type=True)
        assert isinstance(data, bytes)
        # Several chunks, so that the reader in the node is exercised chunk by chunk.
        return [data[i : i + 4096] for i in range(0, len(data), 4096)] or [b""]

    def restore(self, source: SnapshotSource, meta: SnapshotMeta) -> None:
        raw = source.read()
        items, indexes = msgpack.unpackb(raw, raw=False)
        self.items = list(items)
        self.indexes = list(indexes)
        assert not self.indexes or self.indexes[-1] <= meta.index
        self.restores += 1

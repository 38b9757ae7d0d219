"""Randomized runtime simulation: real RaftNodes under faults, replayable from a seed.

Each run drives 3 (even seeds) or 5 (odd seeds) :class:`RaftNode` s with in-memory stores
on the in-memory network (loss, duplication, reordering, partitions), with stops, restarts
and leadership transfers under load from three proposers, on a virtual-time event loop
(:mod:`raftlog.raft.simloop`): no thread, no real I/O, no wall clock, every random choice
from the seed. A seed therefore replays exactly, and a failure prints it:

    RAFTLOG_RUNTIME_SEED=17 pytest tests/raft/test_runtime_simulation.py   # one seed
    RAFTLOG_RUNTIME_SEEDS=100 pytest tests/raft/test_runtime_simulation.py # more seeds
    RAFTLOG_RUNTIME_EVENTS=40 ...                                          # longer runs

After healing, every node applies the same sequence, and every acknowledged proposal is in
it exactly once, at the index it was acknowledged with. Every message a node sends is
checked against its stores: what it promises (a vote, an acknowledged index) is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raftlog.raft import MessageType, RaftConfig, RaftError, Server, quorum
from raftlog.raft.codec import KIND_MESSAGE, decode_message
from raftlog.raft.config import NodeConfig
from raftlog.raft.inmem import InmemLogStore, InmemSnapshotStore, InmemStableStore
from raftlog.raft.node import RaftNode
from raftlog.raft.simloop import run
from raftlog.raft.testing import ListFSM
from raftlog.raft.transport import Transport
from raftlog.raft.transport_inmem import Faults, InmemNetwork
from support.raft_transport import TransportWrapper

SEEDS = (
    [int(os.environ["RAFTLOG_RUNTIME_SEED"])]
    if os.environ.get("RAFTLOG_RUNTIME_SEED")
    else list(range(int(os.environ.get("RAFTLOG_RUNTIME_SEEDS", "16"))))
)
#: Fault events per run; each is followed by a window of 0.1-0.4 s (virtual) of load.
EVENTS = int(os.environ.get("RAFTLOG_RUNTIME_EVENTS", "20"))
EVENT_KINDS = (
    *("stop", "restart", "partition", "isolate"),
    *("heal", "faults", "clear", "transfer"),
)
#: Seconds per tick (virtual): elections after 0.3-0.6 s without a leader.
TICK = 0.03
#: Bound of the final waits (virtual seconds).
SETTLE = 60.0
#: The network's latency when no fault is set (seconds). On a virtual-time loop work that
#: takes no time would never let the clock move: every hop costs some.
LATENCY = Faults(min_delay=0.0005, max_delay=0.002)
#: Pause of a proposer between two proposals (seconds): clients think too.
THINK = (0.002, 0.01)


@dataclass
class Disk:
    """One node's stores: they outlive the node, so a restart finds its state."""

    log: InmemLogStore = field(default_factory=InmemLogStore)
    stable: InmemStableStore = field(default_factory=InmemStableStore)
    snapshots: InmemSnapshotStore = field(default_factory=InmemSnapshotStore)


class CheckedTransport(TransportWrapper):
    """Checks persist-before-send on every message a node sends: an acknowledged
    AppendEntries index is durable in its log store, a granted vote is in its stable
    store. Broken promises are collected (a transport must not raise)."""

    def __init__(self, inner: Transport, disk: Disk, violations: list[str]) -> None:
        super().__init__(inner)
        self.disk = disk
        self.violations = violations

    def send(self, to: str, payload: bytes) -> None:
        if payload[:1] == bytes([KIND_MESSAGE]):
            m = decode_message(payload[1:])
            log = self.disk.log
            if m.type is MessageType.APPEND_RESP and not m.reject:
                if not (m.index < log.durable_index or m.index < log.first_index):
                    self.violations.append(
                        f"{m.src} acknowledged {m.index} with <{log.durable_index} durable"
                    )
            elif m.type is MessageType.VOTE_RESP and not m.reject:
                st = self.disk.stable.state
                if st is None or (st.term, st.voted_for) != (m.term, m.dst):
                    self.violations.append(f"{m.src} granted a vote in {m.term} unsaved ({st})")
        self.inner.send(to, payload)


@dataclass
class Outcome:
    """What a run did: its trace (compared between replays) and its figures."""

    trace: list[tuple[object, ...]]
    acked: int
    digest: str


class Sim:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids = [f"n{i}" for i in range(1, 4 if seed % 2 == 0 else 6)]
        self.net = InmemNetwork(seed=seed)
        self.net.set_faults(LATENCY)
        self.disks = {i: Disk() for i in self.ids}
        self.nodes: dict[str, RaftNode] = {}
        self.fsms: dict[str, ListFSM] = {}
        self.addresses = {i: f"mem-{i}" for i in self.ids}
        self.violations: list[str] = []
        self.trace: list[tuple[object, ...]] = []
        self.starts = 0

    def now(self) -> float:
        return round(asyncio.get_running_loop().time(), 6)

    def note(self, *event: object) -> None:
        self.trace.append((self.now(), *event))

    async def start(self, node_id: str) -> RaftNode:
        self.starts += 1
        disk = self.disks[node_id]
        transport = CheckedTransport(
            self.net.transport(node_id, self.addresses[node_id]), disk, self.violations
        )
        config = NodeConfig(
            raft=RaftConfig(id=node_id, snapshot_threshold=80, snapshot_trailing_entries=10),
            tick_interval=TICK,
            close_timeout=2.0,
            snapshot_ack_timeout=0.3,
            snapshot_send_attempts=5,
            snapshot_idle_timeout=5.0,
            # Election timeouts from the run's seed, never from the OS.
            seed=self.seed * 1000 + self.starts,
        )
        fsm = ListFSM()  # fresh: rebuilt from the snapshot and the log, as after a crash
        node = RaftNode(
            config,
            fsm,
            transport,
            log_store=disk.log,
            stable_store=disk.stable,
            snapshot_store=disk.snapshots,
            peers=self.addresses,
        )
        await node.start()
        self.nodes[node_id] = node
        self.fsms[node_id] = fsm
        return node

    async def stop(self, node_id: str) -> None:
        await self.nodes.pop(node_id).close()

    def running(self) -> list[RaftNode]:
        return [n for n in self.nodes.values() if not n.closed]

    async def leader(self) -> RaftNode:
        """Wait (virtual time) until one running node leads and all running nodes agree."""
        found: list[RaftNode] = []

        def agreed() -> bool:
            nodes = self.running()
            leaders = [n for n in nodes if n.is_leader]
            if len(leaders) != 1 or not all(n.leader_id == leaders[0].id for n in nodes):
                return False
            found[:] = leaders
            return True

        any_node = self.running()[0]
        await any_node.wait_for(agreed, SETTLE, "one leader agreed by every running node")
        return found[0]

    async def run(self) -> Outcome:
        try:
            return await self._run()
        finally:
            for n in list(self.nodes.values()):
                await n.close()
            await self.net.close()

    async def _run(self) -> Outcome:
        rng, ids = self.rng, self.ids
        majority = quorum.majority(len(ids))
        for i in ids:
            await self.start(i)
        for i in ids:
            await self.nodes[i].bootstrap([Server(j, self.addresses[j]) for j in ids])
        await self.leader()
        #: value -> raft index of each acknowledged proposal; every value is fresh, so
        #: a repeat in the applied sequence is a duplicate.
        acked: dict[bytes, int] = {}
        stop = asyncio.Event()

        async def proposer(k: int) -> None:
            i = 0
            while not stop.is_set():
                nodes = self.running()
                leaders = [n for n in nodes if n.is_leader]
                node = rng.choice(leaders or nodes)
                value = f"p{k}-{i:05d}".encode()
                i += 1
                try:
                    result = await node.propose(value, timeout=1.0)
                except RaftError:  # not leader, timed out, closed: outcome unknown
                    await asyncio.sleep(0.01)
                    continue
                acked[value] = result.index
                self.note("ack", node.id, result.index, result.term)
                await asyncio.sleep(rng.uniform(*THINK))

        tasks = [asyncio.create_task(proposer(k), name=f"proposer {k}") for k in range(3)]
        stopped: list[str] = []
        try:
            for _ in range(EVENTS):
                await self._event(rng.choice(EVENT_KINDS), majority, stopped)
                # The load runs through the fault for a random (virtual) window.
                await asyncio.sleep(rng.uniform(0.1, 0.4))
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        self.note("end", "heal", tuple(stopped))
        self.net.set_faults(LATENCY)
        self.net.heal()
        for back in stopped:
            await self.start(back)
        lead = await self.leader()
        # One more entry through the final leader commits everything before it everywhere.
        final = await lead.propose(b"final", timeout=SETTLE)
        top = self.fsms[lead.id].indexes.index(final.index) + 1
        for n in self.running():
            await n.wait_for(
                lambda n=n: len(self.fsms[n.id].items) >= top, SETTLE, f"{top} items applied"
            )
        ref = self.fsms[lead.id].items[:top]
        for n in self.running():
            assert self.fsms[n.id].items[:top] == ref, f"{n.id} diverged from {lead.id}"
        assert len(set(ref)) == len(ref), "a value was applied twice"
        by_index = dict(zip(self.fsms[lead.id].indexes, self.fsms[lead.id].items, strict=True))
        for value, index in acked.items():
            assert by_index.get(index) == value, f"acknowledged {value!r} at {index} lost"
        assert not self.violations, self.violations[:5]
        assert len(acked) > 20, f"too little work got done ({len(acked)} acknowledged)"
        digest = hashlib.sha256(repr(self.trace).encode() + b"".join(ref)).hexdigest()
        return Outcome(self.trace, len(acked), digest)

    async def _event(self, event: str, majority: int, stopped: list[str]) -> None:
        rng, ids = self.rng, self.ids
        up = [n.id for n in self.running()]
        if event == "stop" and len(up) > majority:
            victim = rng.choice(up)
            await self.stop(victim)
            stopped.append(victim)
            self.note("stop", victim)
        elif event == "restart" and stopped:
            back = stopped.pop(rng.randrange(len(stopped)))
            await self.start(back)
            self.note("restart", back)
        elif event == "partition":
            minority = rng.sample(ids, rng.randint(1, len(ids) - majority))
            self.net.partition(minority, [i for i in ids if i not in minority])
            self.note("partition", tuple(sorted(minority)))
        elif event == "isolate":
            lead = next((n for n in self.running() if n.is_leader), None)
            if lead is not None:
                self.net.partition([lead.id], [i for i in ids if i != lead.id])
                self.note("isolate", lead.id)
        elif event == "heal":
            self.net.heal()
            self.note("heal")
        elif event == "faults":
            faults = Faults(
                drop_rate=rng.uniform(0, 0.1),
                duplicate_rate=rng.uniform(0, 0.1),
                min_delay=LATENCY.min_delay,
                max_delay=rng.uniform(LATENCY.min_delay, 0.003),
                reorder_rate=rng.uniform(0, 0.1),
                reorder_delay=0.005,
            )
            self.net.set_faults(faults)
            self.note("faults", repr(faults))
        elif event == "clear":
            self.net.set_faults(LATENCY)
            self.note("clear")
        elif event == "transfer":
            lead = next((n for n in self.running() if n.is_leader), None)
            if lead is not None:
                with contextlib.suppress(RaftError, TimeoutError):
                    await lead.transfer_leadership(timeout=1.0)
                self.note("transfer", lead.id)


def simulate_runtime(seed: int) -> Outcome:
    """One run on a fresh virtual-time loop; raises on any broken invariant."""
    return run(Sim(seed).run())


def _fail(seed: int, exc: BaseException) -> None:
    pytest.fail(
        f"runtime simulation failed with seed={seed} "
        f"(replay exactly: RAFTLOG_RUNTIME_SEED={seed} pytest "
        f"tests/raft/test_runtime_simulation.py): {exc!r}",
        pytrace=False,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_runtime_random_faults_keep_every_acknowledged_proposal(seed: int) -> None:
    """Stops and restarts, partitions (random minorities, the leader alone), loss,
    duplication, reordering and leadership transfers under load never lose or duplicate
    an acknowledged proposal, and never break persist-before-send."""
    try:
        out = simulate_runtime(seed)
    except Exception as exc:
        _fail(seed, exc)
    assert out.acked > 20


def test_a_seed_replays_exactly() -> None:
    """Two runs of one seed produce the same trace: every acknowledgement at the same
    virtual time, on the same node, at the same index and term."""
    first = simulate_runtime(3)
    second = simulate_runtime(3)
    assert first.trace == second.trace
    assert first.digest == second.digest
    assert simulate_runtime(4).digest != first.digest


_REPLAY = """
import importlib.util, pathlib, sys
sys.path.insert(0, str(pathlib.Path(sys.argv[1]).parents[1]))  # tests/: the support package
spec = importlib.util.spec_from_file_location("runtime_sim", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules["runtime_sim"] = mod
spec.loader.exec_module(mod)
print(mod.simulate_runtime(int(sys.argv[2])).digest)
"""


def test_a_seed_replays_exactly_in_another_process() -> None:
    """The replay holds across processes, whatever their string hash seed (an iteration
    over a set of node ids would break it): what RAFTLOG_RUNTIME_SEED relies on."""
    here = str(Path(__file__))
    digests = {
        subprocess.run(
            [sys.executable, "-c", _REPLAY, here, "5"],
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        for hash_seed in (1, 2)
    }
    assert digests == {simulate_runtime(5).digest}


def test_runtime_simulation_catches_a_broken_commit_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Committing on half the voters (not a majority) must be caught within a few seeds."""
    monkeypatch.setattr(quorum, "majority", lambda n: n // 2)
    failures = 0
    for seed in range(6):
        try:
            simulate_runtime(seed)
        except (AssertionError, RaftError):
            failures += 1
            break
    assert failures, "a commit rule without a majority went unnoticed"

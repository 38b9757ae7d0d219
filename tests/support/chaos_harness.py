"""A Jepsen-style harness for a real raftlog cluster: agents, nemeses, workload, history.

:class:`ChaosCluster` runs ``raftlog agent`` processes through :class:`DevCluster` (the same
launcher as the cluster and client tests), each started through :mod:`support.chaos_fsync`
(so a power loss can be simulated) and, when a :class:`~support.chaos_net.NetnsNetwork` is
given, inside its own network namespace. :class:`Nemesis` injects one fault at a time and
heals it; :class:`Workload` produces unique values through the load-balancing client and
through raw single-node calls (never retried) and consumes continuously; everything lands
in a :class:`History` that :mod:`support.chaos_checker` judges after healing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from raftlog.agent.devcluster import ClusterFiles, DevCluster, DevClusterError, NodeProcess
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.client import ClientConfig, LogClient
from raftlog.security import TLSConfig
from raftlog.security.grpc_tls import grpc_channel_credentials
from support import chaos_fsync
from support.chaos_net import NetnsNetwork

#: Client settings for chaos: bounded retries that fit the scenario's time scale.
CHAOS_CLIENT = ClientConfig(
    request_timeout_s=6.0,
    attempt_timeout_s=1.5,
    backoff_initial_s=0.02,
    backoff_max_s=0.3,
    refresh_timeout_s=1.0,
    min_refresh_interval_s=0.05,
    down_cooldown_s=0.3,
    reconnect_backoff_min_s=0.1,
    reconnect_backoff_max_s=0.5,
)

#: What an agent prints when its Serf child died before exec (test_known_bugs.py).
START_ABORT = re.compile(r"serf agent \S+ exited with status -(6|11) while starting")

#: Channel options of the raw calls: reconnect fast to a restarted node.
RAW_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


# -- history ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Op:
    """One produce attempt: ``result`` ok (acknowledged at ``offset``), fail (certainly not
    appended) or info (outcome unknown)."""

    t: float
    worker: str
    value: str
    result: str = "info"
    offset: int | None = None
    error: str = ""


@dataclass(slots=True)
class LinRead:
    """One linearizable consume of an offset whose value was acknowledged before the read
    began: ``got`` is what the read returned (None if it failed), ``error`` why it failed."""

    t: float
    offset: int
    expected: str
    got: str | None = None
    error: str = ""


@dataclass(slots=True)
class NemesisEvent:
    t: float
    op: str
    target: str
    detail: str = ""


@dataclass
class History:
    """Everything the checker needs, and what a failure report writes out."""

    seed: int
    scenario: str
    started: float = field(default_factory=time.monotonic)
    ops: list[Op] = field(default_factory=list)
    nemesis: list[NemesisEvent] = field(default_factory=list)
    #: reader -> segments; a segment is the (offset, value) list of one uninterrupted stream
    reads: dict[str, list[list[tuple[int, str]]]] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)
    #: linearizable reads of acknowledged offsets (read-your-write through the leader)
    lin_reads: list[LinRead] = field(default_factory=list)
    #: agents that died while starting Serf from the known fork bug (test_known_bugs.py)
    start_aborts: list[str] = field(default_factory=list)

    def now(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def event(self, op: str, target: str, detail: str = "") -> None:
        self.nemesis.append(NemesisEvent(self.now(), op, target, detail))

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "scenario": self.scenario,
            "ops": [asdict(op) for op in self.ops],
            "nemesis": [asdict(e) for e in self.nemesis],
            "reads": self.reads,
            "crashes": self.crashes,
            "lin_reads": [asdict(r) for r in self.lin_reads],
            "start_aborts": self.start_aborts,
        }


# -- cluster ---------------------------------------------------------------------------------


class ChaosCluster(DevCluster):
    """A :class:`DevCluster` whose agents record their fsyncs (power loss) and may live in
    network namespaces (network faults)."""

    def __init__(
        self,
        root: Path,
        files: ClusterFiles,
        names: list[str],
        net: NetnsNetwork | None,
        agent_args: tuple[str, ...],
        spares: list[str] | None = None,
    ) -> None:
        launcher = (sys.executable, str(Path(chaos_fsync.__file__).resolve()))
        super().__init__(root, files, agent_args=agent_args, raftlog=launcher)
        self.net = net
        #: the cluster's nodes (members, or members that are down or left for a while)
        self.names = list(names)
        #: nodes registered but never started: the ``join-new`` nemesis adds them
        self.spares = list(spares or ())
        self._log_start: dict[str, int] = {}
        for name in [*names, *self.spares]:
            node = self.add_node(name)
            if net is not None:
                node.host = net.ip[name]

    def start(self, name: str, *, bootstrap: bool = False, join: list[str] | None = None) -> None:
        """Start node ``name`` like :meth:`DevCluster.start`, through the fsync-journaling
        launcher (:mod:`support.chaos_fsync`, which sets the parent-death signal itself),
        marking where this start's output begins in the node's log (:meth:`start_aborted`).

        No ``preexec_fn`` (DevCluster no longer uses one either): with gRPC threads busy in
        this process, gRPC's fork handlers aborted such children before exec
        (tests/chaos/test_known_bugs.py)."""
        node = self.nodes[name]
        if node.running:
            raise DevClusterError(f"node {name} is already running")
        if join is None:
            join = [n.gossip_addr for n in self.nodes.values() if n.name != name and n.running]
        self.root.mkdir(parents=True, exist_ok=True)
        node.log_path = self.root / f"{name}.log"
        fh = open(node.log_path, "ab")  # noqa: SIM115 - closed by DevCluster._reap
        self._log_start[name] = fh.tell()
        old = self._logs.pop(name, None)
        if old is not None:
            old.close()
        self._logs[name] = fh
        env = dict(os.environ, PYTHONUNBUFFERED="1", CHAOS_PARENT_PID=str(os.getpid()))
        node.stopped = False
        node.proc = subprocess.Popen(
            self.command(node, bootstrap=bootstrap, join=join),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def command(self, node: NodeProcess, *, bootstrap: bool, join: list[str]) -> list[str]:
        argv = super().command(node, bootstrap=bootstrap, join=join)
        if self.net is None:
            return argv
        return [*self.net.exec_prefix(node.name), *argv]

    def log_since_start(self, name: str) -> str:
        """The node's log written since its last start."""
        path = self.nodes[name].log_path
        if path is None or not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(self._log_start.get(name, 0))
            return f.read().decode(errors="replace")

    def start_aborted(self, name: str) -> bool:
        """The node exited because its Serf child died before exec (the known fork bug,
        tests/chaos/test_known_bugs.py), not because of anything the nemesis did."""
        node = self.nodes[name]
        if node.proc is None or node.proc.poll() is None:
            return False
        return START_ABORT.search(self.log_since_start(name)) is not None

    def revive_start_aborts(self, history: History | None, bootstrap: bool = False) -> bool:
        """Restart every node that died of the known start bug; whether there was one."""
        revived = False
        for name in self.names:
            if self.start_aborted(name):
                if history is not None:
                    history.start_aborts.append(name)
                    history.event("start-abort", name, "serf child died before exec (known bug)")
                self.wait_exit(name, 1.0)
                self.start(name, bootstrap=bootstrap and name == self.names[0])
                revived = True
        return revived

    async def wait_members(
        self, tls: TLSConfig, members: int, timeout_s: float, history: History | None = None
    ) -> str:
        """:meth:`wait_for` (``members`` servers, every one a voter), restarting nodes that
        hit the known start bug (3 times at most)."""
        for attempt in range(4):
            try:
                deadline = time.monotonic() + timeout_s
                leader = await self.wait_for(tls, members=members, timeout_s=timeout_s)
                await self.wait_voters(tls, members, deadline)
                return leader
            except DevClusterError:
                if attempt == 3 or not self.revive_start_aborts(history, bootstrap=True):
                    raise
        raise AssertionError("unreachable")

    async def boot(
        self, tls: TLSConfig, timeout_s: float = 60.0, history: History | None = None
    ) -> None:
        """Bootstrap the first node, join the others, wait for every member (bounded)."""
        first = self.names[0]
        self.start(first, bootstrap=True)
        await self.wait_members(tls, 1, timeout_s / 2, history)
        for name in self.names[1:]:
            self.start(name, join=[self.nodes[first].gossip_addr])
        await self.wait_members(tls, len(self.names), timeout_s, history)

    async def leader_views(self, tls: TLSConfig) -> dict[str, str | None]:
        """Node -> the leader it names now (None: none, or no answer within 0.5 s)."""

        async def view(name: str) -> str | None:
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                servers = await self.servers(name, tls, timeout_s=0.5)
                for s in servers:
                    if s.is_leader:
                        return str(s.id)
            return None

        running = [n for n in self.names if self.nodes[n].running]
        return dict(zip(running, await asyncio.gather(*map(view, running)), strict=True))

    async def leader(self, tls: TLSConfig) -> str | None:
        """The leader most running nodes name now (None when none does)."""
        views = [v for v in (await self.leader_views(tls)).values() if v is not None]
        if not views:
            return None
        return max(set(views), key=views.count)

    async def kill(self, name: str) -> int:
        """SIGKILL node ``name``; its exit code (-SIGKILL unless it had exited already)."""
        self.signal(name, signal.SIGKILL)
        return await asyncio.to_thread(self.wait_exit, name, 10.0)

    def restart(self, name: str) -> None:
        others = [n.gossip_addr for n in self.nodes.values() if n.name != name and n.running]
        self.start(name, join=others)

    async def wait_listed(
        self, name: str, listed: bool, tls: TLSConfig, timeout_s: float
    ) -> list[str] | None:
        """Wait until the Raft configuration most running members report (GetServers)
        has ``name`` as a voter (``listed``; a learner does not count) or no longer has it
        at all; that configuration's voters, or None on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            others = [n for n in self.names if n != name and self.nodes[n].running]
            configs: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
            for other in others:
                with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                    servers = await self.servers(other, tls, timeout_s=0.5)
                    voters = tuple(sorted(str(s.id) for s in servers if not s.is_learner))
                    configs.append((voters, tuple(sorted(str(s.id) for s in servers))))
            if configs:
                voters, everyone = max(set(configs), key=configs.count)
                if (listed and name in voters) or (not listed and name not in everyone):
                    return list(voters)
            await asyncio.sleep(0.2)
        return None

    async def wait_voters(self, tls: TLSConfig, members: int, deadline: float) -> None:
        """Wait until a running node reports ``members`` voters (learners promoted): a
        cluster whose last node is still a learner loses its quorum with one more fault."""
        last = "no answer"
        while time.monotonic() < deadline:
            for name in [n for n in self.names if self.nodes[n].running]:
                with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                    servers = await self.servers(name, tls, timeout_s=0.5)
                    voters = [str(s.id) for s in servers if not s.is_learner]
                    last = f"{name} sees voters {voters} of {[str(s.id) for s in servers]}"
                    if len(voters) >= members and any(s.is_leader for s in servers):
                        return
            await asyncio.sleep(0.2)
        raise DevClusterError(f"not {members} voters in time ({last})")

    def wipe(self, name: str) -> None:
        """Delete a stopped node's data directory and fsync journal (it rejoins as new)."""
        node = self.nodes[name]
        assert not node.running, f"{name} is running"
        shutil.rmtree(node.data_dir, ignore_errors=True)
        chaos_fsync.journal_path(node.data_dir).unlink(missing_ok=True)

    def raw_channel(self, name: str, tls: TLSConfig) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            self.nodes[name].rpc_addr, grpc_channel_credentials(tls), options=RAW_OPTIONS
        )


# -- nemesis ---------------------------------------------------------------------------------


class Nemesis:
    """Injects one fault at a time, holds it, heals it, and records each step.

    ``kinds``: the faults to pick from: ``kill``, ``kill-leader``, ``kill-minority`` (as
    many nodes at once as a quorum can lose), ``power-loss``, ``power-loss-minority``,
    ``pause``, ``pause-leader``, ``partition`` (random majority/minority),
    ``isolate-leader``, ``bridge``, ``slow`` (token-bucket link), ``flap`` (link down/up),
    ``loss`` (every node's egress drops 5-30 % of its packets at random), ``delay`` (every
    node's egress delayed 20-100 ms; needs sch_netem); membership: ``leave-rejoin`` (SIGTERM:
    the agent hands leadership over if it has it and leaves Serf gracefully, the leader
    removes it from Raft; after the hold it starts again, half the time with its data
    directory kept, half the time wiped so that it joins as a new node and catches up by
    snapshot), ``join-new`` (a spare node joins through Serf and becomes a voter; when no
    spare is left it is a ``leave-rejoin``); disk: ``disk-full`` / ``disk-full-leader``
    (writes fail with ENOSPC for the hold; the node must resume without a restart),
    ``disk-eio`` / ``disk-eio-leader`` (writes and fsyncs fail with EIO; the node stops
    taking writes; after the hold the fault is cleared and the node restarted).
    Holds last ``hold_s`` (uniform range, seconds); quiet gaps ``gap_s`` between faults.
    ``opening``: kinds injected first, in this order, before random picks; it always runs
    whole, even past the run's duration.
    """

    #: default pace (seconds): a fault is held 1.5-4 s, then 0.5-2 s of quiet
    HOLD_S = (1.5, 4.0)
    GAP_S = (0.5, 2.0)

    MEMBERSHIP = frozenset({"leave-rejoin", "join-new"})
    #: how long a leaving node may take to exit, and a membership change to show (seconds)
    LEAVE_TIMEOUT_S = 20.0
    MEMBERSHIP_TIMEOUT_S = 20.0

    NETWORK = frozenset({"partition", "isolate-leader", "bridge", "slow", "flap", "loss", "delay"})
    #: disk faults through the agents' launcher (support.chaos_fsync.set_fault)
    DISK = frozenset({"disk-full", "disk-full-leader", "disk-eio", "disk-eio-leader"})
    #: SIGKILL (+ restart), power loss (SIGKILL, files cut back to their last fsync), SIGSTOP
    PROCESS = frozenset(
        {"kill", "kill-leader", "kill-minority", "power-loss", "power-loss-minority"}
        | {"pause", "pause-leader"}
    )
    #: every kind :meth:`inject` knows
    KINDS = PROCESS | NETWORK | MEMBERSHIP | DISK

    def __init__(
        self,
        cluster: ChaosCluster,
        tls: TLSConfig,
        history: History,
        rng: random.Random,
        kinds: tuple[str, ...],
        hold_s: tuple[float, float] = HOLD_S,
        gap_s: tuple[float, float] = GAP_S,
        opening: tuple[str, ...] = (),
    ) -> None:
        self.cluster = cluster
        self.tls = tls
        self.history = history
        self.rng = rng
        self.kinds = kinds
        self.hold_s = hold_s
        self.gap_s = gap_s
        self.opening = opening
        #: fault events: one per injection (a heal, a restart or a rejoin is not one)
        self.faults = 0
        #: fault events by the kind actually injected (``join-new`` without a spare left
        #: counts as the ``leave-rejoin`` it becomes)
        self.by_kind: collections.Counter[str] = collections.Counter()
        #: membership changes seen through GetServers: left, rejoined, joined
        self.membership_changes = 0
        self._paused: set[str] = set()
        self._down: set[str] = set()

    async def run(self, duration_s: float) -> None:
        # the opening always runs whole (and counts towards the duration)
        opening = list(self.opening)
        deadline = time.monotonic() + duration_s
        while opening or time.monotonic() < deadline:
            self.check_crashes()
            kind = opening.pop(0) if opening else self.rng.choice(self.kinds)
            await self.inject(kind)
            self.check_crashes()
            if self.faults % 100 == 0:  # progress of a long run (shown with pytest -s)
                print(f"nemesis: {self.faults} fault events after {self.history.now():.0f} s")
            await asyncio.sleep(self.rng.uniform(*self.gap_s))

    def check_crashes(self) -> None:
        """A node that exited without the nemesis killing it is a crash: record it and
        restart it (so the run goes on and the checker still sees every replica)."""
        for name, node in self.cluster.nodes.items():
            if name in self._down or node.proc is None or node.stopped:
                continue
            code = node.proc.poll()
            if code is not None and self.cluster.start_aborted(name):
                self.cluster.revive_start_aborts(self.history)
            elif code is not None:
                self.history.crashes.append(f"{name} exited with {code}")
                self.history.event("crash", name, f"exit code {code}")
                self.cluster.wait_exit(name, 1.0)
                self.cluster.restart(name)

    async def _target(self, leader: bool) -> str:
        if leader:
            views = await self.cluster.leader_views(self.tls)
            self.history.event("leader-views", "", str(views))
            named = [v for v in views.values() if v is not None]
            if named:
                return max(set(named), key=named.count)
            self.history.event("no-leader-known", "", "target picked at random")
        return self.rng.choice(self.cluster.names)

    async def _hold(self) -> None:
        await asyncio.sleep(self.rng.uniform(*self.hold_s))

    async def inject(self, kind: str) -> None:
        c, h, net = self.cluster, self.history, self.cluster.net
        if kind == "join-new" and not c.spares:
            kind = "leave-rejoin"
        self.faults += 1
        self.by_kind[kind] += 1
        if kind in self.MEMBERSHIP:
            await self._membership(kind)
        elif kind in ("kill", "kill-leader", "power-loss", "kill-minority", "power-loss-minority"):
            if kind.endswith("-minority"):
                targets = self.rng.sample(c.names, (len(c.names) - 1) // 2)
            else:
                targets = [await self._target(kind == "kill-leader")]
            self._down.update(targets)
            try:
                for name in targets:
                    h.event(kind, name, "SIGKILL")
                    await self._kill(name)
                    if kind.startswith("power-loss"):
                        await self._power_loss(name)
                await self._hold()
                for name in targets:
                    c.restart(name)
                    h.event("restart", name)
            finally:
                self._down.difference_update(targets)
        elif kind in self.DISK:
            await self._disk(kind)
        elif kind in ("pause", "pause-leader"):
            name = await self._target(kind == "pause-leader")
            h.event(kind, name, "SIGSTOP")
            c.signal(name, signal.SIGSTOP)
            self._paused.add(name)
            try:
                await self._hold()
            finally:
                c.signal(name, signal.SIGCONT)
                self._paused.discard(name)
                h.event("resume", name, "SIGCONT")
        elif kind in self.NETWORK:
            assert net is not None, "network nemesis without a namespace network"
            names = list(c.names)
            if kind == "partition":
                self.rng.shuffle(names)
                minority = names[: (len(names) - 1) // 2]
                majority = names[len(minority) :]
                pairs = [(a, b) for a in minority for b in majority]
                detail = f"{sorted(minority)} | {sorted(majority)}"
                target = ",".join(sorted(minority))
            elif kind == "isolate-leader":
                target = await self._target(True)
                pairs = [(target, b) for b in names if b != target]
                detail = f"{target} | rest"
            elif kind == "bridge":
                self.rng.shuffle(names)
                target, rest = names[0], names[1:]
                left, right = rest[: len(rest) // 2], rest[len(rest) // 2 :]
                pairs = [(a, b) for a in left for b in right]
                detail = f"{sorted(left)} <-> {target} <-> {sorted(right)}"
            else:
                target = self.rng.choice(names)
                pairs = []
                detail = ""
            if kind == "loss":
                pct = self.rng.choice((5, 10, 20, 30))
                target = "all"
                for name in names:
                    detail = await asyncio.to_thread(net.lossy, name, pct)
            elif kind == "delay":
                delay_ms = self.rng.choice((20, 50, 100))
                target = "all"
                for name in names:
                    detail = await asyncio.to_thread(net.delayed, name, delay_ms, delay_ms // 4)
            elif kind == "slow":
                rate = self.rng.choice((128, 256, 512))
                latency = self.rng.choice((50, 200, 400))
                await asyncio.to_thread(net.slow, target, rate, latency)
                detail = f"tbf {rate} kbit/s, queue <= {latency} ms"
            elif kind == "flap":
                await asyncio.to_thread(net.link_down, target)
                detail = "eth0 down"
            else:
                await asyncio.to_thread(net.cut, pairs)
            h.event(kind, target, detail)
            try:
                await self._hold()
                views = await self.cluster.leader_views(self.tls)
                h.event("leader-views", "", f"{views} (before healing)")
            finally:
                await asyncio.to_thread(net.heal)
                h.event("heal", target)
        else:
            raise ValueError(f"unknown nemesis {kind!r}")

    async def _disk(self, kind: str) -> None:
        """``disk-full``: the node's writes fail with ENOSPC for the hold, then space is
        back and it must resume by itself (no restart). ``disk-eio``: its writes and
        fsyncs fail with EIO; it stops taking writes and hands leadership over; after the
        hold the disk is "replaced" (the fault cleared) and the node restarted, as an
        operator would."""
        c, h = self.cluster, self.history
        name = await self._target(kind.endswith("-leader"))
        data = c.nodes[name].data_dir
        fault = "enospc" if kind.startswith("disk-full") else "eio"
        h.event(kind, name, f"every write{'' if fault == 'enospc' else ' and fsync'} {fault}")
        chaos_fsync.set_fault(data, fault)
        try:
            await self._hold()
        finally:
            chaos_fsync.set_fault(data, None)
            h.event("heal", name, "disk healed")
        if fault == "eio":
            self._down.add(name)
            try:
                await self._kill(name)
                c.restart(name)
                h.event("restart", name, "after the disk failure")
            finally:
                self._down.discard(name)

    async def _kill(self, name: str) -> None:
        """SIGKILL ``name`` and wait for it. A process that had already exited by itself
        (its exit code is not -SIGKILL) is a crash the kill must not hide: a node that
        died while its disk failed, say, and is killed and restarted after the hold."""
        code = await self.cluster.kill(name)
        if code != -signal.SIGKILL:
            self.history.crashes.append(f"{name} exited with {code} before the nemesis's SIGKILL")
            self.history.event("crash", name, f"exit code {code} before SIGKILL")

    async def _membership(self, kind: str) -> None:
        c, h = self.cluster, self.history
        if kind == "join-new":
            name = c.spares.pop(0)
            others = [c.nodes[n].gossip_addr for n in c.names if c.nodes[n].running]
            c.names.append(name)
            self._down.add(name)
            try:
                c.start(name, join=others)
                h.event("join-new", name, f"serf join via {len(others)} members")
                await self._expect_listed(name, True, "joined")
            finally:
                self._down.discard(name)
            return
        name = self.rng.choice([n for n in c.names if c.nodes[n].running] or c.names)
        wipe = self.rng.random() < 0.5
        # a graceful leave needs a started agent: a SIGTERM that lands while the process
        # is still importing (a node restarted by the previous fault a moment ago) ends it
        # with -15 before it could install its handler, and it never leaves
        await self._until_serving(name)
        self._down.add(name)
        try:
            h.event("leave", name, "SIGTERM (hand over, graceful Serf leave)")
            c.signal(name, signal.SIGTERM)
            code = await asyncio.to_thread(c.wait_exit, name, self.LEAVE_TIMEOUT_S)
            if code != 0:
                h.crashes.append(f"{name} exited with {code} after SIGTERM (graceful leave)")
                h.event("crash", name, f"graceful leave ended with exit code {code}")
            await self._expect_listed(name, False, "left")
            await self._hold()
            if wipe:
                await asyncio.to_thread(c.wipe, name)
            c.restart(name)
            h.event("rejoin", name, "data dir wiped: a new node" if wipe else "same data dir")
            await self._expect_listed(name, True, "rejoined")
        finally:
            self._down.discard(name)

    async def _until_serving(self, name: str) -> None:
        """Wait (MEMBERSHIP_TIMEOUT_S at most) until node ``name`` answers GetServers."""
        deadline = time.monotonic() + self.MEMBERSHIP_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                await self.cluster.servers(name, self.tls, timeout_s=0.5)
                return
            await asyncio.sleep(0.2)
        self.history.event(
            "not-serving", name, f"for {self.MEMBERSHIP_TIMEOUT_S} s; leaving anyway"
        )

    async def _expect_listed(self, name: str, listed: bool, what: str) -> None:
        """Record when the members' Raft configuration shows the change (or that it did
        not within MEMBERSHIP_TIMEOUT_S: the convergence wait then fails the run if a node
        never comes back)."""
        config = await self.cluster.wait_listed(name, listed, self.tls, self.MEMBERSHIP_TIMEOUT_S)
        if config is None:
            self.history.event(
                "membership-timeout", name, f"not {what} within {self.MEMBERSHIP_TIMEOUT_S} s"
            )
        else:
            self.membership_changes += 1
            self.history.event(f"membership-{what}", name, f"servers {config}")

    async def _power_loss(self, name: str) -> None:
        """Turn the killed node's files into a power-loss image (see chaos_fsync)."""
        data = self.cluster.nodes[name].data_dir
        journal_file = chaos_fsync.journal_path(data)
        journal = chaos_fsync.Journal.read(journal_file)
        report = await asyncio.to_thread(chaos_fsync.apply_power_loss, data, journal, self.rng)
        await asyncio.to_thread(_rebaseline, data, journal_file)
        cut = sorted((Path(p).relative_to(data).as_posix(), n) for p, n in report.cut.items())
        dropped = [Path(p).relative_to(data).as_posix() for p in report.dropped]
        self.history.event(
            "power-loss-image",
            name,
            f"cut {len(cut)} files, dropped {len(dropped)}: {cut[:6]} {dropped[:6]}",
        )

    async def heal_all(self) -> None:
        """Heal the network, resume paused nodes, restart dead ones."""
        if self.cluster.net is not None:
            await asyncio.to_thread(self.cluster.net.heal)
        for name in self.cluster.names:
            self.cluster.signal(name, signal.SIGCONT)
        self.check_crashes()
        for name in self.cluster.names:
            if not self.cluster.nodes[name].running:
                self.cluster.restart(name)
                self.history.event("restart", name, "final heal")


def _rebaseline(data_dir: Path, journal_file: Path) -> None:
    """After a power loss the surviving files are what is on disk: journal them as synced,
    so a second power loss never cuts below them."""
    import json
    import os

    lines = []
    for dirpath, _dirs, files in os.walk(data_dir):
        names = {}
        for name in files + _dirs:
            st = (Path(dirpath) / name).stat()
            names[name] = st.st_ino
            if name in files:
                lines.append(json.dumps({"f": st.st_ino, "size": st.st_size}))
        lines.append(json.dumps({"d": Path(dirpath).stat().st_ino, "names": names}))
    journal_file.write_text("".join(line + "\n" for line in lines))


# -- workload --------------------------------------------------------------------------------


class Workload:
    """Producers (client and raw) and consumers running until :meth:`stop`."""

    def __init__(
        self,
        cluster: ChaosCluster,
        tls: TLSConfig,
        history: History,
        rng: random.Random,
        client_producers: int = 3,
        raw_producers: int = 2,
        pace_s: float = 0.01,
    ) -> None:
        self.cluster = cluster
        self.tls = tls
        self.history = history
        self.rng = rng
        self.client_producers = client_producers
        self.raw_producers = raw_producers
        self.pace_s = pace_s
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: LogClient | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        #: the newest acknowledged produce (what the linearizable reader asks for)
        self._latest_ack: Op | None = None

    async def start(self) -> None:
        addrs = [self.cluster.nodes[n].rpc_addr for n in self.cluster.names]
        self._client = LogClient(addrs, tls=self.tls, config=CHAOS_CLIENT)
        await self._client.start()
        for name in self.cluster.names:
            self._channels[name] = self.cluster.raw_channel(name, self.tls)
        spawn: list[Callable[[], Coroutine[Any, Any, None]]] = []
        for w in range(self.client_producers):
            spawn.append(lambda w=w: self._client_producer(f"client-{w}"))  # type: ignore[misc]
        for w in range(self.raw_producers):
            spawn.append(lambda w=w: self._raw_producer(f"raw-{w}"))  # type: ignore[misc]
        spawn.append(lambda: self._client_reader("reader-client"))
        spawn.append(self._linearizable_reader)
        for name in self.cluster.names:
            spawn.append(lambda name=name: self._raw_reader(name))  # type: ignore[misc]
        self._tasks = [asyncio.create_task(make()) for make in spawn]

    async def stop(self) -> None:
        """Stop producing and reading (in-flight calls get a bounded moment to answer)."""
        self._stop.set()
        _done, pending = await asyncio.wait(self._tasks, timeout=8.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.close(), 12.0)
        for ch in self._channels.values():
            await ch.close()

    async def _client_producer(self, worker: str) -> None:
        assert self._client is not None
        for i in itertools.count():
            if self._stop.is_set():
                return
            op = Op(self.history.now(), worker, f"{worker}-{i}")
            self.history.ops.append(op)
            try:
                op.offset = await self._client.produce(op.value.encode())
                op.result = "ok"
                self._latest_ack = op
            except Exception as exc:
                op.error = f"{type(exc).__name__}: {exc}"[:200]
            await asyncio.sleep(self.rng.uniform(0, self.pace_s))

    async def _raw_producer(self, worker: str) -> None:
        """One Produce to one node per value, never retried: its values may appear at most
        once in the log (a duplicate would come from the servers' own retries)."""
        for i in itertools.count():
            if self._stop.is_set():
                return
            name = self.rng.choice(self.cluster.names)
            if name not in self._channels:  # a node that joined mid-run
                self._channels[name] = self.cluster.raw_channel(name, self.tls)
            stub = log_pb2_grpc.LogStub(self._channels[name])  # type: ignore[no-untyped-call]
            op = Op(self.history.now(), f"{worker}@{name}", f"{worker}-{i}")
            self.history.ops.append(op)
            try:
                resp = await stub.Produce(
                    log_pb2.ProduceRequest(record=log_pb2.Record(value=op.value.encode())),
                    timeout=2.0,
                )
                op.offset, op.result = resp.offset, "ok"
                self._latest_ack = op
            except grpc.aio.AioRpcError as exc:
                op.error = f"{exc.code().name}: {exc.details()}"[:200]
                await asyncio.sleep(0.05)
            await asyncio.sleep(self.rng.uniform(0, self.pace_s))

    async def _client_reader(self, reader: str) -> None:
        assert self._client is not None
        segments = self.history.reads.setdefault(reader, [])
        nxt = 0
        while not self._stop.is_set():
            segment: list[tuple[int, str]] = []
            segments.append(segment)
            try:
                async for rec in self._client.stream(from_offset=nxt):
                    segment.append((rec.offset, rec.value.decode()))
                    nxt = rec.offset + 1
                    if self._stop.is_set():
                        return
            except Exception:
                await asyncio.sleep(0.2)

    async def _linearizable_reader(self) -> None:
        """Read-your-write: a linearizable consume (through the leader, after a read
        barrier) of the newest acknowledged offset must return its value; failing to
        answer is allowed under faults, answering wrong or out of range is not."""
        assert self._client is not None
        asked: Op | None = None
        while not self._stop.is_set():
            op = self._latest_ack
            if op is None or op is asked or op.offset is None:
                await asyncio.sleep(0.05)
                continue
            asked = op
            read = LinRead(self.history.now(), op.offset, op.value)
            self.history.lin_reads.append(read)
            try:
                record = await self._client.consume(op.offset, linearizable=True)
                read.got = record.value.decode(errors="replace")
            except Exception as exc:
                read.error = f"{type(exc).__name__}: {exc}"[:200]
            await asyncio.sleep(self.rng.uniform(0, 5 * self.pace_s))

    async def _raw_reader(self, name: str) -> None:
        """ConsumeStream on one node only: every record a replica serves is checked."""
        segments = self.history.reads.setdefault(f"raw-reader@{name}", [])
        stub = log_pb2_grpc.LogStub(self._channels[name])  # type: ignore[no-untyped-call]
        nxt = 0
        while not self._stop.is_set():
            segment: list[tuple[int, str]] = []
            segments.append(segment)
            try:
                call = stub.ConsumeStream(log_pb2.ConsumeRequest(offset=nxt, max_records=500))
                async for resp in call:
                    for r in resp.records:
                        segment.append((r.offset, r.value.decode()))
                        nxt = r.offset + 1
                    if self._stop.is_set():
                        call.cancel()
                        return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.2)


# -- convergence -----------------------------------------------------------------------------


def silent_nodes_report(cluster: ChaosCluster, names: Iterable[str], tail: int = 20) -> str:
    """For each node that did not answer: its process state and the tail of its log."""
    parts = []
    for name in names:
        proc = cluster.nodes[name].proc
        code = None if proc is None else proc.poll()
        if proc is None:
            state = "not started"
        elif code is None:
            state = "running"
        else:
            state = f"exited {code}"
        lines = cluster.log_since_start(name).splitlines()[-tail:]
        parts.append(f"{name} ({state}); last {len(lines)} log lines:\n  " + "\n  ".join(lines))
    return "\n".join(parts)


async def final_logs(
    cluster: ChaosCluster,
    tls: TLSConfig,
    history: History,
    timeout_s: float = 60.0,
    poll: Callable[[], None] | None = None,
) -> dict[str, list[str]]:
    """After healing: wait for a leader, write a sentinel through it, wait until every
    replica reports the same end twice in a row, then read every replica whole.

    ``poll`` runs on every round (the nemesis's crash check: a node that died after the
    last fault is recorded and restarted, not waited for in silence). On timeout the error
    names each replica that did not answer, with its process state and its log's tail.
    """
    deadline = time.monotonic() + timeout_s
    await cluster.wait_members(tls, len(cluster.names), timeout_s / 2, history)
    async with LogClient(
        [cluster.nodes[n].rpc_addr for n in cluster.names], tls=tls, config=CHAOS_CLIENT
    ) as client:
        sentinel = await client.produce(b"sentinel")
    channels = {n: cluster.raw_channel(n, tls) for n in cluster.names}
    try:
        stable = 0
        ends: dict[str, int] = {}
        while stable < 2:
            if time.monotonic() > deadline:
                silent = [n for n in channels if n not in ends]
                raise DevClusterError(
                    f"replicas did not converge: ends {ends}\n"
                    + silent_nodes_report(cluster, silent)
                )
            if poll is not None:
                poll()
            now: dict[str, int] = {}
            for name, ch in channels.items():
                stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
                with contextlib.suppress(grpc.aio.AioRpcError):
                    resp = await stub.GetOffsets(log_pb2.GetOffsetsRequest(), timeout=1.0)
                    now[name] = resp.next_offset
            same = len(now) == len(channels) and len(set(now.values())) == 1
            stable = stable + 1 if same and now == ends and sentinel < min(now.values()) else 0
            ends = now
            await asyncio.sleep(0.5)
        logs: dict[str, list[str]] = {}
        for name, ch in channels.items():
            logs[name] = await read_whole(ch, ends[name], deadline)
        return logs
    finally:
        for ch in channels.values():
            await ch.close()


async def read_whole(
    ch: grpc.aio.Channel,
    end: int,
    deadline: float,
    *,
    topic: str = "",
    partition: int | None = None,
) -> list[str]:
    """Every record below ``end`` on one replica (of the default topic, or of ``topic``'s
    ``partition``); a gap or a reordered offset is kept as a placeholder so the checker
    reports it."""
    stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
    out: list[str] = []
    if end == 0:
        return out
    call = stub.ConsumeStream(
        log_pb2.ConsumeRequest(offset=0, max_records=1000, topic=topic, partition=partition),
        timeout=max(1.0, deadline - time.monotonic()),
    )
    async for resp in call:
        for r in resp.records:
            if r.offset != len(out):
                out.append(f"<offset {r.offset} where {len(out)} was expected>")
            out.append(r.value.decode(errors="replace"))
        if len(out) >= end:
            call.cancel()
            break
    return out

"""Run one chaos scenario end to end and write its result (and, on failure, its history).

Settings (environment variables, read when a scenario runs):

- ``CHAOS_DURATION``: seconds of faults per scenario (default 20; unset in the CI profile,
  a scenario's ``ci_duration_s`` applies when it has one).
- ``CHAOS_PROFILE``: ``ci`` (default: 3-node scenarios), ``full`` (adds the 5-node one and
  the disk one) or ``long`` (only the long run: one cluster under a stream of every
  nemesis for ``CHAOS_DURATION`` seconds; ``make chaos PROFILE=long DURATION=1800``).
- ``CHAOS_SEED``: the seed of every scenario (default: a fresh one, printed).
- ``CHAOS_RESULTS``: directory of the results (default ``<repo>/.build/chaos``, and
  ``<repo>/.build/chaos-long`` in the long profile, so that neither run wipes the other's
  figures); one ``<scenario>.json`` per scenario, read by ``tests/chaos/report.py``.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import os
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftlog.agent.devcluster import ClusterFiles
from raftlog.auth import write_example_acl
from raftlog.security import TLSConfig, write_dev_certs
from support import chaos_net
from support.chaos_checker import Verdict, check
from support.chaos_harness import ChaosCluster, History, Nemesis, Workload, final_logs
from support.wait import wait_until

REPO = Path(__file__).resolve().parents[2]

AGENT_ARGS = (
    "--serf-profile",
    "local",
    # snapshots (and InstallSnapshot to a node that was down) happen within a scenario
    "--snapshot-threshold",
    "400",
    # a paused or partitioned node keeps its place; a graceful leave (the membership
    # nemeses) removes a node at once
    "--failed-grace-s",
    "600",
    "--log-level",
    "info",
)


@dataclass(frozen=True)
class Scenario:
    """``kinds``: the nemeses (see :class:`Nemesis`); ``network``: needs namespaces;
    ``spares``: nodes registered but not booted, for the ``join-new`` nemesis;
    ``opening``: nemeses injected first, in order (then random picks from ``kinds``)."""

    name: str
    nodes: int
    kinds: tuple[str, ...]
    network: bool = False
    description: str = ""
    spares: int = 0
    opening: tuple[str, ...] = ()
    #: seconds of random faults after the opening in the CI profile when CHAOS_DURATION is
    #: not set (None: the default of 20 s); keeps ``make test`` short
    ci_duration_s: float | None = None
    #: the nemesis's pace: how long a fault is held, and the quiet gap after its heal
    #: (uniform ranges, seconds; see :class:`Nemesis`)
    hold_s: tuple[float, float] = Nemesis.HOLD_S
    gap_s: tuple[float, float] = Nemesis.GAP_S
    #: bound of the convergence after healing (sentinel, equal ends, every replica read
    #: whole): a long run's log is hundreds of thousands of records
    converge_s: float = 60.0
    #: an agent that died while starting Serf (the fixed fork bug, test_known_bugs.py) is
    #: restarted and counted apart as a start abort; with this set it is a node crash too
    start_aborts_are_crashes: bool = False

    def duration_s(self) -> float:
        """Seconds of faults for this scenario in this run (the opening always runs whole)."""
        if "CHAOS_DURATION" in os.environ or profile() != "ci" or self.ci_duration_s is None:
            return duration_s()
        return self.ci_duration_s


def duration_s() -> float:
    return float(os.environ.get("CHAOS_DURATION", "20"))


def profile() -> str:
    return os.environ.get("CHAOS_PROFILE", "ci")


def results_dir() -> Path:
    default = REPO / ".build" / ("chaos-long" if profile() == "long" else "chaos")
    out = Path(os.environ.get("CHAOS_RESULTS", str(default)))
    out.mkdir(parents=True, exist_ok=True)
    return out


def seed_for(name: str) -> int:
    if "CHAOS_SEED" in os.environ:
        return int(os.environ["CHAOS_SEED"])
    return random.SystemRandom().randrange(1 << 32)


async def _drive(
    cluster: ChaosCluster,
    tls: TLSConfig,
    history: History,
    workload_rng: random.Random,
    nemesis: Nemesis,
    fault_s: float,
    converge_s: float = 60.0,
) -> dict[str, list[str]]:
    """Boot, run workload + nemesis, heal, stop the workload, converge: the final logs."""
    await cluster.boot(tls, history=history)
    history.event("booted", ",".join(cluster.names))
    workload = Workload(cluster, tls, history, workload_rng)
    await workload.start()
    try:
        await nemesis.run(fault_s)
        await nemesis.heal_all()
        history.event("healed", "all")
        # the workload sees the healed cluster: a produce started after healing is acked
        healed = history.now()
        await wait_until(
            lambda: acknowledged_since(history, healed),
            60,
            "a produce acknowledged by the healed cluster",
            interval=0.1,
        )
    finally:
        await workload.stop()
    logs = await final_logs(cluster, tls, history, timeout_s=converge_s, poll=nemesis.check_crashes)
    nemesis.check_crashes()
    return logs


def acknowledged_since(history: History, t: float) -> bool:
    """Whether a produce started at or after ``t`` was acknowledged. Ops are appended in
    start order, so only the tail is scanned (a long run's history has ~10^5 ops)."""
    for op in reversed(history.ops):
        if op.t < t:
            return False
        if op.result == "ok":
            return True
    return False


def rss_mb() -> tuple[float, float]:
    """This process's resident memory now and at its peak (MiB): a long run's history
    must stay bounded (Linux: /proc/self/status; ru_maxrss is in KiB)."""
    now = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                now = int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return round(now, 1), round(peak, 1)


@dataclass
class Outcome:
    result: dict[str, Any]
    verdict: Verdict
    history_file: Path | None


async def run_scenario(scenario: Scenario, root: Path, seed: int) -> Outcome:
    """Boot the cluster, run workload + nemesis for :func:`duration_s`, heal, check."""
    started = time.monotonic()
    started_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"chaos scenario {scenario.name}: seed {seed} (CHAOS_SEED={seed} to replay)")
    rng = random.Random(seed)
    names = [f"n{i + 1}" for i in range(scenario.nodes)]
    spares = [f"n{scenario.nodes + i + 1}" for i in range(scenario.spares)]
    net: chaos_net.NetnsNetwork | None = None
    if scenario.network:
        net = chaos_net.NetnsNetwork([*names, *spares])
    hosts = ["localhost", "127.0.0.1", *(net.ip.values() if net else ())]
    certs = write_dev_certs(root / "certs", hosts=hosts)
    write_example_acl(root / "certs")
    server = certs["server"]
    files = ClusterFiles.from_dir(root / "certs")
    assert files.server_cert == server.cert_file
    tls = TLSConfig(certs["root"].cert_file, certs["root"].key_file, certs["root"].ca_file)
    history = History(seed=seed, scenario=scenario.name)
    cluster = ChaosCluster(root / "nodes", files, names, net, AGENT_ARGS, spares=spares)
    nemesis = Nemesis(
        cluster,
        tls,
        history,
        rng,
        scenario.kinds,
        hold_s=scenario.hold_s,
        gap_s=scenario.gap_s,
        opening=scenario.opening,
    )
    exit_codes: dict[str, int] = {}
    skipped: dict[str, str] = {}
    try:
        if net is not None:
            await asyncio.to_thread(net.setup)
            unavailable = {"loss": net.loss_unavailable, "delay": net.delay_unavailable}
            skipped = {k: why for k, why in unavailable.items() if why and k in scenario.kinds}
            for kind, why in skipped.items():
                print(f"chaos scenario {scenario.name}: nemesis {kind!r} skipped: {why}")
                history.event("nemesis-skipped", kind, why)
            nemesis.kinds = tuple(k for k in scenario.kinds if k not in skipped)
        logs = await _drive(
            cluster,
            tls,
            history,
            workload_rng=rng,
            nemesis=nemesis,
            fault_s=scenario.duration_s(),
            converge_s=scenario.converge_s,
        )
    except BaseException as exc:
        # no verdict without converged replicas: keep the history and the node logs anyway
        aborted = results_dir() / f"{scenario.name}-seed{seed}-history.json"
        error = f"{type(exc).__name__}: {exc}"
        aborted.write_text(json.dumps({"error": error, **history.to_json()}, indent=1))
        print(
            f"chaos scenario {scenario.name} aborted ({error}); seed {seed}; history in "
            f"{aborted}; node logs in {cluster.root}"
        )
        raise
    finally:
        await asyncio.to_thread(cluster.stop_all)
        for name, node in cluster.nodes.items():
            if node.proc is not None:
                exit_codes[name] = node.proc.returncode if node.proc.returncode is not None else 0
        if net is not None:
            await asyncio.to_thread(net.close)
    for name, code in exit_codes.items():
        if code != 0:
            history.crashes.append(f"{name} exited with {code} at the final SIGTERM")
    if scenario.start_aborts_are_crashes:
        for name in history.start_aborts:
            history.crashes.append(f"{name} died while starting its Serf agent (start abort)")
    verdict = check(history, logs)
    rss_now, rss_peak = rss_mb()
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "description": scenario.description,
        "nodes": len(cluster.names),
        "nodes_at_start": scenario.nodes,
        "membership_changes": nemesis.membership_changes,
        "network": "netns" if net is not None else "127.0.0.1",
        "seed": seed,
        "duration_s": scenario.duration_s(),
        "elapsed_s": round(time.monotonic() - started, 1),
        "nemeses": list(nemesis.kinds),
        "opening": list(scenario.opening),
        "skipped_nemeses": skipped,
        "loss_method": net.loss_method if net is not None else None,
        "fault_events": nemesis.faults,
        "fault_events_by_kind": dict(nemesis.by_kind.most_common()),
        "hold_s": list(scenario.hold_s),
        "gap_s": list(scenario.gap_s),
        "started_at": started_at,
        "history_ops": len(history.ops),
        "pytest_rss_mb": rss_now,
        "pytest_max_rss_mb": rss_peak,
        "start_aborts_known_bug": len(history.start_aborts),
        "passed": verdict.ok,
        "errors": dict(
            collections.Counter(op.error.split(":")[0] for op in history.ops if op.error)
        ),
        "timeline": [f"{e.t:7.2f} {e.op} {e.target} {e.detail}".rstrip() for e in history.nemesis],
        **verdict.to_json(),
    }
    out = results_dir()
    history_file: Path | None = None
    if not verdict.ok:
        history_file = out / f"{scenario.name}-seed{seed}-history.json"
        history_file.write_text(json.dumps({"verdict": result, **history.to_json()}, indent=1))
        result["history_file"] = str(history_file)
        for name in cluster.names:
            result.setdefault("node_logs", {})[name] = str(cluster.nodes[name].log_path)
    (out / f"{scenario.name}.json").write_text(json.dumps(result, indent=1))
    print(
        f"chaos scenario {scenario.name}: {nemesis.faults} faults, {verdict.acknowledged} "
        f"acknowledged, {verdict.lost} lost, {verdict.duplicated_client} client duplicates, "
        f"{verdict.duplicated_raw} raw duplicates, {verdict.divergent_replicas} divergent, "
        f"{verdict.linearizable_answered} linearizable reads answered, "
        f"{verdict.stale_reads} stale, "
        f"{verdict.crashes} crashes, {result['elapsed_s']} s (seed {seed})"
    )
    by_kind = ", ".join(f"{k} {n}" for k, n in nemesis.by_kind.most_common())
    print(
        f"chaos scenario {scenario.name}: fault events {nemesis.faults} ({by_kind}); "
        f"skipped: {sorted(skipped) or 'none'}; pytest RSS {rss_now} MiB (peak {rss_peak} MiB) "
        f"with {len(history.ops)} produce attempts in the history"
    )
    return Outcome(result, verdict, history_file)

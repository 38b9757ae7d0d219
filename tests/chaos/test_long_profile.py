"""The long profile's plumbing (issue 13, item 4), without running long: the profile
selects the long scenario with every nemesis at a pace that reaches 1,000 fault events in
1,800 s, the Makefile passes PROFILE and DURATION through, fault events are counted once
per injection, a node that died by itself is a crash even when the nemesis then kills it,
and the report puts the long run in its own table."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from support.chaos_harness import History, Nemesis
from support.chaos_run import REPO, results_dir

pytestmark = pytest.mark.chaos


def _load(name: str) -> ModuleType:
    """A module of this folder, by file (tests/ is no package; report.py is a script)."""
    spec = importlib.util.spec_from_file_location(f"long_profile_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HERE = Path(__file__).resolve().parent
report = _load("report")
test_scenarios = _load("test_scenarios")


def test_the_long_scenario_has_every_nemesis_and_a_pace_for_1000_faults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    long = test_scenarios.LONG
    assert set(long.kinds) == Nemesis.KINDS
    assert len(long.kinds) == len(Nemesis.KINDS)  # each kind equally likely
    assert long.network and long.spares == 1  # network nemeses; join-new has a node to add
    assert long.start_aborts_are_crashes
    # the nominal pace (mean hold + mean gap) leaves a quarter of 1,800 s for what a fault
    # costs besides (leader lookups, restarts, membership waits)
    mean = sum(long.hold_s) / 2 + sum(long.gap_s) / 2
    assert 1000 * mean <= 0.75 * 1800, mean
    # every other scenario keeps the default pace
    for other in (test_scenarios.PROCESS, test_scenarios.NETWORK, test_scenarios.MIXED):
        assert (other.hold_s, other.gap_s) == (Nemesis.HOLD_S, Nemesis.GAP_S)
    monkeypatch.setenv("CHAOS_PROFILE", "long")
    monkeypatch.setenv("CHAOS_DURATION", "1800")
    monkeypatch.delenv("CHAOS_RESULTS", raising=False)
    assert long.duration_s() == 1800
    assert results_dir() == REPO / ".build" / "chaos-long"
    short_timeout = test_scenarios.long_timeout_s()
    monkeypatch.setenv("CHAOS_DURATION", "3600")
    assert test_scenarios.long_timeout_s() > short_timeout + 1800
    assert short_timeout > 1800


def test_without_namespaces_the_long_run_keeps_every_other_nemesis() -> None:
    s = test_scenarios.long_scenario("no netns here")
    assert set(s.kinds) == Nemesis.KINDS - Nemesis.NETWORK and not s.network
    assert test_scenarios.long_scenario(None) is test_scenarios.LONG


def make_n(*args: str) -> str:
    out = subprocess.run(
        ["make", "-n", "chaos", *args], cwd=REPO, capture_output=True, text=True, check=True
    )
    return out.stdout


def test_make_chaos_passes_the_profile_and_duration() -> None:
    long = make_n("PROFILE=long", "DURATION=1500")
    assert "CHAOS_DURATION=1500 CHAOS_PROFILE=long" in long
    assert "tests/chaos/test_scenarios.py::test_long_run" in long
    assert "CHAOS_DURATION=1800 CHAOS_PROFILE=long" in make_n("PROFILE=long")
    full = make_n()  # as before: every scenario, 60 s each
    assert "CHAOS_DURATION=60 CHAOS_PROFILE=full" in full
    assert "test_long_run" not in full and "tests/chaos " in full


def test_the_long_run_is_skipped_outside_its_profile_and_says_how_to_run_it(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAOS_")}
    env["CHAOS_RESULTS"] = str(tmp_path)
    out = subprocess.run(
        [
            # the pytest script, not `python -m pytest`: that puts the repository on
            # sys.path, where cmd/ shadows the standard library's cmd
            *(str(Path(sys.executable).parent / "pytest"), "-rs", "-p", "no:cacheprovider"),
            *("-p", "no:xdist"),
            "tests/chaos/test_scenarios.py::test_long_run",
        ],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 skipped" in out.stdout
    assert "make chaos PROFILE=long DURATION=1800" in out.stdout


# -- fault events and crashes, against a fake cluster ------------------------------------------


@dataclass
class FakeProc:
    code: int | None = None

    def poll(self) -> int | None:
        return self.code


@dataclass
class FakeNode:
    proc: FakeProc = field(default_factory=FakeProc)
    stopped: bool = False


class FakeCluster:
    """What the nemesis uses of a ChaosCluster, for process faults only."""

    net = None

    def __init__(self, names: list[str], leader: str = "n1") -> None:
        self.names = list(names)
        self.spares: list[str] = []
        self.nodes = {n: FakeNode() for n in names}
        self.leader = leader
        self.signals: list[tuple[str, int]] = []
        self.restarts: list[str] = []

    def signal(self, name: str, sig: int) -> None:
        self.signals.append((name, sig))

    async def leader_views(self, tls: object) -> dict[str, str | None]:
        return dict.fromkeys(self.names, self.leader)

    async def kill(self, name: str) -> int:
        proc = self.nodes[name].proc
        if proc.code is None:
            proc.code = -signal.SIGKILL
        self.nodes[name].stopped = True
        return proc.code

    def wait_exit(self, name: str, timeout: float) -> int:
        self.nodes[name].stopped = True
        return self.nodes[name].proc.code or 0

    def start_aborted(self, name: str) -> bool:
        return False

    def restart(self, name: str) -> None:
        self.nodes[name] = FakeNode()
        self.restarts.append(name)


def nemesis(cluster: FakeCluster, opening: tuple[str, ...]) -> tuple[Nemesis, History]:
    history = History(seed=1, scenario="unit")
    n = Nemesis(
        cluster,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        history,
        random.Random(1),
        ("pause",),
        hold_s=(0.0, 0.0),
        gap_s=(0.0, 0.0),
        opening=opening,
    )
    return n, history


async def test_one_fault_event_per_injection_heals_and_restarts_not_counted() -> None:
    cluster = FakeCluster(["n1", "n2", "n3"])
    n, history = nemesis(cluster, ("pause", "kill", "pause-leader", "kill-minority", "join-new"))
    membership: list[str] = []

    async def fake_membership(kind: str) -> None:
        membership.append(kind)

    n._membership = fake_membership  # type: ignore[method-assign]
    await n.run(0.0)  # the opening only
    assert n.faults == 5
    assert n.by_kind == {
        "pause": 1,
        "kill": 1,
        "pause-leader": 1,
        "kill-minority": 1,
        "leave-rejoin": 1,  # join-new with no spare left is a leave-rejoin
    }
    assert membership == ["leave-rejoin"]
    ops = [e.op for e in history.nemesis]
    assert ops.count("resume") == 2 and ops.count("restart") == 2  # healed, not counted
    assert (cluster.leader, signal.SIGSTOP) in cluster.signals
    assert history.crashes == []


async def test_a_node_that_died_by_itself_is_a_crash_even_if_the_nemesis_kills_it() -> None:
    cluster = FakeCluster(["n1", "n2", "n3"], leader="n2")
    n, history = nemesis(cluster, ())
    cluster.nodes["n2"].proc.code = 1  # died between two checks
    await n.inject("kill-leader")
    assert history.crashes == ["n2 exited with 1 before the nemesis's SIGKILL"]
    await n.inject("kill-leader")  # the restarted n2, killed by the nemesis: no crash
    assert len(history.crashes) == 1 and cluster.restarts == ["n2", "n2"]
    # a node that exits on its own (even with status 0) between faults
    cluster.nodes["n3"].proc.code = 0
    n.check_crashes()
    assert history.crashes[1:] == ["n3 exited with 0"] and cluster.restarts[-1] == "n3"


# -- the report ------------------------------------------------------------------------------


def long_result(**over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "scenario": "long-3",
        "description": "every nemesis",
        "nodes": 4,
        "nodes_at_start": 3,
        "network": "netns",
        "seed": 42,
        "duration_s": 1500.0,
        "elapsed_s": 1620.5,
        "started_at": "2026-12-05 13:00 UTC",
        "nemeses": ["kill", "disk-eio"],
        "skipped_nemeses": {"delay": "no sch_netem"},
        "loss_method": "htb+bpf",
        "fault_events": 1234,
        "fault_events_by_kind": {"kill": 700, "disk-eio": 534},
        "hold_s": [0.3, 1.5],
        "gap_s": [0.05, 0.4],
        "membership_changes": 9,
        "pytest_rss_mb": 812.0,
        "pytest_max_rss_mb": 900.0,
        "passed": True,
        "errors": {},
        "attempted": 10,
        "acknowledged": 9,
        "acknowledged_raw": 3,
        "lost": 0,
        "duplicated_client": 0,
        "duplicated_raw": 0,
        "divergent_replicas": 0,
        "dirty_reads": 0,
        "out_of_order_reads": 0,
        "stale_reads": 0,
        "linearizable_reads": 5,
        "linearizable_answered": 4,
        "records_read": 20,
        "final_length": 10,
        "crashes": 0,
    }
    r.update(over)
    return r


def test_the_report_writes_the_long_run_into_its_own_table(tmp_path: Path) -> None:
    results = tmp_path / "chaos-long"
    results.mkdir()
    (results / "long-3.json").write_text(json.dumps(long_result()))
    doc = tmp_path / "reliability.md"
    doc.write_text(
        f"a\n{report.START}\nlast make chaos\n{report.END}\n"
        f"b\n{report.LONG_START}\nthe previous long run\n{report.LONG_END}\nc\n"
    )
    assert report.main(["report.py", str(results), str(doc)]) == 0
    text = doc.read_text()
    assert "last make chaos" in text  # the other run's table is left alone
    assert "the previous long run" not in text
    section = text.split(report.LONG_START)[1].split(report.LONG_END)[0]
    assert "`CHAOS_SEED=42 make chaos PROFILE=long DURATION=1500`" in section
    assert "| **1,234** |" in section and "kill 700, disk-eio 534" in section
    assert "delay: no sch_netem" in section and "| 3 → 4 |" in section
    assert "| pass |" in section
    (results / "long-3.json").write_text(
        json.dumps(long_result(lost=2, passed=False, problems=["acknowledged x is lost"]))
    )
    assert report.main(["report.py", str(results), str(doc)]) == 0
    assert (
        "| FAIL |" in doc.read_text() and "what failed: acknowledged x is lost" in doc.read_text()
    )

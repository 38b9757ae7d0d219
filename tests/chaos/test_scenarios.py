"""Jepsen-style scenarios: a real cluster of ``raftlog agent`` processes under faults.

Each scenario boots a cluster, runs producers (load-balancing client and raw single-node
calls) and consumers while a nemesis injects faults for ``CHAOS_DURATION`` seconds (10 in
``make test``: ``CI_FAULT_S``), heals everything, waits for the replicas to converge and
checks the history (support/chaos_checker.py). On failure the history and the nemesis timeline are
written to ``.build/chaos/<scenario>-seed<seed>-history.json`` and the seed is printed.
``CHAOS_PROFILE=full`` (``make chaos``) adds a 5-node scenario with every nemesis and a
disk-fault scenario. ``CHAOS_PROFILE=long`` (``make chaos PROFILE=long DURATION=1800``) runs
only ``long-3``: one cluster under a stream of every nemesis, held briefly, for
``CHAOS_DURATION`` seconds (issue 13, item 4: at least 1,000 fault events in one run).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from support.chaos_harness import Nemesis
from support.chaos_run import Scenario, duration_s, profile, run_scenario, seed_for

# boot + faults + heal + convergence + teardown, bounded whatever CHAOS_DURATION says
pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(240 + 2 * duration_s())]

#: How to run the long profile (the skip message elsewhere).
LONG_RUN = "make chaos PROFILE=long DURATION=1800 (CHAOS_PROFILE=long CHAOS_DURATION=1800)"

#: Seconds of random faults per scenario in ``make test`` (CHAOS_DURATION unset): a few
#: faults each, to keep the suite within its budget; ``make chaos`` runs DURATION.
CI_FAULT_S = 10.0

PROCESS = Scenario(
    "process-3",
    3,
    ("kill", "kill-leader", "pause", "pause-leader"),
    ci_duration_s=CI_FAULT_S,
    description="SIGKILL (random node or leader) + restart, SIGSTOP/SIGCONT; 127.0.0.1",
)
POWER = Scenario(
    "power-loss-3",
    3,
    ("power-loss", "power-loss", "kill-leader"),
    ci_duration_s=CI_FAULT_S,
    description="SIGKILL, files cut back to their last fsync (journaled), restart; 127.0.0.1",
)
MEMBERSHIP = Scenario(
    "membership-3",
    3,
    ("leave-rejoin", "leave-rejoin", "join-new", "kill-leader", "pause"),
    spares=1,
    opening=("leave-rejoin", "join-new"),
    # make test: only the opening (~20-30 s of leaving, rejoining, joining under load);
    # make chaos: the opening, then random picks for DURATION
    ci_duration_s=0,
    description="graceful leave (SIGTERM: hand-over, Serf leave, removed from Raft) and "
    "rejoin with the same or a wiped data dir, a 4th node joining mid-run, kills and pauses "
    "between; 127.0.0.1",
)
NETWORK = Scenario(
    "network-3",
    3,
    ("partition", "isolate-leader", "isolate-leader", "bridge", "slow", "flap", "loss", "delay"),
    network=True,
    opening=("loss",),  # random loss at least once in every run (it counts in the duration)
    ci_duration_s=CI_FAULT_S,
    description="majority/minority partitions, isolated leader, bridge, slow link, link "
    "flap, random packet loss, delay; one network namespace per node",
)
DISK = Scenario(
    "disk-3",
    3,
    ("disk-full", "disk-full-leader", "disk-eio", "disk-eio-leader", "kill-leader"),
    description="a node's disk full (writes fail ENOSPC; it must resume by itself) or "
    "failing (writes and fsyncs fail EIO; it stops, hands over, is restarted); 127.0.0.1 "
    "(make chaos only)",
)
MIXED = Scenario(
    "mixed-5",
    5,
    (
        "kill-minority",
        "kill-leader",
        "pause-leader",
        "power-loss-minority",
        "partition",
        "isolate-leader",
        "bridge",
        "slow",
        "flap",
        "loss",
        "delay",
        "leave-rejoin",
        "disk-full",
        "disk-eio-leader",
    ),
    network=True,
    description="5 nodes, every nemesis (make chaos only)",
)


#: Every nemesis the harness has: process, power loss, network, membership and disk.
EVERY_NEMESIS = (
    "kill",
    "kill-leader",
    "kill-minority",
    "pause",
    "pause-leader",
    "power-loss",
    "power-loss-minority",
    "partition",
    "isolate-leader",
    "bridge",
    "slow",
    "flap",
    "loss",
    "delay",
    "leave-rejoin",
    "join-new",
    "disk-full",
    "disk-full-leader",
    "disk-eio",
    "disk-eio-leader",
)
LONG = Scenario(
    "long-3",
    3,
    EVERY_NEMESIS,
    network=True,
    spares=1,
    # short holds and gaps, so that 1,000 fault events fit in 30 minutes. Measured here
    # (2026-12-05, 90-120 s trials): at 0.2-1.2 s / 0.02-0.2 s a fault took 1.0 s on
    # average, but a leave-rejoin 5-9 s (one pick in ten: join-new becomes one once the
    # spare joined; 24 s when the leave does not show in GetServers within 20 s), 33 a
    # minute, ~1,000 in 1,800 s: too close. At this pace ~1.45 s a fault, ~1,200. A killed
    # node still takes its restart's time to come back, whatever the hold.
    hold_s=(0.1, 1.0),
    gap_s=(0.0, 0.1),
    converge_s=300.0,
    start_aborts_are_crashes=True,
    description="one cluster under a stream of every nemesis (process, power loss, "
    "network, membership, disk), each held 0.1-1 s, 0-0.1 s apart; one network "
    "namespace per node (make chaos PROFILE=long only)",
)


def long_timeout_s() -> float:
    """pytest-timeout of the long run: boot, DURATION of faults (a fault in progress
    ends after it), heal, convergence over the whole log, the checker."""
    return 900 + 1.25 * duration_s()


@pytest.fixture(autouse=True)
def _only_the_long_run_in_the_long_profile(request: pytest.FixtureRequest) -> None:
    """CHAOS_PROFILE=long runs the long scenario alone (the others would each take
    CHAOS_DURATION)."""
    if profile() == "long" and request.node.originalname != "test_long_run":
        pytest.skip("CHAOS_PROFILE=long runs only test_long_run")


def explain(outcome_result: dict[str, object], problems: list[str]) -> str:
    lines = [
        f"scenario {outcome_result['scenario']} failed with seed {outcome_result['seed']} "
        f"(CHAOS_SEED={outcome_result['seed']} replays the schedule)",
        f"history and nemesis timeline: {outcome_result.get('history_file')}",
        f"node logs: {outcome_result.get('node_logs')}",
        *problems,
    ]
    return "\n".join(lines)


async def run_and_check(scenario: Scenario, tmp_path: Path) -> None:
    outcome = await run_scenario(scenario, tmp_path, seed_for(scenario.name))
    v = outcome.verdict
    assert outcome.result["fault_events"], "no fault injected"
    assert v.acknowledged > 50, f"too few acknowledged writes to judge: {outcome.result}"
    assert v.ok, explain(outcome.result, v.problems)
    # the client's retries reuse its producer id + sequence: no duplicate from either kind
    assert v.lost == v.wrong_offset == v.divergent_replicas == 0
    assert v.duplicated_client == v.duplicated_raw == 0
    assert v.dirty_reads == v.out_of_order_reads == v.crashes == v.invented == 0
    assert v.records_read > 0
    assert v.stale_reads == 0
    assert v.linearizable_answered > 0, "no linearizable read was answered"


async def test_process_faults(tmp_path: Path) -> None:
    await run_and_check(PROCESS, tmp_path)


async def test_power_loss(tmp_path: Path) -> None:
    await run_and_check(POWER, tmp_path)


async def test_membership_changes(tmp_path: Path) -> None:
    await run_and_check(MEMBERSHIP, tmp_path)


async def test_network_faults(tmp_path: Path, netns_unavailable: str | None) -> None:
    if netns_unavailable is not None:
        pytest.skip(netns_unavailable)
    await run_and_check(NETWORK, tmp_path)


async def test_disk_faults(tmp_path: Path) -> None:
    if profile() != "full":
        pytest.skip("the disk scenario runs in `make chaos` (CHAOS_PROFILE=full)")
    await run_and_check(DISK, tmp_path)


async def test_five_nodes_every_nemesis(tmp_path: Path, netns_unavailable: str | None) -> None:
    if profile() != "full":
        pytest.skip("5-node scenario runs in `make chaos` (CHAOS_PROFILE=full)")
    if netns_unavailable is not None:
        scenario = Scenario(
            "mixed-5",
            5,
            tuple(k for k in MIXED.kinds if k not in Nemesis.NETWORK),
            description=MIXED.description + f" ({netns_unavailable})",
        )
    else:
        scenario = MIXED
    await run_and_check(scenario, tmp_path)


def long_scenario(netns_unavailable: str | None) -> Scenario:
    """:data:`LONG`, or without the network nemeses where namespaces are unavailable."""
    if netns_unavailable is None:
        return LONG
    return dataclasses.replace(
        LONG,
        kinds=tuple(k for k in LONG.kinds if k not in Nemesis.NETWORK),
        network=False,
        description=LONG.description + f" ({netns_unavailable}: no network nemeses)",
    )


@pytest.mark.timeout(long_timeout_s())
async def test_long_run(tmp_path: Path, netns_unavailable: str | None) -> None:
    if profile() != "long":
        pytest.skip(f"the long run (every nemesis for DURATION seconds): {LONG_RUN}")
    await run_and_check(long_scenario(netns_unavailable), tmp_path)

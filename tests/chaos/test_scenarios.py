"""Jepsen-style scenarios: a real cluster of ``raftlog agent`` processes under faults.

Each scenario boots a cluster, runs producers (load-balancing client and raw single-node
calls) and consumers while a nemesis injects faults for ``CHAOS_DURATION`` seconds (10 in
``make test``: ``CI_FAULT_S``), heals everything, waits for the replicas to converge and
checks the history (support/chaos_checker.py). On failure the history and the nemesis timeline are
written to ``.build/chaos/<scenario>-seed<seed>-history.json`` and the seed is printed.
``CHAOS_PROFILE=full`` (``make chaos``) adds a 5-node scenario with every nemesis and a
disk-fault scenario.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.chaos_harness import Nemesis
from support.chaos_run import Scenario, duration_s, profile, run_scenario, seed_for

# boot + faults + heal + convergence + teardown, bounded whatever CHAOS_DURATION says
pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(240 + 2 * duration_s())]

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

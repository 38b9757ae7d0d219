"""A multi-partition chaos scenario: the chaos checker applied to every partition.

Three agents host a topic of 6 partitions at R3. Raw producers send unique values, one
Produce per value to a random node and a random partition, never retried, while a nemesis
SIGKILLs a random node (the controller's leader and partition leaders among them) and
restarts it. After healing, every replica of every partition is read whole and judged by
:func:`support.chaos_checker.check` on that partition's own history: 0 lost, 0 duplicated,
0 divergent, nothing invented, in each partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from pathlib import Path

import grpc
import pytest

from raftlog.agent.devcluster import DevCluster
from raftlog.api.admin.v1 import admin_pb2_grpc
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles
from raftlog.security.grpc_tls import grpc_channel_credentials
from support.chaos_checker import check
from support.chaos_harness import RAW_OPTIONS, History, Op, read_whole
from support.chaos_run import duration_s, seed_for
from support.cluster import new_cluster, start_cluster
from support.topics import create_topic, wait_placed
from support.wait import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(240 + 2 * duration_s())]

TOPIC = "chaos"
PARTITIONS = 6
#: Seconds of faults in ``make test`` (CHAOS_DURATION overrides, as for the other scenarios).
CI_FAULT_S = 12.0


def _channel(c: DevCluster, name: str) -> grpc.aio.Channel:
    assert c.client_tls is not None
    return grpc.aio.secure_channel(
        c.nodes[name].rpc_addr, grpc_channel_credentials(c.client_tls), options=RAW_OPTIONS
    )


async def _producer(
    c: DevCluster,
    worker: str,
    histories: dict[int, History],
    rng: random.Random,
    stop: asyncio.Event,
) -> None:
    names = list(c.nodes)
    channels = {n: _channel(c, n) for n in names}
    try:
        i = 0
        while not stop.is_set():
            name = rng.choice(names)
            partition = rng.randrange(PARTITIONS)
            history = histories[partition]
            op = Op(history.now(), f"raw-{worker}@{name}", f"{worker}-{i}")
            i += 1
            history.ops.append(op)
            stub = log_pb2_grpc.LogStub(channels[name])  # type: ignore[no-untyped-call]
            try:
                r = await stub.Produce(
                    log_pb2.ProduceRequest(
                        record=log_pb2.Record(value=op.value.encode()),
                        topic=TOPIC,
                        partition=partition,
                    ),
                    timeout=2.0,
                )
                op.offset, op.result = r.offset, "ok"
            except grpc.aio.AioRpcError as exc:
                op.error = f"{exc.code().name}: {exc.details()}"[:200]
                await asyncio.sleep(0.05)
            await asyncio.sleep(rng.uniform(0, 0.01))
    finally:
        for ch in channels.values():
            await ch.close()


async def _nemesis(c: DevCluster, rng: random.Random, seconds: float, log: list[str]) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(rng.uniform(1.0, 2.5))
        victim = rng.choice(list(c.nodes))
        c.signal(victim, signal.SIGKILL)
        await asyncio.to_thread(c.wait_exit, victim, 10.0)
        log.append(f"kill {victim}")
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        others = [n.gossip_addr for n in c.nodes.values() if n.name != victim and n.running]
        c.start(victim, join=others)
        log.append(f"restart {victim}")


async def _ends(c: DevCluster, partition: int) -> dict[str, int]:
    """Each node's next offset of ``partition`` (nodes that do not answer are left out)."""
    found: dict[str, int] = {}
    for name in c.nodes:
        async with _channel(c, name) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            with contextlib.suppress(grpc.aio.AioRpcError):
                o = await stub.GetOffsets(
                    log_pb2.GetOffsetsRequest(topic=TOPIC, partition=partition), timeout=2
                )
                found[name] = o.next_offset
    return found


async def test_partitions_under_kills_lose_nothing_duplicate_nothing_and_agree(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    seed = seed_for("partitions-3")
    rng = random.Random(seed)
    seconds = duration_s() if "CHAOS_DURATION" in os.environ else CI_FAULT_S
    c = new_cluster(tmp_path, dev_certs)
    try:
        await start_cluster(c)
        async with _channel(c, "n1") as ch:
            admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
            await create_topic(admin, TOPIC, PARTITIONS, attempt_timeout=30)
            # 3 voters and a leader each before the faults: a partition still growing from
            # the replicas it was made with may have 2 voters and lose its majority to a kill
            await wait_placed(admin, TOPIC)

        histories = {p: History(seed, f"partitions-3/p{p}") for p in range(PARTITIONS)}
        stop = asyncio.Event()
        producers = [
            asyncio.create_task(_producer(c, f"w{k}", histories, random.Random(seed + k), stop))
            for k in range(3)
        ]
        events: list[str] = []
        try:
            await _nemesis(c, rng, seconds, events)
            await asyncio.sleep(1.0)  # writes after the last restart, on a healed cluster
        finally:
            stop.set()
            await asyncio.gather(*producers)

        for partition in range(PARTITIONS):
            stable: list[dict[str, int]] = []

            async def converged(p: int = partition, seen: list[dict[str, int]] = stable) -> bool:
                ends = await _ends(c, p)
                seen.append(ends)
                return (
                    len(ends) == len(c.nodes)
                    and len(set(ends.values())) == 1
                    and len(seen) >= 2
                    and seen[-2] == ends
                )

            await wait_until(
                converged, timeout=60, what=f"partition {partition}'s replicas converged"
            )
            end = stable[-1]
            logs: dict[str, list[str]] = {}
            for n in c.nodes:
                async with _channel(c, n) as ch:
                    logs[n] = await read_whole(
                        ch, end[n], time.monotonic() + 30, topic=TOPIC, partition=partition
                    )
            verdict = check(histories[partition], logs)
            assert verdict.ok, (seed, partition, events, verdict.problems)
            assert verdict.acknowledged > 0, (partition, events)
            print(
                f"partition {partition}: {verdict.acknowledged} acknowledged of "
                f"{verdict.attempted}, {verdict.final_length} in the log; faults {events}"
            )
    finally:
        c.stop_all()

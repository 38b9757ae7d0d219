"""Partitions: produce throughput of one 3-node cluster with 1, 3 and 12 partitions.

Three `raftlog agent` processes (real Serf, the mux, mutual TLS, --sync interval by
default). Three topics are created through the admin API: p1 (1 partition), p3 (3) and
p12 (12), all R3. Once every partition has a leader and leadership is spread (each node
hands partitions to their preferred leaders), each topic is measured in turn, the three in
alternating order for --rounds rounds: one ProduceStream per partition, to its leader
(GetPartitions), 100 B records, --batch per message, under two loads: the same records in
flight overall (--window records split over the partitions, at least one message each:
each partition's Raft rounds carry fewer records) and the same records in flight on each
partition (--window per partition: the load grows with the partitions, as it does when
more producers use more partitions). The figure is the aggregate records/s of the topic
(median of the rounds) and the nodes' CPU µs per record.

Printed: each topic's records/s and its ratio to p1 (issue 17's goal: p12 >= 0.9x p1),
CPU per record, and how many partitions each node leads (the bound: ceil(T/N) + 1 for T
partitions, the default topic's included, on N nodes). Idle CPU (issue 17's goal: < 10 %
of a core per node): on a fresh cluster (after a load, every replica spends the next
minute computing the checkpoint hashes of the records it wrote: work, not idleness), the
same topics plus one of --idle-partitions partitions (100), each node's CPU over
--idle-seconds with no traffic, once every replica has caught up and leaders settled.

What the figures mean here: this machine has 2 cores for 3 nodes and the client, so one
partition's leader already competes with the followers and the client for CPU; more
partitions add parallel leaders but no CPU, and their cost shows as the ratio. With one core
per node, a partition's leader is one event loop on one core: 12 partitions spread over 3
leaders would use all three cores instead of one, and the aggregate would grow towards
3x p1 (docs/partitions.md, "Throughput").
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_grpc
from bench_cluster import cluster_cpu_s, start_cluster

from raftlog.agent.devcluster import DevCluster
from raftlog.api.admin.v1 import admin_pb2, admin_pb2_grpc
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import TLSConfig

TOPICS = (("p1", 1), ("p3", 3), ("p12", 12))
#: The default topic's one partition (group "" on the wire, no envelope) runs the same
#: produce as a reference: p1 should match it.
DEFAULT = ("default", 1)


async def create_topics(cluster: DevCluster, tls: TLSConfig) -> None:
    async with cluster.channel("n1", tls) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
        for name, partitions in TOPICS:
            await admin.CreateTopic(
                admin_pb2.CreateTopicRequest(
                    name=name, settings=admin_pb2.TopicSettings(partitions=partitions)
                ),
                timeout=30,
            )


async def leaders(cluster: DevCluster, tls: TLSConfig, topic: str) -> list[str]:
    """Each partition's leader address ("" while unknown)."""
    async with cluster.channel("n1", tls) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        r = await stub.GetPartitions(log_pb2.GetPartitionsRequest(topic=topic), timeout=10)
    return [p.leader_addr for p in sorted(r.infos, key=lambda p: p.partition)]


async def spread(
    cluster: DevCluster,
    tls: TLSConfig,
    wait_s: float,
    topics: tuple[tuple[str, int], ...] = TOPICS,
) -> dict[str, int]:
    """Wait (up to ``wait_s``) until every partition of the default topic and ``topics``
    has a leader and no node leads more than ceil(T/N) + 1 of those T partitions;
    partitions led per node address."""
    total = 1 + sum(p for _, p in topics)
    bound = math.ceil(total / len(cluster.nodes)) + 1
    loop = asyncio.get_running_loop()
    end = loop.time() + wait_s
    counts: collections.Counter[str] = collections.Counter()
    while True:
        counts = collections.Counter()
        for topic in ("", *(t for t, _ in topics)):
            counts.update(await leaders(cluster, tls, topic))
        if "" not in counts and max(counts.values()) <= bound:
            return dict(counts)
        if loop.time() > end:
            print(f"  leaders not spread within {wait_s} s: {dict(counts)}", file=sys.stderr)
            return dict(counts)
        await asyncio.sleep(0.5)


async def produce(
    cluster: DevCluster,
    tls: TLSConfig,
    topic: str,
    partitions: int,
    args: argparse.Namespace,
    *,
    shared: bool,
    scale: int = 1,
) -> tuple[float, float]:
    """(records/s, node CPU µs per record) of one run on ``topic``: with ``shared``,
    ``scale`` x --window records in flight overall (split over the partitions, at least one
    message each); else --window records in flight on each partition."""
    addrs = await leaders(cluster, tls, "" if topic == DEFAULT[0] else topic)
    by_addr = {n.rpc_addr: name for name, n in cluster.nodes.items()}
    channels = {a: cluster.channel(by_addr[a], tls) for a in set(addrs)}
    messages = max(1, scale * args.window // args.batch)
    per_partition = max(1, messages // partitions) if shared else messages
    try:
        stubs = [log_pb2_grpc.LogStub(channels[a]) for a in addrs]  # type: ignore[no-untyped-call]
        for p, stub in enumerate(stubs):  # warm up every stream's connection
            if topic != DEFAULT[0]:
                await bench_grpc.produce_stream(stub, 100, 1, 0.1, 10, 1, topic=topic, partition=p)
        cpu = cluster_cpu_s(cluster)
        runs = await asyncio.gather(
            *(
                bench_grpc.produce_stream(
                    stub,
                    100,
                    args.batch,
                    args.duration,
                    args.max_records // partitions,
                    per_partition,
                    topic="" if topic == DEFAULT[0] else topic,
                    partition=None if topic == DEFAULT[0] else p,
                )
                for p, stub in enumerate(stubs)
            )
        )
        cpu = cluster_cpu_s(cluster) - cpu
    finally:
        for ch in channels.values():
            await ch.close()
    records = sum(n for n, _, _ in runs)
    seconds = max(el for _, el, _ in runs)
    return records / seconds, cpu / records * 1e6


MODES = (
    ("shared", "same records in flight overall"),
    ("each", "same records in flight per partition"),
)


def node_cpu_s(cluster: DevCluster) -> dict[str, float]:
    """CPU seconds (user + system) each agent process has used (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for name, node in cluster.nodes.items():
        if node.proc is not None:
            stat = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            found[name] = (int(stat[11]) + int(stat[12])) / tick
    return found


async def no_lag(cluster: DevCluster, tls: TLSConfig, timeout_s: float) -> bool:
    """Wait (up to ``timeout_s``) until every replica of every topic is at its leader's
    next offset (DescribeTopic's lag); whether they all are."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    names = ["default", *(t for t, _ in TOPICS)]
    async with cluster.channel("n1", tls) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
        while loop.time() < end:
            lagging = 0
            for name in names:
                d = await admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name=name), timeout=10)
                lagging += sum(1 for p in d.partitions for r in p.replicas if r.lag)
            if not lagging:
                return True
            await asyncio.sleep(1.0)
    return False


async def create_idle_topic(cluster: DevCluster, tls: TLSConfig, partitions: int) -> None:
    """The idle topic: ``partitions`` partitions at R3 that take no writes."""
    async with cluster.channel("n1", tls) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]
        await admin.CreateTopic(
            admin_pb2.CreateTopicRequest(
                name="idle", settings=admin_pb2.TopicSettings(partitions=partitions)
            ),
            timeout=120,
        )


async def idle_cpu(
    cluster: DevCluster, tls: TLSConfig, args: argparse.Namespace
) -> dict[str, float]:
    """Once every replica has caught up, let the cluster settle, then measure each node's
    CPU over --idle-seconds with no traffic: percent of one core."""
    # followers that fell behind during the load catch up first (that is work, not idleness)
    caught_up = await no_lag(cluster, tls, args.idle_catch_up)
    print(f"  replicas caught up: {caught_up}", file=sys.stderr)
    await asyncio.sleep(args.idle_settle)  # elections, leader hand-overs, then quiet
    before, t0 = node_cpu_s(cluster), time.monotonic()
    await asyncio.sleep(args.idle_seconds)
    after, elapsed = node_cpu_s(cluster), time.monotonic() - t0
    return {n: (after[n] - before[n]) / elapsed * 100 for n in before}


def render(
    rates: dict[tuple[str, str], list[float]],
    cpu: dict[tuple[str, str], list[float]],
    led: dict[str, int],
) -> str:
    lines = [
        "| topic | partitions | load | records/s (median) | vs p1 | node CPU µs/record |",
        "|---|---|---|---|---|---|",
    ]
    for mode, label in MODES:
        base = statistics.median(rates[("p1", mode)])
        for name, partitions in (DEFAULT, *TOPICS):
            if mode == "each" and name == DEFAULT[0]:
                continue
            rate = statistics.median(rates[(name, mode)])
            lines.append(
                f"| {name} | {partitions} | {label} | {rate:,.0f} | {rate / base:.2f}x | "
                f"{statistics.median(cpu[(name, mode)]):.1f} |"
            )
    most = max(p for _, p in TOPICS)
    saturated = statistics.median(rates[("p1", "saturated")])
    top = statistics.median(rates[(f"p{most}", "each")])
    lines.append("")
    lines.append(
        f"p1 with {most} x --window records in flight (as many as p{most} per partition has in "
        f"all): {saturated:,.0f} records/s; p{most} per partition / this: "
        f"{top / saturated:.2f}x"
    )
    total = 1 + sum(p for _, p in TOPICS)
    lines.append("")
    lines.append(
        f"partitions led per node ({total} partitions, bound ceil({total}/3)+1 = "
        f"{math.ceil(total / 3) + 1}): " + ", ".join(f"{a}: {n}" for a, n in sorted(led.items()))
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per produce run")
    ap.add_argument("--max-records", type=int, default=600_000, help="cap per produce run")
    ap.add_argument("--window", type=int, default=1000, help="records in flight, overall")
    ap.add_argument("--batch", type=int, default=100, help="records per batch message")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per topic")
    ap.add_argument("--sync", default="interval", help="the agents' --sync")
    ap.add_argument("--spread-wait", type=float, default=30.0, help="seconds to wait for leaders")
    ap.add_argument("--idle-partitions", type=int, default=100, help="partitions of the idle topic")
    ap.add_argument("--idle-settle", type=float, default=15.0, help="seconds before measuring")
    ap.add_argument(
        "--idle-catch-up", type=float, default=120.0, help="seconds to wait for lagging replicas"
    )
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="seconds measured idle")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args, _unknown = ap.parse_known_args()
    keys = [(name, mode) for mode, _ in MODES for name, _ in (DEFAULT, *TOPICS)]
    keys.append(("p1", "saturated"))
    rates: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    cpu: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    with tempfile.TemporaryDirectory(prefix="bench-partitions-") as tmp:
        print(f"3-node cluster, sync={args.sync}", file=sys.stderr)
        cluster, tls = start_cluster(Path(tmp), args.sync)
        try:

            async def run() -> dict[str, int]:
                await create_topics(cluster, tls)
                led = await spread(cluster, tls, args.spread_wait)
                for r in range(args.rounds):
                    order = (DEFAULT, *TOPICS)
                    if r % 2:
                        order = order[::-1]
                    for mode, _ in MODES:
                        for name, partitions in order:
                            if mode == "each" and name == DEFAULT[0]:
                                continue  # the same run as "shared" for one partition
                            rate, us = await produce(
                                cluster, tls, name, partitions, args, shared=mode == "shared"
                            )
                            rates[(name, mode)].append(rate)
                            cpu[(name, mode)].append(us)
                            print(
                                f"  {name} ({mode}): {rate:,.0f} records/s, {us:.1f} µs/record",
                                file=sys.stderr,
                            )
                    # one partition under as much load as the most partitioned topic gets
                    most = max(p for _, p in TOPICS)
                    rate, us = await produce(cluster, tls, "p1", 1, args, shared=True, scale=most)
                    rates[("p1", "saturated")].append(rate)
                    cpu[("p1", "saturated")].append(us)
                    print(f"  p1 (x{most} in flight): {rate:,.0f} records/s", file=sys.stderr)
                return led

            led = asyncio.run(run())
        finally:
            cluster.stop_all()
    idle: dict[str, float] = {}
    idle_led: dict[str, int] = {}
    if args.idle_partitions:
        # A fresh cluster: after the load, every replica spends the next minute computing
        # the checkpoint hashes of the records it wrote (docs/partitions.md), which is work.
        with tempfile.TemporaryDirectory(prefix="bench-partitions-idle-") as tmp:
            print("idle: a fresh 3-node cluster", file=sys.stderr)
            cluster, tls = start_cluster(Path(tmp), args.sync)
            try:

                async def idle_run() -> None:
                    await create_topics(cluster, tls)
                    await create_idle_topic(cluster, tls, args.idle_partitions)
                    every = (*TOPICS, ("idle", args.idle_partitions))
                    idle.update(await idle_cpu(cluster, tls, args))
                    idle_led.update(await spread(cluster, tls, args.spread_wait, every))

                asyncio.run(idle_run())
            finally:
                cluster.stop_all()
    print(render(rates, cpu, led))
    total = 1 + sum(p for _, p in TOPICS) + args.idle_partitions
    if idle:
        print(
            f"idle, {total} partitions at R3 on a fresh 3-node cluster "
            "(goal < 10 % of a core each): "
            + ", ".join(f"{n}: {pct:.1f} %" for n, pct in sorted(idle.items()))
        )
        print(
            f"  partitions led per node there ({total} partitions, bound "
            f"ceil({total}/3)+1 = {math.ceil(total / 3) + 1}): "
            + ", ".join(f"{a}: {n}" for a, n in sorted(idle_led.items()))
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rates": {f"{n}/{m}": v for (n, m), v in rates.items()},
                    "cpu_us": {f"{n}/{m}": v for (n, m), v in cpu.items()},
                    "leaders": led,
                    "idle_cpu_percent": idle,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

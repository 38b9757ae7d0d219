"""Single-record ProduceStream on 3 nodes, with the CPU split: who is the bottleneck.

Starts a 3-agent cluster (``bench_cluster.start_cluster``, ``--sync`` as given), then runs
``bench_grpc.produce_stream`` against the leader: one 100 B record per message, ``--window``
messages in flight on one stream, for ``--duration`` seconds. Prints records/s and the CPU
seconds used during the run by this (client) process and by each agent process, per second
of run and per record. On a 2-core machine the sum of the CPU shares is at most 2.

    .venv/bin/python bench/bench_stream_x1.py --duration 3 --sync always
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_cluster
import bench_grpc

from raftlog.agent.devcluster import DevCluster
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import TLSConfig


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


def threads_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid`` by thread name (threads of one name summed)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def agents_cpu(cluster: DevCluster) -> dict[str, float]:
    return {
        name: proc_cpu_s(node.proc.pid)
        for name, node in cluster.nodes.items()
        if node.proc is not None and node.proc.poll() is None
    }


async def run(cluster: DevCluster, tls: TLSConfig, args: argparse.Namespace) -> dict[str, object]:
    leader = await bench_cluster.leader_of(cluster, tls)
    async with cluster.channel(leader, tls) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        await stub.GetOffsets(log_pb2.GetOffsetsRequest(), wait_for_ready=True, timeout=10)
        # warm up the stream path (and the connection) before the clock starts
        await bench_grpc.produce_stream(stub, args.size, 1, 0.5, 20_000, args.window)
        spy = None
        if args.profile_leader:  # py-spy (not a project dependency) samples the leader
            node = cluster.nodes[leader]
            assert node.proc is not None
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-r",
                    "200",
                    "--gil",
                    "-d",
                    str(int(args.duration)),
                    "-f",
                    "raw",
                    "-o",
                    args.profile_leader,
                    "-p",
                    str(node.proc.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        leader_pid = cluster.nodes[leader].proc.pid  # type: ignore[union-attr]
        threads_before = threads_cpu_s(leader_pid)
        before, client_before = agents_cpu(cluster), time.process_time()
        n, elapsed, _ = await bench_grpc.produce_stream(
            stub, args.size, 1, args.duration, args.max_records, args.window
        )
        after, client_after = agents_cpu(cluster), time.process_time()
        threads_after = threads_cpu_s(leader_pid)
        if spy is not None:
            spy.wait(30)
    cpu = {
        f"agent {name}" + (" (leader)" if name == leader else ""): after[name] - before[name]
        for name in after
    }
    cpu["client"] = client_after - client_before
    return {
        "records": n,
        "seconds": elapsed,
        "records/s": n / elapsed,
        "cpu share (cores)": {k: v / elapsed for k, v in cpu.items()},
        "cpu us/record": {k: v / max(n, 1) * 1e6 for k, v in cpu.items()},
        "leader threads (cores)": {
            k: (v - threads_before.get(k, 0.0)) / elapsed
            for k, v in sorted(threads_after.items())
            if v - threads_before.get(k, 0.0) > 0.005 * elapsed
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--sync", default="always")
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--window", type=int, default=1000)
    p.add_argument("--max-records", type=int, default=300_000)
    p.add_argument(
        "--profile-leader",
        metavar="FILE",
        help="sample the leader with py-spy (on PATH) into FILE (collapsed stacks)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args, _unknown = p.parse_known_args()  # bench/run.py passes its own
    with tempfile.TemporaryDirectory(prefix="raftlog-x1-") as tmp:
        cluster, tls = bench_cluster.start_cluster(Path(tmp), args.sync)
        try:
            result = asyncio.run(run(cluster, tls, args))
        finally:
            cluster.stop_all()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"x1 {args.size} B, window {args.window}, sync {args.sync}: "
        f"{result['records']:,} records in {result['seconds']:.2f} s = "
        f"{result['records/s']:,.0f} records/s"
    )
    shares: dict[str, float] = result["cpu share (cores)"]  # type: ignore[assignment]
    per: dict[str, float] = result["cpu us/record"]  # type: ignore[assignment]
    for name, share in shares.items():
        print(f"  {name:20} {share:5.2f} cores  {per[name]:7.1f} us CPU/record")
    threads: dict[str, float] = result["leader threads (cores)"]  # type: ignore[assignment]
    print("  leader threads: " + ", ".join(f"{k} {v:.2f}" for k, v in threads.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

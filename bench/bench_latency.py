"""The latency budget of one acknowledged write (issue 16): where a unary Produce's time goes.

For 1 node (a one-member Raft cluster) and for 3 nodes, every `raftlog agent` process
started with `--sync always --latency-budget --metrics-addr` (debug tracing of every unary
Produce, raftlog.telemetry.budget), it sends --ops unary Produce calls of 100 B one at a
time to the leader, from a grpc.aio client in this process over mutual TLS through the
node's mux port (as a user's client does), after a warm-up. Then it reads each node's
`/debug/latency` and prints p50/p99 of every stage, next to the client's own latency.

"outside the server" is the client's p50 minus the server's p50 (client stack, TLS, the
kernel and the mux relay, both ways); the other rows are measured inside the nodes.
Unknown arguments are ignored (bench/run.py passes its own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

import bench_cluster
import bench_grpc

from raftlog.agent.devcluster import DevCluster
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import TLSConfig
from raftlog.telemetry.budget import STAGES

#: Leader stages in path order, then the followers' own.
LEADER_ROWS = [s for s in STAGES if not s.startswith("follower_")]
FOLLOWER_ROWS = [s for s in STAGES if s.startswith("follower_")]


def start(root: Path, nodes: int, sync: str) -> tuple[DevCluster, TLSConfig, dict[str, str]]:
    """The cluster (bench_cluster.start_cluster with the budget on) and each node's
    metrics listener (name -> HOST:PORT)."""
    cluster, tls = bench_cluster.start_cluster(root, sync, nodes=nodes, budget=True)
    http = {name: node.extra[1] for name, node in cluster.nodes.items()}
    return cluster, tls, http


def budget_of(addr: str, reset: bool = False) -> dict[str, dict[str, float]]:
    url = f"http://{addr}/debug/latency" + ("?reset=1" if reset else "")
    with urllib.request.urlopen(url, timeout=10) as resp:
        stages: dict[str, dict[str, float]] = json.load(resp)["stages"]
        return stages


async def measure(
    cluster: DevCluster, tls: TLSConfig, http: dict[str, str], args: argparse.Namespace
) -> dict[str, object]:
    members = len(cluster.nodes)
    leader = await cluster.wait_for(tls, members=members, timeout_s=30)
    async with cluster.channel(leader, tls) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        await stub.GetOffsets(log_pb2.GetOffsetsRequest(), wait_for_ready=True, timeout=10)
        await bench_grpc.unary_latency(stub, 200, 10.0)  # warm-up (plus its own 50)
        for addr in http.values():
            budget_of(addr, reset=True)
        lat = await bench_grpc.unary_latency(stub, args.ops, args.seconds)
    client = {
        "count": float(len(lat)),
        "p50_ms": bench_grpc.pct(lat, 0.5) * 1e3,
        "p99_ms": bench_grpc.pct(lat, 0.99) * 1e3,
        "mean_ms": sum(lat) / len(lat) * 1e3,
    }
    followers = [n for n in http if n != leader]
    return {
        "client": client,
        "leader": budget_of(http[leader]),
        "followers": [budget_of(http[n]) for n in followers],
    }


def render(results: dict[int, dict[str, object]]) -> str:
    cols = sorted(results)
    head = f"{'stage (ms)':16}" + "".join(f"{f'{n} node(s) p50':>15}{'p99':>8}" for n in cols)
    lines = ["latency budget of one unary Produce (100 B, --sync always)", head]

    def cell(fig: dict[str, float] | None) -> str:
        if not fig:
            return f"{'-':>15}{'-':>8}"
        return f"{fig['p50_ms']:>15.3f}{fig['p99_ms']:>8.3f}"

    def row(name: str, pick: object) -> None:
        lines.append(f"{name:16}" + "".join(cell(pick(results[n])) for n in cols))  # type: ignore[operator]

    row("client", lambda r: r["client"])
    for stage in LEADER_ROWS:
        row(stage, lambda r, s=stage: r["leader"].get(s))
    for stage in FOLLOWER_ROWS:
        row(stage, lambda r, s=stage: r["followers"][0].get(s) if r["followers"] else None)
    outside = []
    for n in cols:
        c, s = results[n]["client"], results[n]["leader"].get("server")  # type: ignore[index,union-attr]
        outside.append(f"{c['p50_ms'] - s['p50_ms']:>15.3f}{'':>8}" if s else f"{'-':>23}")  # type: ignore[index]
    lines.append(f"{'outside server':16}" + "".join(outside))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=2000, help="unary calls measured per cluster")
    ap.add_argument("--seconds", type=float, default=20.0, help="longest measured run")
    ap.add_argument("--nodes", default="1,3", help="cluster sizes, comma list")
    ap.add_argument("--sync", default="always")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args, _unknown = ap.parse_known_args()
    results: dict[int, dict[str, object]] = {}
    for n in [int(x) for x in args.nodes.split(",") if x]:
        with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
            print(f"{n}-node cluster, sync={args.sync}", file=sys.stderr, flush=True)
            cluster, tls, http = start(Path(tmp), n, args.sync)
            try:
                results[n] = asyncio.run(measure(cluster, tls, http, args))
            finally:
                cluster.stop_all()
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Client produce throughput with automatic batching, beside JetStream's publish_async.

What it measures: ``--concurrency`` (default 1000) coroutines each awaiting
``LogClient.produce()`` of a ``--size`` (default 100 B) record in a loop, for ``--duration``
seconds after a 1 s warm-up; the client coalesces the concurrent calls into batch Produce
requests (linger 2 ms, up to 1000 records or 1 MiB per batch, 4 batches in flight: the
ClientConfig defaults). Records/s counts acknowledged records only, timed from the first
call to the last answer; the same shape as JetStream's "append" figure (a window of 1000
unacknowledged publish_async).

Targets, each a `raftlog agent` process set with mutual TLS and the ACL on 127.0.0.1:
a single node, and a 3-node cluster (Serf, mux, Raft; the client sends to the leader).
The nodes run with ``--sync`` (default "always": fsynced before the ack, group commit);
JetStream 2.9 acknowledges from the page cache (``--sync interval`` is our comparable mode).

JetStream R1 and R3 (`../shared/bench/peers/bench_jetstream.py`, one repeat, same sizes)
run in the same invocation; ratios = ours / JetStream. Skip them with --skip-peers, the
cluster with --skip-cluster. Unknown arguments are ignored (bench/run.py passes its own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _peers
from bench_grpc import Node

from raftlog.agent.devcluster import ClusterFiles, DevCluster
from raftlog.auth import write_example_acl
from raftlog.client import ClientConfig, LogClient
from raftlog.security import TLSConfig, write_dev_certs


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def load(
    client: LogClient, size: int, concurrency: int, seconds: float, max_records: int
) -> dict[str, float]:
    """Run ``concurrency`` produce() loops for ``seconds``; the figures of the run."""
    payload = os.urandom(size)
    acked = 0
    latencies: list[float] = []
    rpcs_before = client.stats.produce_requests
    start = time.perf_counter()
    stop_at = start + seconds
    cpu_before = time.process_time()

    async def worker(k: int) -> None:
        nonlocal acked
        n = 0
        while acked < max_records and time.perf_counter() < stop_at:
            t = time.perf_counter()
            await client.produce(payload)
            if n % 16 == k % 16:  # sample latencies (1 in 16), not to time the timer
                latencies.append(time.perf_counter() - t)
            acked += 1
            n += 1

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    rpcs = client.stats.produce_requests - rpcs_before
    return {
        "records/s": acked / elapsed,
        "records": acked,
        "seconds": elapsed,
        "records per Produce RPC": acked / max(rpcs, 1),
        "produce() p50 ms": pct(latencies, 0.5) * 1e3,
        "produce() p99 ms": pct(latencies, 0.99) * 1e3,
        "client CPU %": (time.process_time() - cpu_before) / elapsed * 100,
    }


async def measure(addrs: list[str], tls: TLSConfig, args: argparse.Namespace) -> dict[str, float]:
    config = ClientConfig(request_timeout_s=60.0, attempt_timeout_s=10.0)
    async with LogClient(addrs, tls=tls, config=config) as client:
        await load(client, args.size, args.concurrency, 1.0, args.max_records)  # warm-up
        figures = await load(client, args.size, args.concurrency, args.duration, args.max_records)
    print(
        f"    {figures['records']:,.0f} records in {figures['seconds']:.2f} s = "
        f"{figures['records/s']:,.0f}/s, {figures['records per Produce RPC']:.0f}/RPC, "
        f"client CPU {figures['client CPU %']:.0f}%",
        file=sys.stderr,
    )
    return figures


def single_node(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        node = Node(Path(tmp), args.sync)
        try:
            print(f"  single node at {node.addr} (sync={args.sync})", file=sys.stderr)
            files = node.client
            tls = TLSConfig(files.cert_file, files.key_file, files.ca_file)
            return asyncio.run(measure([node.addr], tls, args))
        finally:
            node.stop()


def cluster(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-client-cluster-") as tmp:
        root = Path(tmp)
        certs = write_dev_certs(root / "certs")
        write_example_acl(root / "certs")
        c = DevCluster(
            root,
            ClusterFiles.from_dir(root / "certs"),
            agent_args=("--serf-profile", "local", "--sync", args.sync, "--log-level", "warning"),
        )
        files = certs["root"]
        tls = TLSConfig(files.cert_file, files.key_file, files.ca_file)
        for name in ("n1", "n2", "n3"):
            c.add_node(name)
        try:
            c.start("n1", bootstrap=True)
            asyncio.run(c.wait_for(tls, members=1, timeout_s=30))
            c.start("n2")
            c.start("n3")
            leader = asyncio.run(c.wait_for(tls, members=3, timeout_s=60))
            print(f"  3-node cluster, leader {leader} (sync={args.sync})", file=sys.stderr)
            return asyncio.run(measure([n.rpc_addr for n in c.nodes.values()], tls, args))
        finally:
            c.stop_all()


def render(
    ours: dict[str, dict[str, float]], js: dict[str, dict[str, float]], args: argparse.Namespace
) -> str:
    lab = f"{args.size} B" if args.size % 1024 else f"{args.size // 1024} KiB"
    peer_col = {"single node": _peers.R1, "3-node cluster": _peers.R3}
    rows: list[tuple[str, float, float]] = []
    for target, figures in ours.items():
        peer = js.get(peer_col[target], {})
        rows.append(
            (
                f"{target}: produce {lab} x{args.concurrency} concurrent: records/s",
                figures["records/s"],
                peer.get(f"append {lab}: records/s", float("nan")),
            )
        )
        for key in ("records per Produce RPC", "produce() p50 ms", "produce() p99 ms"):
            rows.append((f"{target}: {key}", figures[key], float("nan")))
        rows.append(
            (
                f"{target}: client CPU %",
                figures["client CPU %"],
                peer.get(f"append {lab}: CPU % client", float("nan")),
            )
        )
    w = max(len(r[0]) for r in rows)
    lines = [
        f"raftlog client (automatic batching, mTLS, sync={args.sync}) vs NATS JetStream "
        "publish_async, same run (single node vs R1, 3-node cluster vs R3)",
        f"{'metric'.ljust(w)}  {'raftlog':>12}  {'JetStream':>12}  {'ratio':>7}",
        f"{'-' * w}  {'-' * 12}  {'-' * 12}  {'-' * 7}",
    ]
    for metric, value, peer in rows:
        ratio = value / peer if peer == peer and peer else float("nan")
        lines.append(f"{metric.ljust(w)}  {value:>12,.2f}  {peer:>12,.2f}  {ratio:>6.2f}x")
    lines.append(
        f"raftlog: {args.concurrency} coroutines awaiting produce() for {args.duration:g} s "
        "(ClientConfig defaults: linger 2 ms, batches up to 1000 records / 1 MiB, 4 in flight)"
    )
    fsync = " (fsynced before every acknowledgement)" if args.sync == "always" else ""
    lines.append(
        "JetStream 2.9 acknowledges from the page cache (no per-message fsync); "
        f"raftlog sync={args.sync}{fsync}"
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of load per target")
    ap.add_argument("--max-records", type=int, default=1_000_000, help="cap per run")
    ap.add_argument("--concurrency", type=int, default=1000, help="concurrent produce() calls")
    ap.add_argument("--size", type=int, default=100, help="record size, bytes")
    ap.add_argument("--sync", choices=("always", "interval", "never"), default="always")
    ap.add_argument("--skip-cluster", action="store_true", help="single node only")
    ap.add_argument("--skip-peers", action="store_true", help="do not run JetStream")
    ap.add_argument("--quiet-wait", type=float, default=20.0, help="JetStream's --quiet-wait")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args, _unknown = ap.parse_known_args()
    ours = {"single node": single_node(args)}
    if not args.skip_cluster:
        ours["3-node cluster"] = cluster(args)
    js: dict[str, dict[str, float]] = {}
    if not args.skip_peers:
        topologies = (1,) if args.skip_cluster else (3, 1)
        js = _peers.jetstream(nodes=topologies, sizes=(args.size,), quiet_wait=args.quiet_wait)
    print(render(ours, js, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"raftlog": ours, "jetstream": js}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

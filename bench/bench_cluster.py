"""Replicated figures: three `raftlog agent` processes (real Serf, the mux, mutual TLS).

Every client call goes to a node's one port (the mux) and from there to gRPC; Raft between
the nodes goes through the same ports. Measured per sync mode (--syncs, default
"always,interval"), against the leader, from a grpc.aio client in this process:

- produce records/s for 100 B and 1 KiB records with --window (default 1000) records in
  flight over one ProduceStream: one record per message (x1; bound by grpc's per-message
  cost in Python, the single node gets the same) and --batch (100) records per message;
- consume records/s (ConsumeStream, batches of 1000) of what the 1 KiB run wrote;
- p50/p99 of one acknowledged unary Produce (100 B) at a time;
- failover (last sync mode only): SIGKILL the leader, then the time until a write is
  acknowledged by the new leader (tried on every survivor in turn, 20 ms apart).

With --metrics-overhead N, it measures only the cost of metrics instead: N rounds of the
batched produce (100 B x --batch) on a fresh cluster with metrics off (no --metrics-addr)
and one with metrics on (--metrics-addr, every node scraped once a second as Prometheus
would), in alternating order, tracing off; it prints the median records/s of each and the
overhead (issue 14's budget: within 5 %).

Peers measured in the same run: NATS JetStream R3 (`bench_jetstream.py --nodes 3`, acks
from the page cache: compare with our sync=interval) and etcd 3 members
(`bench_etcd.py --nodes 3`, fsync per Raft round: compare with our sync=always); printed as
ratios. Skip them with --skip-peers. Unknown arguments are ignored (bench/run.py passes
its own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _peers
import bench_grpc
import grpc

from raftlog.agent.devcluster import ClusterFiles, DevCluster, free_port
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.auth import write_example_acl
from raftlog.security import TLSConfig, write_dev_certs

SIZES = (100, 1024)
ETCD_SCRIPT = _peers.PEERS / "bench_etcd.py"


def start_cluster(
    root: Path, sync: str, *, metrics: bool = False, nodes: int = 3, budget: bool = False
) -> tuple[DevCluster, TLSConfig]:
    """``nodes`` agents under ``root`` (dev certificates, the example ACL), started and
    agreed on a leader; ``metrics``: each with ``--metrics-addr`` on a free port
    (:func:`metrics_addrs`), ``budget``: also ``--latency-budget``."""
    certs = write_dev_certs(root / "certs")
    write_example_acl(root / "certs")
    client = certs["root"]
    tls = TLSConfig(client.cert_file, client.key_file, client.ca_file)
    cluster = DevCluster(
        root / "data",
        ClusterFiles.from_dir(root / "certs"),
        agent_args=("--serf-profile", "local", "--sync", sync, "--log-level", "warning"),
    )
    names = [f"n{i + 1}" for i in range(nodes)]
    for name in names:
        node = cluster.add_node(name)
        if metrics or budget:
            extra: tuple[str, ...] = ("--metrics-addr", f"127.0.0.1:{free_port()}")
            if budget:
                extra += ("--latency-budget",)
            cluster.nodes[name] = dataclasses.replace(node, extra=extra)
    cluster.start(names[0], bootstrap=True, join=[])
    for name in names[1:]:
        cluster.start(name, join=[cluster.nodes[names[0]].gossip_addr])
    try:
        asyncio.run(cluster.wait_for(tls, members=nodes, timeout_s=60))
    except BaseException:
        cluster.stop_all()
        raise
    return cluster, tls


async def leader_of(cluster: DevCluster, tls: TLSConfig) -> str:
    return await cluster.wait_for(tls, members=3, timeout_s=30)


async def measure(
    cluster: DevCluster, tls: TLSConfig, args: argparse.Namespace
) -> dict[str, float]:
    out: dict[str, float] = {}
    leader = await leader_of(cluster, tls)
    print(f"  leader {leader}", file=sys.stderr)
    async with cluster.channel(leader, tls) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        await stub.GetOffsets(log_pb2.GetOffsetsRequest(), wait_for_ready=True, timeout=10)
        for size in SIZES:
            lab = bench_grpc.label(size)
            n, el, _ = await bench_grpc.produce_stream(
                stub, size, 1, args.duration, args.max_records, args.window
            )
            out[f"produce {lab}, x1: records/s"] = n / el
            print(f"  produce {lab} x1: {n:,} in {el:.2f}s = {n / el:,.0f}/s", file=sys.stderr)
            # the same records in flight, carried by batch messages
            per = args.batch
            n, el, first = await bench_grpc.produce_stream(
                stub, size, per, args.duration, args.max_records, max(1, args.window // per)
            )
            out[f"produce {lab}, x{per}: records/s"] = n / el
            print(f"  produce {lab} x{per}: {n:,} in {el:.2f}s = {n / el:,.0f}/s", file=sys.stderr)
            if size == SIZES[-1]:
                got, _nbytes, el = await bench_grpc.consume_batches(stub, first, n, 1000)
                out[f"consume {lab}: records/s"] = got / el
                print(f"  consume {lab}: {got:,} in {el:.2f}s", file=sys.stderr)
        lat = await bench_grpc.unary_latency(stub, args.latency_ops, args.duration)
        out["unary Produce 100 B: p50 ms"] = bench_grpc.pct(lat, 0.5) * 1e3
        out["unary Produce 100 B: p99 ms"] = bench_grpc.pct(lat, 0.99) * 1e3
    return out


async def failover(cluster: DevCluster, tls: TLSConfig) -> float:
    """Seconds from SIGKILL of the leader to the first write acknowledged afterwards."""
    leader = await leader_of(cluster, tls)
    survivors = [n for n in cluster.nodes if n != leader]
    channels = {n: cluster.channel(n, tls) for n in survivors}
    stubs = {n: log_pb2_grpc.LogStub(ch) for n, ch in channels.items()}  # type: ignore[no-untyped-call]
    request = log_pb2.ProduceRequest(record=log_pb2.Record(value=b"failover"))
    for stub in stubs.values():  # connections up before the clock starts
        await stub.GetOffsets(log_pb2.GetOffsetsRequest(), wait_for_ready=True, timeout=10)
    try:
        cluster.signal(leader, signal.SIGKILL)
        start = time.perf_counter()
        while time.perf_counter() - start < 30:
            for name in survivors:
                try:
                    await stubs[name].Produce(request, timeout=1.0)
                    return time.perf_counter() - start
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.02)
        raise RuntimeError("no write acknowledged within 30 s of killing the leader")
    finally:
        for ch in channels.values():
            await ch.close()
        cluster.wait_exit(leader, 5)


def etcd(args: argparse.Namespace) -> dict[str, float]:
    """etcd 3-member medians (metric -> value), {} if it cannot run."""
    if not ETCD_SCRIPT.is_file():
        print(f"  etcd: {ETCD_SCRIPT} not found; skipped", file=sys.stderr)
        return {}
    with tempfile.TemporaryDirectory(prefix="bench-etcd-") as tmp:
        out = Path(tmp) / "etcd.json"
        cmd = [
            sys.executable,
            str(ETCD_SCRIPT),
            "--nodes",
            "3",
            "--sizes",
            ",".join(map(str, SIZES)),
            "--latency-size",
            "100",
            "--inflight",
            str(args.window),
            "--duration",
            str(args.duration),
            "--repeats",
            "1",
            "--quiet-wait",
            str(args.quiet_wait),
            "--json",
            str(out),
        ]
        print("  running " + " ".join(cmd), file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0 or not out.is_file():
            print(
                f"  etcd failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr
            )
            return {}
        metrics = json.loads(out.read_text())["metrics"]
    return {
        m: float(cols["3-member"]["median"]) for m, cols in metrics.items() if "3-member" in cols
    }


def render(
    ours: dict[str, dict[str, float]], js: dict[str, float], et: dict[str, float], fail: float
) -> str:
    peer_name = {
        "produce 100 B, x1: records/s": "append 100 B: records/s",
        "produce 1 KiB, x1: records/s": "append 1 KiB: records/s",
        "produce 100 B, x100: records/s": "append 100 B: records/s",
        "produce 1 KiB, x100: records/s": "append 1 KiB: records/s",
        "consume 1 KiB: records/s": "read 1 KiB: records/s",
        "unary Produce 100 B: p50 ms": "sync append 100 B: p50 ms",
        "unary Produce 100 B: p99 ms": "sync append 100 B: p99 ms",
    }
    lines = [
        "raftlog 3 agents (Serf, mux, mTLS) vs JetStream R3 and etcd 3-member, same run",
        f"{'metric':32} {'sync':9} {'raftlog':>11} {'JetStream':>11} {'ratio':>7} "
        f"{'etcd':>11} {'ratio':>7}",
    ]
    for sync, figures in ours.items():
        for metric, value in figures.items():
            peer = peer_name.get(metric, "")
            j, e = js.get(peer, float("nan")), et.get(peer, float("nan"))
            latency = metric.endswith("ms")
            # ratios: higher is better for us (throughput ours/peer, latency peer/ours)
            rj = (j / value if latency else value / j) if j == j and j else float("nan")
            re_ = (e / value if latency else value / e) if e == e and e else float("nan")
            lines.append(
                f"{metric:32} {sync:9} {value:>11,.2f} {j:>11,.2f} {rj:>6.2f}x "
                f"{e:>11,.2f} {re_:>6.2f}x"
            )
    lines.append(
        f"{'failover (kill -9 leader -> ack)':30} {'':9} {fail * 1e3:>9,.0f}ms (target < 2 s)"
    )
    lines.append(
        "ratio: higher is better for raftlog (throughput raftlog/peer, latency peer/raftlog). "
        "Targets: produce >= 1.0x JetStream R3 with sync=interval, >= 3x etcd with sync=always."
    )
    return "\n".join(lines)


def metrics_addrs(cluster: DevCluster) -> list[str]:
    """The --metrics-addr of every node that has one."""
    return [n.extra[1] for n in cluster.nodes.values() if n.extra[:1] == ("--metrics-addr",)]


async def scrape_forever(addrs: list[str], every_s: float = 1.0) -> None:
    """GET every node's /metrics once per ``every_s`` (what a Prometheus server does)."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        while True:
            for addr in addrs:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(
                        f"http://{addr}/metrics", timeout=aiohttp.ClientTimeout(total=2)
                    ) as resp:
                        await resp.read()
            await asyncio.sleep(every_s)


def cluster_cpu_s(cluster: DevCluster) -> float:
    """CPU seconds (user + system) the cluster's agent processes have used (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for node in cluster.nodes.values():
        if node.proc is None:
            continue
        fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


async def batched_produce(
    cluster: DevCluster, tls: TLSConfig, args: argparse.Namespace
) -> tuple[float, float]:
    """(records/s, node CPU µs per record) of the batched produce (100 B records, --batch
    per message) on the leader, every node's /metrics scraped meanwhile if it serves one.

    CPU per record is the steadier figure on a shared machine: other work slows the run
    down, but barely changes what each record costs the nodes."""
    leader = await leader_of(cluster, tls)
    addrs = metrics_addrs(cluster)
    scraper = asyncio.create_task(scrape_forever(addrs)) if addrs else None
    try:
        async with cluster.channel(leader, tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            await bench_grpc.produce_stream(stub, 100, args.batch, 0.5, 10_000, args.window)
            cpu = cluster_cpu_s(cluster)
            n, el, _ = await bench_grpc.produce_stream(
                stub, 100, args.batch, args.duration, args.max_records, args.window
            )
            cpu = cluster_cpu_s(cluster) - cpu
    finally:
        if scraper is not None:
            scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scraper
    return n / el, cpu / n * 1e6


def instrumentation_us_per_batch(batch: int, rounds: int = 20_000) -> float:
    """CPU µs the metrics add to one batch on the hot path, measured in this process: the
    updates a batch of ``batch`` records makes when a node has metrics (one call counted
    and timed, as if each batch were its own call; records and bytes counted; proposal
    latency, Raft append size and fsync time observed). A steady upper bound, free of the
    noise of a shared machine."""
    from raftlog.telemetry import NodeMetrics

    metrics = NodeMetrics("bench")
    records = [b"x" * 100] * batch
    start = time.process_time()
    for _ in range(rounds):
        metrics.observe_call("/log.v1.Log/ProduceStream", "OK", 0.003)
        metrics.produced(len(records), sum(map(len, records)))
        metrics.observe_proposal(0.002)
        metrics.raft_appended(batch)
        metrics.raft_synced(0.0005)
    return (time.process_time() - start) / rounds * 1e6


def metrics_overhead(args: argparse.Namespace) -> dict[str, float]:
    """Median records/s with metrics off and on over alternating rounds (see the docs)."""
    sync = next(s for s in args.syncs.split(",") if s)
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpus: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.metrics_overhead):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        for metrics in order:
            with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
                cluster, tls = start_cluster(Path(tmp), sync, metrics=metrics)
                try:
                    rate, cpu = asyncio.run(batched_produce(cluster, tls, args))
                finally:
                    cluster.stop_all()
            rates[metrics].append(rate)
            cpus[metrics].append(cpu)
            state = "on " if metrics else "off"
            print(
                f"  round {round_ + 1}, metrics {state}: {rate:,.0f} records/s, "
                f"{cpu:.2f} CPU µs/record",
                file=sys.stderr,
            )
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    cpu_off, cpu_on = statistics.median(cpus[False]), statistics.median(cpus[True])
    per_batch = instrumentation_us_per_batch(args.batch)
    return {
        "hot_path_us_per_batch": per_batch,
        "hot_path_share": per_batch / args.batch / cpu_off,
        "off": off,
        "on": on,
        "overhead": 1 - on / off,
        "cpu_us_off": cpu_off,
        "cpu_us_on": cpu_on,
        "cpu_overhead": cpu_on / cpu_off - 1,
    }


def render_overhead(result: dict[str, float], args: argparse.Namespace) -> str:
    sync = next(s for s in args.syncs.split(",") if s)
    return "\n".join(
        [
            f"metrics overhead: 3 nodes, sync={sync}, produce 100 B x{args.batch}, "
            f"{args.metrics_overhead} rounds of {args.duration:g} s each way, tracing off",
            f"  metrics off: {result['off']:,.0f} records/s, "
            f"{result['cpu_us_off']:.2f} CPU µs/record (medians)",
            f"  metrics on:  {result['on']:,.0f} records/s, "
            f"{result['cpu_us_on']:.2f} CPU µs/record (medians; every node scraped 1/s)",
            f"  overhead:    throughput {result['overhead'] * 100:+.1f} %, "
            f"CPU per record {result['cpu_overhead'] * 100:+.1f} % (budget: within 5 %)",
            f"  hot path:    {result['hot_path_us_per_batch']:.1f} µs of metric updates per batch "
            f"of {args.batch} = {result['hot_path_share'] * 100:.2f} % of a record's CPU "
            "with metrics off (in-process, steady)",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per produce run")
    ap.add_argument("--max-records", type=int, default=300_000, help="cap per produce run")
    ap.add_argument("--window", type=int, default=1000, help="records in flight")
    ap.add_argument("--batch", type=int, default=100, help="records per batch message")
    ap.add_argument("--latency-ops", type=int, default=1000)
    ap.add_argument("--syncs", default="always,interval", help="sync modes, comma list")
    ap.add_argument("--skip-peers", action="store_true", help="do not run JetStream and etcd")
    ap.add_argument("--quiet-wait", type=float, default=20.0, help="peers' --quiet-wait")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument(
        "--metrics-overhead",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only measure metrics on vs off, ROUNDS rounds each (first of --syncs)",
    )
    args, _unknown = ap.parse_known_args()
    if args.metrics_overhead > 0:
        result = metrics_overhead(args)
        print(render_overhead(result, args))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return 0
    ours: dict[str, dict[str, float]] = {}
    fail = float("nan")
    syncs = [s for s in args.syncs.split(",") if s]
    for i, sync in enumerate(syncs):
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
            print(f"3-node cluster, sync={sync}", file=sys.stderr)
            cluster, tls = start_cluster(Path(tmp), sync)
            try:
                ours[sync] = asyncio.run(measure(cluster, tls, args))
                if i == len(syncs) - 1:
                    fail = asyncio.run(failover(cluster, tls))
                    print(f"  failover: {fail * 1e3:.0f} ms", file=sys.stderr)
            finally:
                cluster.stop_all()
    js: dict[str, float] = {}
    et: dict[str, float] = {}
    if not args.skip_peers:
        js = _peers.jetstream(nodes=(3,), sizes=SIZES, quiet_wait=args.quiet_wait).get(
            _peers.R3, {}
        )
        et = etcd(args)
    print(render(ours, js, et, fail))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"raftlog": ours, "failover_s": fail, "jetstream_r3": js, "etcd_3": et}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Raft benchmark: a 3-node in-process cluster over the TCP+TLS transport on loopback.

Measured, each for ``--seconds`` (or ``--max-records``), on one event loop that holds all
three nodes and the load generator (so the figures are bounded by one Python thread):

- 1 KiB proposals with 1000 in flight (1000 proposer coroutines on the leader), with
  ``fsync`` on (every Raft round fsyncs the log on each node before acknowledging) and off:
  committed-and-applied entries/s and p50/p99 latency from ``propose`` to its result;
- one proposal in flight: p50/p99 commit latency;
- etcd (3 members, Debian's etcd-server) measured in the same run by
  ``../shared/bench/peers/bench_etcd.py`` with the same record size, printed beside ours
  as ratios (ours / etcd for throughput, etcd / ours for latency: higher is better).

Usage: python bench/bench_raft.py [--seconds S] [--max-records N] [--inflight N]
                                  [--no-etcd] [--no-uvloop] [--dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftlog.raft import Entry, RaftConfig, Server, SnapshotMeta
from raftlog.raft.fsm import SnapshotSource
from raftlog.raft.node import NodeConfig, RaftNode
from raftlog.raft.transport_tcp import TcpTransport, TcpTransportConfig
from raftlog.security import TLSConfig, write_dev_certs

PEERS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "peers"
ETCD_SCRIPT = PEERS / "bench_etcd.py"
RECORD = 1024


class CountingFSM:
    """Keeps a count and the bytes applied; snapshots are the two numbers."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0

    def applied_index(self) -> int:
        return 0

    def apply(self, entries: Sequence[Entry]) -> Sequence[Any]:
        out = []
        for e in entries:
            self.count += 1
            self.bytes += len(e.data)
            out.append(self.count)
        return out

    def snapshot(self) -> Iterable[bytes]:
        return [f"{self.count} {self.bytes}".encode()]

    def restore(self, source: SnapshotSource, meta: SnapshotMeta) -> None:
        count, size = source.read().split()
        self.count, self.bytes = int(count), int(size)


@dataclass
class LoadResult:
    committed: int
    seconds: float
    latencies: list[float]
    syncs: int
    rounds: int
    #: CPU of this process (all three nodes and the load) and of every other process on
    #: the machine, in % of one core, during the load (the second is noise: the box is
    #: shared).
    cpu_self: float = float("nan")
    cpu_others: float = float("nan")

    @property
    def rate(self) -> float:
        return self.committed / self.seconds

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else float("nan")


async def start_cluster(root: Path, tls: TLSConfig, fsync: bool) -> list[RaftNode]:
    ids = ["b1", "b2", "b3"]
    transports = {}
    addresses = {}
    for i in ids:
        t = TcpTransport(
            TcpTransportConfig(node_id=i, tls=tls), authorize=lambda cn: cn == "server"
        )
        addresses[i] = await t.serve("127.0.0.1", 0)
        transports[i] = t
    nodes = []
    for i in ids:
        cfg = NodeConfig(
            raft=RaftConfig(id=i),
            data_dir=root / i,
            fsync=fsync,
            seed=hash(i) & 0xFFFF,
        )
        node = await RaftNode.on_disk(cfg, CountingFSM(), transports[i], peers=addresses)
        await node.start()
        nodes.append(node)
    servers = [Server(i, addresses[i]) for i in ids]
    for node in nodes:
        await node.bootstrap(servers)
    nodes[0].campaign()
    await nodes[0].wait_for(lambda: nodes[0].is_leader, 10.0, "b1 leading")
    for node in nodes:
        await node.wait_for_leader(10.0)
    return nodes


def _peerlib() -> Any:
    """The shared peer-bench helpers (CPU meter, wait for a quiet machine), if present."""
    if str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    try:
        import _peerlib  # type: ignore[import-not-found]
    except ImportError:
        return None
    return _peerlib


async def load(
    leader: RaftNode, inflight: int, seconds: float, max_records: int, quiet_wait: float = 0.0
) -> LoadResult:
    lib = _peerlib()
    if lib is not None and quiet_wait > 0:
        await lib.wait_quiet([], 25.0, quiet_wait)
    meter = lib.CpuMeter([]) if lib is not None else None
    payload = os.urandom(RECORD)
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    issued = 0
    syncs0, rounds0 = leader.stats.syncs, leader.stats.rounds

    async def worker() -> None:
        nonlocal issued
        while time.perf_counter() < stop_at and issued < max_records:
            issued += 1
            t = time.perf_counter()
            await leader.propose(payload, timeout=30)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    elapsed = time.perf_counter() - t0
    res = LoadResult(
        len(latencies),
        elapsed,
        latencies,
        leader.stats.syncs - syncs0,
        leader.stats.rounds - rounds0,
    )
    if meter is not None:
        res.cpu_self, _, res.cpu_others = meter.stop()
    return res


async def run_ours(args: argparse.Namespace, root: Path) -> dict[str, LoadResult]:
    certs = write_dev_certs(root / "certs")["server"]
    tls = TLSConfig(certs.cert_file, certs.key_file, certs.ca_file)
    out: dict[str, LoadResult] = {}
    for fsync in (True, False):
        label = "sync on" if fsync else "sync off"
        nodes = await start_cluster(root / ("sync" if fsync else "nosync"), tls, fsync)
        try:
            leader = nodes[0]
            await load(leader, 100, 0.5, 2000)  # warm up connections and caches
            res = await load(leader, args.inflight, args.seconds, args.max_records, args.quiet_wait)
            out[f"{label}, {args.inflight} in flight"] = res
            print(
                f"  {label}, {args.inflight} in flight: {res.committed} in {res.seconds:.2f} s "
                f"({res.rate:,.0f}/s), {res.rounds} rounds, {res.syncs} fsync rounds, "
                f"cpu {res.cpu_self:.0f}% (others {res.cpu_others:.0f}%)",
                flush=True,
            )
            if fsync:
                one = await load(leader, 1, min(args.seconds, 5.0), 2000, args.quiet_wait)
                out[f"{label}, 1 in flight"] = one
                print(
                    f"  {label}, 1 in flight: {one.committed} in {one.seconds:.2f} s, "
                    f"p50 {one.pct(0.5):.3f} ms, p99 {one.pct(0.99):.3f} ms, "
                    f"cpu {one.cpu_self:.0f}% (others {one.cpu_others:.0f}%)",
                    flush=True,
                )
        finally:
            for node in nodes:
                await node.close()
    return out


def run_etcd(args: argparse.Namespace, root: Path) -> dict[str, float] | None:
    if args.no_etcd:
        return None
    if not ETCD_SCRIPT.exists():
        print(f"etcd: {ETCD_SCRIPT} not found; skipped")
        return None
    out = root / "etcd.json"
    cmd = [
        sys.executable,
        str(ETCD_SCRIPT),
        "--nodes",
        "3",
        "--sizes",
        str(RECORD),
        "--latency-size",
        str(RECORD),
        "--inflight",
        str(args.inflight),
        "--repeats",
        str(args.etcd_repeats),
        "--duration",
        str(args.seconds),
        "--quiet-wait",
        str(args.quiet_wait),
        "--json",
        str(out),
    ]
    print("etcd: " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not out.exists():
        print(f"etcd bench failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
        print(proc.stderr[-2000:])
        return None
    metrics = json.loads(out.read_text())["metrics"]
    lab = "1 KiB"

    def med(metric: str) -> float:
        return float(metrics[metric]["3-member"]["median"])

    return {
        "rate": med(f"append {lab}: records/s"),
        "p50": med(f"sync append {lab}: p50 ms"),
        "p99": med(f"sync append {lab}: p99 ms"),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per measured load")
    ap.add_argument("--max-records", type=int, default=300_000, help="cap per load")
    ap.add_argument("--inflight", type=int, default=1000, help="concurrent proposals")
    ap.add_argument("--etcd-repeats", type=int, default=2, help="repeats of the etcd runs")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=15.0,
        help="before each measurement wait up to this many seconds for other tenants to "
        "use < 25%% of a core (as bench_etcd.py does); 0: off",
    )
    ap.add_argument("--no-etcd", action="store_true", help="skip the etcd comparison")
    ap.add_argument("--no-uvloop", action="store_true", help="run on asyncio's default loop")
    ap.add_argument("--dir", default=None, help="parent of the temp data dir")
    ap.add_argument("--quick", action="store_true", help="1 s loads, no etcd (smoke run)")
    args, _unknown = ap.parse_known_args(argv)
    if args.quick:
        args.seconds, args.no_etcd, args.quiet_wait = 1.0, True, 0.0
    root = Path(tempfile.mkdtemp(prefix="bench-raft-", dir=args.dir))
    try:
        print(
            f"raft bench: Python {platform.python_version()}, {os.cpu_count()} cpus, "
            f"data in {root}, {RECORD} B entries",
            flush=True,
        )
        runner: Any = asyncio.run
        if not args.no_uvloop:
            try:
                import uvloop

                runner = uvloop.run
                print("  event loop: uvloop", flush=True)
            except ImportError:
                pass
        ours = runner(run_ours(args, root))
        etcd = run_etcd(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"{'measure':38} {'entries/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, r in ours.items():
        print(f"{'raftlog ' + name:38} {r.rate:>10,.0f} {r.pct(0.5):>8.2f} {r.pct(0.99):>8.2f}")
    if etcd is None:
        print("etcd: not measured")
        return 0
    print(f"{'etcd 3-member, ' + str(args.inflight) + ' in flight':38} {etcd['rate']:>10,.0f}")
    print(f"{'etcd 3-member, 1 in flight':38} {'':>10} {etcd['p50']:>8.2f} {etcd['p99']:>8.2f}")
    on = ours[f"sync on, {args.inflight} in flight"]
    one = ours["sync on, 1 in flight"]
    print()
    print(f"ratio entries/s, sync on vs etcd:   {on.rate / etcd['rate']:.2f}x (target >= 3x)")
    print(f"ratio p99 at 1 in flight, etcd/ours: {etcd['p99'] / one.pct(0.99):.2f}x (target >= 1x)")
    print(f"ratio p50 at 1 in flight, etcd/ours: {etcd['p50'] / one.pct(0.5):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

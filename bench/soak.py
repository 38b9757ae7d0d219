"""`make soak`: the scenario of issue 12, on three `raftlog agent` processes.

Three nodes started through the CLI with default settings (plus ``--agent-args``, e.g. a
retention run), 100 B records produced to the leader in batches of 1000 over one
``ProduceStream``, then every node killed -9 at once and restarted on its data. Printed,
one row per run::

    records | produce rate first/last tenth | RssAnon per node | disk per node (payload)
            | kill -9 all -> first ack

- produce rate: records/s over the first and the last tenth of the records;
- RssAnon: private memory of each agent process (``/proc/<pid>/status``), once the load
  is over and the cluster idle (``--idle`` seconds), and its peak seen during the load;
- disk: what each data directory holds once idle, allocated blocks (``du``) and apparent
  bytes, against the payload (records x 100 B);
- kill -9 all -> first ack: from the SIGKILL of every node to the first write that a
  restarted node acknowledges (nodes restarted at once, the write tried on each in turn).

With ``--check`` (the suite's scaled-down version does this) every record is read back
after the restart: the count, the dense offsets and each batch's marker must match, so
nothing acknowledged was lost. ``--json FILE`` writes the figures.

Environment: ``RECORDS`` (default 10,000,000; several sizes comma-separated, e.g.
``1000000,10000000,30000000``, print the RssAnon ratio between the largest and the
smallest), ``AGENT_ARGS`` (extra agent flags, split on spaces), same as the flags. Each
run's data is removed afterwards unless ``--keep`` (``--restart-only DIR`` re-measures
the restart on kept data).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from raftlog.agent.devcluster import ClusterFiles, DevCluster
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.auth import write_example_acl
from raftlog.security import TLSConfig, write_dev_certs

NAMES = ("n1", "n2", "n3")
RECORD_BYTES = 100
MARK = b"batch:%012d;"  # the first record of every batch names its batch


def rss_anon_kib(pid: int) -> int:
    """RssAnon of ``pid`` in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def disk_usage(path: Path) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of every file under ``path``."""
    allocated = apparent = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def start_cluster(
    root: Path, agent_args: tuple[str, ...], *, reuse: bool = False
) -> tuple[DevCluster, TLSConfig]:
    """A new cluster under ``root`` (its ports saved in ``root/cluster.json``), or with
    ``reuse`` the one a previous run left there, restarted on its data and ports."""
    if not reuse:
        write_dev_certs(root / "certs")
        write_example_acl(root / "certs")
    certs = root / "certs"
    tls = TLSConfig(certs / "root-client.pem", certs / "root-client-key.pem", certs / "ca.pem")
    args = ("--serf-profile", "local", "--log-level", "info", *agent_args)
    cluster = DevCluster(root / "data", ClusterFiles.from_dir(certs), agent_args=args)
    saved = root / "cluster.json"
    if reuse:
        ports = json.loads(saved.read_text())
        for name in NAMES:
            cluster.add_node(name, tuple(ports[name]))  # type: ignore[arg-type]
        for name in NAMES:
            cluster.start(name, join=[cluster.nodes[n].gossip_addr for n in NAMES if n != name])
        return cluster, tls
    for name in NAMES:
        cluster.add_node(name)
    saved.write_text(
        json.dumps(
            {n: [p.rpc_port, p.gossip_port, p.serf_rpc_port] for n, p in cluster.nodes.items()}
        )
    )
    cluster.start(NAMES[0], bootstrap=True, join=[])
    for name in NAMES[1:]:
        cluster.start(name, join=[cluster.nodes[NAMES[0]].gossip_addr])
    return cluster, tls


def batch_request(template: log_pb2.ProduceRequest, batch: int) -> log_pb2.ProduceRequest:
    mark = MARK % batch
    template.records[0].value = mark + b"m" * (RECORD_BYTES - len(mark))
    return template


async def produce(
    cluster: DevCluster, tls: TLSConfig, leader: str, records: int, per: int, window: int
) -> dict[str, Any]:
    """Produce ``records`` to ``leader``; rates of the first and last tenth, peak RssAnon."""
    template = log_pb2.ProduceRequest(
        records=[log_pb2.Record(value=b"r" * RECORD_BYTES) for _ in range(per)]
    )
    batches = records // per
    tenth = max(1, batches // 10)
    marks: dict[int, float] = {}
    peak = dict.fromkeys(NAMES, 0)
    async with cluster.channel(leader, tls) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        call = stub.ProduceStream()
        slots = asyncio.Semaphore(window)
        acked = 0
        start = time.perf_counter()
        failure: list[BaseException] = []

        async def writer() -> None:
            for b in range(batches):
                await slots.acquire()
                if failure:
                    break
                await call.write(batch_request(template, b))
            await call.done_writing()

        async def reader() -> None:
            nonlocal acked
            expect = 0
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                if response.offset != expect:
                    failure.append(AssertionError(f"offset {response.offset}, want {expect}"))
                expect = response.last_offset + 1
                acked += 1
                if acked == tenth:
                    marks[1] = time.perf_counter()
                if acked == batches - tenth:
                    marks[9] = time.perf_counter()
                slots.release()

        async def sampler() -> None:
            while True:
                for name in NAMES:
                    proc = cluster.nodes[name].proc
                    if proc is not None:
                        peak[name] = max(peak[name], rss_anon_kib(proc.pid))
                await asyncio.sleep(1.0)

        sampling = asyncio.create_task(sampler())
        try:
            await asyncio.gather(writer(), reader())
        finally:
            sampling.cancel()
        end = time.perf_counter()
        if failure:
            raise failure[0]
    first = tenth * per / (marks.get(1, end) - start)
    last = tenth * per / (end - marks.get(9, start))
    return {
        "records": acked * per,
        "seconds": end - start,
        "rate_first": first,
        "rate_last": last,
        "peak_rss_kib": peak,
    }


async def first_ack(cluster: DevCluster, tls: TLSConfig, timeout_s: float) -> tuple[float, str]:
    """Seconds until some node acknowledges a write (tried on each in turn), and which."""
    request = log_pb2.ProduceRequest(record=log_pb2.Record(value=b"after-restart"))
    start = time.perf_counter()
    deadline = start + timeout_s
    channels = {n: cluster.channel(n, tls) for n in NAMES}
    try:
        while time.perf_counter() < deadline:
            for name, ch in channels.items():
                stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
                try:
                    await stub.Produce(request, timeout=0.5)
                except grpc.aio.AioRpcError:
                    continue
                return time.perf_counter() - start, name
            await asyncio.sleep(0.02)
    finally:
        for ch in channels.values():
            await ch.close()
    raise TimeoutError(f"no write acknowledged within {timeout_s} s of the restart")


async def check_all(
    cluster: DevCluster, tls: TLSConfig, name: str, records: int, per: int
) -> tuple[int, int]:
    """Read every record back from ``name``, from its lowest offset (retention may have
    dropped a prefix); AssertionError on a gap or a wrong marker. (lowest, records read)."""
    async with cluster.channel(name, tls) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        offsets = await stub.GetOffsets(log_pb2.GetOffsetsRequest(), timeout=5)
        lowest = got = int(offsets.lowest_offset)
        call = stub.ConsumeStream(log_pb2.ConsumeRequest(offset=lowest, max_records=5000))
        async for response in call:
            for r in response.records:
                if r.offset != got:
                    raise AssertionError(f"offset {r.offset} where {got} was expected")
                if got < records:
                    if len(r.value) != RECORD_BYTES:
                        raise AssertionError(f"record {got} has {len(r.value)} bytes")
                    if got % per == 0 and not r.value.startswith(MARK % (got // per)):
                        raise AssertionError(f"record {got} is not the head of its batch")
                got += 1
            if got >= records:
                break
        call.cancel()
    return lowest, got - lowest


def wait_gone(cluster: DevCluster) -> None:
    for name in NAMES:
        cluster.wait_exit(name, 10)


async def kill_all_and_restart(cluster: DevCluster, tls: TLSConfig, timeout: float) -> float:
    """kill -9 every node at once, restart them all on their data; seconds from the kill
    to the first acknowledged write."""
    for name in NAMES:
        cluster.signal(name, signal.SIGKILL)
    killed = time.perf_counter()
    wait_gone(cluster)
    for name in NAMES:
        cluster.start(name, join=[cluster.nodes[n].gossip_addr for n in NAMES if n != name])
    await first_ack(cluster, tls, timeout)
    return time.perf_counter() - killed


async def restart_only(args: argparse.Namespace) -> int:
    """``--restart-only DIR``: the restart of a cluster a previous run left in DIR, measured
    ``--restarts`` times (no new load: the restart cost on a log of that size)."""
    root = Path(args.restart_only)
    cluster, tls = start_cluster(root, tuple(args.agent_args), reuse=True)
    times: list[float] = []
    try:
        # the first start may rebuild what an older version wrote (an index format): slow once
        await cluster.wait_for(tls, members=3, timeout_s=600, every=True)
        for _ in range(args.restarts):
            await asyncio.sleep(args.idle)
            times.append(await kill_all_and_restart(cluster, tls, args.restart_timeout))
            await cluster.wait_for(tls, members=3, timeout_s=60, every=True)
        rss = [rss_anon_kib(cluster.nodes[n].proc.pid) // 1024 for n in NAMES]  # type: ignore[union-attr]
        disk = [disk_usage(cluster.nodes[n].data_dir) for n in NAMES]
    finally:
        cluster.stop_all()
    print(
        "disk per node (allocated, apparent): "
        + ", ".join(f"{a / 1e6:,.0f} / {b / 1e6:,.0f} MB" for a, b in disk)
    )
    print(f"kill -9 all -> first ack on {root}: " + ", ".join(f"{t:.2f} s" for t in times))
    print(f"RssAnon after the restarts: {rss} MiB", flush=True)
    return 0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir or tempfile.mkdtemp(prefix="raftlog-soak-"))
    cluster, tls = start_cluster(root, tuple(args.agent_args))
    out: dict[str, Any] = {"records": args.records, "agent_args": list(args.agent_args)}
    try:
        leader = await cluster.wait_for(tls, members=3, timeout_s=60, every=True)
        load = await produce(cluster, tls, leader, args.records, args.batch, args.window)
        out.update(load)
        await asyncio.sleep(args.idle)
        out["rss_kib"] = {
            n: rss_anon_kib(cluster.nodes[n].proc.pid)  # type: ignore[union-attr]
            for n in NAMES
        }
        out["disk"] = {n: disk_usage(cluster.nodes[n].data_dir) for n in NAMES}
        out["payload"] = args.records * RECORD_BYTES
        out["restart_s"] = await kill_all_and_restart(cluster, tls, args.restart_timeout)
        if args.check:
            leader = await cluster.wait_for(tls, members=3, timeout_s=60)
            lowest, count = await check_all(cluster, tls, leader, args.records, args.batch)
            out["lowest_offset"], out["read_back"] = lowest, count
    finally:
        cluster.stop_all()
    out["dir"] = str(root)
    return out


def table(results: list[dict[str, Any]]) -> str:
    """The table of the issue, one row per run; with several sizes, the RssAnon ratio
    between the largest and the smallest."""
    head = (
        "| records | produce rate first / last tenth | RssAnon per node (idle; peak) "
        "| disk per node (payload) | kill -9 all -> first ack |\n"
        "|---|---|---|---|---|\n"
    )
    text = head + "\n".join(row(r) for r in results)
    if len(results) > 1:
        small = min(results, key=lambda r: r["records"])
        big = max(results, key=lambda r: r["records"])
        idle = max(big["rss_kib"].values()) / max(small["rss_kib"].values())
        peak = max(big["peak_rss_kib"].values()) / max(small["peak_rss_kib"].values())
        text += (
            f"\nRssAnon {big['records']:,} vs {small['records']:,} records (highest node): "
            f"{idle:.2f}x idle, {peak:.2f}x peak"
        )
    return text


def row(r: dict[str, Any]) -> str:
    mb = 1e6
    rss = " / ".join(f"{r['rss_kib'][n] / 1024:.0f}" for n in NAMES)
    peak = " / ".join(f"{r['peak_rss_kib'][n] / 1024:.0f}" for n in NAMES)
    alloc = " / ".join(f"{r['disk'][n][0] / mb:,.0f}" for n in NAMES)
    apparent = " / ".join(f"{r['disk'][n][1] / mb:,.0f}" for n in NAMES)
    ratio = max(r["disk"][n][0] for n in NAMES) / r["payload"]
    ratio_app = max(r["disk"][n][1] for n in NAMES) / r["payload"]
    return (
        f"| {r['records']:,} | {r['rate_first'] / 1e3:,.0f} k / {r['rate_last'] / 1e3:,.0f} k "
        f"rec/s | {rss} MiB; peak {peak} MiB | {alloc} MB allocated ({ratio:.2f}x), "
        f"{apparent} MB apparent ({ratio_app:.2f}x) (payload {r['payload'] / mb:,.0f} MB) "
        f"| {r['restart_s']:.2f} s |"
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--records",
        type=lambda v: [int(x) for x in v.split(",")],
        default=os.environ.get("RECORDS", "10000000"),
        help="records per run; several sizes comma-separated (e.g. 1000000,10000000,30000000)",
    )
    p.add_argument("--keep", action="store_true", help="keep each run's data (else removed)")
    p.add_argument("--batch", type=int, default=1000, help="records per ProduceRequest")
    p.add_argument("--window", type=int, default=8, help="batches in flight")
    p.add_argument("--idle", type=float, default=5.0, help="seconds idle before measuring")
    p.add_argument("--restart-timeout", type=float, default=120.0)
    p.add_argument(
        "--agent-args",
        type=shlex.split,
        default=shlex.split(os.environ.get("AGENT_ARGS", "")),
        help="extra flags for every agent (e.g. '--retention-bytes 500000000')",
    )
    p.add_argument("--check", action="store_true", help="read every record back after restart")
    p.add_argument("--dir", default="", help="work directory (default: a new temp dir)")
    p.add_argument("--json", default="", help="write the figures to this file")
    p.add_argument(
        "--restart-only",
        default="",
        metavar="DIR",
        help="only restart (kill -9 all, restart) the cluster a run left in DIR",
    )
    p.add_argument("--restarts", type=int, default=3, help="with --restart-only: how many")
    args = p.parse_args(argv)
    if args.restart_only:
        return asyncio.run(restart_only(args))
    sizes = args.records if isinstance(args.records, list) else [int(args.records)]
    results = []
    for size in sizes:
        one = argparse.Namespace(**{**vars(args), "records": size})
        result = asyncio.run(run(one))
        results.append(result)
        print(table([result]), flush=True)
        if "read_back" in result:
            print(
                f"read back after the restart: {result['read_back']:,} records from offset "
                f"{result['lowest_offset']:,} (lowest), dense and in order",
                flush=True,
            )
        if args.keep or args.dir:
            print(f"data: {result['dir']}", flush=True)
        else:
            shutil.rmtree(result["dir"], ignore_errors=True)
    if len(results) > 1:
        print("\n" + table(results), flush=True)
    if args.json:
        data = results[0] if len(results) == 1 else results
        Path(args.json).write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

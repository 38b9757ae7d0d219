"""Single-node gRPC figures, side by side with NATS JetStream R1 measured in the same run.

What it measures (one `raftlog agent` subprocess with mutual TLS and the ACL, a grpc.aio
client in this process, 127.0.0.1):

- produce records/s for 100 B and 1 KiB records, one record per message over ProduceStream
  (up to --window messages unacknowledged) and in batches of --batch records per message;
- consume records/s with batches (ConsumeStream, max_records = --batch) of what the batched
  produce wrote;
- p50/p99 latency of one unary Produce (100 B) at a time;
- NATS JetStream R1 (`../shared/bench/peers/bench_jetstream.py --nodes 1`) for the same
  sizes, printed as ratios (ours / JetStream). Skip it with --skip-peers.

The node runs with --sync (default "always": every acknowledged record is fsynced, many
records share one fsync). JetStream 2.9 acknowledges from the page cache; `--sync interval`
is the comparable mode of ours. Unknown arguments are ignored (bench/run.py passes its own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _peers
import grpc

from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.auth import write_example_acl
from raftlog.security import TLSConfig, write_dev_certs
from raftlog.security.grpc_tls import grpc_channel_credentials

RAFTLOG = str(Path(sys.executable).parent / "raftlog")
SIZES = (100, 1024)


def label(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


class Node:
    """A `raftlog agent` subprocess in a temp dir, with its own certificates."""

    def __init__(self, root: Path, sync: str) -> None:
        self.root = root
        certs = write_dev_certs(root / "certs")
        write_example_acl(root / "certs")
        self.client = certs["root"]
        self.proc = subprocess.Popen(
            [
                RAFTLOG,
                "agent",
                "--rpc-port",
                "0",
                "--data-dir",
                str(root / "data"),
                "--sync",
                sync,
                "--log-level",
                "warning",
            ],
            cwd=root,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        banner = self.proc.stdout.readline()
        match = re.search(r"on (127\.0\.0\.1:\d+)", banner)
        if not match:
            self.stop()
            raise RuntimeError(f"agent did not start: {banner!r}")
        self.addr = match.group(1)

    def channel(self) -> grpc.aio.Channel:
        tls = TLSConfig(self.client.cert_file, self.client.key_file, self.client.ca_file)
        return grpc.aio.secure_channel(
            self.addr,
            grpc_channel_credentials(tls),
            options=[("grpc.max_receive_message_length", 8 << 20)],
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def produce_stream(
    stub: log_pb2_grpc.LogStub,
    size: int,
    per_message: int,
    seconds: float,
    max_records: int,
    window: int,
    *,
    topic: str = "",
    partition: int | None = None,
) -> tuple[int, float, int]:
    """(records acknowledged, seconds, first offset) over one ProduceStream (to the
    default topic, or to ``topic``'s ``partition``)."""
    payload = os.urandom(size)
    if per_message == 1:
        request = log_pb2.ProduceRequest(
            record=log_pb2.Record(value=payload), topic=topic, partition=partition
        )
    else:
        request = log_pb2.ProduceRequest(
            records=[log_pb2.Record(value=payload) for _ in range(per_message)],
            topic=topic,
            partition=partition,
        )
    call = stub.ProduceStream()
    slots = asyncio.Semaphore(window)
    acked = 0
    first_offset = -1
    start = time.perf_counter()
    deadline = start + seconds

    async def writer() -> None:
        sent = 0
        while sent < max_records and time.perf_counter() < deadline:
            await slots.acquire()
            await call.write(request)
            sent += per_message
        await call.done_writing()

    async def reader() -> None:
        nonlocal acked, first_offset
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            if first_offset < 0:
                first_offset = response.offset
            acked += response.last_offset - response.offset + 1
            slots.release()

    await asyncio.gather(writer(), reader())
    return acked, time.perf_counter() - start, first_offset


async def consume_batches(
    stub: log_pb2_grpc.LogStub, first: int, count: int, batch: int
) -> tuple[int, int, float]:
    """(records, payload bytes, seconds) reading ``count`` records from ``first``."""
    got = nbytes = 0
    start = time.perf_counter()
    call = stub.ConsumeStream(log_pb2.ConsumeRequest(offset=first, max_records=batch))
    async for response in call:
        got += len(response.records)
        nbytes += sum(len(r.value) for r in response.records)
        if got >= count:
            break
    elapsed = time.perf_counter() - start
    call.cancel()
    return got, nbytes, elapsed


async def unary_latency(stub: log_pb2_grpc.LogStub, ops: int, seconds: float) -> list[float]:
    request = log_pb2.ProduceRequest(record=log_pb2.Record(value=os.urandom(100)))
    for _ in range(50):  # warm up the connection and the code paths
        await stub.Produce(request)
    lat: list[float] = []
    end = time.perf_counter() + seconds
    while len(lat) < ops and time.perf_counter() < end:
        t = time.perf_counter()
        await stub.Produce(request)
        lat.append(time.perf_counter() - t)
    return lat


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def measure(node: Node, args: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    async with node.channel() as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        await stub.GetOffsets(log_pb2.GetOffsetsRequest(), wait_for_ready=True, timeout=10)
        for size in SIZES:
            lab = label(size)
            n, el, _ = await produce_stream(
                stub, size, 1, args.duration, args.max_records, args.window
            )
            out[f"produce {lab}, 1 record/message: records/s"] = n / el
            print(f"  produce {lab} x1: {n:,} in {el:.2f}s = {n / el:,.0f}/s", file=sys.stderr)
            n, el, first = await produce_stream(
                stub, size, args.batch, args.duration, args.max_records, args.batch_window
            )
            out[f"produce {lab}, batches of {args.batch}: records/s"] = n / el
            out[f"produce {lab}, batches of {args.batch}: MB/s"] = n * size / el / 1e6
            print(
                f"  produce {lab} x{args.batch}: {n:,} in {el:.2f}s = {n / el:,.0f}/s",
                file=sys.stderr,
            )
            got, nbytes, el = await consume_batches(stub, first, n, args.batch)
            out[f"consume {lab}, batches of {args.batch}: records/s"] = got / el
            out[f"consume {lab}, batches of {args.batch}: MB/s"] = nbytes / el / 1e6
            print(
                f"  consume {lab} x{args.batch}: {got:,} in {el:.2f}s = {got / el:,.0f}/s",
                file=sys.stderr,
            )
        lat = await unary_latency(stub, args.latency_ops, args.duration)
        out["unary Produce 100 B: p50 ms"] = pct(lat, 0.5) * 1e3
        out["unary Produce 100 B: p99 ms"] = pct(lat, 0.99) * 1e3
        print(f"  unary latency: n={len(lat)} p50={pct(lat, 0.5) * 1e3:.3f}ms", file=sys.stderr)
    return out


async def page_cache_latency(args: argparse.Namespace) -> dict[str, float]:
    """Unary latency of a node with sync=interval: acknowledged from the page cache, like
    JetStream 2.9, so the two latencies compare like with like."""
    with tempfile.TemporaryDirectory(prefix="bench-grpc-interval-") as tmp:
        node = Node(Path(tmp), "interval")
        try:
            async with node.channel() as ch:
                stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
                await stub.GetOffsets(log_pb2.GetOffsetsRequest(), wait_for_ready=True, timeout=10)
                lat = await unary_latency(stub, args.latency_ops, args.duration)
        finally:
            node.stop()
    print(f"  unary latency (interval): p50={pct(lat, 0.5) * 1e3:.3f}ms", file=sys.stderr)
    return {
        "unary Produce 100 B, sync=interval: p50 ms": pct(lat, 0.5) * 1e3,
        "unary Produce 100 B, sync=interval: p99 ms": pct(lat, 0.99) * 1e3,
    }


def jetstream(args: argparse.Namespace) -> dict[str, float]:
    """JetStream R1 figures (medians) from the shared peer benchmark, or {} if it fails."""
    return _peers.jetstream(nodes=(1,), sizes=SIZES, quiet_wait=args.quiet_wait).get(_peers.R1, {})


def render(ours: dict[str, float], js: dict[str, float], args: argparse.Namespace) -> str:
    pairs = {}
    for size in SIZES:
        lab = label(size)
        pairs[f"produce {lab}, batches of {args.batch}: records/s"] = f"append {lab}: records/s"
        pairs[f"produce {lab}, 1 record/message: records/s"] = f"append {lab}: records/s"
        pairs[f"consume {lab}, batches of {args.batch}: records/s"] = f"read {lab}: records/s"
        pairs[f"produce {lab}, batches of {args.batch}: MB/s"] = f"append {lab}: MB/s"
        pairs[f"consume {lab}, batches of {args.batch}: MB/s"] = f"read {lab}: MB/s"
    for q in ("p50", "p99"):
        pairs[f"unary Produce 100 B: {q} ms"] = f"sync append 100 B: {q} ms"
        pairs[f"unary Produce 100 B, sync=interval: {q} ms"] = f"sync append 100 B: {q} ms"
    w = max(len(m) for m in ours)
    lines = [
        f"raftlog single node over gRPC (mTLS, sync={args.sync}) vs NATS JetStream R1, same run",
        f"{'metric'.ljust(w)}  {'raftlog':>12}  {'JetStream':>12}  {'ratio':>7}",
        f"{'-' * w}  {'-' * 12}  {'-' * 12}  {'-' * 7}",
    ]
    for metric, value in ours.items():
        peer = js.get(pairs.get(metric, ""), float("nan"))
        ratio = value / peer if peer == peer and peer else float("nan")
        lines.append(f"{metric.ljust(w)}  {value:>12,.2f}  {peer:>12,.2f}  {ratio:>6.2f}x")
    lines.append(
        "ratio = raftlog / JetStream (for latency rows, lower is better: ratio < 1 means faster)"
    )
    lines.append(
        "JetStream R1 acknowledges from the page cache (no per-message fsync); raftlog's "
        "sync=always rows are fsynced before the ack, the sync=interval rows are not"
    )
    lines.append(
        f"produce: ProduceStream, {args.window} messages unacknowledged (x1) or "
        f"{args.batch_window} batches (batched); consume: ConsumeStream max_records={args.batch}"
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per produce run")
    ap.add_argument("--max-records", type=int, default=1_000_000, help="cap per produce run")
    ap.add_argument("--batch", type=int, default=1000, help="records per batch message")
    ap.add_argument("--window", type=int, default=1000, help="unacked messages, 1 record each")
    ap.add_argument("--batch-window", type=int, default=8, help="unacked batch messages")
    ap.add_argument("--latency-ops", type=int, default=2000)
    ap.add_argument("--sync", choices=("always", "interval", "never"), default="always")
    ap.add_argument("--skip-peers", action="store_true", help="do not run JetStream")
    ap.add_argument("--quiet-wait", type=float, default=20.0, help="JetStream's --quiet-wait")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args, _unknown = ap.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        node = Node(Path(tmp), args.sync)
        try:
            print(f"raftlog node at {node.addr} (sync={args.sync})", file=sys.stderr)
            ours = asyncio.run(measure(node, args))
        finally:
            node.stop()
    if args.sync == "always":
        ours.update(asyncio.run(page_cache_latency(args)))
    js = {} if args.skip_peers else jetstream(args)
    print(render(ours, js, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"raftlog": ours, "jetstream_r1": js}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

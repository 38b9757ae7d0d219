"""The grpc.aio ceiling of one stream message here: a bidi echo with nothing else in it.

A server subprocess (grpc.aio, mutual TLS with development certificates, 127.0.0.1) serves
one bidi-streaming method that answers every ``ProduceRequest`` with a ``ProduceResponse``
at once; this process is the client, with ``--window`` messages in flight on one stream
(the same loop as ``bench_grpc.produce_stream``). Prints messages/s and the CPU time per
message of each side. ``--server-style`` picks how the server handles the stream:
``yield`` (``async for`` over the requests, ``yield`` each response: what a servicer
usually does), ``rw`` (``context.read()`` / ``context.write()``) or ``burst``
(ProduceStream's shape without the log: requests queued by a reader task, every queued one
answered at once, after ``--burst-wait-ms`` standing in for the append).

    .venv/bin/python bench/bench_grpc_echo.py --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bench_grpc
import bench_stream_x1
import grpc

from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import TLSConfig, write_dev_certs
from raftlog.security.grpc_tls import grpc_channel_credentials, grpc_server_credentials

METHOD = "/log.v1.Log/ProduceStream"


async def serve(certs_dir: Path, style: str, burst_wait_s: float) -> None:
    certs = write_dev_certs(certs_dir)
    server_tls = certs["server"]
    tls = TLSConfig(server_tls.cert_file, server_tls.key_file, server_tls.ca_file)
    response = log_pb2.ProduceResponse(offset=1, last_offset=1)

    async def echo_yield(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for _ in requests:
            yield response

    async def echo_rw(requests: Any, context: Any) -> None:
        read, write, eof = context.read, context.write, grpc.aio.EOF
        while (await read()) is not eof:
            await write(response)

    async def echo_burst(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        # ProduceStream's shape without the log: a reader task queues the requests, the
        # handler answers every queued one at once (after a pause standing in for an
        # append: --burst-wait-ms)
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def reader() -> None:
            async for request in requests:
                queue.put_nowait(request)
            queue.put_nowait(None)

        task = asyncio.create_task(reader())
        try:
            while (await queue.get()) is not None:
                if burst_wait_s:
                    await asyncio.sleep(burst_wait_s)
                n = 1 + queue.qsize()  # what arrived meanwhile joins the burst
                ended = False
                for _ in range(n - 1):
                    if queue.get_nowait() is None:
                        ended = True
                        n -= 1
                for _ in range(n):
                    yield response
                if ended:
                    break
        finally:
            task.cancel()

    handlers = {"yield": echo_yield, "rw": echo_rw, "burst": echo_burst}
    handler = grpc.stream_stream_rpc_method_handler(
        handlers[style],
        log_pb2.ProduceRequest.FromString,
        log_pb2.ProduceResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("log.v1.Log", {"ProduceStream": handler}),)
    )
    port = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(tls))
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def client(
    port: int, pid: int, certs_dir: Path, args: argparse.Namespace
) -> tuple[int, float, float, float]:
    """(messages, seconds, client CPU s, server CPU s) of the run after a warm-up."""
    # the server wrote the certificates (the CA is its own); the client reads them
    tls = TLSConfig(
        certs_dir / "root-client.pem", certs_dir / "root-client-key.pem", certs_dir / "ca.pem"
    )
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        grpc_channel_credentials(tls),
        options=[("grpc.ssl_target_name_override", "localhost")],
    ) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        await bench_grpc.produce_stream(stub, args.size, 1, 0.5, 20_000, args.window)
        server_before = bench_stream_x1.proc_cpu_s(pid)
        client_before = time.process_time()
        n, elapsed, _ = await bench_grpc.produce_stream(
            stub, args.size, 1, args.duration, args.max_records, args.window
        )
        client_cpu = time.process_time() - client_before
        server_cpu = bench_stream_x1.proc_cpu_s(pid) - server_before
    return n, elapsed, client_cpu, server_cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--window", type=int, default=1000)
    p.add_argument("--max-records", type=int, default=300_000)
    p.add_argument("--server-style", choices=("yield", "rw", "burst"), default="yield")
    p.add_argument("--burst-wait-ms", type=float, default=0.0)
    p.add_argument(
        "--switch-interval", type=float, default=0.0, help="sys.setswitchinterval, both sides"
    )
    p.add_argument("--serve", metavar="CERTS_DIR", help=argparse.SUPPRESS)
    args, _unknown = p.parse_known_args()  # bench/run.py passes its own
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    if args.serve:
        asyncio.run(serve(Path(args.serve), args.server_style, args.burst_wait_ms / 1e3))
        return 0
    with tempfile.TemporaryDirectory(prefix="raftlog-echo-") as tmp:
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                tmp,
                "--server-style",
                args.server_style,
                "--switch-interval",
                str(args.switch_interval),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            n, elapsed, client_cpu, server_cpu = asyncio.run(
                client(port, proc.pid, Path(tmp), args)
            )
        finally:
            proc.terminate()
            proc.wait(10)
    print(
        f"echo ({args.server_style}) {args.size} B, window {args.window}: {n:,} messages in "
        f"{elapsed:.2f} s = {n / elapsed:,.0f} messages/s"
    )
    print(f"  server {server_cpu / n * 1e6:6.1f} us CPU/message")
    print(f"  client {client_cpu / n * 1e6:6.1f} us CPU/message")
    return 0


if __name__ == "__main__":
    sys.exit(main())

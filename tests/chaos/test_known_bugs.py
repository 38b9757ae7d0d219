"""Bugs the chaos runs found outside tests/chaos, kept as regression tests once fixed.

**Forking with a preexec_fn under gRPC load killed the child before exec (fixed).** The
agent started Serf with ``asyncio.create_subprocess_exec(..., preexec_fn=hook)`` after its
gRPC server was up, and ``DevCluster.start`` did the same with ``subprocess.Popen``. A
``preexec_fn`` makes Python fork and run code in the child; with gRPC threads busy,
gRPC's fork handlers left the child to abort (SIGABRT, ``ev_epoll1_linux.cc ... Check
failed``) or segfault before exec: 30-60 of 200 children died. In the chaos runs it made
an agent exit at start ("serf agent n1 exited with status -6 while starting") and a
restarted node die at once. Both now spawn through :mod:`raftlog.discovery.spawn`
(``spawn_async`` for Serf, ``spawn`` for the dev cluster), which sets the parent-death
signal in the child through ``setpriv --pdeathsig`` or a Python trampoline, never a
``preexec_fn``. This test spawns 200 children through those very helpers while gRPC
calls run; putting a ``preexec_fn`` back into them makes it fail again.
(``tests/discovery/test_spawn.py`` checks deterministically that no ``preexec_fn``
reaches ``Popen`` and that the children still die with their parent.)
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.chaos

REPRO = """
import asyncio, subprocess, sys
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from raftlog.discovery.spawn import Launcher, spawn, spawn_async

helper, launcher, count = sys.argv[1], Launcher(sys.argv[2]), int(sys.argv[3])

async def child_status() -> int:
    if helper == "spawn_async":  # how SerfAgent starts serf
        proc = await spawn_async(
            ["/bin/true"], stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
            launcher=launcher,
        )
        return await asyncio.wait_for(proc.wait(), 10)
    # how DevCluster.start starts an agent: a blocking Popen on the caller's thread
    popen = spawn(
        ["/bin/true"], stderr=subprocess.DEVNULL, start_new_session=True, launcher=launcher
    )
    return await asyncio.to_thread(popen.wait, 10)

async def main() -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    calls = 0

    async def load() -> None:
        nonlocal calls
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while not stop.is_set():
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                calls += 1

    tasks = [asyncio.create_task(load()) for _ in range(8)]
    while calls < 50:  # the load runs before the first spawn
        await asyncio.sleep(0.01)
    bad = []
    for _ in range(count):
        status = await child_status()
        if status != 0:
            bad.append(status)
    stop.set()
    await asyncio.gather(*tasks)
    await server.stop(0)
    print(calls, len(bad), sorted(set(bad)))

asyncio.run(main())
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("helper", "launcher", "count"),
    [
        ("spawn_async", "setpriv", 200),
        ("spawn", "setpriv", 200),
        # the fallback starts an interpreter per child (~0.1 s): fewer children
        ("spawn_async", "python", 40),
    ],
)
def test_spawning_under_grpc_load_never_kills_the_child(
    helper: str, launcher: str, count: int
) -> None:
    if launcher == "setpriv":
        from raftlog.discovery.spawn import find_setpriv

        if find_setpriv() is None:
            pytest.skip("no setpriv with --pdeathsig here")
    done = subprocess.run(
        [sys.executable, "-c", REPRO, helper, launcher, str(count)],
        check=False,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    calls, died, statuses = done.stdout.strip().splitlines()[-1].split(" ", 2)
    assert int(calls) >= 50, "the gRPC load did not run"
    assert int(died) == 0, (
        f"{died} of {count} children died before exec (spawned with {helper}, "
        f"launcher {launcher}; exit statuses {statuses})"
    )

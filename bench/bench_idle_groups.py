"""Idle cost of many Raft groups per node (issue 17, item 4): CPU of 3 nodes at rest.

Each node is a process of its own with one TCP+TLS Raft transport and a GroupRouter
(raftlog.raft.groups) on it, hosting G Raft groups (on-disk stores, the agent's default
timing: 50 ms ticks, a heartbeat every tick). Every group has all 3 nodes as voters (R3).
Once every group on every node knows its leader (and, with quiescence, every group is
quiet), the parent reads each process's CPU time (/proc/<pid>/stat, user + system) over
--idle-seconds and prints it as % of one core: for G = 1 (the baseline) and each G asked
for, with heartbeats as today and with quiescence (``quiesce_after_ticks=3``, the
router's liveness pings every 0.5 s), all in the same run.

Goal of issue 17: 100 partitions at R3 on 3 nodes under 10 % of one core per node when
idle. What is measured here is the Raft groups alone (no gRPC server, no Serf): the part
that grows with partitions.
Unknown arguments are ignored (bench/run.py passes its own).
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

from bench_stream_x1 import proc_cpu_s

from raftlog.agent.devcluster import free_port
from raftlog.raft import RaftConfig, Server
from raftlog.raft.config import NodeConfig
from raftlog.raft.groups import DEFAULT_GROUP, GroupRouter
from raftlog.raft.node import RaftNode
from raftlog.raft.testing import ListFSM
from raftlog.raft.transport_tcp import TcpTransport, TcpTransportConfig
from raftlog.security import TLSConfig, write_dev_certs

#: Longest wait for every group of every node to know a leader, in seconds.
READY_TIMEOUT_S = 120.0


def group_id(k: int) -> str:
    return DEFAULT_GROUP if k == 0 else f"bench/{k}"


async def child(args: argparse.Namespace) -> None:
    """One node: serve, host the groups, print ``ready <leaders>`` once every group knows
    its leader, then run until stdin closes."""
    addresses: dict[str, str] = json.loads(args.addresses)
    certs = Path(args.certs)
    tls = TLSConfig(certs / "server.pem", certs / "server-key.pem", certs / "ca.pem")
    transport = TcpTransport(
        TcpTransportConfig(node_id=args.node, tls=tls), authorize=lambda cn: cn == "server"
    )
    host, port = addresses[args.node].rsplit(":", 1)
    await transport.serve(host, int(port))
    quiet = args.quiesce_ticks > 0
    router = GroupRouter(transport, liveness_interval=0.5 if quiet else None)
    servers = [Server(n, a) for n, a in sorted(addresses.items())]
    nodes: list[RaftNode] = []
    try:
        for k in range(args.groups):
            config = NodeConfig(
                raft=RaftConfig(id=args.node, quiesce_after_ticks=args.quiesce_ticks),
                data_dir=Path(args.data) / f"g{k}",
                seed=k,
            )
            node = await RaftNode.on_disk(
                config, ListFSM(), router.group(group_id(k)), peers=addresses
            )
            router.add_down_listener(node.peer_unreachable)
            await node.start()
            nodes.append(node)
        for node in nodes:
            await node.bootstrap(servers)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(n.leader_id and (n.quiesced or not quiet) for n in nodes):
            if time.monotonic() > deadline:
                raise SystemExit(f"{args.node}: not every group has a leader")
            await asyncio.sleep(0.1)
        print("ready", sum(n.is_leader for n in nodes), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        for node in nodes:
            await node.close()
        await router.close()


def measure(
    groups: int, quiesce_ticks: int, seconds: float, root: Path, certs: Path
) -> tuple[list[float], list[int]]:
    """Per node: % of one core used while idle, and groups led."""
    names = ["n1", "n2", "n3"]
    addresses = {n: f"127.0.0.1:{free_port()}" for n in names}
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for n in names:
            procs[n] = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "--node",
                    n,
                    "--groups",
                    str(groups),
                    "--addresses",
                    json.dumps(addresses),
                    "--certs",
                    str(certs),
                    "--quiesce-ticks",
                    str(quiesce_ticks),
                    "--data",
                    str(root / f"{groups}-{quiesce_ticks}-{n}"),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        led: list[int] = []
        for n in names:  # readline blocks; the child exits (EOF) if it cannot get ready
            stdout = procs[n].stdout
            assert stdout is not None
            line = stdout.readline().split()
            if not line or line[0] != "ready":
                raise SystemExit(f"{n} with {groups} groups did not get ready")
            led.append(int(line[1]))
        before = {n: proc_cpu_s(p.pid) for n, p in procs.items()}
        start = time.monotonic()
        time.sleep(seconds)  # the measurement window itself: nothing to wait on
        took = time.monotonic() - start
        used = [(proc_cpu_s(procs[n].pid) - before[n]) / took * 100 for n in names]
        return used, led
    finally:
        for p in procs.values():
            if p.stdin is not None:
                p.stdin.close()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups-list", default="1,100", help="group counts to measure")
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="measured idle window")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--node", help=argparse.SUPPRESS)
    ap.add_argument("--groups", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--addresses", help=argparse.SUPPRESS)
    ap.add_argument("--certs", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--quiesce-ticks", type=int, default=0, help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.child:
        asyncio.run(child(args))
        return 0
    counts = [int(x) for x in args.groups_list.split(",")]
    with tempfile.TemporaryDirectory(prefix="raftlog-idle-") as tmp:
        root = Path(tmp)
        write_dev_certs(root / "certs")
        print(
            f"idle CPU of 3 nodes (one process each), Raft groups at R3, "
            f"{args.idle_seconds:.0f} s window, python {sys.version.split()[0]}, "
            f"{os.cpu_count()} cpus"
        )
        print(
            f"{'groups':>7} {'mode':>11} {'n1 %core':>9} {'n2 %core':>9} {'n3 %core':>9} "
            f"{'led':>12}"
        )
        for groups in counts:
            for mode, ticks in (("heartbeats", 0), ("quiescent", 3)):
                used, led = measure(groups, ticks, args.idle_seconds, root, root / "certs")
                print(
                    f"{groups:>7} {mode:>11} {used[0]:>9.1f} {used[1]:>9.1f} {used[2]:>9.1f} "
                    f"{'/'.join(map(str, led)):>12}",
                    flush=True,
                )
    print("goal (issue 17): 100 groups under 10 % of one core per node")
    return 0


if __name__ == "__main__":
    sys.exit(main())

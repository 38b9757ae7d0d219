"""The one bring-up of a cluster of real ``raftlog agent`` processes for tests.

:func:`new_cluster` builds a :class:`DevCluster` on the session's dev certificates and the
example ACL (nodes registered, none started); :func:`start_cluster` starts its nodes (the
first with ``--bootstrap``) and waits until every node names the same leader and sees every
member. :func:`three_node_cluster` (for module-scoped fixtures, outside an event loop) and
:func:`three_node_cluster_async` (inside a test) do both and stop every node on exit.

Agents get SIGTERM when the thread that started them exits (parent-death signal), so start
them from the main thread or the event loop's thread, never from ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from raftlog.agent.devcluster import DevCluster, DevClusterError, free_port
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles
from support.client_nodes import tls_of
from support.cluster_files import dev_cluster_files

NAMES = ("n1", "n2", "n3")
#: Runs agents through :mod:`support.chaos_fsync`, whose disk faults a test switches on
#: and off with ``chaos_fsync.set_fault(data_dir, "eio" | "enospc" | None)``.
FAULTY_DISK_LAUNCHER = (sys.executable, str(Path(__file__).with_name("chaos_fsync.py")))
#: What an agent logs when a port picked for it was bound by another process before the
#: agent started (ports are picked free, then used: other tests on the machine race it).
PORT_TAKEN = "address already in use"
#: Fresh tries of a node that lost one of its ports during the bring-up.
PORT_RETRIES = 2
#: Gossip tuned for one host, and no fsync: tests need speed, not durability on power loss.
AGENT_ARGS = ("--serf-profile", "local", "--sync", "never")


def new_cluster(
    root: Path,
    certs: dict[str, CertFiles],
    *,
    names: tuple[str, ...] = NAMES,
    agent_args: tuple[str, ...] = AGENT_ARGS,
    static_peers: bool = False,
    raftlog: tuple[str, ...] | None = None,
) -> DevCluster:
    """A cluster under ``root`` with ``names`` registered (not started); its ``client_tls``
    is the ``root`` client's. With ``static_peers``, every node gets ``--peers`` listing
    them all (static membership instead of Serf's). ``raftlog``: the command that runs the
    CLI (default: the venv's ``raftlog``; :data:`FAULTY_DISK_LAUNCHER` for disk faults)."""
    c = DevCluster(root, dev_cluster_files(root, certs), agent_args=agent_args, raftlog=raftlog)
    c.client_tls = tls_of(certs["root"])
    for name in names:
        c.add_node(name)
    if static_peers:
        peers = ",".join(f"{n}={c.nodes[n].rpc_addr}" for n in names)
        for name in names:
            c.nodes[name] = dataclasses.replace(c.nodes[name], extra=("--peers", peers))
    return c


async def start_cluster(c: DevCluster, *, static_peers: bool = False, timeout_s: float = 40) -> str:
    """Start every registered node and return the leader once each node sees all of them.

    Serf mode: the first node bootstraps and leads alone, then the others join it. Static
    mode: all start at once, joining nobody (the leader adds the listed peers). A node that
    exits during the bring-up because another process took one of its ports gets new ports
    and a fresh data dir (it was no member yet) and starts again (Serf mode only: in
    static mode the peers list names the ports)."""
    assert c.client_tls is not None
    first, *rest = list(c.nodes)
    if static_peers:
        c.start(first, bootstrap=True, join=[])
        for name in rest:
            c.start(name, join=[])
        return await c.wait_for(c.client_tls, members=len(c.nodes), timeout_s=timeout_s, every=True)
    c.start(first, bootstrap=True)
    await _wait_retrying_port_clashes(c, first, members=1, timeout_s=30, every=False)
    for name in rest:
        c.start(name)
    return await _wait_retrying_port_clashes(
        c, first, members=len(c.nodes), timeout_s=timeout_s, every=True
    )


async def _wait_retrying_port_clashes(
    c: DevCluster, first: str, *, members: int, timeout_s: float, every: bool
) -> str:
    assert c.client_tls is not None
    for attempt in range(PORT_RETRIES + 1):
        try:
            return await c.wait_for(c.client_tls, members=members, timeout_s=timeout_s, every=every)
        except DevClusterError:
            clashed = _port_clashes(c)
            if attempt == PORT_RETRIES or not clashed:
                raise
            for name in clashed:
                _renew(c, name)
                c.start(name, bootstrap=name == first)
    raise AssertionError("unreachable")


def _port_clashes(c: DevCluster) -> list[str]:
    """Nodes that exited on their own because one of their ports was taken."""
    return [
        name
        for name, node in c.nodes.items()
        if node.proc is not None
        and node.proc.poll() is not None
        and not node.stopped
        and PORT_TAKEN in c.log_text(name).lower()
    ]


def _renew(c: DevCluster, name: str) -> None:
    """Reap node ``name``, wipe its data dir and give it new ports."""
    c.wait_exit(name, 1.0)
    node = c.nodes[name]
    shutil.rmtree(node.data_dir, ignore_errors=True)
    if node.log_path is not None:
        node.log_path.rename(node.log_path.with_suffix(".port-taken.log"))
    c.nodes[name] = dataclasses.replace(
        node,
        rpc_port=free_port(),
        gossip_port=free_port(),
        serf_rpc_port=free_port(),
        proc=None,
        stopped=False,
    )


def serve_metrics(cluster: DevCluster, *extra: str) -> dict[str, str]:
    """Give every registered node ``--metrics-addr 127.0.0.1:<free port>`` (and the agent
    flags ``extra``); name -> that address."""
    addrs = {}
    for name, node in cluster.nodes.items():
        addrs[name] = f"127.0.0.1:{free_port()}"
        flags = (*node.extra, "--metrics-addr", addrs[name], *extra)
        cluster.nodes[name] = dataclasses.replace(node, extra=flags)
    return addrs


def assert_clean_exit(c: DevCluster) -> None:
    """Every node that was started exited with status 0 (after ``stop_all``)."""
    for name, node in c.nodes.items():
        if node.proc is not None:
            code = node.proc.returncode
            assert code == 0, f"{name} exited with {code}:\n{c.log_text(name)[-3000:]}"


@contextlib.contextmanager
def three_node_cluster(
    root: Path, certs: dict[str, CertFiles], *, check_exit: bool = True, **options: object
) -> Iterator[DevCluster]:
    """A running cluster (:func:`new_cluster` options), for a module-scoped fixture: started
    here with ``asyncio.run``, stopped on exit; with ``check_exit``, every node must then
    have exited 0 (checked only when the body did not raise)."""
    static = bool(options.get("static_peers", False))
    c = new_cluster(root, certs, **options)  # type: ignore[arg-type]
    try:
        asyncio.run(start_cluster(c, static_peers=static))
        yield c
    finally:
        c.stop_all()
    if check_exit:
        assert_clean_exit(c)


@contextlib.asynccontextmanager
async def three_node_cluster_async(
    root: Path, certs: dict[str, CertFiles], *, check_exit: bool = True, **options: object
) -> AsyncIterator[DevCluster]:
    """:func:`three_node_cluster` inside a running event loop (a test's own cluster)."""
    static = bool(options.get("static_peers", False))
    c = new_cluster(root, certs, **options)  # type: ignore[arg-type]
    try:
        await start_cluster(c, static_peers=static)
        yield c
    finally:
        c.stop_all()
    if check_exit:
        assert_clean_exit(c)


#: Size (bytes) of a record from :func:`numbered`, and records per Produce of
#: :func:`produce_numbered`.
RECORD = 1000
BATCH = 50


def numbered(i: int) -> bytes:
    """Record number ``i``: its number first (readable in a dump), RECORD bytes in all."""
    return b"%08d-" % i + b"r" * (RECORD - 9)


async def produce_numbered(c: DevCluster, name: str, first: int, batches: int) -> int:
    """``batches`` Produce calls of BATCH records numbered from ``first`` through node
    ``name`` (a follower forwards them); the offset of the last one."""
    assert c.client_tls is not None
    last = -1
    async with c.channel(name, c.client_tls) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        for b in range(batches):
            records = [log_pb2.Record(value=numbered(first + b * BATCH + i)) for i in range(BATCH)]
            resp = await stub.Produce(log_pb2.ProduceRequest(records=records), timeout=20)
            last = resp.last_offset
    return last

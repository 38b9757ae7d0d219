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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from raftlog.agent.devcluster import DevCluster
from raftlog.security import CertFiles
from support.client_nodes import tls_of
from support.cluster_files import dev_cluster_files

NAMES = ("n1", "n2", "n3")
#: Gossip tuned for one host, and no fsync: tests need speed, not durability on power loss.
AGENT_ARGS = ("--serf-profile", "local", "--sync", "never")


def new_cluster(
    root: Path,
    certs: dict[str, CertFiles],
    *,
    names: tuple[str, ...] = NAMES,
    agent_args: tuple[str, ...] = AGENT_ARGS,
    static_peers: bool = False,
) -> DevCluster:
    """A cluster under ``root`` with ``names`` registered (not started); its ``client_tls``
    is the ``root`` client's. With ``static_peers``, every node gets ``--peers`` listing
    them all (static membership instead of Serf's)."""
    c = DevCluster(root, dev_cluster_files(root, certs), agent_args=agent_args)
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
    mode: all start at once, joining nobody (the leader adds the listed peers)."""
    assert c.client_tls is not None
    first, *rest = list(c.nodes)
    if static_peers:
        c.start(first, bootstrap=True, join=[])
        for name in rest:
            c.start(name, join=[])
    else:
        c.start(first, bootstrap=True)
        await c.wait_for(c.client_tls, members=1, timeout_s=30)
        for name in rest:
            c.start(name)
    return await c.wait_for(c.client_tls, members=len(c.nodes), timeout_s=timeout_s, every=True)


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

"""A process cluster with static membership (no Serf), optionally serving /metrics.

Static peers make a 3-node cluster of real ``raftlog agent`` processes in a few seconds
(no gossip to settle), which is what the telemetry and admin tests need.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from raftlog.agent.devcluster import ClusterFiles, DevCluster, free_port
from raftlog.security import TLSConfig


@dataclasses.dataclass
class StaticCluster:
    """A :class:`DevCluster` of static-peer nodes and each node's metrics address."""

    cluster: DevCluster
    names: tuple[str, ...]
    metrics_addrs: dict[str, str]

    def rpc_addrs(self) -> list[str]:
        return [self.cluster.nodes[n].rpc_addr for n in self.names]

    async def start(self, tls: TLSConfig, timeout_s: float = 40) -> str:
        """Start every node (the first bootstraps); the leader once all agree on it."""
        first, *rest = self.names
        self.cluster.start(first, bootstrap=True, join=[])
        for name in rest:
            self.cluster.start(name, join=[])
        return await self.cluster.wait_for(
            tls, members=len(self.names), timeout_s=timeout_s, every=True
        )


def static_cluster(
    root: Path,
    files: ClusterFiles,
    names: tuple[str, ...] = ("n1", "n2", "n3"),
    *,
    metrics: bool = False,
    agent_args: tuple[str, ...] = (),
) -> StaticCluster:
    """Register ``names`` (not started) with ``--peers`` naming them all; with ``metrics``
    each node also gets ``--metrics-addr 127.0.0.1:<free port>``."""
    cluster = DevCluster(root, files, agent_args=("--sync", "never", *agent_args))
    for name in names:
        cluster.add_node(name)
    peers = ",".join(f"{n}={cluster.nodes[n].rpc_addr}" for n in names)
    metrics_addrs: dict[str, str] = {}
    for name in names:
        extra: tuple[str, ...] = ("--peers", peers)
        if metrics:
            metrics_addrs[name] = f"127.0.0.1:{free_port()}"
            extra += ("--metrics-addr", metrics_addrs[name])
        cluster.nodes[name] = dataclasses.replace(cluster.nodes[name], extra=extra)
    return StaticCluster(cluster, names, metrics_addrs)

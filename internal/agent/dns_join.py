"""DNS join (``--join-dns NAME[:PORT]``) and the bootstrap rule that is safe under parallel
start (docs/cluster.md, "Joining through DNS").

The membership step runs :func:`dns_join` as a task it owns::

    resolve NAME (A + AAAA) ──> others = addresses:PORT minus our own gossip address
        │  none, or no Serf agent answers: wait JOIN_RETRY_S, resolve again
        v  (bounded by join_dns_timeout_s)
    Serf join(others) ─ one answered ─> joined: the leader's Membership adds us to Raft

    and, only on the first node (name ending in "-0", StatefulSet ordinal 0) with no Raft
    state: once joined (or once DNS lists nobody else), listen dns_bootstrap_wait_s for a
    leader; nobody leads -> bootstrap a new cluster; a leader speaks -> we are a member.

The race it avoids: with ``podManagementPolicy: Parallel`` every pod starts at once with an
empty volume, sees the others (or nobody) in DNS, and cannot tell "first" from "late". If
each node that found no cluster bootstrapped, two or three clusters would form and never
merge. Only ordinal 0 ever bootstraps, and only with an empty data directory (a restart never
bootstraps again), and only after a quiet period in which no leader contacted it: a pod-0
that lost its volume while the others still hold a cluster hears that cluster's leader (it
is in the leader's configuration, or the leader adds it on the Serf join) and joins it
instead of founding a second one.
"""

from __future__ import annotations

import asyncio
import logging
import re

from raftlog.config import AgentConfig
from raftlog.discovery import SerfAgent
from raftlog.discovery.dns import DNSError, host_port, parse_join_dns, resolve
from raftlog.raft import RaftError, Server
from raftlog.raft.node import RaftNode

logger = logging.getLogger("raftlog.agent")

#: Seconds between two resolutions while nobody has been joined.
JOIN_RETRY_S = 1.0
#: Bound of one DNS query and of one Serf join call (s).
QUERY_TIMEOUT_S = 2.0
#: How often the bootstrap rule looks for a leader during its quiet period (s).
LEADER_POLL_S = 0.1

_ORDINAL_ZERO = re.compile(r".+-0")


def is_first_ordinal(node_name: str) -> bool:
    """Whether ``node_name`` is a StatefulSet's ordinal 0 (``<set>-0``)."""
    return _ORDINAL_ZERO.fullmatch(node_name) is not None


def dns_server_of(config: AgentConfig) -> tuple[str, int] | None:
    """(HOST, PORT) of ``--dns-server``, or None for the system resolver."""
    if not config.dns_server:
        return None
    host, _, port = config.dns_server.rpartition(":")
    return host.strip("[]"), int(port)


async def dns_join(config: AgentConfig, serf: SerfAgent, node: RaftNode, rpc_addr: str) -> bool:
    """Resolve and join until joined or ``join_dns_timeout_s`` runs out; then apply the
    bootstrap rule. True once a Serf member answered (or DNS lists nobody else)."""
    target = parse_join_dns(config.join_dns, config.gossip_port)
    server = dns_server_of(config)
    own = {config.bind_addr, host_port(config.bind_host, config.gossip_port)}
    first_fresh = is_first_ordinal(config.node_name) and not node.has_state()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.join_dns_timeout_s
    joined = alone = False
    last = "nothing resolved yet"
    while loop.time() < deadline:
        try:
            addrs = await resolve(target.name, server, QUERY_TIMEOUT_S)
        except DNSError as exc:
            last = str(exc)
            addrs = []
        else:
            others = [host_port(a, target.port) for a in addrs]
            others = [a for a in others if a not in own]
            last = f"{target.name} lists {addrs or 'nobody'}"
            if not others and first_fresh:
                alone = True  # nobody else yet: ordinal 0 founds the cluster
                break
            if others:
                try:
                    count = await serf.join(others, timeout=QUERY_TIMEOUT_S)
                except Exception as exc:  # nobody answered yet (Serf says so), or a timeout
                    last = f"{last}; join failed: {exc}"
                else:
                    if count > 0:
                        joined = True
                        logger.info(
                            "joined %d of %s through DNS name %s", count, others, target.name
                        )
                        break
        await asyncio.sleep(min(JOIN_RETRY_S, max(0.0, deadline - loop.time())))
    if not (joined or alone):
        logger.error(
            "DNS join of %s gave up after %.0f s (%s); this node stays out of any cluster "
            "until it is restarted or joined",
            config.join_dns,
            config.join_dns_timeout_s,
            last,
        )
        return False
    if first_fresh:
        await _bootstrap_if_nobody_leads(config, node, rpc_addr)
    return True


async def run_dns_join(config: AgentConfig, serf: SerfAgent, node: RaftNode, rpc_addr: str) -> bool:
    """:func:`dns_join` as a task body: an unexpected error is logged, not lost."""
    try:
        return await dns_join(config, serf, node, rpc_addr)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("DNS join of %s failed", config.join_dns)
        return False


async def _bootstrap_if_nobody_leads(config: AgentConfig, node: RaftNode, rpc_addr: str) -> None:
    loop = asyncio.get_running_loop()
    quiet_until = loop.time() + config.dns_bootstrap_wait_s
    while loop.time() < quiet_until:
        if node.leader_id or node.has_state():
            logger.info(
                "not bootstrapping: leader %s is already in contact (an existing cluster)",
                node.leader_id or "(unknown)",
            )
            return
        await asyncio.sleep(LEADER_POLL_S)
    try:
        await node.bootstrap([Server(node.id, rpc_addr)])
    except RaftError as exc:  # a leader reached us in the last instant: we are a member
        logger.info("not bootstrapping: %s", exc)
        return
    logger.info(
        "bootstrapped a new cluster with %s at %s (ordinal 0, empty data dir, no leader "
        "heard for %.1f s)",
        node.id,
        rpc_addr,
        config.dns_bootstrap_wait_s,
    )

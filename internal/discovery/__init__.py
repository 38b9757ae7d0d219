"""Cluster membership: the Serf agent, our asyncio client of its RPC, and the glue to Raft.

- :mod:`raftlog.discovery.serf_rpc`: :class:`SerfRPCClient`, Serf's msgpack RPC protocol.
- :mod:`raftlog.discovery.serf_agent`: :class:`SerfAgent`, the supervised ``serf agent``
  subprocess, and :func:`find_serf_binary`.
- :mod:`raftlog.discovery.membership`: :class:`Membership` (Serf events -> a
  :class:`Handler`'s ``join``/``leave`` on the leader) and :class:`StaticMembership`
  (a fixed peer list). See ``docs/membership.md``.
- :mod:`raftlog.discovery.spawn`: :func:`spawn` / :func:`spawn_async`, children that die
  with their parent (parent-death signal set by ``setpriv`` or a trampoline, never a
  ``preexec_fn``); used for Serf and by the dev cluster.
"""

from raftlog.discovery.membership import (
    Handler,
    Membership,
    MembershipConfig,
    MembershipConfigError,
    MemberSource,
    SerfMemberSource,
    StaticMembership,
    parse_static_peers,
)
from raftlog.discovery.serf_agent import (
    RPC_ADDR_TAG,
    SERF_BIN_ENV,
    SerfAgent,
    SerfAgentConfig,
    SerfAgentError,
    SerfConfigError,
    SerfNotFoundError,
    find_serf_binary,
)
from raftlog.discovery.serf_rpc import (
    EventStream,
    Member,
    MemberEvent,
    SerfConnectionError,
    SerfRPCClient,
    SerfRPCError,
    SerfStreamOverflowError,
    SerfTimeoutError,
)

__all__ = [
    "RPC_ADDR_TAG",
    "SERF_BIN_ENV",
    "EventStream",
    "Handler",
    "Member",
    "MemberEvent",
    "MemberSource",
    "Membership",
    "MembershipConfig",
    "MembershipConfigError",
    "SerfAgent",
    "SerfAgentConfig",
    "SerfAgentError",
    "SerfConfigError",
    "SerfConnectionError",
    "SerfMemberSource",
    "SerfNotFoundError",
    "SerfRPCClient",
    "SerfRPCError",
    "SerfStreamOverflowError",
    "SerfTimeoutError",
    "StaticMembership",
    "find_serf_binary",
    "parse_static_peers",
]

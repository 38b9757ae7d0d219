"""What an operator sees of one node: :class:`NodeStatus` and, on the leader, every
member's :class:`MemberStatus` (suffrage and replication lag).

Built by :meth:`raftlog.distributed.DistributedLog.node_status` from Raft's public status
and the commit log's offsets; the admin service turns it into its wire message. Lag is in
Raft entries: the leader's last index minus the member's match index (0 for the leader).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raftlog.raft import Role, Status, Suffrage

#: Role names as operators read them (the ``role`` of Status and of ``raftlog status``).
ROLE_NAMES: dict[Role, str] = {
    Role.FOLLOWER: "follower",
    Role.PRE_CANDIDATE: "pre_candidate",
    Role.CANDIDATE: "candidate",
    Role.LEADER: "leader",
}


@dataclass(frozen=True)
class MemberStatus:
    """One member as the leader sees it."""

    id: str
    rpc_addr: str
    suffrage: str  # "voter" or "learner"
    match_index: int
    lag: int
    is_leader: bool


@dataclass(frozen=True)
class NodeStatus:
    """One node's view of itself (and, on the leader, of every member)."""

    id: str
    rpc_addr: str
    role: str
    term: int
    leader_id: str
    leader_addr: str
    commit_index: int
    applied_index: int
    last_index: int
    snapshot_index: int
    lowest_offset: int
    highest_offset: int
    members: tuple[MemberStatus, ...] = field(default_factory=tuple)
    #: Scrub and self-repair: records known damaged now, repaired, and checkpoint-hash
    #: mismatches since the node started.
    damaged_records: int = 0
    repaired_records: int = 0
    checkpoint_hash_mismatches: int = 0

    @property
    def empty(self) -> bool:
        """Whether the commit log holds no record."""
        return self.highest_offset < self.lowest_offset


def role_of(status: Status) -> str:
    """The role name, with a learner (a non-voting member) called so."""
    server = status.membership.get(status.id)
    if status.role is not Role.LEADER and server is not None and not server.is_voter:
        return "learner"
    return ROLE_NAMES.get(status.role, status.role.name.lower())


def members_of(status: Status) -> tuple[MemberStatus, ...]:
    """Every member with its lag, as the leader sees them; () on any other node."""
    if status.role is not Role.LEADER:
        return ()
    last = status.last_index
    out = []
    for server in status.membership:
        if server.id == status.id:
            match = last
        else:
            progress = status.progress.get(server.id)
            match = progress.match if progress is not None else 0
        out.append(
            MemberStatus(
                id=server.id,
                rpc_addr=server.address,
                suffrage="learner" if server.suffrage is Suffrage.LEARNER else "voter",
                match_index=match,
                lag=max(0, last - match),
                is_leader=server.id == status.id,
            )
        )
    return tuple(out)

"""Single-server membership changes: validate a change against a membership and apply it.

Only one server is added, promoted or removed per change, so any majority of the old voters
and any majority of the new voters overlap; that is what makes it safe to let a change take
effect as soon as its entry is appended (Ongaro's thesis, §4.1), without joint consensus.
"""

from __future__ import annotations

from raftlog.raft.errors import ConfChangeError
from raftlog.raft.types import ConfChange, ConfChangeType, Membership, Server, Suffrage


def apply_change(membership: Membership, change: ConfChange) -> Membership:
    """Return the membership after ``change``, or raise ConfChangeError saying why not."""
    if not change.node_id:
        raise ConfChangeError("a membership change needs a non-empty node id")
    current = membership.get(change.node_id)
    others = [s for s in membership if s.id != change.node_id]
    kind = change.type
    if kind in (ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER):
        if not change.address:
            raise ConfChangeError(f"adding {change.node_id!r} needs its address")
        suffrage = Suffrage.VOTER if kind is ConfChangeType.ADD_VOTER else Suffrage.LEARNER
        if current is not None:
            if current.suffrage is suffrage and current.address == change.address:
                raise ConfChangeError(f"{change.node_id!r} is already a member as requested")
            if current.suffrage is Suffrage.VOTER and suffrage is Suffrage.LEARNER:
                raise ConfChangeError(
                    f"{change.node_id!r} is a voter; remove it first to make it a learner"
                )
        return Membership.of([*others, Server(change.node_id, change.address, suffrage)])
    if kind is ConfChangeType.PROMOTE_LEARNER:
        if current is None:
            raise ConfChangeError(f"cannot promote {change.node_id!r}: not a member")
        if current.is_voter:
            raise ConfChangeError(f"cannot promote {change.node_id!r}: already a voter")
        return Membership.of([*others, Server(current.id, current.address, Suffrage.VOTER)])
    if kind is ConfChangeType.REMOVE:
        if current is None:
            raise ConfChangeError(f"cannot remove {change.node_id!r}: not a member")
        if current.is_voter and len(membership.voters) == 1:
            raise ConfChangeError(f"cannot remove {change.node_id!r}: it is the last voter")
        return Membership.of(others)
    raise ConfChangeError(f"unknown membership change type {kind!r}")

"""Majority arithmetic over voters (learners never count)."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

from raftlog.raft.types import NodeId


class VoteResult(enum.Enum):
    PENDING = 0
    WON = 1
    LOST = 2


def majority(n: int) -> int:
    """Smallest number of voters that is more than half of ``n``."""
    return n // 2 + 1


def committed_index(voters: Collection[NodeId], match: Mapping[NodeId, int]) -> int:
    """Highest index stored on a majority of ``voters`` (0 for an empty voter set)."""
    if not voters:
        return 0
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[majority(len(acked)) - 1]


def vote_result(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer be reached."""
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[NodeId], yes: Collection[NodeId]) -> bool:
    """True if the voters in ``yes`` form a majority of ``voters``."""
    return sum(1 for v in voters if v in yes) >= majority(len(voters)) if voters else False

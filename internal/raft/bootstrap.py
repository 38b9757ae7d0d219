"""Bootstrap exactly once: the initial state of a brand-new cluster member, and the check
that refuses it to a node that already has Raft state (it must restart from that state;
bootstrapping again would fork the cluster)."""

from __future__ import annotations

from raftlog.raft.codec import encode_conf_change_record
from raftlog.raft.errors import BootstrapError
from raftlog.raft.types import (
    ConfChangeRecord,
    Entry,
    EntryType,
    HardState,
    Membership,
    PersistentState,
)


def check_can_bootstrap(existing: PersistentState) -> None:
    """Raise BootstrapError, saying why, if ``existing`` (what the stores hold) is not empty.

    The runtime calls this before writing :func:`bootstrap_state` to its stores: a node that
    has ever had a term, a vote, a log entry or a snapshot must restart from that state.
    """
    hs = existing.hard_state
    reasons = []
    if hs.term or hs.vote or hs.commit:
        reasons.append(f"hard state term={hs.term} vote={hs.vote!r} commit={hs.commit}")
    if existing.entries:
        reasons.append(
            f"{len(existing.entries)} log entries from index {existing.entries[0].index}"
        )
    if existing.snapshot is not None:
        reasons.append(f"a snapshot at index {existing.snapshot.index}")
    if reasons:
        raise BootstrapError(
            "refusing to bootstrap: this node already has Raft state (" + "; ".join(reasons) + ")"
        )


def bootstrap_state(membership: Membership) -> PersistentState:
    """The initial stored state of a brand-new cluster member: the membership as a
    CONF_CHANGE entry at index 1, term 1.

    Call it only for a node whose stores are empty: the runtime must refuse to bootstrap a
    node that already has any state (a term, a vote, an entry or a snapshot), and say so;
    re-bootstrapping a restarted node would fork the cluster. Give every initial member the
    same membership (or bootstrap one node and add the others with membership changes).
    """
    if not membership.voters:
        raise ValueError("the initial membership needs at least one voter")
    data = encode_conf_change_record(ConfChangeRecord(None, membership))
    entry = Entry(term=1, index=1, type=EntryType.CONF_CHANGE, data=data)
    return PersistentState(hard_state=HardState(term=1), entries=(entry,))


__all__ = ["bootstrap_state", "check_can_bootstrap"]

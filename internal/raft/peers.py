"""The transport's peer table of a :class:`~raftlog.raft.node.RaftNode`.

Nodes are identified by id, never by address; the table maps ids to addresses for the
transport. It is the union of address hints (given at construction, by discovery through
``set_peer_addresses``, and with ``add_voter``/``add_learner``) and every address seen in a
membership. Hints matter for a node that is about to be added: it has no membership yet,
but must be able to answer the leader.
"""

from __future__ import annotations

from collections.abc import Mapping

from raftlog.raft.transport import Transport
from raftlog.raft.types import Membership, NodeId


class PeerTable:
    """Hints plus membership addresses, pushed to the transport when they change.

    Servers removed from the membership stay in the table: a removed server must still
    hear of its removal, and the transport dials a peer only when there is something to
    send, so a stale entry costs nothing.
    """

    def __init__(
        self, node_id: NodeId, transport: Transport, hints: Mapping[NodeId, str] | None
    ) -> None:
        self.id = node_id
        self._transport = transport
        self._hints: dict[NodeId, str] = dict(hints or {})
        self._table: dict[NodeId, str] = {}
        self._membership: Membership | None = None

    def hint(self, node_id: NodeId) -> str:
        """The hinted address of ``node_id`` ("" if none)."""
        return self._hints.get(node_id, "")

    def add_hint(self, node_id: NodeId, address: str) -> None:
        """Remember ``address`` for ``node_id`` unless a hint exists (a server being added)."""
        self._hints.setdefault(node_id, address)

    def set_hints(self, hints: Mapping[NodeId, str], membership: Membership) -> None:
        """Replace every hint (discovery) and push the table."""
        self._hints = dict(hints)
        self.sync(membership, force=True)

    def sync(self, membership: Membership, *, force: bool = False) -> None:
        """Bring the table in line with ``membership`` (cheap when it did not change)."""
        if not force and membership is self._membership:
            return
        self._membership = membership
        table = dict(self._table)
        table.update(self._hints)
        table.update({s.id: s.address for s in membership if s.address})
        table.pop(self.id, None)
        if table != self._table or force:
            self._table = table
            self._transport.update_peers(table)


__all__ = ["PeerTable"]

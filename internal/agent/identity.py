"""Whose data directory this is: the node id and the cluster id, recorded on first start.

``<data_dir>/identity.json`` (written with :func:`raftlog.log.fileio.atomic_write`, so a
crash leaves the old file or the new one)::

    {"version": 1, "node_id": "n1", "cluster_id": "4f0c...e2" | null}

- The node id is written on the first start of an empty data directory. Opening the
  directory under another ``--node-name`` is refused (:class:`IdentityError`, naming
  both): that node would start with another node's log, term and vote.
- The cluster id is a random UUID made by the node that bootstraps the cluster; every
  agent advertises its cluster id in the Serf tag ``cluster_id``; a node added to a cluster
  learns the id from the tag of the leader that added it, and records it. See
  docs/cluster.md ("Identity") for the rule and what each side refuses.

A data directory from before identities (Raft state, no file) is adopted under the name
it is started with, once, with a warning: nothing can tell whose it was.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from raftlog.config import ConfigError
from raftlog.log.fileio import atomic_write

logger = logging.getLogger("raftlog.agent")

IDENTITY_FILE = "identity.json"
_VERSION = 1
#: The Serf tag carrying an agent's cluster id.
CLUSTER_ID_TAG = "cluster_id"


class IdentityError(ConfigError):
    """The data directory belongs to another node or another cluster."""


@dataclass(frozen=True)
class Identity:
    node_id: str
    cluster_id: str | None = None


def new_cluster_id() -> str:
    return uuid.uuid4().hex


def _path(data_dir: Path) -> Path:
    return Path(data_dir) / IDENTITY_FILE


def read_identity(data_dir: Path) -> Identity | None:
    """The recorded identity, or None if the directory has none yet."""
    path = _path(data_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IdentityError(
            f"cannot read the identity of data directory {data_dir}: {exc}"
        ) from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("node_id"), str):
        raise IdentityError(f"{path} is not an identity file (no node_id): {raw!r}")
    cluster = raw.get("cluster_id")
    return Identity(raw["node_id"], cluster if isinstance(cluster, str) and cluster else None)


def write_identity(data_dir: Path, identity: Identity) -> None:
    data = {"version": _VERSION, "node_id": identity.node_id, "cluster_id": identity.cluster_id}
    atomic_write(_path(data_dir), (json.dumps(data) + "\n").encode())


def claim(data_dir: Path, node_id: str) -> Identity:
    """The identity of ``data_dir`` for node ``node_id``: recorded now if the directory
    has none; IdentityError if it belongs to another node (blocking: call in a thread)."""
    data_dir = Path(data_dir)
    found = read_identity(data_dir)
    if found is not None:
        if found.node_id != node_id:
            raise IdentityError(
                f"data directory {data_dir} belongs to node {found.node_id!r}, not "
                f"{node_id!r}: start it with --node-name {found.node_id}, or give node "
                f"{node_id!r} a data directory of its own (refusing to run node "
                f"{node_id!r} on {found.node_id!r}'s log, term and vote)"
            )
        return found
    data_dir.mkdir(parents=True, exist_ok=True)
    if any(p.name != IDENTITY_FILE for p in data_dir.iterdir()):
        logger.warning(
            "data directory %s has state but no identity (written before identities): "
            "recording it as node %r's",
            data_dir,
            node_id,
        )
    identity = Identity(node_id)
    write_identity(data_dir, identity)
    return identity


def check_cluster(identity: Identity, data_dir: Path, others: dict[str, str]) -> None:
    """IdentityError if members this node meets (``others``: name -> cluster id, from
    their Serf tags) belong to another cluster than the one its data directory records."""
    mine = identity.cluster_id
    if mine is None:
        return
    foreign = {name: cid for name, cid in others.items() if cid and cid != mine}
    if foreign:
        names = ", ".join(f"{n} (cluster {c})" for n, c in sorted(foreign.items()))
        raise IdentityError(
            f"data directory {data_dir} of node {identity.node_id!r} belongs to cluster "
            f"{mine}, but the members it joins belong to another cluster: {names}; "
            "refusing to join (use a fresh data directory to join that cluster)"
        )


__all__ = [
    "CLUSTER_ID_TAG",
    "IDENTITY_FILE",
    "Identity",
    "IdentityError",
    "check_cluster",
    "claim",
    "new_cluster_id",
    "read_identity",
    "write_identity",
]

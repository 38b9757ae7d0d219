"""The partition replicas one node hosts: a DistributedLog per (topic, partition), each its
own Raft group, all of them on the node's one :class:`~raftlog.raft.groups.GroupRouter`.

Where a replica lives on disk (``data_dir`` is the node's data directory)::

    data_dir/fsm, data_dir/raft                     the default topic's partition 0
    data_dir/partitions/<topic>/<partition>/fsm     every other partition
    data_dir/partitions/<topic>/<partition>/raft

The default partition sits exactly where the one-group version keeps its commit log and its
Raft files, so an existing data directory opens as that partition with no copy and no
conversion (``tests/distributed/test_partition_host.py`` opens one written by a real
``raftlog agent``). Its Raft group id is ``""``, which travels without an envelope, so it
also keeps talking to nodes of the one-group version. Every other partition's group id is
``"<topic>/<partition>"`` (topic names never contain ``/``: ``topic_name_problem``).

The host opens and closes the replicas it is told to (:meth:`PartitionHost.open`,
:meth:`~PartitionHost.close`), or those the controller's metadata assigns to this node
(:meth:`~PartitionHost.reconcile`). Opening never bootstraps by itself: bootstrapping a
replica that should have joined an existing group would fork it. ``reconcile`` bootstraps
a replica only if it has no Raft state and this node is one of the partition's initial
voters (``Assignment.initial``), with that same list, as every initial voter does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from raftlog.distributed.distributed_log import DistributedConfig, DistributedLog
from raftlog.distributed.forwarding import Forwarder
from raftlog.distributed.fsm import CommitLogFSM
from raftlog.distributed.scrub import RecordFetcher
from raftlog.domain import DomainError
from raftlog.log import LogConfig
from raftlog.partitions import (
    DEFAULT_TOPIC,
    ClusterMetadata,
    PartitionKey,
    leaders_to_transfer,
    topic_name_problem,
)
from raftlog.raft import Server
from raftlog.raft.config import NodeConfig
from raftlog.raft.groups import DEFAULT_GROUP, MAX_GROUP_ID_BYTES, GroupRouter
from raftlog.raft.node import RaftNode

log = logging.getLogger(__name__)


class PartitionHostError(ValueError):
    """A replica that cannot be opened as asked (bad topic name or number, or open already)."""


def group_id(topic: str, partition: int, incarnation: int = 0) -> str:
    """The Raft group id of a partition: ``""`` for the default partition (no envelope on
    the wire), ``"<topic>/<partition>"`` for incarnation 0 and
    ``"<topic>/<partition>@<incarnation>"`` otherwise, so that a replica of a deleted topic
    still running on a node that has not caught up never talks to the group of a topic
    created again under its name. A name too long for the envelope (over
    :data:`MAX_GROUP_ID_BYTES` with its suffix: topic names reach 249 characters) is
    replaced by ``"#"`` and 16 hex digits of its BLAKE2b hash."""
    if topic == DEFAULT_TOPIC and partition == 0:
        return DEFAULT_GROUP
    suffix = f"/{partition}@{incarnation}" if incarnation else f"/{partition}"
    if len(topic.encode("utf-8")) + len(suffix) > MAX_GROUP_ID_BYTES:
        topic = "#" + hashlib.blake2b(topic.encode("utf-8"), digest_size=8).hexdigest()
    return topic + suffix


def replica_dir(data_dir: Path, topic: str, partition: int) -> Path:
    """The directory holding a replica's ``fsm`` (commit log) and ``raft`` folders."""
    if topic == DEFAULT_TOPIC and partition == 0:
        return data_dir
    return data_dir / "partitions" / topic / str(partition)


@dataclass(frozen=True)
class HostSettings:
    """How each replica is built.

    Attributes:
        node: the Raft runtime settings of every replica; its ``raft.id`` and ``data_dir``
            are set per replica (the node id, the replica's ``raft`` folder).
        distributed: the DistributedLog settings of every replica.
        segment: the commit logs' segment settings (None: ``LogConfig()``'s defaults).
    """

    node: NodeConfig
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    segment: LogConfig | None = None


class PartitionHost:
    """The replicas this node hosts, by (topic, partition); see the module doc.

    ``open`` and ``close`` are serialized (one lock), so concurrent reconciliations cannot
    open one replica twice. ``close_all`` at the end closes every replica (not the router,
    which the caller owns).
    """

    def __init__(
        self,
        node_id: str,
        data_dir: Path,
        router: GroupRouter,
        settings: HostSettings,
        forwarder_for: Callable[[str, int], Forwarder | None] | None = None,
    ) -> None:
        self.node_id = node_id
        #: builds a replica's forwarder (its follower's writes go to its leader); None:
        #: replicas do not forward (a follower answers NOT_LEADER naming the leader)
        self.forwarder_for = forwarder_for
        self.data_dir = data_dir
        self.router = router
        self.settings = settings
        self.replicas: dict[PartitionKey, DistributedLog] = {}
        #: the topic incarnation each open replica was opened for
        self.incarnations: dict[PartitionKey, int] = {}
        #: per open replica, what removes its node from the router's down listeners
        self._unlisten: dict[PartitionKey, Callable[[], None]] = {}
        self._lock = asyncio.Lock()

    def get(self, topic: str, partition: int) -> DistributedLog | None:
        """The open replica of a partition, or None if this node does not host it."""
        return self.replicas.get((topic, partition))

    async def open(
        self,
        topic: str,
        partition: int,
        peers: Mapping[str, str] | None = None,
        distributed: DistributedConfig | None = None,
        incarnation: int = 0,
    ) -> DistributedLog:
        """Open (creating its folders if new) and start the replica of ``partition`` of
        ``topic``: its commit log, its Raft node on the router's group, its DistributedLog.
        ``peers``: node id -> Raft address of the other replicas, until the group's
        membership names them. ``distributed``: this replica's DistributedLog settings
        (default: the host's). ``incarnation``: the topic's
        (:attr:`ClusterMetadata.incarnations`), written beside the replica's files: a
        folder left by an older topic of the same name (this node was down when it was
        deleted) is wiped first, never opened as the new topic's replica. A replica with no
        Raft state waits to be bootstrapped (:meth:`bootstrap`) or added to its group by
        the leader."""
        problem = "" if topic == DEFAULT_TOPIC else topic_name_problem(topic)
        if problem:
            raise PartitionHostError(problem)
        if partition < 0:
            raise PartitionHostError(f"partition numbers start at 0, not {partition}")
        key = (topic, partition)
        async with self._lock:
            if key in self.replicas:
                raise PartitionHostError(f"partition {topic}/{partition} is open already")
            directory = replica_dir(self.data_dir, topic, partition)
            if key != (DEFAULT_TOPIC, 0):
                await asyncio.to_thread(_claim_incarnation, directory, incarnation)
            fsm = await asyncio.to_thread(
                CommitLogFSM.open, directory / "fsm", self.settings.segment
            )
            base = self.settings.node
            config = dataclasses.replace(
                base,
                raft=dataclasses.replace(base.raft, id=self.node_id),
                data_dir=directory / "raft",
            )
            transport = self.router.group(group_id(topic, partition, incarnation))
            try:
                node = await RaftNode.on_disk(config, fsm, transport, peers=peers)
                await node.start()
            except BaseException:
                transport.detach()
                await fsm.close()
                raise
            self._unlisten[key] = self.router.add_down_listener(node.peer_unreachable)
            forwarder = self.forwarder_for(topic, partition) if self.forwarder_for else None
            dlog = DistributedLog(
                node,
                fsm,
                config=distributed or self.settings.distributed,
                forwarder=forwarder,
                # the scrubber repairs damaged records from a peer's replica
                fetcher=forwarder if isinstance(forwarder, RecordFetcher) else None,
            )
            dlog.start()
            self.replicas[key] = dlog
            self.incarnations[key] = incarnation
            log.info(
                "partition %s/%d opened on %s (commit log %s, next offset %d)",
                topic,
                partition,
                self.node_id,
                directory / "fsm",
                dlog.highest_offset + 1,
            )
            return dlog

    async def bootstrap(self, topic: str, partition: int, voters: Iterable[Server]) -> None:
        """Make the open replica a member of a brand-new group of ``voters`` (give every
        initial voter the same list). Raises the node's BootstrapError if it has state."""
        dlog = self.replicas.get((topic, partition))
        if dlog is None:
            raise PartitionHostError(f"partition {topic}/{partition} is not open here")
        await dlog.node.bootstrap(voters)

    async def close(self, topic: str, partition: int) -> None:
        """Stop and close a replica (its files stay on disk)."""
        async with self._lock:
            dlog = self.replicas.pop((topic, partition), None)
            self.incarnations.pop((topic, partition), None)
            if dlog is None:
                return
            self._unlisten.pop((topic, partition))()
            await _close(dlog)

    async def reconcile(
        self, metadata: ClusterMetadata, addresses: Mapping[str, str]
    ) -> tuple[list[PartitionKey], list[PartitionKey]]:
        """Open the replicas ``metadata`` assigns to this node (voter or learner) that are
        not open, and close those it no longer assigns, deleting their files
        (:meth:`remove_files`). A new replica on one of its partition's initial voters
        bootstraps the group with them.
        ``addresses``: node id -> Raft address of every node. The default partition is left
        alone: the node opens it at start and its membership is the cluster's. Returns the
        keys opened and closed."""
        mine = {
            key: a
            for key, a in metadata.assignments.items()
            if self.node_id in a.replicas and key != (DEFAULT_TOPIC, 0)
        }
        # an open replica of an older topic of the same name (deleted and created again
        # before this node reconciled): closed and wiped, then opened anew below
        for key in sorted(k for k in mine if k in self.replicas):
            if self.incarnations.get(key, 0) != metadata.incarnation_of(key[0]):
                await self.close(*key)
                await self.remove_files(*key)
        opened: list[PartitionKey] = []
        for key in sorted(set(mine) - set(self.replicas)):
            a = mine[key]
            peers = {n: addresses[n] for n in a.replicas if n in addresses}
            dlog = await self.open(
                *key,
                peers=peers,
                distributed=self._settings_of(metadata, key[0]),
                incarnation=metadata.incarnation_of(key[0]),
            )
            opened.append(key)
            if self.node_id in a.initial and not dlog.node.has_state():
                missing = [n for n in a.initial if n not in addresses]
                if missing:
                    log.warning(
                        "partition %s/%d: no address yet for initial voters %s; not "
                        "bootstrapped (the next reconcile tries again)",
                        *key,
                        missing,
                    )
                    await self.close(*key)
                    opened.pop()
                    continue
                await dlog.node.bootstrap([Server(n, addresses[n]) for n in a.initial])
        for key, dlog in self.replicas.items():  # a topic's retention changed meanwhile
            wanted = self._settings_of(metadata, key[0])
            current = dlog.config
            if (current.retention_bytes, current.retention_age_s) != (
                wanted.retention_bytes,
                wanted.retention_age_s,
            ):
                dlog.set_retention(wanted.retention_bytes, wanted.retention_age_s)
                log.info(
                    "partition %s/%d: retention now %d bytes, %.0f s",
                    *key,
                    wanted.retention_bytes,
                    wanted.retention_age_s,
                )
        closed = sorted(k for k in self.replicas if k not in mine and k != (DEFAULT_TOPIC, 0))
        for key in closed:
            await self.close(*key)
            await self.remove_files(*key)
        return opened, closed

    async def remove_files(self, topic: str, partition: int) -> None:
        """Delete a closed replica's folder (its commit log and Raft files): the metadata no
        longer assigns it here, because its topic was deleted or because the move that took
        it away has committed (``ReplicaRemoved`` is recorded only once the group removed
        this node), so nothing will ask for it again. Refused for an open replica and for
        the default partition (the node's own data directory)."""
        if (topic, partition) in self.replicas or (topic, partition) == (DEFAULT_TOPIC, 0):
            raise PartitionHostError(f"partition {topic}/{partition} is open or the default")
        directory = replica_dir(self.data_dir, topic, partition)
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        log.info(
            "partition %s/%d: files removed from %s (%s)", topic, partition, self.node_id, directory
        )

    def _settings_of(self, metadata: ClusterMetadata, topic: str) -> DistributedConfig:
        """The host's DistributedLog settings with ``topic``'s retention (a topic's
        retention_ms becomes the age limit in seconds; None keeps everything): given to a
        replica when it opens, and applied to the open ones by each reconcile."""
        spec = metadata.topics.get(topic)
        if spec is None:
            return self.settings.distributed
        return dataclasses.replace(
            self.settings.distributed,
            retention_bytes=spec.retention_bytes or 0,
            retention_age_s=(spec.retention_ms or 0) / 1000,
        )

    async def balance_leaders(
        self,
        metadata: ClusterMetadata,
        timeout_s: float = 5.0,
        reachable: Callable[[str], bool] | None = None,
    ) -> dict[PartitionKey, str]:
        """Hand the leadership of each partition this node leads to its preferred leader
        (``leaders_to_transfer``: spread evenly, within ``ceil(P*T/N)`` per node where the
        placement allows it) when that node is live and a voter, and ``reachable`` (the
        node's own failure detection, fresher than the metadata's live set) does not say it
        is down. Every node runs this for the partitions it leads, so no one needs to know
        every leader. The transfers run at once, each bounded by ``timeout_s`` seconds.
        Returns those that succeeded (partition -> new leader); a refused or timed-out
        transfer is logged and tried again next time."""
        led = {key: self.node_id for key, dlog in self.replicas.items() if dlog.is_leader()}
        wanted = [
            (key, to, dlog)
            for key, to in leaders_to_transfer(metadata, led).items()
            if (dlog := self.replicas.get(key)) is not None and (reachable is None or reachable(to))
        ]

        async def one(key: PartitionKey, to: str, dlog: DistributedLog) -> str | None:
            try:
                return await dlog.transfer_leadership(to, timeout_s=timeout_s)
            except DomainError as exc:
                log.info("partition %s/%d: leadership to %s not moved: %s", *key, to, exc)
                return None

        moved = await asyncio.gather(*(one(key, to, dlog) for key, to, dlog in wanted))
        return {key: new for (key, _, _), new in zip(wanted, moved, strict=True) if new}

    async def close_all(self) -> None:
        async with self._lock:
            replicas, self.replicas = list(self.replicas.values()), {}
            for unlisten in self._unlisten.values():
                unlisten()
            self._unlisten.clear()
            for dlog in replicas:
                await _close(dlog)


#: The file in a replica's folder naming the topic incarnation its files belong to.
INCARNATION_FILE = "incarnation"


def _claim_incarnation(directory: Path, incarnation: int) -> None:
    """Make ``directory`` the replica folder of topic incarnation ``incarnation``: a folder
    of another incarnation (or of none, from a build before incarnations, when
    ``incarnation`` is not 0) is removed first; the marker is written (fsynced) before
    any of the replica's files."""
    marker = directory / INCARNATION_FILE
    try:
        found: int | None = int(marker.read_text().strip() or "-1")
    except FileNotFoundError:
        found = None if any(directory.glob("*")) else incarnation
    except ValueError:
        found = -1
    if found is not None and found != incarnation and directory.exists():
        log.warning(
            "%s holds incarnation %s of its topic, not %d: removing it",
            directory,
            found,
            incarnation,
        )
        shutil.rmtree(directory)
    elif found is None and incarnation != 0:
        log.warning(
            "%s has no incarnation mark: removing it (incarnation %d)", directory, incarnation
        )
        shutil.rmtree(directory)
    if not marker.exists():
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{incarnation}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)


async def _close(dlog: DistributedLog) -> None:
    try:
        await dlog.close()
        await dlog.node.close()
    finally:
        await dlog.fsm.close()

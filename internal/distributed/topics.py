"""Topics on one node: the controller group, the partition replicas, and the loop that keeps
them in line with the metadata (docs/partitions.md, "How the pieces meet in the agent").

::

    cluster members (the default group's membership, which Serf or --peers drives)
        │ controller leader, every tick:
        ├── controller membership: the first `controller_voters` members vote, the others
        │   are learners (added, promoted when caught up, removed when they leave)
        └── liveness: NodeUp / NodeDown / ForgetNode from Serf's view of each member
    ClusterMetadata (ControllerFSM, on every node)
        │ every node, every tick:
        ├── PartitionHost.reconcile: open / bootstrap / close the replicas assigned here
        ├── moves: for each partition this node leads, carry out plan()'s step and
        │   record it in the controller (LearnerAdded, LearnerCaughtUp, LearnerPromoted,
        │   ReplicaRemoved)
        └── every `balance_interval_s`: PartitionHost.balance_leaders

The default topic's partition 0 is the node's original Raft group (``DistributedLog``
given to :class:`Topics`): its membership is the cluster's, driven by Serf as before, so
the planner's steps for it are not carried out here.

A node that is not the controller's leader sends its commands to the leader through a
:class:`PeerClient` (gRPC with the peer certificate, injected by the agent), so a topic can
be created on any node, and a partition's leader records its moves wherever the
controller's leader is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from raftlog.api.contract import Key
from raftlog.api.partitioning import partition_for_key
from raftlog.distributed.controller import CONTROLLER_GROUP, Controller, ControllerFSM
from raftlog.distributed.distributed_log import DistributedLog
from raftlog.distributed.forwarding import Forwarder
from raftlog.distributed.partition_host import PartitionHost
from raftlog.domain.errors import (
    DomainError,
    InvalidArgumentError,
    NotLeaderError,
    TopicExistsError,
    TopicRefusedError,
    UnavailableError,
    UnknownTopicError,
)
from raftlog.domain.protocols import Appended
from raftlog.partitions import (
    DEFAULT_GRACE_S,
    DEFAULT_TOPIC,
    AddLearner,
    Applied,
    ClusterMetadata,
    Command,
    CommandDecodeError,
    CreateTopic,
    DeleteTopic,
    ForgetNode,
    LearnerCaughtUp,
    LearnerPromoted,
    NodeDown,
    NodeUp,
    PartitionKey,
    Promote,
    Reason,
    Rejected,
    RemoveReplica,
    ReplicaRemoved,
    Result,
    SetRetention,
    TopicSpec,
    decode_command,
    encode_command,
    plan,
    preferred_of,
)
from raftlog.raft import RaftError, Server
from raftlog.raft.config import NodeConfig
from raftlog.raft.errors import NotLeaderError as RaftNotLeaderError
from raftlog.raft.groups import GroupRouter
from raftlog.raft.node import RaftNode
from raftlog.raft.types import Suffrage

log = logging.getLogger(__name__)

#: Entries a learner may still be behind its partition's leader to count as caught up.
CAUGHT_UP_LAG = 16
#: Bound of the leadership hand-overs a stopping node runs for the groups it leads (s).
HAND_OVER_TIMEOUT_S = 3.0
#: How often the default group's leader of a cluster without a controller asks the
#: members whether one exists before creating it (s), and how long it waits for answers.
FOUND_RETRY_S = 5.0
FOUND_ASK_TIMEOUT_S = 2.0
#: How long CreateTopic waits for the controller to count every member this node sees
#: alive as live before placing the topic (s). A cluster that just formed reports its
#: members live over a few liveness periods; a topic placed before that starts with fewer
#: replicas and grows through 2 voters, where one lost node stops it (docs/partitions.md).
CREATE_LIVE_WAIT_S = 3.0


def rejection_error(result: Rejected, topic: str) -> DomainError:
    """The API error a rejected topic command ends its call with."""
    match result.reason:
        case Reason.INVALID_ARGUMENT:
            return InvalidArgumentError(result.message)
        case Reason.TOPIC_EXISTS:
            return TopicExistsError(result.message, topic)
        case Reason.UNKNOWN_TOPIC:
            return UnknownTopicError(result.message, topic)
    return TopicRefusedError(result.message, topic)


@dataclass(frozen=True)
class TopicsConfig:
    """How a node runs its topics.

    Attributes:
        controller_voters: members that vote in the controller group (the first ones, in
            the cluster's membership order); the others are learners. 3 (the default) or 5:
            the metadata survives 1 or 2 failures.
        interval_s: period of the loop (liveness, controller membership, reconcile and
            moves), seconds. Default 0.5.
        balance_interval_s: how often each node hands partitions it leads to their
            preferred leaders, seconds. Default 5.
        grace_s: how long a down node's replicas are kept before they are re-created
            elsewhere, seconds (the planner's grace period). Default 30.
        change_timeout_s: bound of one controller command or group change, seconds.
            Default 10.
        flush_interval_s: when > 0, the replicas' Raft logs are fsynced this often, in
            seconds (the agent's ``--sync interval``: rounds do not wait for fsync, so
            something must flush); 0 (the default): their own fsync setting decides.
    """

    controller_voters: int = 3
    interval_s: float = 0.5
    balance_interval_s: float = 5.0
    grace_s: float = DEFAULT_GRACE_S
    change_timeout_s: float = 10.0
    flush_interval_s: float = 0.0

    def validate(self) -> TopicsConfig:
        if self.controller_voters < 1 or self.controller_voters % 2 == 0:
            raise ValueError(
                f"controller_voters is an odd number >= 1 (3 or 5), not {self.controller_voters}"
            )
        for name in ("interval_s", "balance_interval_s", "change_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if not self.flush_interval_s >= 0:
            raise ValueError(f"flush_interval_s must be >= 0, not {self.flush_interval_s!r}")
        if not self.grace_s >= 0:
            raise ValueError(f"grace_s must be >= 0, not {self.grace_s!r}")
        return self


@dataclass(frozen=True)
class ReplicaState:
    """What one node knows of its own replica of a partition."""

    topic: str
    partition: int
    node_id: str
    #: "leader", "follower", "learner", "candidate", ...
    state: str
    leader_id: str
    next_offset: int


@dataclass(frozen=True)
class PartitionLeader:
    """Where a client sends a partition's records: its leader, and its replicas."""

    partition: int
    leader_id: str
    leader_addr: str
    replica_addrs: tuple[str, ...]


def leader_of(states: Sequence[ReplicaState]) -> str:
    """A partition's leader from its replicas' own states: the one that says it leads,
    else the leader most of the others name ("" when none is known)."""
    for state in states:
        if state.state == "leader":
            return state.node_id
    named = [s.leader_id for s in states if s.leader_id]
    return max(set(named), key=named.count) if named else ""


class PeerClient(Protocol):
    """Calls another node on the cluster's behalf (gRPC with the peer certificate)."""

    async def submit(self, address: str, entry: bytes, timeout_s: float) -> Result:
        """Have the controller leader at ``address`` commit ``entry`` (a command as
        :func:`raftlog.partitions.encode_command` writes it); what applying it gave."""
        ...

    async def local_replicas(
        self, address: str, topic: str, timeout_s: float
    ) -> list[ReplicaState]:
        """The replicas of ``topic`` the node at ``address`` hosts, as it sees them."""
        ...

    async def has_controller(self, address: str, timeout_s: float) -> bool:
        """Whether the node at ``address`` holds controller state (or is creating it)."""
        ...


class PartitionForwarder:
    """A partition's :class:`Forwarder` and scrub :class:`RecordFetcher`: the node's
    forwarder, with the partition named in every forwarded Produce and every repair read
    (the other node routes it to its replica). Closing it closes nothing: the node's
    forwarder is shared and owned by the agent."""

    def __init__(self, inner: TargetedForwarder, topic: str, partition: int) -> None:
        self._inner = inner
        self._topic = topic
        self._partition = partition

    async def produce(
        self,
        address: str,
        records: Sequence[bytes],
        *,
        timeout_s: float,
        producer_id: str = "",
        sequence: int = 0,
    ) -> Appended:
        return await self._inner.produce(
            address,
            records,
            timeout_s=timeout_s,
            producer_id=producer_id,
            sequence=sequence,
            topic=self._topic,
            partition=self._partition,
        )

    async def fetch(
        self, address: str, offset: int, count: int, *, timeout_s: float
    ) -> list[bytes]:
        """The partition's records on the node at ``address`` (the scrubber's repairs)."""
        return await self._inner.fetch(
            address,
            offset,
            count,
            timeout_s=timeout_s,
            topic=self._topic,
            partition=self._partition,
        )

    def forget(self, address: str) -> None:
        self._inner.forget(address)

    async def close(self) -> None:
        return None


class TargetedForwarder(Forwarder, Protocol):
    """A :class:`Forwarder` that can name the topic and partition of what it forwards."""

    async def produce(
        self,
        address: str,
        records: Sequence[bytes],
        *,
        timeout_s: float,
        producer_id: str = "",
        sequence: int = 0,
        topic: str = "",
        partition: int | None = None,
    ) -> Appended: ...

    async def fetch(
        self,
        address: str,
        offset: int,
        count: int,
        *,
        timeout_s: float,
        topic: str = "",
        partition: int | None = None,
    ) -> list[bytes]: ...


@dataclass
class _Clock:
    """When each periodic piece last ran (loop time, seconds)."""

    balanced: float = 0.0
    reconciled: tuple[int, int] = (0, -1)
    reconciled_at: float = 0.0
    found_asked: float = -FOUND_RETRY_S


@dataclass
class TopicsStats:
    """Counters for tests and the status command."""

    commands: int = 0
    rejected: int = 0
    moves: int = 0
    transfers: int = 0
    loop_errors: int = 0
    last_error: str = ""
    reasons: dict[str, int] = field(default_factory=dict)


class Topics:
    """The controller group and the partition replicas of one node (see the module doc).

    ``members()``: node id -> rpc address of every member of the cluster (the default
    group's membership, this node included). ``alive(node)``: whether Serf sees the node
    alive (None: no opinion, e.g. static peers; counted as alive). ``default``: the
    default partition's DistributedLog (opened by the agent). ``forwarder``: forwards a
    follower's write to its partition's leader. ``peers``: calls to other nodes.
    """

    def __init__(
        self,
        *,
        node_id: str,
        rpc_addr: Callable[[], str],
        data_dir: Path,
        router: GroupRouter,
        controller_node: NodeConfig,
        host: PartitionHost,
        default: DistributedLog,
        members: Callable[[], Mapping[str, str]],
        alive: Callable[[str], bool | None],
        peers: PeerClient | None,
        config: TopicsConfig | None = None,
    ) -> None:
        self.node_id = node_id
        self._rpc_addr = rpc_addr
        self.data_dir = data_dir
        self.router = router
        self._controller_config = controller_node
        self.host = host
        self.default = default
        self._members = members
        self._alive = alive
        self._peers = peers
        self.config = (config or TopicsConfig()).validate()
        self.fsm = ControllerFSM()
        self.controller: Controller | None = None
        self.stats = TopicsStats()
        self._task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._unlisten: Callable[[], None] | None = None
        #: set while this node creates the controller group (answered as "has state")
        self.founding = False
        #: preferred_leaders() of the metadata at (its identity, the applied index)
        self._preferred: tuple[tuple[int, int], Mapping[PartitionKey, str]] = ((0, -1), {})
        self._clock = _Clock()

    # -- life --------------------------------------------------------------------------

    async def start(self, bootstrap: bool) -> None:
        """Open the controller replica (``data_dir/controller``) and start the loop.
        ``bootstrap``: this node creates the cluster now, so it creates the controller
        group too, alone (the others join it as the controller leader adds them)."""
        config = self._controller_config
        node = await RaftNode.on_disk(
            config,
            self.fsm,
            self.router.group(CONTROLLER_GROUP),
            peers={k: v for k, v in self._members().items() if k != self.node_id} or None,
        )
        await node.start()
        # a quiet controller group wakes when the router reports its leader's node down
        self._unlisten = self.router.add_down_listener(node.peer_unreachable)
        self.controller = Controller(node, self.fsm)
        if bootstrap and not node.has_state():
            await node.bootstrap([Server(self.node_id, self._rpc_addr())])
            log.info("controller group bootstrapped on %s", self.node_id)
        self._task = asyncio.create_task(self._run(), name="topics-loop")
        if self.config.flush_interval_s > 0:
            self._flusher = asyncio.create_task(self._flush_loop(), name="topics-flush")

    async def close(self) -> None:
        for task in (self._task, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._flusher = None
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        await self.hand_over(HAND_OVER_TIMEOUT_S)
        await self.host.close_all()
        if self.controller is not None:
            await self.controller.node.close()

    async def hand_over(self, timeout_s: float) -> int:
        """Before this node stops: hand every partition it leads (and the controller, if
        it leads it) to another voter, all at once, within ``timeout_s`` seconds, so that
        their writes pause for a transfer rather than an election timeout. Returns how
        many moved; a failed transfer is only logged (the group elects without it)."""
        groups: list[tuple[str, RaftNode]] = [
            (f"{k[0]}/{k[1]}", d.node) for k, d in self.host.replicas.items() if d.is_leader()
        ]
        if self.controller is not None and self.controller.node.is_leader:
            groups.append((CONTROLLER_GROUP, self.controller.node))
        groups = [(name, node) for name, node in groups if len(node.membership.voters) > 1]

        async def one(name: str, node: RaftNode) -> bool:
            try:
                new = await node.transfer_leadership(timeout=timeout_s)
            except (RaftError, TimeoutError) as exc:
                log.info("%s: leadership not handed over before stopping: %s", name, exc)
                return False
            log.info("%s: leadership handed to %s before stopping", name, new)
            return True

        if not groups:
            return 0
        moved = await asyncio.gather(*(one(name, node) for name, node in groups))
        return sum(moved)

    def members(self) -> Mapping[str, str]:
        """Node id -> rpc address of every member of the cluster (this node included)."""
        return self._members()

    @property
    def metadata(self) -> ClusterMetadata:
        """This node's copy of the controller's metadata."""
        return self.fsm.metadata

    # -- routing -----------------------------------------------------------------------

    def resolve(self, topic: str, partition: int | None, key: bytes) -> PartitionKey:
        """The partition a request names: ``topic`` ("" = the default topic) and either
        ``partition`` or ``key`` (neither: partition 0). Raises UnknownTopicError."""
        name = topic or DEFAULT_TOPIC
        if partition is not None and key:
            raise InvalidArgumentError("set either a partition or a key, not both")
        spec = self.metadata.topics.get(name)
        if spec is None:
            if name == DEFAULT_TOPIC:
                return (DEFAULT_TOPIC, 0)
            raise UnknownTopicError(f"topic {name!r} does not exist", name)
        if key:
            return (name, partition_for_key(key, spec.partitions))
        number = partition or 0
        if not 0 <= number < spec.partitions:
            raise UnknownTopicError(
                f"topic {name!r} has partitions 0..{spec.partitions - 1}, not {number}", name
            )
        return (name, number)

    def replica(self, key: PartitionKey) -> DistributedLog:
        """This node's replica of partition ``key``; NotLeaderError naming a node that
        hosts it (its preferred leader first) when this node does not."""
        if key == (DEFAULT_TOPIC, 0):
            return self.default
        dlog = self.host.get(*key)
        if dlog is not None:
            return dlog
        assignment = self.metadata.assignments.get(key)
        members = self._members()
        hosts = [n for n in (assignment.voters if assignment else ()) if n in members]
        preferred = self.preferred_leaders().get(key, "")
        if preferred in hosts:
            hosts.remove(preferred)
            hosts.insert(0, preferred)
        if not hosts:
            raise UnavailableError(f"partition {key[0]}/{key[1]} has no replica yet; try again")
        return_to = hosts[0]
        raise NotLeaderError(
            f"partition {key[0]}/{key[1]} is not hosted on {self.node_id}; ask {return_to}",
            {Key.LEADER_ID: return_to, Key.LEADER_ADDR: members[return_to]},
        )

    def log_for(self, topic: str, partition: int | None, key: bytes) -> tuple[int, DistributedLog]:
        """The server's :class:`~raftlog.server.service.PartitionRouter`: (partition number,
        this node's replica of it); see :meth:`resolve` and :meth:`replica`."""
        found = self.resolve(topic, partition, key)
        return found[1], self.replica(found)

    def _metadata_stamp(self) -> tuple[int, int]:
        """Changes whenever the metadata does: (its object, replaced on a snapshot
        restore; the index of the last command applied to it)."""
        return (id(self.fsm.metadata), self.fsm.applied)

    def preferred_leaders(self) -> Mapping[PartitionKey, str]:
        """The node that should lead each partition (:func:`raftlog.partitions.preferred_of`,
        the rule leadership is balanced by), computed once per change of the metadata."""
        md = self.metadata
        stamp = self._metadata_stamp()
        if self._preferred[0] != stamp:
            self._preferred = (stamp, preferred_of(md))
        return self._preferred[1]

    # -- commands ----------------------------------------------------------------------

    async def submit(self, command: Command, timeout_s: float | None = None) -> Result:
        """Commit ``command`` in the controller, from any node: here if this node leads
        the controller, else through the leader (UnavailableError when none is known)."""
        timeout = timeout_s or self.config.change_timeout_s
        controller = self.controller
        if controller is None:
            raise UnavailableError("the controller is not started")
        node = controller.node
        result: Result
        if node.is_leader:
            try:
                result = await controller.submit(command, timeout)
            except RaftNotLeaderError:
                raise UnavailableError("the controller's leader changed; try again") from None
            except (RaftError, TimeoutError) as exc:
                raise UnavailableError(f"the controller did not commit: {exc}") from None
        else:
            result = await self._submit_remote(command, timeout)
        self.stats.commands += 1
        if isinstance(result, Rejected):
            self.stats.rejected += 1
            self.stats.reasons[result.reason.name] = (
                self.stats.reasons.get(result.reason.name, 0) + 1
            )
        return result

    async def _submit_remote(self, command: Command, timeout_s: float) -> Result:
        """Send ``command`` to the controller's leader: the one this node's replica knows,
        else (a node the controller has not added yet) each other member in turn, the
        default group's leader first; a member that does not lead the controller refuses
        at once (UNAVAILABLE) and the next is asked."""
        assert self.controller is not None
        if self._peers is None:
            raise UnavailableError("this node cannot reach the controller's leader")
        members = self._members()
        leader = self.controller.node.leader_id
        if leader and leader in members:
            candidates = [members[leader]]
        else:
            first = self.default.leader_id
            others = sorted((n for n in members if n != self.node_id), key=lambda n: n != first)
            candidates = [members[n] for n in others]
        entry = encode_command(command, time.time())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last: Exception = UnavailableError("the controller has no leader now; try again")
        for address in candidates:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                return await self._peers.submit(address, entry, left)
            except UnavailableError as exc:
                last = exc
        raise last

    async def submit_entry(self, entry: bytes, timeout_s: float) -> Result:
        """A peer's command (:meth:`PeerClient.submit`), on the controller's leader: the
        command is decoded and stamped again with this node's clock."""
        try:
            command, _ = decode_command(entry)
        except CommandDecodeError as exc:
            raise InvalidArgumentError(f"not a controller command: {exc}") from None
        controller = self.controller
        if controller is None or not controller.node.is_leader:
            raise UnavailableError("not the controller's leader; try again")
        return await self.submit(command, timeout_s)

    async def create_topic(self, name: str, spec: TopicSpec) -> Result:
        """Create a topic through the controller, once the members this node sees alive
        are live in the metadata (at most :data:`CREATE_LIVE_WAIT_S`; after that it is
        placed on the nodes known live and completed by moves)."""
        await self.wait_members_live(CREATE_LIVE_WAIT_S)
        return await self.submit(CreateTopic(name, spec))

    async def wait_members_live(self, timeout_s: float) -> bool:
        """Wait (up to ``timeout_s`` seconds, polling every 50 ms) until every cluster
        member that this node does not see failed is live in its copy of the metadata;
        whether they are."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            expected = {
                m for m in self._members() if m == self.node_id or self._alive(m) is not False
            }
            if expected <= self.metadata.live:
                return True
            if loop.time() >= deadline:
                log.info(
                    "topics: placing a topic with %s not yet live",
                    sorted(expected - self.metadata.live),
                )
                return False
            await asyncio.sleep(0.05)

    async def delete_topic(self, name: str) -> Result:
        return await self.submit(DeleteTopic(name))

    async def set_retention(
        self, name: str, retention_bytes: int | None, retention_ms: int | None
    ) -> Result:
        return await self.submit(SetRetention(name, retention_bytes, retention_ms))

    # -- describing --------------------------------------------------------------------

    def local_replicas(self, topic: str) -> list[ReplicaState]:
        """The replicas of ``topic`` on this node, as it sees them."""
        found: list[ReplicaState] = []
        replicas: list[tuple[PartitionKey, DistributedLog]] = [
            (k, d) for k, d in self.host.replicas.items() if k[0] == topic
        ]
        if topic == DEFAULT_TOPIC:
            replicas.insert(0, ((DEFAULT_TOPIC, 0), self.default))
        for key, dlog in replicas:
            node = dlog.node
            try:
                role = node.status().role.name.lower()
            except RaftError:
                role = "closed"
            found.append(
                ReplicaState(
                    topic=key[0],
                    partition=key[1],
                    node_id=self.node_id,
                    state=role,
                    leader_id=node.leader_id,
                    next_offset=dlog.highest_offset + 1,
                )
            )
        return found

    async def replica_states(self, topic: str, timeout_s: float) -> list[ReplicaState]:
        """Every replica of ``topic`` as its own node sees it (one call per other node;
        a node that does not answer within ``timeout_s`` is left out)."""
        states = self.local_replicas(topic)
        peers = self._peers
        if peers is None:
            return states
        others = {n: a for n, a in self._members().items() if n != self.node_id}

        async def ask(address: str) -> list[ReplicaState]:
            try:
                return await peers.local_replicas(address, topic, timeout_s)
            except Exception as exc:
                log.debug("describe %s: %s did not answer: %s", topic, address, exc)
                return []

        for found in await asyncio.gather(*(ask(a) for a in others.values())):
            states.extend(found)
        return states

    def replicas_of(self, key: PartitionKey) -> list[tuple[str, str]]:
        """(node id, role) of a partition's replicas, voters first: the default
        partition's from its group's membership (the cluster's), the others' from the
        controller's assignment."""
        if key == (DEFAULT_TOPIC, 0):
            return [
                (s.id, "voter" if s.is_voter else "learner") for s in self.default.node.membership
            ]
        assignment = self.metadata.assignments.get(key)
        if assignment is None:
            return []
        roles = [(n, "voter") for n in assignment.voters]
        if assignment.learner is not None:
            roles.append((assignment.learner, "learner"))
        return roles

    async def leaders(self, topic: str, timeout_s: float) -> tuple[int, list[PartitionLeader]]:
        """A topic's partition count and each partition's leader and replicas, from every
        node's view of its own replicas (:meth:`replica_states`). UnknownTopicError."""
        name = topic or DEFAULT_TOPIC
        spec = self.metadata.topics.get(name)
        if spec is None:
            raise UnknownTopicError(f"topic {name!r} does not exist", name)
        states = await self.replica_states(name, timeout_s)
        members = self._members()
        found: list[PartitionLeader] = []
        for number in range(spec.partitions):
            roles = self.replicas_of((name, number))
            mine = [s for s in states if s.partition == number and s.topic == name]
            leader = leader_of(mine)
            found.append(
                PartitionLeader(
                    partition=number,
                    leader_id=leader,
                    leader_addr=members.get(leader, ""),
                    replica_addrs=tuple(members[n] for n, _ in roles if n in members),
                )
            )
        return spec.partitions, found

    # -- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        """The periodic work (module doc); a failing step is logged and tried again on
        the next tick, never ends the loop."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.interval_s)
            for step in (
                self._adopt_controller,
                self._controller_membership,
                self._liveness,
                self._reconcile,
                self._moves,
                self._balance,
            ):
                try:
                    async with asyncio.timeout(self.config.change_timeout_s * 2):
                        await step(loop.time())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # each step is retried next tick
                    self.stats.loop_errors += 1
                    self.stats.last_error = f"{step.__name__}: {type(exc).__name__}: {exc}"
                    log.info("topics: %s failed: %s: %s", step.__name__, type(exc).__name__, exc)

    async def _flush_loop(self) -> None:
        """``--sync interval``: fsync every replica's Raft log every ``flush_interval_s``
        (an acknowledged entry survives a process crash at once and an OS crash after at
        most that long, as for the default partition)."""
        while True:
            await asyncio.sleep(self.config.flush_interval_s)
            for key, dlog in list(self.host.replicas.items()):
                try:
                    await dlog.node.log_store.flush()
                except Exception as exc:  # closed meanwhile, or a failing disk: say so
                    log.warning("interval fsync of partition %s/%d failed: %s", *key, exc)

    def has_controller(self) -> bool:
        """Whether this node holds controller state, or is creating the group now (what
        :meth:`PeerClient.has_controller` asks)."""
        controller = self.controller
        return self.founding or (controller is not None and controller.node.has_state())

    async def _adopt_controller(self, now: float) -> None:
        """A cluster of the one-group version has no controller: its default group's
        leader creates one, alone (the others join as the controller adds them).

        Two leaders in a row must not both create one (two groups under one id would fork
        the metadata), so the leader first asks every other member whether it holds
        controller state or is creating it, and creates it only if every member answers
        no (one that cannot be reached blocks it: it may be the one that did). Right before
        creating it, the leader confirms it still leads with a read barrier (a quorum
        round): a later leader can only be elected an election timeout after that quorum
        last heard this one, and by then this node answers that it has the state. A node
        that is the default group's only voter creates it at once."""
        controller = self.controller
        assert controller is not None
        node = controller.node
        default = self.default.node
        if node.has_state() or not default.is_leader:
            return
        voters = [s.id for s in default.membership if s.is_voter]
        if voters != [self.node_id]:
            if now - self._clock.found_asked < FOUND_RETRY_S or self._peers is None:
                return
            self._clock.found_asked = now
            peers = self._peers
            others = [a for n, a in self._members().items() if n != self.node_id]
            answers = await asyncio.gather(
                *(peers.has_controller(a, FOUND_ASK_TIMEOUT_S) for a in others),
                return_exceptions=True,
            )
            if any(answer is not False for answer in answers):
                return  # a controller exists somewhere, or a member did not answer
        self.founding = True
        try:
            await self.default.read_barrier(self.config.change_timeout_s)
            if node.has_state() or not default.is_leader:
                return
            await node.bootstrap([Server(self.node_id, self._rpc_addr())])
        finally:
            self.founding = False
        log.info(
            "controller group created on %s (the default group's leader; no member had one)",
            self.node_id,
        )

    async def _controller_membership(self, now: float) -> None:
        """On the controller's leader: the first ``controller_voters`` members vote, every
        other member is a learner, and members gone from the cluster are removed. One
        change per tick."""
        controller = self.controller
        assert controller is not None
        node = controller.node
        if not node.is_leader:
            return
        members = self._members()
        timeout = self.config.change_timeout_s
        status = node.status()
        current = status.membership
        for server in current:
            if server.id not in members and server.id != self.node_id:
                log.info("controller: removing %s (no longer a member)", server.id)
                await node.remove_server(server.id, timeout=timeout)
                return
        for member, address in members.items():
            if member not in current:
                log.info("controller: adding %s at %s as a learner", member, address)
                await node.add_learner(member, address, timeout=timeout)
                return
        voters = [s for s in current if s.is_voter]
        if len(voters) >= self.config.controller_voters:
            return
        for server in current:
            if server.suffrage is not Suffrage.LEARNER:
                continue
            progress = status.progress.get(server.id)
            if progress is not None and progress.match >= status.last_index - CAUGHT_UP_LAG:
                log.info("controller: promoting %s to voter", server.id)
                await node.promote_learner(server.id, timeout=timeout)
                return

    async def _liveness(self, now: float) -> None:
        """On the controller's leader: tell the metadata which members are live."""
        controller = self.controller
        assert controller is not None
        if not controller.node.is_leader:
            return
        md = self.metadata
        members = self._members()
        for member in members:
            alive = member == self.node_id or self._alive(member) is not False
            if alive and member not in md.live:
                await self.submit(NodeUp(member))
            elif not alive and member in md.live:
                await self.submit(NodeDown(member))
        for gone in sorted(md.live - set(members)):
            await self.submit(NodeDown(gone))
        holding = {n for a in md.assignments.values() for n in a.replicas}
        for gone in sorted(set(md.down_since) - set(members) - holding):
            await self.submit(ForgetNode(gone))

    async def _reconcile(self, now: float) -> None:
        """Open the replicas the metadata assigns here, close the others, apply topic
        settings: when the metadata changed (any command: a retention change moves no
        assignment), and every few seconds (a bootstrap that had to wait for an address)."""
        md = self.metadata
        stamp = self._metadata_stamp()
        if stamp == self._clock.reconciled and now - self._clock.reconciled_at < 5.0:
            return
        opened, closed = await self.host.reconcile(md, self._members())
        self._clock.reconciled, self._clock.reconciled_at = stamp, now
        if opened or closed:
            log.info("topics: opened %s, closed %s on %s", opened, closed, self.node_id)

    async def _moves(self, now: float) -> None:
        """For each partition this node leads: bring its group in line with the metadata
        (a learner the controller recorded, a promotion the group made on its own) and
        carry out the planner's step, recording it in the controller."""
        if not any(dlog.is_leader() for dlog in self.host.replicas.values()):
            return  # planning walks every partition: not for a node that leads none
        md = self.metadata
        members = self._members()
        timeout = self.config.change_timeout_s
        steps = {(s.topic, s.partition): s for s in plan(md, time.time(), self.config.grace_s)}
        for key, dlog in list(self.host.replicas.items()):
            assignment = md.assignments.get(key)
            if assignment is None or not dlog.is_leader():
                continue
            node = dlog.node
            learner = assignment.learner
            in_group = node.membership.get(learner) if learner is not None else None
            step = steps.get(key)
            if learner is not None and not isinstance(step, RemoveReplica):
                if in_group is None and learner in members:
                    # recorded, not yet in the group (or a new leader took over the move)
                    await node.add_learner(learner, members[learner], timeout=timeout)
                    self.stats.moves += 1
                    continue
                if in_group is not None and in_group.is_voter:
                    # the group's promoter made it a voter: record both steps
                    if not assignment.caught_up:
                        await self._record(LearnerCaughtUp(*key, learner))
                    await self._record(LearnerPromoted(*key, learner))
                    continue
                if in_group is not None and not assignment.caught_up:
                    status = node.status()
                    progress = status.progress.get(learner)
                    if progress is not None and progress.match >= status.last_index - CAUGHT_UP_LAG:
                        await self._record(LearnerCaughtUp(*key, learner))
                    continue
            if step is None:
                continue
            if isinstance(step, AddLearner):
                if step.node not in members:
                    continue
                if await self._record(step.command):
                    await node.add_learner(step.node, members[step.node], timeout=timeout)
                    self.stats.moves += 1
            elif isinstance(step, Promote):
                server = node.membership.get(step.node)
                if server is not None and not server.is_voter:
                    await node.promote_learner(step.node, timeout=timeout)
                await self._record(step.command)
            elif isinstance(step, RemoveReplica):
                if step.node == self.node_id:
                    # a leader does not remove itself: it hands over, the next leader removes it
                    others = [v for v in assignment.voters if v != self.node_id and v in md.live]
                    if others:
                        await dlog.transfer_leadership(others[0], timeout_s=timeout)
                    continue
                if step.node in node.membership:
                    await node.remove_server(step.node, timeout=timeout)
                    self.stats.moves += 1
                await self._record(ReplicaRemoved(*key, step.node))

    async def _record(self, command: Command) -> bool:
        """Commit a move's command; whether it applied (a rejection is logged)."""
        result = await self.submit(command)
        if isinstance(result, Rejected):
            log.info("topics: %s rejected: %s", command, result.message)
            return False
        return isinstance(result, Applied)

    async def _balance(self, now: float) -> None:
        """Every ``balance_interval_s``: hand the partitions this node leads to their
        preferred leaders."""
        if now - self._clock.balanced < self.config.balance_interval_s:
            return
        self._clock.balanced = now
        done = await self.host.balance_leaders(
            self.metadata,
            timeout_s=self.config.change_timeout_s,
            # not to a node already silent: the metadata learns it is down a tick later,
            # and a transfer to it would hold this loop (and that liveness report) up
            reachable=lambda node: self._alive(node) is not False,
        )
        self.stats.transfers += len(done)
        if done:
            log.info("topics: leadership handed to preferred leaders: %s", done)


def default_forwarder_factory(
    forwarder: TargetedForwarder | None,
) -> Callable[[str, int], Forwarder | None]:
    """What :class:`PartitionHost` builds each replica's forwarder with."""

    def build(topic: str, partition: int) -> Forwarder | None:
        return None if forwarder is None else PartitionForwarder(forwarder, topic, partition)

    return build


__all__ = [
    "CAUGHT_UP_LAG",
    "PartitionForwarder",
    "PartitionLeader",
    "PeerClient",
    "ReplicaState",
    "TargetedForwarder",
    "Topics",
    "TopicsConfig",
    "TopicsStats",
    "default_forwarder_factory",
    "leader_of",
    "rejection_error",
]

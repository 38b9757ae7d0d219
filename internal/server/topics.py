"""Topics over gRPC: the admin rpcs (CreateTopic, DeleteTopic, ListTopics, DescribeTopic) and
the cluster service the nodes call each other on (``raftlog.admin.v1.Cluster``).

The admin rpcs need the ACL action ``admin``; the cluster service's ``replicate`` (the
peer certificate). Create and delete go to the controller's leader from whichever node is
called (through :meth:`raftlog.distributed.topics.Topics.submit`), and answer once the
called node's own copy of the metadata shows the change, so a DescribeTopic right after
sees it; CreateTopic also waits (up to 10 s) until every partition has a leader and each
replica is open, so a write right after it lands. DescribeTopic asks every node for its
replicas' state (leader, next offset) and reports each partition's leader and each
replica's lag behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from raftlog.api.admin.v1 import admin_pb2, admin_pb2_grpc
from raftlog.distributed.topics import ReplicaState, Topics, leader_of, rejection_error
from raftlog.domain.errors import InvalidArgumentError, TopicRefusedError, UnknownTopicError
from raftlog.partitions import (
    DEFAULT_REPLICATION,
    DEFAULT_TOPIC,
    Applied,
    ClusterMetadata,
    Rejected,
    Result,
    TopicSpec,
)
from raftlog.server.service import abort

logger = logging.getLogger("raftlog.server.topics")

Context = grpc.aio.ServicerContext[Any, Any]

#: How long DescribeTopic waits for each other node's replica states, seconds.
DESCRIBE_PEER_TIMEOUT_S = 2.0
#: How long a create or delete waits for the called node's metadata to show it, seconds.
METADATA_WAIT_S = 10.0
#: How long CreateTopic then waits for every partition to have a leader, seconds (it
#: answers with the description as it is then: a partition may still be electing).
LEADERS_WAIT_S = 10.0
LEADERS_POLL_S = 0.1


def settings_message(spec: TopicSpec) -> admin_pb2.TopicSettings:
    return admin_pb2.TopicSettings(
        partitions=spec.partitions,
        replication=spec.replication,
        retention_bytes=spec.retention_bytes or 0,
        retention_ms=spec.retention_ms or 0,
    )


def spec_of(settings: admin_pb2.TopicSettings) -> TopicSpec:
    """The TopicSpec a request asks for (0 = the default for replication and retention)."""
    return TopicSpec(
        partitions=settings.partitions,
        replication=settings.replication or DEFAULT_REPLICATION,
        retention_bytes=settings.retention_bytes or None,
        retention_ms=settings.retention_ms or None,
    )


def describe(
    name: str,
    metadata: ClusterMetadata,
    *,
    states: Iterable[ReplicaState],
    addresses: dict[str, str],
    preferred: Mapping[tuple[str, int], str],
    replicas: dict[int, list[tuple[str, str]]],
) -> admin_pb2.TopicDescription:
    """A TopicDescription from the metadata and the replicas' own states.

    ``replicas``: partition -> (node id, role) of its replicas
    (:meth:`~raftlog.distributed.topics.Topics.replicas_of`)."""
    spec = metadata.topics[name]
    seen: dict[tuple[int, str], ReplicaState] = {}
    for state in states:
        if state.topic == name:
            seen[(state.partition, state.node_id)] = state
    out = admin_pb2.TopicDescription(name=name, settings=settings_message(spec))
    for number in range(spec.partitions):
        assignment = metadata.assignments.get((name, number))
        roles = replicas.get(number, [])
        leader = leader_of([s for n, _ in roles if (s := seen.get((number, n)))])
        top = seen[(number, leader)].next_offset if (number, leader) in seen else 0
        part = out.partitions.add(
            partition=number,
            leader_id=leader,
            leader_addr=addresses.get(leader, ""),
            preferred_leader=preferred.get((name, number), ""),
            epoch=assignment.epoch if assignment else 0,
        )
        for node, role in roles:
            mine = seen.get((number, node))
            part.replicas.add(
                node_id=node,
                rpc_addr=addresses.get(node, ""),
                role=role,
                state=mine.state if mine else "unknown",
                next_offset=mine.next_offset if mine else 0,
                lag=max(top - mine.next_offset, 0) if mine and top else 0,
                live=node in metadata.live,
            )
    return out


class TopicAdmin:
    """The admin service's topic rpcs, over a node's :class:`Topics`."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics

    async def _settled(self, name: str, exists: bool) -> None:
        await self.topics.fsm.wait_until(lambda md: (name in md.topics) == exists, METADATA_WAIT_S)

    async def describe(self, name: str) -> admin_pb2.TopicDescription:
        topics = self.topics
        if name not in topics.metadata.topics:
            raise UnknownTopicError(f"topic {name!r} does not exist", name)
        states = await topics.replica_states(name, DESCRIBE_PEER_TIMEOUT_S)
        md = topics.metadata
        if name not in md.topics:  # deleted meanwhile
            raise UnknownTopicError(f"topic {name!r} does not exist", name)
        replicas = {n: topics.replicas_of((name, n)) for n in range(md.topics[name].partitions)}
        preferred = topics.preferred_leaders()
        return describe(
            name,
            md,
            states=states,
            addresses=dict(topics.members()),
            preferred=preferred,
            replicas=replicas,
        )

    async def _led(self, name: str) -> admin_pb2.TopicDescription:
        """The topic's description once every partition has a leader and every replica
        is open on its node (so a write right after CreateTopic finds it), or after
        :data:`LEADERS_WAIT_S` seconds as it is then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEADERS_WAIT_S
        while True:
            described = await self.describe(name)
            ready = all(
                p.leader_id and all(r.state != "unknown" for r in p.replicas)
                for p in described.partitions
            )
            if ready or loop.time() >= deadline:
                return described
            await asyncio.sleep(LEADERS_POLL_S)

    @staticmethod
    def _check(result: Result, name: str) -> None:
        if isinstance(result, Rejected):
            raise rejection_error(result, name)
        assert isinstance(result, Applied)

    async def CreateTopic(
        self, request: admin_pb2.CreateTopicRequest, context: Context
    ) -> admin_pb2.TopicDescription:
        """Create a topic (on the controller's leader, wherever called)."""
        try:
            if not request.HasField("settings") or request.settings.partitions < 1:
                raise InvalidArgumentError("CreateTopic needs settings.partitions >= 1")
            result = await self.topics.create_topic(request.name, spec_of(request.settings))
            self._check(result, request.name)
            await self._settled(request.name, True)
            logger.info("admin: topic %s created", request.name, extra={"topic": request.name})
            return await self._led(request.name)
        except Exception as exc:
            await abort(context, exc)
            raise

    async def DeleteTopic(
        self, request: admin_pb2.DeleteTopicRequest, context: Context
    ) -> admin_pb2.DeleteTopicResponse:
        """Delete a topic: its partitions close on every node (their files stay)."""
        try:
            result = await self.topics.delete_topic(request.name)
            self._check(result, request.name)
            await self._settled(request.name, False)
        except Exception as exc:
            await abort(context, exc)
            raise
        logger.info("admin: topic %s deleted", request.name, extra={"topic": request.name})
        return admin_pb2.DeleteTopicResponse()

    async def SetTopicRetention(
        self, request: admin_pb2.SetTopicRetentionRequest, context: Context
    ) -> admin_pb2.TopicDescription:
        """Replace a topic's retention (on the controller's leader, wherever called)."""
        try:
            if (request.name or DEFAULT_TOPIC) == DEFAULT_TOPIC:
                raise TopicRefusedError(
                    "the default topic's retention is the agents' --retention-bytes and "
                    "--retention-age",
                    DEFAULT_TOPIC,
                )
            result = await self.topics.set_retention(
                request.name, request.retention_bytes or None, request.retention_ms or None
            )
            self._check(result, request.name)
            wanted = (request.retention_bytes or None, request.retention_ms or None)
            await self.topics.fsm.wait_until(
                lambda md: (
                    (s := md.topics.get(request.name)) is None
                    or (s.retention_bytes, s.retention_ms) == wanted
                ),
                METADATA_WAIT_S,
            )
            logger.info(
                "admin: topic %s retention %s bytes, %s ms",
                request.name,
                request.retention_bytes,
                request.retention_ms,
                extra={"topic": request.name},
            )
            return await self.describe(request.name)
        except Exception as exc:
            await abort(context, exc)
            raise

    async def ListTopics(
        self, request: admin_pb2.ListTopicsRequest, context: Context
    ) -> admin_pb2.ListTopicsResponse:
        """Every topic with its settings (this node's copy of the metadata)."""
        md = self.topics.metadata
        return admin_pb2.ListTopicsResponse(
            topics=[
                admin_pb2.TopicSummary(name=name, settings=settings_message(spec))
                for name, spec in sorted(md.topics.items())
            ]
        )

    async def DescribeTopic(
        self, request: admin_pb2.DescribeTopicRequest, context: Context
    ) -> admin_pb2.TopicDescription:
        """Partitions, replicas, leaders and lag of a topic ("" = the default topic)."""
        try:
            return await self.describe(request.name or DEFAULT_TOPIC)
        except Exception as exc:
            await abort(context, exc)
            raise


class ClusterService(admin_pb2_grpc.ClusterServicer):
    """``raftlog.admin.v1.Cluster``: what nodes ask each other (ACL action replicate)."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics

    async def SubmitCommand(
        self, request: admin_pb2.SubmitCommandRequest, context: Context
    ) -> admin_pb2.SubmitCommandResponse:
        try:
            remaining = context.time_remaining()
            timeout = self.topics.config.change_timeout_s
            if remaining is not None:
                timeout = max(min(timeout, remaining - 0.1), 0.05)
            result = await self.topics.submit_entry(request.entry, timeout)
        except Exception as exc:
            await abort(context, exc)
            raise
        if isinstance(result, Rejected):
            return admin_pb2.SubmitCommandResponse(
                applied=False, reason=result.reason.value, message=result.message
            )
        return admin_pb2.SubmitCommandResponse(applied=True)

    async def ControllerState(
        self, request: admin_pb2.ControllerStateRequest, context: Context
    ) -> admin_pb2.ControllerStateResponse:
        return admin_pb2.ControllerStateResponse(has_state=self.topics.has_controller())

    async def LocalReplicas(
        self, request: admin_pb2.LocalReplicasRequest, context: Context
    ) -> admin_pb2.LocalReplicasResponse:
        return admin_pb2.LocalReplicasResponse(
            replicas=[
                admin_pb2.LocalReplica(
                    topic=s.topic,
                    partition=s.partition,
                    node_id=s.node_id,
                    state=s.state,
                    leader_id=s.leader_id,
                    next_offset=s.next_offset,
                )
                for s in self.topics.local_replicas(request.topic)
            ]
        )


def add_cluster_service(service: ClusterService, server: grpc.aio.Server) -> None:
    admin_pb2_grpc.add_ClusterServicer_to_server(service, server)  # type: ignore[no-untyped-call]

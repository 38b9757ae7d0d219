"""The admin service ``raftlog.admin.v1.Admin``: cluster status and operator actions.

A service of its own beside ``log.v1.Log`` (whose contract stays the book's), on the same
grpc.aio server, port and mutual TLS. The authorization interceptor requires the ACL
action ``admin`` for every rpc of it (:data:`raftlog.server.interceptors.DEFAULT_ACTIONS`;
the example policy grants it to ``root`` only), and refuses any rpc of it that has no
declared action.

- ``Status``: this node's role, term, leader, indexes, offsets and disk bytes; on the
  leader also every member with its suffrage and replication lag.
- ``TransferLeadership(to)``, ``RemoveServer(id)``: on the leader (a follower answers
  UNAVAILABLE with reason NOT_LEADER and the leader's address, as for writes).
- ``Snapshot``: take a snapshot on this node now and compact its Raft log behind it.
- ``CreateTopic``, ``DeleteTopic``, ``ListTopics``, ``DescribeTopic``: topics and their
  partitions (:mod:`raftlog.server.topics`).

The work is :class:`AdminBackend`'s (the node's DistributedLog); domain errors become
status codes through :mod:`raftlog.server.errors` like every other call's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc

from raftlog.api.admin.v1 import admin_pb2, admin_pb2_grpc
from raftlog.distributed.status import NodeStatus
from raftlog.domain.errors import UnsupportedError
from raftlog.server.service import abort
from raftlog.server.topics import TopicAdmin

logger = logging.getLogger("raftlog.server.admin")

Context = grpc.aio.ServicerContext[Any, Any]


class AdminBackend(Protocol):
    """What the admin service operates on (:class:`raftlog.distributed.DistributedLog`)."""

    def node_status(self, rpc_addr: str = "") -> NodeStatus: ...

    async def transfer_leadership(self, to: str = "", timeout_s: float | None = None) -> str: ...

    async def remove_member(self, node_id: str) -> int: ...

    async def take_snapshot(self, timeout_s: float | None = None) -> int: ...


#: Bytes of the node's data on disk, measured when asked (off the event loop).
DiskUsage = Callable[[], Awaitable[int]]


def status_message(status: NodeStatus, disk_bytes: int) -> admin_pb2.StatusResponse:
    """The wire form of a :class:`NodeStatus`."""
    return admin_pb2.StatusResponse(
        id=status.id,
        rpc_addr=status.rpc_addr,
        role=status.role,
        term=status.term,
        leader_id=status.leader_id,
        leader_addr=status.leader_addr,
        commit_index=status.commit_index,
        applied_index=status.applied_index,
        last_index=status.last_index,
        lowest_offset=max(status.lowest_offset, 0),
        highest_offset=max(status.highest_offset, 0),
        empty=status.empty,
        disk_bytes=disk_bytes,
        snapshot_index=status.snapshot_index,
        damaged_records=status.damaged_records,
        repaired_records=status.repaired_records,
        checkpoint_hash_mismatches=status.checkpoint_hash_mismatches,
        members=[
            admin_pb2.Member(
                id=m.id,
                rpc_addr=m.rpc_addr,
                suffrage=m.suffrage,
                lag=m.lag,
                match_index=m.match_index,
                is_leader=m.is_leader,
            )
            for m in status.members
        ],
    )


class AdminService(admin_pb2_grpc.AdminServicer):
    """Serves an :class:`AdminBackend` as ``raftlog.admin.v1.Admin``.

    ``rpc_addr``: this node's address as clients dial it (read when a call comes, the
    port being known only once the node listens). ``disk_usage``: bytes of its data dir.
    """

    def __init__(
        self,
        backend: AdminBackend,
        rpc_addr: Callable[[], str],
        disk_usage: DiskUsage,
        topics: TopicAdmin | None = None,
    ) -> None:
        self._backend = backend
        #: the topic rpcs (None: this node serves no topics; they answer UNIMPLEMENTED)
        self._topics = topics
        self._rpc_addr = rpc_addr
        self._disk_usage = disk_usage

    @staticmethod
    def _timeout(context: Context) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else max(remaining - 0.1, 0.05)

    async def Status(
        self, request: admin_pb2.StatusRequest, context: Context
    ) -> admin_pb2.StatusResponse:
        """This node's status (and every member's, on the leader)."""
        try:
            status = self._backend.node_status(self._rpc_addr())
            disk = await self._disk_usage()
        except Exception as exc:
            await abort(context, exc)
            raise
        return status_message(status, disk)

    async def TransferLeadership(
        self, request: admin_pb2.TransferLeadershipRequest, context: Context
    ) -> admin_pb2.TransferLeadershipResponse:
        """Hand leadership to ``request.to`` (or the most caught-up voter)."""
        try:
            leader = await self._backend.transfer_leadership(request.to, self._timeout(context))
        except Exception as exc:
            await abort(context, exc)
            raise
        logger.info("admin: leadership transferred to %s", leader, extra={"leader": leader})
        return admin_pb2.TransferLeadershipResponse(leader_id=leader)

    async def RemoveServer(
        self, request: admin_pb2.RemoveServerRequest, context: Context
    ) -> admin_pb2.RemoveServerResponse:
        """Remove member ``request.id`` (dead for good) from the cluster."""
        try:
            index = await self._backend.remove_member(request.id)
        except Exception as exc:
            await abort(context, exc)
            raise
        logger.info("admin: removed %s (index %d)", request.id, index, extra={"peer": request.id})
        return admin_pb2.RemoveServerResponse(index=index)

    async def Snapshot(
        self, request: admin_pb2.SnapshotRequest, context: Context
    ) -> admin_pb2.SnapshotResponse:
        """Take a snapshot on this node now."""
        try:
            index = await self._backend.take_snapshot(self._timeout(context))
        except Exception as exc:
            await abort(context, exc)
            raise
        logger.info("admin: snapshot at index %d", index, extra={"index": index})
        return admin_pb2.SnapshotResponse(index=index)

    async def _no_topics(self, context: Context) -> None:
        await abort(context, UnsupportedError("this node serves no topics"))

    async def CreateTopic(
        self, request: admin_pb2.CreateTopicRequest, context: Context
    ) -> admin_pb2.TopicDescription:
        if self._topics is None:
            await self._no_topics(context)
        assert self._topics is not None
        return await self._topics.CreateTopic(request, context)

    async def DeleteTopic(
        self, request: admin_pb2.DeleteTopicRequest, context: Context
    ) -> admin_pb2.DeleteTopicResponse:
        if self._topics is None:
            await self._no_topics(context)
        assert self._topics is not None
        return await self._topics.DeleteTopic(request, context)

    async def ListTopics(
        self, request: admin_pb2.ListTopicsRequest, context: Context
    ) -> admin_pb2.ListTopicsResponse:
        if self._topics is None:
            await self._no_topics(context)
        assert self._topics is not None
        return await self._topics.ListTopics(request, context)

    async def DescribeTopic(
        self, request: admin_pb2.DescribeTopicRequest, context: Context
    ) -> admin_pb2.TopicDescription:
        if self._topics is None:
            await self._no_topics(context)
        assert self._topics is not None
        return await self._topics.DescribeTopic(request, context)

    async def SetTopicRetention(
        self, request: admin_pb2.SetTopicRetentionRequest, context: Context
    ) -> admin_pb2.TopicDescription:
        if self._topics is None:
            await self._no_topics(context)
        assert self._topics is not None
        return await self._topics.SetTopicRetention(request, context)


def add_admin_service(service: AdminService, server: grpc.aio.Server) -> None:
    """Register ``service`` on ``server`` (beside log.v1.Log)."""
    admin_pb2_grpc.add_AdminServicer_to_server(service, server)  # type: ignore[no-untyped-call]

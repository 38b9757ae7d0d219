"""Topics in cluster tests: create one through the admin API, wait until it is placed.

Right after a cluster starts, CreateTopic may answer UNAVAILABLE (the controller group has
no leader yet: "try again"), and a topic made then may be placed on fewer nodes than its
replication until the controller knows every node live (moves complete it). These two
helpers wait through both, with deadlines.
"""

from __future__ import annotations

import grpc

from raftlog.api.admin.v1 import admin_pb2, admin_pb2_grpc
from support.wait import wait_until


async def create_topic(
    admin: admin_pb2_grpc.AdminStub,
    name: str,
    partitions: int,
    *,
    replication: int = 0,
    timeout: float = 40.0,
    attempt_timeout: float = 20.0,
) -> None:
    """CreateTopic, again while it answers UNAVAILABLE or DEADLINE_EXCEEDED (each attempt
    bounded by ``attempt_timeout`` seconds, all by ``timeout``); ALREADY_EXISTS after such
    a try counts as done (that try was committed after all); any other answer raises."""
    tried = False

    async def created() -> bool:
        nonlocal tried
        try:
            await admin.CreateTopic(
                admin_pb2.CreateTopicRequest(
                    name=name,
                    settings=admin_pb2.TopicSettings(
                        partitions=partitions, replication=replication
                    ),
                ),
                timeout=attempt_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS and tried:
                return True
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            tried = True
            return False
        return True

    await wait_until(created, timeout=timeout, what=f"topic {name} created", interval=0.2)


async def wait_placed(
    admin: admin_pb2_grpc.AdminStub, name: str, voters: int = 3, timeout: float = 60.0
) -> admin_pb2.TopicDescription:
    """Wait until every partition of ``name`` has exactly ``voters`` replicas, all voters,
    and a leader; its description then."""
    found: list[admin_pb2.TopicDescription] = []

    async def placed() -> bool:
        d = await admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name=name))
        found.append(d)
        return all(
            p.leader_id and sorted(r.role for r in p.replicas) == ["voter"] * voters
            for p in d.partitions
        )

    await wait_until(placed, timeout=timeout, what=f"{voters} voters and a leader per partition")
    return found[-1]

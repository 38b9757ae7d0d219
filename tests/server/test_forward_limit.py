"""A follower never forwards more than the leader accepts (issue 12).

The bug: a ProduceStream on a follower gathers the requests queued while its previous
append is in flight into one append (up to 8 MiB), and the follower forwarded that as ONE
Produce to the leader, whose limit is ``max_message_bytes`` (+ 1 MiB of transport slack):
the client got UNAVAILABLE "forwarded write failed: ... RESOURCE_EXHAUSTED: Received
message larger than max". Reproduced on real agent processes with a small
``--max-message-bytes`` (60 kB per request, so about 20 gathered requests exceed 64 KiB +
1 MiB): every request must be acknowledged, at its own contiguous offsets, and readable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from raftlog.api.contract import Key, Reason
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.distributed import ForwardError
from raftlog.security import CertFiles
from raftlog.server.forward import GrpcForwarder, produce_request_bytes
from support.cluster import AGENT_ARGS, three_node_cluster_async

pytestmark = pytest.mark.timeout(120)

LIMIT = 64 << 10
RECORD = 60_000
REQUESTS = 60


async def _requests(tag: int) -> AsyncIterator[log_pb2.ProduceRequest]:
    for i in range(REQUESTS):
        value = b"%03d-%05d-" % (tag, i) + b"x" * (RECORD - 10)
        yield log_pb2.ProduceRequest(records=[log_pb2.Record(value=value)])


async def test_a_follower_forwards_a_gathered_stream_within_the_leaders_limit(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    args = (*AGENT_ARGS, "--max-message-bytes", str(LIMIT))
    names = ("n1", "n2")
    async with three_node_cluster_async(
        tmp_path, dev_certs, names=names, agent_args=args, static_peers=True
    ) as c:
        assert c.client_tls is not None
        leader = await c.wait_for(c.client_tls, members=2, timeout_s=40, every=True)
        follower = next(n for n in names if n != leader)
        async with c.channel(follower, c.client_tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            offsets: list[int] = []
            for tag in range(3):  # all requests sent at once: the follower gathers them
                call = stub.ProduceStream(_requests(tag), timeout=60)
                async for response in call:
                    assert response.last_offset == response.offset  # one record each
                    offsets.append(response.offset)
            assert len(offsets) == 3 * REQUESTS
            assert len(set(offsets)) == len(offsets)
            for tag in range(3):
                for i in (0, REQUESTS - 1):
                    at = offsets[tag * REQUESTS + i]
                    got = await stub.Consume(log_pb2.ConsumeRequest(offset=at), timeout=10)
                    assert got.record.value.startswith(b"%03d-%05d-" % (tag, i))


async def test_the_forwarder_refuses_a_produce_above_the_limit_before_sending() -> None:
    forwarder = GrpcForwarder(None, max_request_bytes=1000)
    try:
        with pytest.raises(ForwardError) as info:
            # nothing listens there: the size check comes first
            await forwarder.produce("127.0.0.1:9", [b"x" * 600, b"y" * 600], timeout_s=1.0)
    finally:
        await forwarder.close()
    assert info.value.reason == Reason.RECORD_TOO_LARGE and info.value.not_applied
    assert info.value.metadata == {Key.SIZE: "1212", Key.LIMIT: "1000"}
    assert produce_request_bytes([b"x" * 600, b"y" * 600]) == 1212

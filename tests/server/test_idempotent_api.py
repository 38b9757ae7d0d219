"""The idempotent producer through the gRPC API of a single node (LocalLog), over real mTLS:
duplicates answered with the first offsets, validation, the window, ProduceStream, and
LogClient retrying a request whose response was lost."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from raftlog.api.status import error_info_from_metadata
from raftlog.api.v1 import log_pb2
from raftlog.client import ClientConfig, LogClient, SequenceTooOldError
from raftlog.security import CertFiles
from support.api_node import Node, running_node
from support.drop_response import DropResponses

Record = log_pb2.Record

#: Client settings for a single local node: quick retries, short deadlines.
QUICK = ClientConfig(
    request_timeout_s=10.0, attempt_timeout_s=3.0, backoff_initial_s=0.01, backoff_max_s=0.05
)


@pytest.fixture
async def node(tmp_path: Path, dev_certs: dict[str, CertFiles]) -> AsyncIterator[Node]:
    async with running_node(tmp_path, dev_certs) as n:
        yield n


def req(values: list[bytes], pid: str = "", seq: int = 0) -> log_pb2.ProduceRequest:
    return log_pb2.ProduceRequest(
        records=[Record(value=v) for v in values], producer_id=pid, sequence=seq
    )


async def test_a_repeated_request_is_answered_with_the_first_offsets(node: Node) -> None:
    async with node.channel() as ch:
        stub = node.stub(ch)
        await stub.Produce(req([b"before"]))
        first = await stub.Produce(req([b"a", b"b"], "prod-1", 1))
        again = await stub.Produce(req([b"a", b"b"], "prod-1", 1))
        assert (first.offset, first.last_offset, first.duplicate) == (1, 2, False)
        assert (again.offset, again.last_offset, again.duplicate) == (1, 2, True)
        # the same sequence of another producer, and the next sequence, are new
        other = await stub.Produce(req([b"c"], "prod-2", 1))
        nxt = await stub.Produce(req([b"d"], "prod-1", 2))
        assert (other.offset, other.duplicate, nxt.offset, nxt.duplicate) == (3, False, 4, False)
        offsets = await stub.GetOffsets(log_pb2.GetOffsetsRequest())
        assert offsets.next_offset == 5
        # a plain request (no producer id) is never deduplicated
        plain = [await stub.Produce(req([b"p"])) for _ in range(2)]
        assert [p.offset for p in plain] == [5, 6] and not any(p.duplicate for p in plain)


@pytest.mark.parametrize(
    ("pid", "seq", "problem"),
    [
        ("p", 0, "sequence must be >= 1"),
        ("", 3, "producer_id is empty"),
        ("x" * 65, 1, "more than 64"),
        ("\u00e9" * 33, 1, "66 bytes"),
    ],
)
async def test_bad_producer_fields_are_invalid_arguments(
    node: Node, pid: str, seq: int, problem: str
) -> None:
    async with node.channel() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await node.stub(ch).Produce(req([b"v"], pid, seq))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert problem in (info.value.details() or "")
        # a 64-byte id (32 two-byte characters) is fine
        ok = await node.stub(ch).Produce(req([b"v"], "\u00e9" * 32, 1))
        assert ok.offset == 0
    assert node.local_log.highest_offset == 0


async def test_a_sequence_below_the_window_is_refused(node: Node) -> None:
    window = node.local_log.producers.config.window
    async with node.channel() as ch:
        stub = node.stub(ch)
        for seq in range(2, window + 2):
            await stub.Produce(req([b"%d" % seq], "p", seq))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Produce(req([b"1"], "p", 1))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        detail = error_info_from_metadata(info.value.trailing_metadata())
        assert detail.reason == "SEQUENCE_TOO_OLD" and detail.metadata["oldest"] == "2"
    assert node.local_log.highest_offset == window - 1


async def test_produce_stream_deduplicates_each_request(node: Node) -> None:
    reqs = [
        req([b"a"]),
        req([b"b", b"c"], "s", 1),
        req([b"d"]),
        req([b"e"]),
        req([b"b", b"c"], "s", 1),  # a retry within the stream
        req([b"f"], "s", 2),
    ]
    async with node.channel() as ch:
        responses = [r async for r in node.stub(ch).ProduceStream(iter(reqs))]
    got = [(r.offset, r.last_offset, r.duplicate) for r in responses]
    assert got == [
        (0, 0, False),
        (1, 2, False),
        (3, 3, False),
        (4, 4, False),
        (1, 2, True),
        (5, 5, False),
    ]
    assert node.local_log.read_batch(0, 1 << 20, 10) == [b"a", b"b", b"c", b"d", b"e", b"f"]


async def test_client_retry_after_a_lost_response_does_not_append_twice(node: Node) -> None:
    drop = DropResponses(count=2)
    async with LogClient(
        node.addr, tls=node.tls("root"), config=QUICK, interceptors=[drop]
    ) as client:
        assert client.producer_id and len(client.producer_id) == 32
        # the first attempt's answer and the first retry's are lost; the third gets through
        offsets = await client.produce_batch([b"x", b"y", b"z"])
        assert offsets == [0, 1, 2]
        drop.count = 1
        single = await client.produce(b"solo")  # a batcher batch; its answer lost once
        assert single == 3
        assert [r.offset for r in drop.dropped] == [0, 0, 3]
        assert [r.duplicate for r in drop.dropped] == [False, True, False]
        assert client.stats.duplicates == 2 and client.stats.retries == 3
        assert (await client.offsets()).next == 4
        assert [(await client.consume(o)).value for o in range(4)] == [b"x", b"y", b"z", b"solo"]


async def test_without_idempotence_the_lost_response_duplicates(node: Node) -> None:
    """The control experiment: the same lost answer, idempotence off, appends twice."""
    drop = DropResponses(count=1)
    config = replace(QUICK, idempotent=False)
    async with LogClient(
        node.addr, tls=node.tls("root"), config=config, interceptors=[drop]
    ) as client:
        assert client.producer_id == ""
        assert await client.produce_batch([b"x"]) == [1]
        assert (await client.offsets()).next == 2


async def test_client_reports_a_sequence_too_old(node: Node) -> None:
    window = node.local_log.producers.config.window
    async with node.channel() as ch:
        stub = node.stub(ch)
        for seq in range(100, 100 + window):
            await stub.Produce(req([b"v"], "fixed", seq))
    config = replace(QUICK, producer_id="fixed", first_sequence=5)
    async with LogClient(node.addr, tls=node.tls("root"), config=config) as client:
        with pytest.raises(SequenceTooOldError) as info:
            await client.produce_batch([b"late"])
        assert info.value.metadata["oldest"] == "100"
        assert client.stats.retries == 0

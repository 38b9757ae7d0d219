"""The log.v1.Log API over real mutual TLS on 127.0.0.1: round trips, streams, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from raftlog.api.status import error_info_from_metadata
from raftlog.api.v1 import log_pb2
from raftlog.security import CertFiles
from raftlog.server import ServerConfig
from support.api_node import Node, running_node
from support.wait import wait_until

Record = log_pb2.Record


@pytest.fixture
async def node(tmp_path: Path, dev_certs: dict[str, CertFiles]) -> AsyncIterator[Node]:
    async with running_node(tmp_path, dev_certs) as n:
        yield n


async def test_unary_produce_consume_round_trip(node: Node) -> None:
    async with node.channel() as ch:
        stub = node.stub(ch)
        first = await stub.Produce(log_pb2.ProduceRequest(record=Record(value=b"hello")))
        second = await stub.Produce(log_pb2.ProduceRequest(record=Record(value=b"world")))
        assert (first.offset, first.last_offset) == (0, 0)
        assert (second.offset, second.last_offset) == (1, 1)
        got = await stub.Consume(log_pb2.ConsumeRequest(offset=1))
        assert (got.record.value, got.record.offset) == (b"world", 1)
        empty = await stub.Produce(log_pb2.ProduceRequest(record=Record(value=b"")))
        assert (await stub.Consume(log_pb2.ConsumeRequest(offset=empty.offset))).record.value == b""


async def test_batch_gets_consecutive_offsets(node: Node) -> None:
    values = [f"rec-{i}".encode() for i in range(100)]
    async with node.channel() as ch:
        stub = node.stub(ch)
        await stub.Produce(log_pb2.ProduceRequest(record=Record(value=b"first")))
        resp = await stub.Produce(log_pb2.ProduceRequest(records=[Record(value=v) for v in values]))
        assert (resp.offset, resp.last_offset) == (1, 100)
        for i in (0, 57, 99):
            got = await stub.Consume(log_pb2.ConsumeRequest(offset=1 + i))
            assert got.record.value == values[i]
        offsets = await stub.GetOffsets(log_pb2.GetOffsetsRequest())
        assert (offsets.lowest_offset, offsets.highest_offset, offsets.next_offset) == (0, 100, 101)
        assert not offsets.empty


async def test_produce_stream_answers_in_order(node: Node) -> None:
    def requests() -> list[log_pb2.ProduceRequest]:
        out = []
        for i in range(300):
            if i % 3 == 0:
                out.append(
                    log_pb2.ProduceRequest(
                        records=[Record(value=b"%d-%d" % (i, j)) for j in range(5)]
                    )
                )
            else:
                out.append(log_pb2.ProduceRequest(record=Record(value=b"%d" % i)))
        return out

    reqs = requests()
    async with node.channel() as ch:
        call = node.stub(ch).ProduceStream(iter(reqs))
        responses = [r async for r in call]
        assert len(responses) == len(reqs)
        expected = 0
        for req, resp in zip(reqs, responses, strict=True):
            n = len(req.records) or 1
            assert (resp.offset, resp.last_offset) == (expected, expected + n - 1)
            expected += n
        # what the stream wrote is what a reader gets back, in the same order
        stream = node.stub(ch).ConsumeStream(log_pb2.ConsumeRequest(offset=0, max_records=10_000))
        got: list[bytes] = []
        async for resp in stream:
            got += [r.value for r in resp.records]
            if len(got) >= expected:
                stream.cancel()
                break
        want = [v.value for req in reqs for v in (req.records or [req.record])]
        assert got == want


async def test_consume_stream_book_mode_one_record_per_message(node: Node) -> None:
    await node.local_log.append([b"a", b"b", b"c"])
    async with node.channel() as ch:
        call = node.stub(ch).ConsumeStream(log_pb2.ConsumeRequest(offset=1))
        seen = []
        async for resp in call:
            assert not resp.records
            seen.append((resp.record.offset, resp.record.value))
            if len(seen) == 2:
                call.cancel()
                break
        assert seen == [(1, b"b"), (2, b"c")]


async def test_consume_stream_batches_bounded_by_max_bytes(node: Node) -> None:
    await node.local_log.append([bytes([i]) * 1000 for i in range(50)])
    async with node.channel() as ch:
        call = node.stub(ch).ConsumeStream(
            log_pb2.ConsumeRequest(offset=0, max_records=20, max_bytes=5000)
        )
        sizes, offsets = [], []
        async for resp in call:
            sizes.append(len(resp.records))
            offsets += [r.offset for r in resp.records]
            assert sum(len(r.value) for r in resp.records) <= 5000
            if len(offsets) == 50:
                call.cancel()
                break
        assert offsets == list(range(50))
        assert max(sizes) == 5 and len(sizes) == 10


def n_recheck(node: Node) -> float:
    """The node's safety recheck of a caught-up ConsumeStream, in seconds."""
    return node.server.service.config.follow_recheck_s


async def test_consume_stream_receives_records_appended_after_it_started(node: Node) -> None:
    await node.local_log.append([b"old"])
    async with node.channel() as ch, node.channel() as producer:
        call = node.stub(ch).ConsumeStream(log_pb2.ConsumeRequest(offset=0, max_records=100))
        got: list[tuple[int, bytes]] = []

        async def read() -> None:
            async for resp in call:
                got.extend((r.offset, r.value) for r in resp.records)
                if len(got) >= 4:
                    return

        reader = asyncio.create_task(read())
        # the stream has caught up and is waiting; now append, from another client
        await wait_until(lambda: bool(got), 5, "the stream's first record")
        assert not reader.done()
        stub = node.stub(producer)
        await stub.Produce(log_pb2.ProduceRequest(record=Record(value=b"new-1")))
        await stub.Produce(
            log_pb2.ProduceRequest(records=[Record(value=b"new-2"), Record(value=b"new-3")])
        )
        # Woken by the appends themselves: well before the 5 s safety recheck would.
        assert n_recheck(node) >= 5.0
        await asyncio.wait_for(reader, 3)
        call.cancel()
    assert got == [(0, b"old"), (1, b"new-1"), (2, b"new-2"), (3, b"new-3")]


async def test_linearizable_reads_on_a_single_node(node: Node) -> None:
    """One node leads itself: a linearizable Consume or ConsumeStream is served at once."""
    await node.local_log.append([b"a", b"b"])
    async with node.channel() as ch:
        stub = node.stub(ch)
        got = await stub.Consume(log_pb2.ConsumeRequest(offset=1, linearizable=True), timeout=5)
        assert got.record.value == b"b"
        call = stub.ConsumeStream(
            log_pb2.ConsumeRequest(offset=0, max_records=10, linearizable=True), timeout=5
        )
        async for resp in call:
            assert [r.value for r in resp.records] == [b"a", b"b"]
            call.cancel()
            break
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Consume(log_pb2.ConsumeRequest(offset=2, linearizable=True), timeout=5)
        assert err.value.code() is grpc.StatusCode.OUT_OF_RANGE


async def test_out_of_range_carries_lowest_and_highest(node: Node) -> None:
    await node.local_log.append([b"x", b"y"])
    async with node.channel() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await node.stub(ch).Consume(log_pb2.ConsumeRequest(offset=7))
    assert err.value.code() is grpc.StatusCode.OUT_OF_RANGE
    assert "lowest 0" in (err.value.details() or "") and "highest 1" in (err.value.details() or "")
    info = error_info_from_metadata(err.value.trailing_metadata())
    assert info is not None and info.reason == "OFFSET_OUT_OF_RANGE"
    assert dict(info.metadata) == {"offset": "7", "lowest": "0", "highest": "1"}


@pytest.mark.parametrize("offset", [5, 2**64 - 1])
async def test_consume_stream_past_the_next_offset_is_out_of_range(node: Node, offset: int) -> None:
    await node.local_log.append([b"x"])
    async with node.channel() as ch:
        call = node.stub(ch).ConsumeStream(log_pb2.ConsumeRequest(offset=offset, max_records=10))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with asyncio.timeout(5):
                async for _ in call:
                    pass
    assert err.value.code() is grpc.StatusCode.OUT_OF_RANGE
    info = error_info_from_metadata(err.value.trailing_metadata())
    assert info is not None and info.metadata["highest"] == "0"


async def test_record_and_records_both_set_is_invalid(node: Node) -> None:
    async with node.channel() as ch:
        stub = node.stub(ch)
        bad = log_pb2.ProduceRequest(record=Record(value=b"a"), records=[Record(value=b"b")])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Produce(bad)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "both record and records" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Produce(log_pb2.ProduceRequest())
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        offsets = await stub.GetOffsets(log_pb2.GetOffsetsRequest())
        assert offsets.empty, "a refused request must not write anything"


async def test_oversized_record_is_invalid_and_node_keeps_serving(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    config = ServerConfig(max_message_bytes=64 * 1024)
    async with running_node(tmp_path, dev_certs, config=config) as n, n.channel() as ch:
        stub = n.stub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Produce(log_pb2.ProduceRequest(record=Record(value=b"x" * 70_000)))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "70000 bytes" in (err.value.details() or "")
        info = error_info_from_metadata(err.value.trailing_metadata())
        assert info is not None and info.reason == "RECORD_TOO_LARGE"
        # a batch whose total is too large is refused as a whole
        batch = [Record(value=b"y" * 40_000), Record(value=b"z" * 40_000)]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Produce(log_pb2.ProduceRequest(records=batch))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        ok = await stub.Produce(log_pb2.ProduceRequest(record=Record(value=b"fine")))
        assert ok.offset == 0


async def test_bad_request_in_produce_stream_fails_after_earlier_ones(node: Node) -> None:
    reqs = [
        log_pb2.ProduceRequest(record=Record(value=b"a")),
        log_pb2.ProduceRequest(record=Record(value=b"b")),
        log_pb2.ProduceRequest(),
        log_pb2.ProduceRequest(record=Record(value=b"never")),
    ]
    async with node.channel() as ch:
        call = node.stub(ch).ProduceStream(iter(reqs))
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for resp in call:
                got.append(resp.offset)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert got == [0, 1]
        assert node.local_log.highest_offset == 1


async def test_clients_that_vanish_mid_stream_do_not_hurt_others(node: Node) -> None:
    await node.local_log.append([b"seed"])
    for _ in range(3):
        ch = node.channel()
        stub = node.stub(ch)
        follow = stub.ConsumeStream(log_pb2.ConsumeRequest(offset=0))
        assert (await follow.read()).record.value == b"seed"
        produce = stub.ProduceStream()
        await produce.write(log_pb2.ProduceRequest(record=Record(value=b"half-way")))
        await produce.read()
        # vanish without closing the streams properly
        await ch.close(grace=None)
    async with node.channel() as ch:
        stub = node.stub(ch)
        resp = await stub.Produce(log_pb2.ProduceRequest(record=Record(value=b"after")), timeout=5)
        assert resp.offset == 4
        got = await stub.Consume(log_pb2.ConsumeRequest(offset=4), timeout=5)
        assert got.record.value == b"after"


async def test_get_servers_lists_this_node_as_leader(node: Node) -> None:
    async with node.channel() as ch:
        resp = await node.stub(ch).GetServers(log_pb2.GetServersRequest())
    assert [(s.id, s.rpc_addr, s.is_leader) for s in resp.servers] == [
        ("test-node", node.addr, True)
    ]


async def test_health_and_reflection(node: Node) -> None:
    async with node.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "log.v1.Log"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = set()
        async for resp in call:
            names |= {s.name for s in resp.list_services_response.service}
            break
        assert {"log.v1.Log", "grpc.health.v1.Health"} <= names


async def test_shutdown_ends_a_following_stream(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    async with running_node(tmp_path, dev_certs) as n:
        ch = n.channel()
        call = n.stub(ch).ConsumeStream(log_pb2.ConsumeRequest(offset=0, max_records=10))
        # the stream has reached its wait: it parked on the log's change signal
        await wait_until(lambda: n.local_log._changed is not None, 5, "the stream to wait")
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = asyncio.create_task(n.server.stop(5.0))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with asyncio.timeout(5):
                async for _ in call:
                    pass
        await stopping
        # Woken by the shutdown itself, not by the 5 s safety recheck.
        assert n_recheck(n) >= 5.0
        assert loop.time() - started < 2.0
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        await ch.close()


async def test_produce_stream_with_a_tiny_window_still_answers_everything_in_order(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    config = ServerConfig(produce_stream_window_bytes=2048, produce_stream_max_requests=3)
    reqs = [log_pb2.ProduceRequest(record=Record(value=bytes([i % 256]) * 500)) for i in range(200)]
    async with running_node(tmp_path, dev_certs, config=config) as n, n.channel() as ch:
        call = n.stub(ch).ProduceStream(iter(reqs))
        offsets = [r.offset async for r in call]
        assert offsets == list(range(200))
        assert n.local_log.read(199) == bytes([199]) * 500


async def test_single_record_stream_with_many_in_flight_answers_each_message_in_order(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    """The benchmark's shape (bench/bench_stream_x1.py): one record per message, hundreds
    of messages unacknowledged, read and written at once. Gathered appends of at most 64
    requests, an idempotent request (appended on its own) and a batch request among them:
    one response per message, in order, at strictly consecutive offsets, and the log
    holds the records in the order they were sent."""
    total, in_flight = 3000, 400
    config = ServerConfig(produce_stream_max_requests=64)

    def request(i: int) -> log_pb2.ProduceRequest:
        if i == 1234:
            return log_pb2.ProduceRequest(
                record=Record(value=b"%06d" % i), producer_id="p-1", sequence=1
            )
        if i == 2345:
            return log_pb2.ProduceRequest(records=[Record(value=b"%06d" % i)] * 3)
        return log_pb2.ProduceRequest(record=Record(value=b"%06d" % i))

    async with running_node(tmp_path, dev_certs, config=config) as n, n.channel() as ch:
        call = n.stub(ch).ProduceStream()
        slots = asyncio.Semaphore(in_flight)
        responses: list[log_pb2.ProduceResponse] = []

        async def writer() -> None:
            for i in range(total):
                await slots.acquire()
                await call.write(request(i))
            await call.done_writing()

        async def reader() -> None:
            while (response := await call.read()) is not grpc.aio.EOF:
                responses.append(response)
                slots.release()

        async with asyncio.timeout(60):
            await asyncio.gather(writer(), reader())
        assert len(responses) == total
        expected = 0
        for i, response in enumerate(responses):
            n_records = 3 if i == 2345 else 1
            assert (response.offset, response.last_offset) == (expected, expected + n_records - 1)
            assert not response.duplicate
            expected += n_records
        assert n.local_log.read(0) == b"000000"
        assert n.local_log.read(1234) == b"001234"
        assert n.local_log.read(2345) == n.local_log.read(2347) == b"002345"
        assert n.local_log.read(expected - 1) == b"%06d" % (total - 1)
        assert n.local_log.highest_offset == expected - 1


def _flip_payload_byte(local_log: object, offset: int) -> None:
    """Bit rot: flip one payload byte of the record at ``offset`` in its store file."""
    commit_log = local_log._log  # type: ignore[attr-defined]
    seg = commit_log.segments[-1]
    pos = seg.index.position(offset - seg.base_offset) + 8
    with open(seg.store.path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x01]))


async def test_a_corrupt_record_is_data_loss_never_its_bytes(node: Node) -> None:
    await node.local_log.append([b"alpha", b"bravo", b"charlie"])
    _flip_payload_byte(node.local_log, 1)
    async with node.channel() as ch:
        stub = node.stub(ch)
        assert (await stub.Consume(log_pb2.ConsumeRequest(offset=0))).record.value == b"alpha"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Consume(log_pb2.ConsumeRequest(offset=1))
        assert err.value.code() is grpc.StatusCode.DATA_LOSS
        assert "offset 1" in (err.value.details() or "")
        info = error_info_from_metadata(err.value.trailing_metadata())
        assert info is not None and info.reason == "DATA_LOSS"
        assert info.metadata["offset"] == "1"
        # a stream serves the intact record before the damaged one, then ends with DATA_LOSS
        got: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for resp in stub.ConsumeStream(log_pb2.ConsumeRequest(offset=0)):
                got.append(resp.record.value)
        assert got == [b"alpha"]
        assert err.value.code() is grpc.StatusCode.DATA_LOSS

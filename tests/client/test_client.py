"""LogClient against in-process nodes (real mTLS, real sockets): round trips, automatic
batching counted on the server, retries across a restart, deadlines, error taxonomy."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from raftlog.client import (
    ClientClosedError,
    ClientConfig,
    DeadlineExceededError,
    LogClient,
    NoServersError,
    OffsetOutOfRangeError,
    PermissionDeniedError,
    Record,
    SyncLogClient,
    UnavailableError,
)
from raftlog.security import CertFiles
from support.client_nodes import FAST, RestartableNode, tls_of
from support.wait import wait_until

MakeNode = Callable[[str], Awaitable[RestartableNode]]
ClientOf = Callable[..., contextlib.AbstractAsyncContextManager[LogClient]]


async def take(client: LogClient, from_offset: int, count: int) -> list[Record]:
    """The first ``count`` records of a stream from ``from_offset``."""
    out: list[Record] = []
    async with contextlib.aclosing(client.stream(from_offset)) as stream:
        async for record in stream:
            out.append(record)
            if len(out) == count:
                break
    return out


async def test_round_trips(make_node: MakeNode, client_of: ClientOf) -> None:
    node = await make_node("a")
    async with client_of(node.addr) as client:
        servers = await client.servers()
        assert [(s.id, s.rpc_addr, s.is_leader) for s in servers] == [("a", node.addr, True)]
        assert await client.produce(b"zero") == 0
        assert await client.produce_batch([b"one", b"two", b"three"]) == [1, 2, 3]
        assert await client.produce_batch([]) == []
        assert await client.consume(2) == Record(2, b"two")
        offsets = await client.offsets()
        assert (offsets.lowest, offsets.highest, offsets.next, offsets.empty) == (0, 3, 4, False)
        records = await take(client, 1, 3)
        assert records == [Record(1, b"one"), Record(2, b"two"), Record(3, b"three")]

        # a stream that has caught up gets new records as they are appended
        reader = asyncio.create_task(take(client, 4, 2))
        await asyncio.sleep(0)
        await client.produce_batch([b"four", b"five"])
        assert [r.value for r in await asyncio.wait_for(reader, 10)] == [b"four", b"five"]
    # one request per produce/produce_batch: the server agrees
    assert node.counts("Produce") == 3
    assert client.stats.produce_requests == 3


async def test_concurrent_produces_are_batched(make_node: MakeNode, client_of: ClientOf) -> None:
    node = await make_node("a")
    async with client_of(node.addr) as client:
        values = [b"v%04d" % i + bytes(95) for i in range(1000)]
        offsets = await asyncio.gather(*(client.produce(v) for v in values))
        rpcs = node.counts("Produce")
        assert sorted(offsets) == list(range(1000))
        assert 1 <= rpcs <= 10, f"{rpcs} Produce RPCs for 1000 concurrent produce() calls"
        assert client.stats.produce_requests == rpcs == client.batcher.batches_sent
        # every caller got the offset where its own record is
        stored = {r.offset: r.value for r in await take(client, 0, 1000)}
        assert all(stored[o] == v for o, v in zip(offsets, values, strict=True))


async def test_batch_limits_and_linger(make_node: MakeNode, client_of: ClientOf) -> None:
    node = await make_node("a")
    config = replace(FAST, batch_max_records=10, batch_max_bytes=1000, linger_s=0.2)
    async with client_of(node.addr, config=config) as client:
        # 95 concurrent records: 9 full batches sent at once, the last 5 after the linger
        loop = asyncio.get_running_loop()
        started = loop.time()
        offsets = await asyncio.gather(*(client.produce(b"r%d" % i) for i in range(95)))
        assert sorted(offsets) == list(range(95))
        assert node.counts("Produce") == 10
        assert loop.time() - started >= 0.2  # the partial batch waited for its linger
        # bytes: 100-byte records, 1000-byte batches -> 10 per batch, plus one 2000-byte
        # record that goes alone
        await asyncio.gather(*(client.produce(bytes(100)) for _ in range(30)))
        assert node.counts("Produce") == 13
        big = await client.produce(bytes(2000))
        assert node.counts("Produce") == 14
        assert (await client.consume(big)).value == bytes(2000)


async def test_produce_retries_across_a_restart_on_the_same_port(
    make_node: MakeNode, client_of: ClientOf
) -> None:
    node = await make_node("a")
    acked: dict[int, bytes] = {}
    restarted = asyncio.Event()
    async with client_of(node.addr) as client:

        async def producer(k: int) -> None:
            i = after = 0
            while after < 40:  # keep producing until 40 records went in after the restart
                value = b"p%d-%d" % (k, i)
                acked[await client.produce(value)] = value
                i += 1
                after += restarted.is_set()

        tasks = [asyncio.create_task(producer(k)) for k in range(8)]
        await wait_until(lambda: len(acked) >= 100, 10.0, "100 acks")
        await node.stop()
        await wait_until(lambda: client.stats.retries > 0, 10.0, "produce calls to fail, retried")
        await node.start()  # same port, same data directory
        restarted.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert client.stats.retries > 0
        assert len(acked) >= 8 * 40
        # every acknowledged record is in the log, at the offset its caller got
        stored = {r.offset: r.value for r in await take(client, 0, max(acked) + 1)}
        assert all(stored[o] == v for o, v in acked.items())


async def test_deadline_exceeded_is_a_clear_error(make_node: MakeNode, client_of: ClientOf) -> None:
    node = await make_node("a")
    config = replace(FAST, request_timeout_s=1.0, attempt_timeout_s=0.5)
    async with client_of(node.addr, config=config) as client:
        await client.produce(b"x")
        await node.stop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DeadlineExceededError) as info:
            await client.produce(b"y")
        elapsed = loop.time() - started
        assert 0.8 <= elapsed < 3.0, elapsed
        assert isinstance(info.value.last_error, UnavailableError)
        assert info.value.attempts > 1
        assert "gave up after" in str(info.value) and "last error: UNAVAILABLE" in str(info.value)


async def test_bootstrap_fails_fast_when_nothing_answers(dev_certs: dict[str, CertFiles]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = LogClient(f"127.0.0.1:{port}", tls=tls_of(dev_certs["root"]), config=FAST)
    async with asyncio.timeout(5):
        with pytest.raises(NoServersError, match="no server answered"):
            await client.start()
    await client.close()


async def test_errors_that_are_not_retried(make_node: MakeNode, client_of: ClientOf) -> None:
    node = await make_node("a")
    async with client_of(node.addr) as client:
        await client.produce_batch([b"a", b"b"])
        with pytest.raises(OffsetOutOfRangeError) as info:
            await client.consume(99)
        assert (info.value.offset, info.value.lowest, info.value.highest) == (99, 0, 1)
        assert node.counts("Consume", "OUT_OF_RANGE") == 1  # asked once, not retried
        with pytest.raises(OffsetOutOfRangeError):
            await take(client, 50, 1)
    async with client_of(node.addr, role="nobody") as nobody:
        assert len(await nobody.servers()) == 1  # GetServers needs no permission
        with pytest.raises(PermissionDeniedError, match="nobody"):
            await nobody.produce(b"x")
        assert node.counts("Produce", "PERMISSION_DENIED") == 1
        assert nobody.stats.retries == 0


async def test_stream_resumes_after_a_restart_without_gaps_or_repeats(
    make_node: MakeNode, client_of: ClientOf
) -> None:
    node = await make_node("a")
    async with client_of(node.addr) as client:
        await client.produce_batch([b"a%d" % i for i in range(5)])
        seen: list[Record] = []

        async def read() -> None:
            async with contextlib.aclosing(client.stream(0)) as stream:
                async for record in stream:
                    seen.append(record)
                    if len(seen) == 15:
                        return

        reader = asyncio.create_task(read())
        await wait_until(lambda: len(seen) == 5, 10.0, "5 records streamed")
        await node.stop()
        await wait_until(lambda: client.stats.stream_resumes > 0, 10.0, "a stream resume")
        await node.start()
        await client.produce_batch([b"b%d" % i for i in range(10)])
        await asyncio.wait_for(reader, 15)
        assert [r.offset for r in seen] == list(range(15))
        assert [r.value for r in seen[5:]] == [b"b%d" % i for i in range(10)]


async def test_close_flushes_queued_produces(make_node: MakeNode, client_of: ClientOf) -> None:
    node = await make_node("a")
    config = replace(FAST, linger_s=0.5)
    client = LogClient(node.addr, tls=tls_of(node.certs["root"]), config=config)
    await client.start()
    calls = [asyncio.create_task(client.produce(b"q%d" % i)) for i in range(10)]
    await asyncio.sleep(0)  # let the calls queue
    await asyncio.wait_for(client.close(), 5)  # sends the open batch before closing
    assert sorted(await asyncio.gather(*calls)) == list(range(10))
    with pytest.raises(ClientClosedError):
        await client.produce(b"late")


async def test_sync_client(make_node: MakeNode, dev_certs: dict[str, CertFiles]) -> None:
    node = await make_node("a")

    def script() -> tuple[Any, ...]:
        with SyncLogClient([node.addr], tls=tls_of(dev_certs["root"]), config=FAST) as client:
            first = client.produce(b"s0")
            batch = client.produce_batch([b"s1", b"s2"])
            record = client.consume(1)
            streamed = []
            for r in client.stream(0):
                streamed.append(r.value)
                if len(streamed) == 3:
                    break
            servers = [s.rpc_addr for s in client.servers()]
            offsets = client.offsets()
            # several threads share the client: their produce() calls share batches
            got: list[int] = []
            threads = [
                threading.Thread(target=lambda: got.extend(client.produce(b"t") for _ in range(50)))
                for _ in range(4)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert sorted(got) == list(range(3, 203))
            thread = client._thread
        return first, batch, record, streamed, servers, offsets.next, thread.is_alive()

    result = await asyncio.to_thread(script)
    assert result == (0, [1, 2], Record(1, b"s1"), [b"s0", b"s1", b"s2"], [node.addr], 3, False)
    assert node.counts("Produce") < 3 + 200  # some of the threads' calls were batched
    assert not any(t.name == "raftlog-client" for t in threading.enumerate())


def test_config_validation() -> None:
    ClientConfig().validate()
    for bad, field in (
        (ClientConfig(linger_s=-1), "linger_s"),
        (ClientConfig(linger_s=2), "linger_s"),
        (ClientConfig(batch_max_records=0), "batch_max_records"),
        (ClientConfig(request_timeout_s=1, attempt_timeout_s=2), "attempt_timeout_s"),
        (ClientConfig(backoff_initial_s=2, backoff_max_s=1), "backoff_max_s"),
        (ClientConfig(backoff_jitter=1.5), "backoff_jitter"),
        (ClientConfig(batch_max_bytes=8 << 20), "batch_max_bytes"),
        (ClientConfig(request_timeout_s=float("nan")), "request_timeout_s"),
        (ClientConfig(tls_server_name=""), "tls_server_name"),
    ):
        with pytest.raises(ValueError, match=field):
            bad.validate()
    with pytest.raises(ValueError, match="insecure=True"):
        LogClient("127.0.0.1:1", tls=None)

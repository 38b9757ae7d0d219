"""LogClient against a real 3-node cluster (``raftlog agent`` processes, Serf, mux, mTLS).

Calls are counted on the servers: the agents log every call at debug level with its method
and the client certificate's subject (``root`` for this client; forwarded writes between
nodes carry the node certificate's subject), so the counts below are the servers' own.

The idempotent producer: a produce whose answer was lost is retried and appended once
(also through a follower, whose forwarded call carries the producer id and sequence), and
the failover test asserts that the log read back holds every acknowledged record exactly
once: no loss, no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest

from raftlog.agent.devcluster import DevCluster
from raftlog.api.status import error_info_from_metadata
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.client import LogClient, Record
from raftlog.security import CertFiles
from raftlog.security.grpc_tls import grpc_channel_credentials
from support.client_nodes import FAST
from support.cluster import three_node_cluster
from support.drop_response import DropResponses
from support.wait import wait_until

pytestmark = pytest.mark.timeout(150)

#: Client settings for failover: enough time for an election, quick retries.
FAILOVER = replace(FAST, request_timeout_s=30.0, attempt_timeout_s=3.0, backoff_max_s=0.3)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, dev_certs: dict[str, CertFiles]
) -> Iterator[DevCluster]:
    root = tmp_path_factory.mktemp("client-cluster")
    args = ("--serf-profile", "local", "--sync", "never", "--log-level", "debug")
    with three_node_cluster(root, dev_certs, agent_args=args) as c:
        yield c


def calls(c: DevCluster, name: str, method: str) -> int:
    """Successful ``method`` calls node ``name`` served to the ``root`` client, per its log."""
    pattern = rf"method=/log\.v1\.Log/{method} subject=root peer=\S+ code=OK"
    return len(re.findall(pattern, c.log_text(name)))


async def highest_on(c: DevCluster, name: str) -> int:
    """The highest committed offset node ``name`` serves now."""
    assert c.client_tls is not None
    async with c.channel(name, c.client_tls) as channel:
        stub = log_pb2_grpc.LogStub(channel)  # type: ignore[no-untyped-call]
        response = await stub.GetOffsets(log_pb2.GetOffsetsRequest(), timeout=2)
    return -1 if response.empty else int(response.highest_offset)


def addrs(c: DevCluster) -> list[str]:
    return [n.rpc_addr for n in c.nodes.values() if n.running]


async def test_produce_lands_on_the_leader_and_consume_is_spread_over_followers(
    cluster: DevCluster,
) -> None:
    assert cluster.client_tls is not None
    leader = await cluster.wait_for(cluster.client_tls, members=3, timeout_s=30)
    followers = [n for n in cluster.nodes if n != leader]

    # reads go to voting followers first: wait until the last joiner is promoted
    async def all_voters() -> bool:
        assert cluster.client_tls is not None
        servers = await cluster.servers(leader, cluster.client_tls)
        return not any(s.is_learner for s in servers)

    await wait_until(all_voters, 30, "every member to vote", interval=0.1)
    before = {
        n: (calls(cluster, n, "Produce"), calls(cluster, n, "Consume")) for n in cluster.nodes
    }
    async with LogClient(addrs(cluster), tls=cluster.client_tls, config=FAILOVER) as client:
        assert client.resolver.leader == cluster.nodes[leader].rpc_addr
        offsets = await client.produce_batch([b"spread-%d" % i for i in range(10)])
        batched = await asyncio.gather(*(client.produce(b"auto-%d" % i) for i in range(200)))
        assert len(set(batched)) == 200
        produce_rpcs = client.stats.produce_requests
        # wait until both followers have applied the records, so none hands a read on
        for name in followers:

            async def applied(name: str = name) -> bool:
                return await highest_on(cluster, name) >= offsets[-1]

            await wait_until(applied, 20, f"{name} to apply the records", interval=0.05)
        for i in range(10):
            assert await client.consume(offsets[i]) == Record(offsets[i], b"spread-%d" % i)

        def delta(name: str, k: int) -> int:
            now = (calls(cluster, name, "Produce"), calls(cluster, name, "Consume"))
            return now[k] - before[name][k]

        await wait_until(
            lambda: sum(delta(n, 1) for n in cluster.nodes) == 10, 20.0, "10 consume calls"
        )
        await wait_until(
            lambda: sum(delta(n, 0) for n in cluster.nodes) == produce_rpcs,
            20.0,
            "the produce calls counted",
        )
        assert delta(leader, 0) == produce_rpcs  # every Produce went to the leader
        assert produce_rpcs <= 1 + 20  # 200 concurrent produce() calls: a few batches
        assert delta(leader, 1) == 0
        assert [delta(n, 1) for n in followers] == [5, 5]  # round-robin over the followers


async def cli(c: DevCluster, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run ``raftlog <args>`` as the root client; (exit code, stdout, stderr)."""
    tls = c.client_tls
    assert tls is not None
    proc = await asyncio.create_subprocess_exec(
        *c.raftlog,
        *args,
        "--ca-file",
        str(tls.ca_file),
        "--cert-file",
        str(tls.cert_file),
        "--key-file",
        str(tls.key_file),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_linearizable_reads_come_from_the_leader_after_a_barrier(
    cluster: DevCluster,
) -> None:
    """Read-your-write: a linearizable consume right after a produce finds the record at
    once, whatever the followers have applied, because the leader serves it after a read
    barrier; a follower asked directly refuses with NOT_LEADER and names the leader."""
    assert cluster.client_tls is not None
    leader = await cluster.wait_for(cluster.client_tls, members=3, timeout_s=30)
    follower = next(n for n in cluster.nodes if n != leader and cluster.nodes[n].running)
    before = calls(cluster, leader, "Consume")
    async with LogClient(addrs(cluster), tls=cluster.client_tls, config=FAILOVER) as client:
        offsets = []
        for i in range(5):
            offsets.append(await client.produce(b"lin-%d" % i))
            got = await client.consume(offsets[-1], linearizable=True)
            assert got == Record(offsets[-1], b"lin-%d" % i)
        streamed = []
        async for record in client.stream(offsets[0], linearizable=True):
            streamed.append(record)
            if len(streamed) == 5:
                break
        assert [r.offset for r in streamed] == offsets
    await wait_until(
        lambda: calls(cluster, leader, "Consume") - before == 5, 20.0, "5 consume calls"
    )
    async with cluster.channel(follower, cluster.client_tls) as channel:
        stub = log_pb2_grpc.LogStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Consume(
                log_pb2.ConsumeRequest(offset=offsets[0], linearizable=True), timeout=5
            )
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        details = error_info_from_metadata(info.value.trailing_metadata())  # type: ignore[arg-type]
        assert details is not None and details.reason == "NOT_LEADER"
        assert details.metadata["leader_addr"] == cluster.nodes[leader].rpc_addr
        # without the flag the follower serves what it has committed
        plain = await stub.Consume(log_pb2.ConsumeRequest(offset=offsets[0]), timeout=5)
        assert plain.record.value == b"lin-0"


async def test_cli_commands_with_several_addresses(cluster: DevCluster) -> None:
    assert cluster.client_tls is not None
    leader = await cluster.wait_for(cluster.client_tls, members=3, timeout_s=30)
    follower = next(n for n in cluster.nodes if n != leader)
    every = ",".join(n.rpc_addr for n in cluster.nodes.values())
    rc, out, err = await cli(cluster, "servers", "--addr", every)
    assert rc == 0, err
    rows = sorted(line.split("\t") for line in out.splitlines())
    assert rows == sorted(
        [n.name, n.rpc_addr, "leader" if n.name == leader else "follower"]
        for n in cluster.nodes.values()
    )
    # given only a follower, produce still lands (the client finds the leader)
    only = ["--addr", cluster.nodes[follower].rpc_addr]
    rc, out, err = await cli(cluster, "produce", *only, stdin=b"cli-a\ncli-b\n")
    assert rc == 0, err
    first, second = (int(x) for x in out.split())
    assert second == first + 1
    rc, out, err = await cli(cluster, "consume", "--addr", every, "--from", str(first))
    assert rc == 0, err
    assert out.splitlines()[:2] == ["cli-a", "cli-b"]


def idempotent(values: list[bytes], pid: str, seq: int) -> log_pb2.ProduceRequest:
    return log_pb2.ProduceRequest(
        records=[log_pb2.Record(value=v) for v in values], producer_id=pid, sequence=seq
    )


async def read_range(client: LogClient, first: int, last: int) -> list[bytes]:
    """Every record first..last, read back through the client's stream."""
    out: list[bytes] = []
    async with contextlib.aclosing(client.stream_batches(first)) as stream:
        async for batch in stream:
            out.extend(r.value for r in batch)
            if len(out) >= last - first + 1:
                break
    return out[: last - first + 1]


async def test_a_retry_after_a_lost_answer_is_appended_once(cluster: DevCluster) -> None:
    tls = cluster.client_tls
    assert tls is not None
    leader = await cluster.wait_for(tls, members=3, timeout_s=30)
    follower = next(n for n in cluster.nodes if n != leader)
    drop = DropResponses(count=1)
    async with LogClient(
        [cluster.nodes[follower].rpc_addr], tls=tls, config=FAILOVER, interceptors=[drop]
    ) as client:
        offsets = await client.produce_batch([b"lost-1", b"lost-2"])
        assert [r.offset for r in drop.dropped] == [offsets[0]]  # appended, answer lost
        assert client.stats.duplicates == 1 and client.stats.retries >= 1
        # through a follower: the forwarded call carries the pair, the leader remembers it
        pid = uuid.uuid4().hex
        async with cluster.channel(follower, tls) as channel:
            via = log_pb2_grpc.LogStub(channel)  # type: ignore[no-untyped-call]
            first = await via.Produce(idempotent([b"fwd"], pid, 1), timeout=10)
            assert not first.duplicate
            async with cluster.channel(leader, tls) as lch:
                direct = log_pb2_grpc.LogStub(lch)  # type: ignore[no-untyped-call]
                again = await direct.Produce(idempotent([b"fwd"], pid, 1), timeout=10)
                assert (again.offset, again.duplicate) == (first.offset, True)
                for seq in range(2, 34):  # 32 newer sequences push 1 out of the window
                    await direct.Produce(idempotent([b"w%d" % seq], pid, seq), timeout=10)
        # a follower's answer lost on the way back: the retry, via the follower again, is
        # answered with the first offsets (the follower forwards it, or knows it already)
        lossy_drop = DropResponses(count=1)
        lossy = grpc.aio.secure_channel(
            cluster.nodes[follower].rpc_addr,
            grpc_channel_credentials(tls),
            interceptors=[lossy_drop],
        )
        async with lossy:
            stub = log_pb2_grpc.LogStub(lossy)  # type: ignore[no-untyped-call]
            lost_pid = uuid.uuid4().hex
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Produce(idempotent([b"via-f"], lost_pid, 1), timeout=10)
            retry = await stub.Produce(idempotent([b"via-f"], lost_pid, 1), timeout=10)
            assert retry.duplicate and retry.offset == lossy_drop.dropped[0].offset
        async with cluster.channel(follower, tls) as channel:
            via = log_pb2_grpc.LogStub(channel)  # type: ignore[no-untyped-call]
            # ... and the follower relays the leader's refusal of sequence 1 as it is
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await via.Produce(idempotent([b"fwd"], pid, 1), timeout=10)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            detail = error_info_from_metadata(info.value.trailing_metadata())
            assert detail is not None and detail.reason == "SEQUENCE_TOO_OLD"
        end = (await client.offsets()).highest
        log = await read_range(client, offsets[0], end)
    assert log[:3] == [b"lost-1", b"lost-2", b"fwd"]
    assert len(log) == 3 + 32 + 1 and len(set(log)) == len(log) and b"via-f" in log


async def test_leader_killed_mid_stream_the_producer_and_the_stream_continue(
    cluster: DevCluster,
) -> None:
    assert cluster.client_tls is not None
    old = await cluster.wait_for(cluster.client_tls, members=3, timeout_s=30)
    old_addr = cluster.nodes[old].rpc_addr
    acked: dict[int, bytes] = {}
    streamed: list[Record] = []
    after_kill = asyncio.Event()
    async with LogClient(addrs(cluster), tls=cluster.client_tls, config=FAILOVER) as client:
        start = (await client.offsets()).next

        async def producer(k: int) -> None:
            i = later = 0
            while later < 30:  # 30 acknowledged records per producer after the kill
                value = b"f%d-%d" % (k, i)
                acked[await client.produce(value)] = value
                i += 1
                later += after_kill.is_set()

        async def reader() -> None:
            async with contextlib.aclosing(client.stream(start)) as stream:
                async for record in stream:
                    streamed.append(record)

        reading = asyncio.create_task(reader())
        producers = [asyncio.create_task(producer(k)) for k in range(8)]
        try:
            await wait_until(
                lambda: len(acked) >= 300 and len(streamed) >= 100,
                20.0,
                "acks and streamed records",
            )
            cluster.signal(old, signal.SIGKILL)
            await asyncio.to_thread(cluster.wait_exit, old, 10)
            after_kill.set()
            await asyncio.wait_for(asyncio.gather(*producers), 60)
            new_leader = client.resolver.leader
            assert new_leader and new_leader != old_addr
            end = max(acked)
            await wait_until(
                lambda: bool(streamed) and streamed[-1].offset >= end, 30, "the stream to catch up"
            )
        finally:
            reading.cancel()
            for task in producers:
                task.cancel()
            await asyncio.gather(reading, *producers, return_exceptions=True)
        assert client.stats.retries > 0
    offsets = [r.offset for r in streamed]
    assert offsets == list(range(start, start + len(streamed)))  # no gap, no repeat
    log = {r.offset: r.value for r in streamed}
    lost = [o for o, v in acked.items() if log.get(o) != v]
    assert lost == []
    # the idempotent producer: every record once, though batches were retried
    duplicates = sum(n - 1 for n in Counter(log.values()).values() if n > 1)
    print(
        f"failover: acked {len(acked)}, log {len(log)}, duplicates {duplicates}, "
        f"retries {client.stats.retries}, answered as duplicates {client.stats.duplicates}"
    )
    assert duplicates == 0
    assert len(log) == len(acked)
    # the old leader comes back on its data and catches up with what it missed
    cluster.start(old)
    await cluster.wait_for(cluster.client_tls, members=3, timeout_s=40)

    async def caught_up() -> bool:
        with contextlib.suppress(grpc.aio.AioRpcError):
            return await highest_on(cluster, old) >= max(log)
        return False

    await wait_until(caught_up, 30, f"{old} to catch up", interval=0.1)

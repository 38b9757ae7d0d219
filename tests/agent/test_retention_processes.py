"""Retention on real ``raftlog agent`` processes (three nodes, static membership, mTLS):
by size and by age, with small segments, and nodes restarted in the middle.

What must hold: the lowest offset moves on every node identically (GetOffsets); a read
below it (Consume, ConsumeStream) is OUT_OF_RANGE carrying the lowest and highest offsets;
reads from it on work; a follower SIGKILLed while the others go on comes back through a
snapshot taken after retention and agrees; after a clean restart the lowest offset is
unchanged and retention goes on; once idle, each node's segments fit the limit
(the limit, plus the active segment, plus one segment only partly below the lowest).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from raftlog.agent.devcluster import DevCluster
from raftlog.api.contract import Key, Reason
from raftlog.api.status import error_info_from_metadata
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles
from support.cluster import (
    AGENT_ARGS,
    RECORD,
    numbered,
    produce_numbered,
    three_node_cluster_async,
)
from support.wait import wait_until

pytestmark = pytest.mark.timeout(180)

NAMES = ("n1", "n2", "n3")
SEGMENT = 64 << 10


async def offsets(c: DevCluster) -> dict[str, tuple[int, int]]:
    """(lowest, highest) that every running node reports; nodes that do not answer are left
    out."""
    assert c.client_tls is not None
    out: dict[str, tuple[int, int]] = {}
    for name, node in c.nodes.items():
        if not node.running:
            continue
        try:
            async with c.channel(name, c.client_tls) as ch:
                stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
                r = await stub.GetOffsets(log_pb2.GetOffsetsRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            continue
        out[name] = (r.lowest_offset, r.highest_offset)
    return out


async def agreed(
    c: DevCluster, highest: int, at_least: int, settled: Callable[[int], bool] | None = None
) -> int:
    """Wait until every node reports the same lowest offset, at least ``at_least``, and
    ``highest``, and (retention takes steps, one per check of the leader) ``settled(lowest)``
    says the leader has nothing more to drop; that lowest."""
    seen: dict[str, tuple[int, int]] = {}

    async def same() -> bool:
        nonlocal seen
        seen = await offsets(c)
        values = set(seen.values())
        return (
            len(seen) == len(c.nodes)
            and len(values) == 1
            and min(values)[0] >= at_least
            and min(values)[1] == highest
            and (settled is None or settled(min(values)[0]))
        )

    try:
        await wait_until(same, 40, f"one lowest offset >= {at_least} everywhere", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; nodes report {seen}") from None
    return next(iter(seen.values()))[0]


async def check_reads(c: DevCluster, lowest: int, highest: int) -> None:
    """On every node: below ``lowest`` is OUT_OF_RANGE with lowest/highest; from it on
    the records are there."""
    assert c.client_tls is not None
    for name in c.nodes:
        async with c.channel(name, c.client_tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            below = log_pb2.ConsumeRequest(offset=lowest - 1)
            for streamed in (False, True):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    if streamed:
                        await _first_of_stream(stub, 0)
                    else:
                        await stub.Consume(below, timeout=5)
                assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE, name
                error = error_info_from_metadata(info.value.trailing_metadata())
                assert error is not None and error.reason == Reason.OFFSET_OUT_OF_RANGE
                assert error.metadata[Key.LOWEST] == str(lowest), name
                assert error.metadata[Key.HIGHEST] == str(highest), name
            got = await stub.Consume(log_pb2.ConsumeRequest(offset=lowest), timeout=5)
            assert got.record.value == numbered(lowest), name
            assert await _first_of_stream(stub, lowest) == numbered(lowest), name


async def _first_of_stream(stub: log_pb2_grpc.LogStub, offset: int) -> bytes:
    call = stub.ConsumeStream(log_pb2.ConsumeRequest(offset=offset, max_records=10), timeout=5)
    try:
        async for response in call:
            return bytes(response.records[0].value)
    finally:
        call.cancel()
    raise AssertionError("the stream ended without a record")


def live_bytes(c: DevCluster, name: str, lowest: int) -> tuple[int, int]:
    """(bytes, count) of node ``name``'s store files from the segment holding ``lowest`` on:
    what the leader weighs against --retention-bytes."""
    stores = sorted(_stores(c, name).items())
    first = max((base for base, _ in stores if base <= lowest), default=lowest)
    live = [size for base, size in stores if base >= first]
    return sum(live), len(live)


def store_bytes(c: DevCluster, name: str) -> int:
    return sum(_stores(c, name).values())


def _stores(c: DevCluster, name: str) -> dict[int, int]:
    """base offset -> size of node ``name``'s segment stores (retention deletes meanwhile)."""
    out: dict[int, int] = {}
    for path in (c.nodes[name].data_dir / "fsm" / "log").glob("*.store"):
        with contextlib.suppress(FileNotFoundError):
            out[int(path.stem)] = path.stat().st_size
    return out


async def restart(c: DevCluster, name: str, sig: signal.Signals) -> None:
    c.signal(name, sig)
    c.wait_exit(name, 20)
    c.start(name, join=[])


async def test_size_retention_is_replicated_and_survives_restarts(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    limit = 4 * SEGMENT
    args = (*AGENT_ARGS, "--segment-bytes", str(SEGMENT), "--retention-bytes", str(limit))
    args += ("--snapshot-threshold", "32")
    async with three_node_cluster_async(
        tmp_path, dev_certs, names=NAMES, agent_args=args, static_peers=True
    ) as c:
        assert c.client_tls is not None
        leader = await c.wait_for(c.client_tls, members=3, timeout_s=40, every=True)
        follower = next(n for n in NAMES if n != leader)
        # 2,000 records of 1000 bytes (about 31 segments), half through a follower
        last = await produce_numbered(c, leader, 0, 20)
        last = await produce_numbered(c, follower, 1000, 20)
        assert last == 1999
        kept = limit // RECORD  # at most the limit is kept (records + framing <= limit)
        lowest = await agreed(
            c, last, last + 1 - kept, lambda low: live_bytes(c, leader, low)[0] <= limit
        )
        await check_reads(c, lowest, last)

        # a crash: while the follower is down the others go on (retention too, and the
        # leader compacts its Raft log), so it comes back through a snapshot taken after
        # retention, and agrees
        c.signal(follower, signal.SIGKILL)
        c.wait_exit(follower, 20)
        last = await produce_numbered(c, leader, 2000, 60)  # 60 entries: past the compaction point
        assert last == 4999
        c.start(follower, join=[])
        await c.wait_for(c.client_tls, members=3, timeout_s=40, every=True)
        lowest = await agreed(
            c, last, last + 1 - kept, lambda low: live_bytes(c, leader, low)[0] <= limit
        )
        await check_reads(c, lowest, last)
        assert "restored from the snapshot" in c.log_text(follower)

        # a clean restart: the lowest offset does not move back
        other = next(n for n in NAMES if n not in (leader, follower))
        await restart(c, other, signal.SIGTERM)
        await c.wait_for(c.client_tls, members=3, timeout_s=40, every=True)
        assert await agreed(c, last, lowest) == lowest
        await check_reads(c, lowest, last)

        # and retention goes on
        leader = await c.wait_for(c.client_tls, members=3, timeout_s=40, every=True)
        last = await produce_numbered(c, leader, 5000, 20)
        assert last == 5999
        later = await agreed(
            c, last, last + 1 - kept, lambda low: live_bytes(c, leader, low)[0] <= limit
        )
        await check_reads(c, later, last)
        bound = limit + 2 * SEGMENT  # the active segment, one partly below the lowest
        for name in NAMES:
            await wait_until(
                lambda name=name: store_bytes(c, name) <= bound,  # type: ignore[misc]
                20,
                f"{name}'s segments within {bound} bytes (has {store_bytes(c, name)})",
                interval=0.2,
            )


async def test_age_retention_is_replicated(tmp_path: Path, dev_certs: dict[str, CertFiles]) -> None:
    age = 4.0
    args = (*AGENT_ARGS, "--segment-bytes", str(SEGMENT), "--retention-age", f"{int(age)}s")
    async with three_node_cluster_async(
        tmp_path, dev_certs, names=NAMES, agent_args=args, static_peers=True
    ) as c:
        assert c.client_tls is not None
        leader = await c.wait_for(c.client_tls, members=3, timeout_s=40, every=True)
        started = time.monotonic()
        last = await produce_numbered(c, leader, 0, 20)  # about 15 segments
        if time.monotonic() - started < age / 2:  # too young to go yet
            assert {v[0] for v in (await offsets(c)).values()} == {0}
        # every sealed segment ages out: only the active one's records stay
        lowest = await agreed(
            c, last, last + 1 - SEGMENT // RECORD, lambda low: live_bytes(c, leader, low)[1] == 1
        )
        await check_reads(c, lowest, last)
        follower = next(n for n in NAMES if n != leader)
        await restart(c, follower, signal.SIGKILL)
        await c.wait_for(c.client_tls, members=3, timeout_s=40, every=True)
        assert await agreed(c, last, lowest) == lowest
        await check_reads(c, lowest, last)

"""Disk faults on a real cluster of ``raftlog agent`` processes (docs/reliability.md).

- A full disk: two nodes' data directories are small tmpfs mounts (the test mounts them,
  as root; skipped with the reason where it cannot). A filler file takes all the space of a
  follower, then of the leader: writes through that node are refused with
  RESOURCE_EXHAUSTED naming the node and its directory, reads are served, the node stays
  in the cluster, and once the filler is deleted writes through it resume, no restart.
  Every acknowledged record is then at its offset on every replica, and nothing else.
- A failing disk: agents run through the fault launcher (``support.chaos_fsync``); the
  leader's fsyncs and writes fail with EIO. It stops taking writes (UNAVAILABLE,
  DISK_FAILED), its health service says NOT_SERVING, it logs why, another node leads
  without waiting for an election timeout, and it comes back after a restart.
"""

from __future__ import annotations

import contextlib
import errno
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from raftlog.agent.devcluster import DevCluster
from raftlog.api.status import error_info_from_metadata
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles
from support import chaos_fsync
from support.cluster import FAULTY_DISK_LAUNCHER, new_cluster, start_cluster
from support.mounts import tmpfs
from support.wait import wait_until

pytestmark = pytest.mark.timeout(180)

#: Size of each tmpfs data directory: room for a node's start and a few hundred records.
TMPFS_SIZE = "6m"
VALUE_PAD = 4096
AGENT_ARGS = ("--serf-profile", "local", "--sync", "always", "--log-level", "info")


# -- helpers ---------------------------------------------------------------------------


def fill(directory: Path) -> Path:
    """Take every free byte of ``directory``'s file system with a filler file."""
    filler = directory / "filler"
    chunk = b"\0" * (64 << 10)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    small = b"\0" * 512
    with open(filler, "ab", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(small)
    return filler


def stub(c: DevCluster, name: str) -> tuple[grpc.aio.Channel, log_pb2_grpc.LogStub]:
    assert c.client_tls is not None
    ch = c.channel(name, c.client_tls)
    return ch, log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]


async def produce(c: DevCluster, name: str, value: bytes, timeout: float = 5) -> int:
    ch, s = stub(c, name)
    async with ch:
        resp = await s.Produce(
            log_pb2.ProduceRequest(record=log_pb2.Record(value=value)), timeout=timeout
        )
    return int(resp.offset)


async def produce_error(c: DevCluster, name: str, value: bytes) -> grpc.aio.AioRpcError | None:
    """The error a Produce through ``name`` ends with (None if it was acknowledged, and
    then it is recorded by the caller)."""
    try:
        await produce(c, name, value, timeout=3)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


async def consume(c: DevCluster, name: str, offset: int) -> bytes:
    ch, s = stub(c, name)
    async with ch:
        resp = await s.Consume(log_pb2.ConsumeRequest(offset=offset), timeout=5)
    return bytes(resp.record.value)


async def leader_of(c: DevCluster, via: str) -> str:
    assert c.client_tls is not None
    leaders = [s.id for s in await c.servers(via, c.client_tls) if s.is_leader]
    return str(leaders[0]) if leaders else ""


async def health(c: DevCluster, name: str) -> int:
    assert c.client_tls is not None
    async with c.channel(name, c.client_tls) as ch:
        h = health_pb2_grpc.HealthStub(ch)  # type: ignore[no-untyped-call]
        resp = await h.Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
    return int(resp.status)


async def start_voters(c: DevCluster) -> str:
    """Start the cluster and wait until every member votes (a learner not yet promoted
    cannot take over from a leader that stops); the leader."""
    leader = await start_cluster(c)
    assert c.client_tls is not None
    tls = c.client_tls

    async def all_vote() -> bool:
        servers = await c.servers(leader, tls)
        return len(servers) == len(c.nodes) and not any(s.is_learner for s in servers)

    await wait_until(all_vote, 30, "every member to be a voter", interval=0.1)
    return leader


class Acked:
    """Every acknowledged value with the offset it was acknowledged at."""

    def __init__(self) -> None:
        self.at: dict[int, bytes] = {}
        self.n = 0

    async def write(self, c: DevCluster, name: str) -> grpc.aio.AioRpcError | None:
        self.n += 1
        # a page or more each: a full tmpfs still takes writes into the pages its files
        # already have, so small records would take many writes to meet ENOSPC
        value = b"v%d-%s-" % (self.n, name.encode()) + b"x" * VALUE_PAD
        try:
            offset = await produce(c, name, value, timeout=3)
        except grpc.aio.AioRpcError as exc:
            return exc
        self.at[offset] = value
        return None

    async def check_everywhere(self, c: DevCluster) -> None:
        """Every replica holds every acknowledged value at its offset, and the same log."""
        top = max(self.at)
        copies = {}
        for name in c.nodes:

            async def has_top(name: str = name) -> bool:
                try:
                    await consume(c, name, top)
                except grpc.aio.AioRpcError:
                    return False
                return True

            await wait_until(has_top, 20, f"{name} to hold offset {top}", interval=0.1)
            copies[name] = [await consume(c, name, o) for o in range(top + 1)]
        first = next(iter(copies.values()))
        assert all(copy == first for copy in copies.values())
        for offset, value in self.at.items():
            assert first[offset] == value, (offset, first[offset], value)
        assert len(set(first)) == len(first), "a record appears twice"


def assert_no_space(exc: grpc.aio.AioRpcError, node: str, directory: Path) -> None:
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
    info = error_info_from_metadata(exc.trailing_metadata())  # type: ignore[arg-type]
    assert info is not None and info.reason == "NO_SPACE", info
    assert info.metadata["node_id"] == node
    assert info.metadata["directory"].startswith(str(directory))
    assert node in (exc.details() or "") and str(directory) in (exc.details() or "")


# -- a full disk ---------------------------------------------------------------------------


async def test_full_disk_refuses_keeps_serving_and_resumes(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    c = new_cluster(tmp_path, dev_certs, agent_args=AGENT_ARGS)
    small = ("n1", "n2")
    with contextlib.ExitStack() as mounts:
        for name in small:
            mounts.enter_context(tmpfs(c.nodes[name].data_dir, TMPFS_SIZE))
        try:
            await _full_disk_scenario(c, small)
        finally:
            c.stop_all()
    for name, node in c.nodes.items():
        assert node.proc is not None and node.proc.returncode == 0, (
            f"{name} exited with {node.proc.returncode if node.proc else None}:\n"
            + c.log_text(name)[-3000:]
        )


async def _full_disk_scenario(c: DevCluster, small: tuple[str, ...]) -> None:
    leader = await start_voters(c)
    acked = Acked()
    for _ in range(5):
        assert await acked.write(c, leader) is None

    # 1. A follower's disk fills up.
    follower = next(n for n in small if n != leader)
    data = c.nodes[follower].data_dir
    filler = fill(data)
    refused: list[grpc.aio.AioRpcError] = []

    async def follower_refuses() -> bool:
        # writes through the leader go on (leader + the third node are a quorum) and
        # reach the follower, which finds its disk full; then writes through it are refused
        assert await acked.write(c, leader) is None
        exc = await acked.write(c, follower)
        if exc is not None and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            refused.append(exc)
        return bool(refused)

    await wait_until(follower_refuses, 30, f"{follower} to refuse writes", interval=0.1)
    assert_no_space(refused[0], follower, data)
    assert await consume(c, follower, 0) == acked.at[0]  # reads are served
    assert "has no space left" in c.log_text(follower)
    assert c.nodes[follower].running
    filler.unlink()

    async def follower_writes() -> bool:
        return await acked.write(c, follower) is None

    await wait_until(follower_writes, 30, f"{follower} to take writes again", interval=0.2)

    # 2. The leader's disk fills up.
    data = c.nodes[leader].data_dir
    filler = fill(data)
    refused.clear()

    async def leader_refuses() -> bool:
        exc = await acked.write(c, leader)
        if exc is not None and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            refused.append(exc)
        return bool(refused)

    await wait_until(leader_refuses, 30, f"{leader} to refuse writes", interval=0.1)
    assert_no_space(refused[0], leader, data)
    assert await consume(c, leader, 0) == acked.at[0]
    # The others go on without it: it handed leadership over (and cannot heartbeat).
    others = [n for n in c.nodes if n != leader]

    async def others_take_writes() -> bool:
        return await acked.write(c, others[0]) is None

    await wait_until(others_take_writes, 30, "the other nodes to take writes", interval=0.2)
    assert await leader_of(c, others[0]) in others
    filler.unlink()

    async def old_leader_writes() -> bool:
        return await acked.write(c, leader) is None

    await wait_until(old_leader_writes, 30, f"{leader} to take writes again", interval=0.2)
    assert c.nodes[leader].running and c.nodes[follower].running
    await acked.check_everywhere(c)


# -- a failing disk ------------------------------------------------------------------------


async def test_eio_stops_the_leader_which_hands_over_and_reports_not_serving(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    c = new_cluster(tmp_path, dev_certs, agent_args=AGENT_ARGS, raftlog=FAULTY_DISK_LAUNCHER)
    try:
        leader = await start_voters(c)
        acked = Acked()
        for _ in range(3):
            assert await acked.write(c, leader) is None
        data = c.nodes[leader].data_dir
        chaos_fsync.set_fault(data, "eio")
        exc = await acked.write(c, leader)  # its fsync fails: the node stops
        assert exc is not None
        others = [n for n in c.nodes if n != leader]

        async def new_leader() -> bool:
            return await leader_of(c, others[0]) in others

        await wait_until(new_leader, 10, "another node to lead", interval=0.05)
        assert "asked" in c.log_text(leader) and "to take over leadership" in c.log_text(leader)
        assert "DISK FAILURE" in c.log_text(leader)
        serving = health_pb2.HealthCheckResponse.SERVING

        async def not_serving() -> bool:
            return await health(c, leader) != serving

        await wait_until(not_serving, 10, f"{leader} to report NOT_SERVING", interval=0.1)
        exc = await acked.write(c, leader)
        assert exc is not None and exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        info = error_info_from_metadata(exc.trailing_metadata())  # type: ignore[arg-type]
        assert info is not None and info.reason == "DISK_FAILED", info
        assert await consume(c, leader, 0) == acked.at[0]  # what it holds is still served
        for _ in range(3):
            assert await acked.write(c, others[0]) is None
        assert c.nodes[leader].running  # stopped taking writes, did not crash
        # Disk replaced: a restart brings it back.
        chaos_fsync.set_fault(data, None)
        c.signal(leader, signal.SIGTERM)
        c.wait_exit(leader, 30)
        c.start(leader)

        async def back() -> bool:
            try:
                return await health(c, leader) == serving
            except grpc.aio.AioRpcError:
                return False

        await wait_until(back, 30, f"{leader} to serve again", interval=0.2)
        assert await acked.write(c, leader) is None
        await acked.check_everywhere(c)
    finally:
        c.stop_all()
        chaos_fsync.set_fault(c.nodes[next(iter(c.nodes))].data_dir, None)

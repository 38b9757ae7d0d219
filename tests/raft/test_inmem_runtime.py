"""The in-memory stores and the manual clock a RaftNode can be given (inmem.py, clock.py),
and a node driven by them: no disk, no thread, time moved by the test."""

from __future__ import annotations

import asyncio

import pytest

from raftlog.raft import Entry, RaftConfig, Server
from raftlog.raft.clock import ManualClock
from raftlog.raft.config import NodeConfig
from raftlog.raft.errors import ProposalTimeoutError
from raftlog.raft.fsm import SnapshotSource
from raftlog.raft.inmem import InmemLogStore, InmemSnapshotStore, InmemStableStore
from raftlog.raft.logstore import LogStoreError
from raftlog.raft.node import RaftNode
from raftlog.raft.stable import StableState
from raftlog.raft.testing import ListFSM
from raftlog.raft.transport_inmem import InmemNetwork


def _entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, data=b"e%d" % i) for i in range(lo, hi + 1)]


async def test_log_store_tracks_what_is_durable_and_overwrites_suffixes() -> None:
    log = InmemLogStore()
    assert log.is_empty() and (log.first_index, log.last_index, log.durable_index) == (1, 0, 1)
    log.store(_entries(1, 5))
    assert log.durable_index == 1  # written, not synced
    await log.sync()
    assert log.durable_index == 6
    log.store(_entries(4, 6, term=2))  # a new leader overwrote 4..5
    assert log.durable_index == 4 and log.last_index == 6 and log.entry(4).term == 2
    with pytest.raises(LogStoreError, match="gap"):
        log.store(_entries(9, 9))
    await log.sync()
    log.compact(3)
    assert log.first_index == 4
    assert [e.index for e in await log.load_after(0)] == [4, 5, 6]
    assert [e.index for e in await log.load_after(5)] == [5, 6]
    log.reset(20)
    assert log.is_empty() and log.first_index == 20 and log.durable_index == 20


async def test_stable_store_keeps_the_last_state() -> None:
    st = InmemStableStore()
    assert await st.load() is None
    await st.save(StableState(3, "a"))
    assert await st.load() == StableState(3, "a")


async def test_snapshot_store_saves_streams_receives_and_retains() -> None:
    store = InmemSnapshotStore(retain=2)
    first = await store.save(10, 1, b"m10", [b"ab", b"cd"])
    assert (first.index, first.size) == (10, 4)
    assert await store.find(10, 1) == first
    got: list[bytes] = []

    def into(reader: SnapshotSource) -> None:
        got.append(reader.read())

    await store.restore(first.id, into)
    assert got == [b"abcd"]
    chunks = await store.open_chunks(first.id)
    assert [await chunks.read(3), await chunks.read(3), await chunks.read(3)] == [b"abc", b"d", b""]
    incoming = await store.create(20, 2, b"m20")
    await incoming.write(b"xy")
    second = await incoming.commit()
    assert (await store.latest()) == second
    aborted = await store.create(30, 3, b"")
    await aborted.write(b"zz")
    aborted.abort()
    await store.save(40, 3, b"", [b"q"])
    assert [s.index for s in store.list()] == [40, 20]  # retain 2, newest first


async def test_manual_clock_runs_each_sleeper_at_its_time() -> None:
    clock = ManualClock()
    woke: list[float] = []

    async def sleeper(d: float) -> None:
        await clock.sleep(d)
        woke.append(clock.now())

    tasks = [asyncio.create_task(sleeper(d)) for d in (0.3, 0.1, 0.2)]
    await asyncio.sleep(0)
    await clock.advance(0.15)
    assert woke == [0.1]
    await clock.advance(1)
    assert woke == [0.1, 0.2, 0.3] and clock.now() == pytest.approx(1.15)
    await asyncio.gather(*tasks)


async def test_node_on_memory_stores_and_a_manual_clock() -> None:
    """Ticks and proposal deadlines follow the injected clock: a proposal that cannot
    commit (its cluster's other voter is absent) times out when the test moves time past
    its deadline, not before."""
    net = InmemNetwork(seed=1)
    clock = ManualClock()
    fsm = ListFSM()
    node = RaftNode(
        NodeConfig(raft=RaftConfig(id="a"), tick_interval=0.05, seed=1),
        fsm,
        net.transport("a"),
        log_store=InmemLogStore(),
        stable_store=InmemStableStore(),
        snapshot_store=InmemSnapshotStore(),
        clock=clock,
        peers={"b": "b"},
    )
    await node.start()
    try:
        await node.bootstrap([Server("a", "a")])  # a cluster of one elects itself at once
        await node.wait_for_leader(5)
        result = await node.propose(b"x", timeout=5)
        assert fsm.items == [b"x"] and result.index == node.applied_index
        # Adding voter b makes two voters, one absent: the change cannot commit.
        pending = asyncio.create_task(node.add_voter("b", "b", timeout=1.0))
        await asyncio.sleep(0.05)
        await clock.advance(0.5)
        await asyncio.sleep(0.05)
        assert not pending.done(), "timed out before its deadline on the manual clock"
        await clock.advance(0.6)
        with pytest.raises(ProposalTimeoutError):
            await asyncio.wait_for(pending, 0.5)  # well before 1 s of real time
    finally:
        await node.close()
        await net.close()

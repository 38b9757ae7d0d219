"""Scrub and self-repair in one process: three nodes over the in-memory transport, small
segments, and a fetcher that reads a peer's DistributedLog the way the gRPC one calls its
Consume. Damage is a flipped byte in a sealed store file (the checksum catches it) or a
record rewritten with other bytes and a valid checksum (only a checkpoint hash catches
it)."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from raftlog.distributed import DistributedConfig, DistributedLog, forwarded_call
from raftlog.distributed import scrub as scrub_module
from raftlog.distributed.fsm import CheckpointHash, decode_entry, encode_checkpoint_hash
from raftlog.distributed.scrub import Scrubber, ScrubConfig, ScrubConfigError
from raftlog.domain.errors import DataLossError
from raftlog.log import LogConfig
from raftlog.log.scrub import range_digest, rewrite_frame, spans_of
from raftlog.raft import Server
from support.inproc_cluster import TICK, InprocNodes
from support.wait import wait_until

#: About 20 records of 100 bytes per segment.
SEGMENT = LogConfig(max_store_bytes=2160, max_index_bytes=12 * 64)
IDS = ("n1", "n2", "n3")


def record(i: int) -> bytes:
    return b"%05d" % i + b"." * 95


class PeerReads:
    """A RecordFetcher over the other nodes' DistributedLogs (address = node id)."""

    def __init__(self, logs: dict[str, DistributedLog]) -> None:
        self.logs = logs
        self.calls = 0

    async def fetch(
        self, address: str, offset: int, count: int, *, timeout_s: float
    ) -> list[bytes]:
        self.calls += 1
        token = forwarded_call.set(True)  # what the peer-marked gRPC read sets there
        try:
            return self.logs[address].read_batch(offset, 1 << 20, count)
        finally:
            forwarded_call.reset(token)


class Nodes(InprocNodes):
    def __init__(self, root: Path, config: DistributedConfig) -> None:
        super().__init__(root, config, SEGMENT, seed=5, peers=IDS)
        self.fetcher = PeerReads(self.logs)

    async def follower(self) -> DistributedLog:
        leader = await self.leader()
        return next(d for d in self.logs.values() if d is not leader)

    async def fill(self, n: int) -> None:
        leader = await self.leader()
        for start in range(0, n, 10):
            await leader.append([record(i) for i in range(start, min(n, start + 10))])
        await wait_until(
            lambda: all(d.highest_offset == n - 1 for d in self.logs.values()),
            5.0,
            "every replica applied every record",
            interval=TICK,
        )

    def identical(self, n: int) -> bool:
        want = [record(i) for i in range(n)]
        return all([d.read(i) for i in range(n)] == want for d in self.logs.values())


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    config = DistributedConfig(
        append_timeout=5.0,
        checkpoint_hash_interval=0,  # the tests propose them
        scrub=ScrubConfig(rate_bytes_s=0, repair_retry_s=0.05, fetch_timeout_s=2.0),
    )
    n = Nodes(tmp_path, config)
    servers = [Server(i, i) for i in IDS]
    for i in IDS:
        await (await n.start(i)).node.bootstrap(servers)
    yield n
    await n.close()


def flip_payload_byte(dlog: DistributedLog, offset: int) -> None:
    """Bit rot in a sealed segment: one payload byte of ``offset`` flipped on disk."""
    span = spans_of(dlog.fsm.log, offset, offset + 1, sealed_only=True)[0]
    position, _ = span.frame(0)
    with open(span.path, "r+b") as f:
        f.seek(position + 8 + 10)
        byte = f.read(1)
        f.seek(position + 8 + 10)
        f.write(bytes([byte[0] ^ 0x04]))


async def test_a_read_of_a_damaged_record_is_data_loss_until_repaired(nodes: Nodes) -> None:
    await nodes.fill(100)
    follower = await nodes.follower()
    scrubber = follower.scrubber
    scrubber.fetcher = None  # no repair yet: the refusal is observed deterministically
    flip_payload_byte(follower, 30)
    with pytest.raises(DataLossError) as info:
        follower.read(30)
    assert info.value.metadata == {"offset": "30", "node_id": follower.node.id}
    assert "offset 30" in info.value.message and info.value.retriable
    assert scrubber.damaged.keys() == {30} and scrubber.stats.corrupt_records == 1
    # a batch stops before it; a batch from it is refused
    assert follower.read_batch(25, 1 << 20, 100) == [record(i) for i in range(25, 30)]
    with pytest.raises(DataLossError):
        follower.read_batch(30, 1 << 20, 100)
    with pytest.raises(DataLossError):
        follower.read(30)
    assert scrubber.stats.corrupt_records == 1  # found once
    scrubber.fetcher = nodes.fetcher
    scrubber.report(30, "again", "the test")  # already known: only wakes nothing new
    scrubber._wake.set()
    await wait_until(lambda: not scrubber.damaged, 5.0, "offset 30 repaired", interval=TICK)
    assert follower.read(30) == record(30)
    assert scrubber.stats.repaired_records == 1
    assert nodes.identical(100)


async def test_the_scrubber_finds_damage_on_the_leader_and_a_peer_repairs_it(
    nodes: Nodes,
) -> None:
    await nodes.fill(100)
    leader = await nodes.leader()
    flip_payload_byte(leader, 7)
    flip_payload_byte(leader, 61)
    read = await leader.scrubber.scrub_pass()
    assert read > 0 and leader.scrubber.stats.passes == 1
    assert leader.scrubber.stats.corrupt_records == 2
    await wait_until(
        lambda: leader.scrubber.stats.repaired_records == 2, 5.0, "both repaired", interval=TICK
    )
    assert not leader.scrubber.damaged
    assert nodes.identical(100)
    await leader.scrubber.scrub_pass()
    assert leader.scrubber.stats.corrupt_records == 2  # nothing new


async def test_a_diverging_record_with_a_valid_checksum_is_found_by_the_checkpoint_hash(
    nodes: Nodes,
) -> None:
    await nodes.fill(100)
    leader = await nodes.leader()
    follower = await nodes.follower()
    span = spans_of(follower.fsm.log, 12, 13)[0]
    position, size = span.frame(0)
    rewrite_frame(span.path, position, size, b"X" * 100)  # other bytes, valid CRC
    assert follower.read(12) == b"X" * 100  # the checksum cannot tell
    proposed = await leader.propose_checkpoint_hash()
    assert proposed is not None and proposed[0] == 0 and proposed[1] > 12
    stats = follower.scrubber.stats
    await wait_until(
        lambda: (
            stats.checkpoint_hash_mismatches == 1
            and stats.repaired_records == 1
            and not follower.scrubber.suspect
        ),  # refused until the comparison is done
        5.0,
        "the mismatch reported, the record repaired, the comparison done",
        interval=TICK,
    )
    assert follower.read(12) == record(12)
    assert nodes.identical(100)
    status = follower.node_status()
    assert (status.checkpoint_hash_mismatches, status.repaired_records) == (1, 1)
    assert status.damaged_records == 0
    for d in nodes.logs.values():
        await wait_until(
            lambda d=d: d.scrubber.stats.checkpoint_hashes_checked >= 1,
            5.0,
            "every replica compared",
            interval=TICK,
        )
        assert d.fsm.hash_next == proposed[1]
    others = [d for d in nodes.logs.values() if d is not follower]
    assert all(d.scrubber.stats.checkpoint_hash_mismatches == 0 for d in others)
    # the next checkpoint starts where this one ended
    nxt = leader.scrubber.next_checkpoint_range()
    assert nxt is None or nxt[0] == proposed[1]


async def test_a_diverging_leader_is_named_not_spread_and_repaired_after_it_leads_no_more(
    nodes: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader's hash is the reference, so a leader whose own copy diverges (valid
    checksum) is named by the followers, which keep theirs; once another node leads, it
    hashes that range again first, and the old leader repairs itself."""
    await nodes.fill(100)
    leader = await nodes.leader()
    span = spans_of(leader.fsm.log, 12, 13)[0]
    position, size = span.frame(0)
    rewrite_frame(span.path, position, size, b"L" * 100)
    assert await leader.propose_checkpoint_hash() is not None
    followers = [d for d in nodes.logs.values() if d is not leader]
    await wait_until(
        lambda: (
            all(d.scrubber.stats.checkpoint_hash_mismatches == 1 for d in followers)
            and all(not d.scrubber.suspect and not d.scrubber._checks for d in followers)
        ),
        5.0,
        "both followers compared",
        interval=TICK,
    )
    for d in followers:
        assert d.read(12) == record(12)  # not overwritten with the leader's bytes
        assert d.scrubber.stats.repaired_records == 0
    assert leader.read(12) == b"L" * 100  # not repaired while it leads
    assert "(the leader: it is repaired once another node leads" in caplog.text
    assert "gave up" not in caplog.text  # decided, not timed out
    assert all(d.scrubber.recheck for d in followers)
    again = followers[0].scrubber.recheck[0]
    assert again[0] <= 12 < again[1]

    new_id = await leader.transfer_leadership(followers[0].node.id, timeout_s=5.0)
    new = nodes.logs[new_id]
    await wait_until(lambda: new.node.is_leader, 5.0, "the new leader", interval=TICK)
    assert await new.propose_checkpoint_hash() == again  # the range first, then new ones
    await wait_until(
        lambda: leader.scrubber.stats.repaired_records == 1 and not leader.scrubber.suspect,
        5.0,
        "the old leader repaired itself",
        interval=TICK,
    )
    assert leader.scrubber.stats.checkpoint_hash_mismatches == 1
    assert nodes.identical(100)


async def test_a_replica_that_lacks_the_range_skips_it(nodes: Nodes) -> None:
    await nodes.fill(30)
    follower = await nodes.follower()
    ahead = CheckpointHash(0, 1000, range_digest([b"x"]))
    follower.scrubber.queue_check(ahead)
    await wait_until(
        lambda: follower.scrubber.stats.checkpoint_hashes_skipped == 1,
        5.0,
        "skipped",
        interval=TICK,
    )
    assert follower.scrubber.stats.checkpoint_hash_mismatches == 0


async def test_a_mismatch_without_peers_is_refused_then_given_up(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scrub_module, "CHECK_ATTEMPTS", 3)
    await nodes.fill(40)
    follower = await nodes.follower()
    scrubber = follower.scrubber
    scrubber.fetcher = None  # no copy to compare with: the range cannot be settled
    scrubber.queue_check(CheckpointHash(0, 20, range_digest([b"other"])))
    await wait_until(lambda: bool(scrubber.suspect), 5.0, "the range suspect", interval=0.001)
    with pytest.raises(DataLossError, match="checkpoint hash"):
        follower.read(5)  # never bytes a majority may disagree with
    await wait_until(
        lambda: not scrubber._checks and not scrubber.suspect, 5.0, "given up", interval=TICK
    )
    assert scrubber.stats.checkpoint_hash_mismatches == 1  # counted once, not per round
    assert follower.read(5) == record(5)


def test_the_checkpoint_hash_entry_round_trips() -> None:
    digest = range_digest([b"a", b"b"])
    entry = decode_entry(encode_checkpoint_hash(5, 9, digest, 1234))
    assert entry == CheckpointHash(5, 9, digest, 1234)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate_bytes_s": -1}, "rate_bytes_s"),
        ({"pass_interval_s": float("nan")}, "pass_interval_s"),
        ({"repair_retry_s": 0}, "repair_retry_s"),
        ({"chunk_bytes": 10}, "chunk_bytes"),
    ],
)
def test_scrub_config_is_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ScrubConfigError, match=message):
        ScrubConfig(**kwargs).validate()  # type: ignore[arg-type]


def test_a_paced_read_is_at_most_one_second_of_the_rate() -> None:
    assert ScrubConfig(rate_bytes_s=1_000_000).read_bytes == 1_000_000
    assert ScrubConfig(rate_bytes_s=100_000_000).read_bytes == 1 << 20
    assert ScrubConfig(rate_bytes_s=10).read_bytes == 4096


def test_reads_stop_before_damaged_records_and_suspect_ranges() -> None:
    fsm = types.SimpleNamespace(on_checkpoint_hash=None)
    s = Scrubber("n1", fsm, list, None, ScrubConfig(rate_bytes_s=0))  # type: ignore[arg-type]
    assert s.readable(0, 100) == 100 and s.refused(7) is None
    s.damaged[50] = "checksum mismatch"
    s.suspect.append((20, 30))
    assert s.readable(0, 100) == 20
    assert s.readable(25, 100) == 0 and s.refused(25) is not None
    assert s.readable(30, 100) == 20 and s.readable(51, 10) == 10
    # a peer's repair read sees the suspect range, never the damaged record
    assert s.readable(25, 100, peer=True) == 25 and s.refused(25, peer=True) is None
    assert s.refused(50, peer=True) == "checksum mismatch"


async def test_a_pass_keeps_to_its_rate(nodes: Nodes) -> None:
    await nodes.fill(100)
    follower = await nodes.follower()
    rate = 20_000.0  # bytes/s: the ~9 KB of sealed segments take about half a second
    follower.scrubber.config = ScrubConfig(rate_bytes_s=rate)
    loop = asyncio.get_running_loop()
    started = loop.time()
    done = await follower.scrubber.scrub_pass()
    took = loop.time() - started
    assert done > 4096 and follower.scrubber.stats.scrubbed_bytes == done
    assert done / rate * 0.95 <= took < done / rate + 1.0, (done, took)

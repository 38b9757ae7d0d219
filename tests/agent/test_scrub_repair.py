"""Scrub and self-repair on three real ``raftlog agent`` processes (static membership,
mTLS, small segments). Bytes are overwritten in the store files of a running node, the
way bit rot looks to it:

- a flipped byte in a sealed segment of a follower, then of the leader: the scrubber
  finds it, the record is repaired from a peer, and every replica serves identical records;
- with the scrubber off, a read of the damaged record answers DATA_LOSS (with its offset)
  before the repair, which the read itself triggers, and the correct bytes after;
- a record rewritten with other bytes and a valid checksum (the checksum cannot tell):
  the leader's checkpoint hash of the range differs from that replica's, the replica
  reports the mismatch and repairs the record from the majority.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from raftlog.agent.devcluster import DevCluster
from raftlog.api.admin.v1 import admin_pb2_grpc
from raftlog.api.contract import FORWARDED_KEY, Key, Reason
from raftlog.api.status import error_info_from_metadata
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.log.scrub import rewrite_frame
from raftlog.security import CertFiles
from support.cluster import (
    AGENT_ARGS,
    RECORD,
    numbered,
    produce_numbered,
    three_node_cluster_async,
)
from support.topics import create_topic, wait_placed
from support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

NAMES = ("n1", "n2", "n3")
SEGMENT = 64 << 10
#: Small segments, a fast scrubber that passes every second, no checkpoint hashes: the
#: scrubber alone finds the damage.
SCRUB_ARGS = (*AGENT_ARGS, "--segment-bytes", str(SEGMENT), "--scrub-rate-mb-s", "20")
SCRUB_ARGS += ("--scrub-interval", "1s", "--checkpoint-hash-interval", "0")
FRAME = RECORD + 8


async def read_all(c: DevCluster, name: str, highest: int) -> list[bytes]:
    """Every record 0..highest as node ``name`` serves it (ConsumeStream, batches)."""
    assert c.client_tls is not None
    out: list[bytes] = []
    async with c.channel(name, c.client_tls) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        call = stub.ConsumeStream(log_pb2.ConsumeRequest(offset=0, max_records=500), timeout=20)
        try:
            async for response in call:
                out.extend(r.value for r in response.records)
                if len(out) > highest:
                    break
        finally:
            call.cancel()
    return out


async def applied_everywhere(c: DevCluster, highest: int) -> None:
    assert c.client_tls is not None

    async def done() -> bool:
        for name in NAMES:
            try:
                async with c.channel(name, c.client_tls) as ch:  # type: ignore[arg-type]
                    stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
                    r = await stub.GetOffsets(log_pb2.GetOffsetsRequest(), timeout=2)
            except grpc.aio.AioRpcError:
                return False
            if r.highest_offset != highest:
                return False
        return True

    await wait_until(done, 30, f"offset {highest} applied on every node", interval=0.2)


async def identical(c: DevCluster, highest: int) -> None:
    want = [numbered(i) for i in range(highest + 1)]
    for name in NAMES:
        got = await read_all(c, name, highest)
        assert got[: highest + 1] == want, f"{name} serves other records"


def stores(c: DevCluster, name: str) -> list[Path]:
    """Node ``name``'s segment store files, oldest first (the last is the active one)."""
    paths = (c.nodes[name].data_dir / "fsm" / "log").glob("*.store")
    return sorted(paths, key=lambda p: int(p.stem))


def flip(c: DevCluster, name: str, offset: int) -> None:
    """Flip one payload byte of ``offset`` in node ``name``'s store file, while it runs."""
    base = max(int(p.stem) for p in stores(c, name) if int(p.stem) <= offset)
    path = next(p for p in stores(c, name) if int(p.stem) == base)
    position = (offset - base) * FRAME + 8 + 100
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0x20]))


async def repaired(c: DevCluster, name: str, offset: int) -> None:
    line = f"repaired offset {offset} from peer"
    await wait_until(lambda: line in c.log_text(name), 30, f"{name}: {line}", interval=0.2)


async def test_the_scrubber_finds_damage_on_a_follower_and_on_the_leader(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    async with three_node_cluster_async(
        tmp_path, dev_certs, names=NAMES, agent_args=SCRUB_ARGS, static_peers=True
    ) as c:
        assert c.client_tls is not None
        leader = await c.wait_for(c.client_tls, members=3, timeout_s=40, every=True)
        follower = next(n for n in NAMES if n != leader)
        last = await produce_numbered(c, leader, 0, 8)  # 400 records: about 6 segments
        await applied_everywhere(c, last)

        assert int(stores(c, follower)[-1].stem) > 131  # both victims in sealed segments
        flip(c, follower, 70)
        await repaired(c, follower, 70)
        text = c.log_text(follower)
        assert "record at offset 70 in segment" in text and "found by the scrubber" in text
        await identical(c, last)

        flip(c, leader, 130)
        flip(c, leader, 131)
        await repaired(c, leader, 130)
        await repaired(c, leader, 131)
        assert "found by the scrubber" in c.log_text(leader)
        await identical(c, last)
        assert "scrub pass done" in c.log_text(leader)


async def test_a_damaged_read_is_data_loss_and_a_diverging_replica_is_caught_by_the_hash(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    args = (*AGENT_ARGS, "--segment-bytes", str(SEGMENT), "--scrub-rate-mb-s", "0")
    args += ("--checkpoint-hash-interval", "1s")
    async with three_node_cluster_async(
        tmp_path, dev_certs, names=NAMES, agent_args=args, static_peers=True
    ) as c:
        assert c.client_tls is not None
        leader = await c.wait_for(c.client_tls, members=3, timeout_s=40, every=True)
        one, other = (n for n in NAMES if n != leader)
        last = await produce_numbered(c, leader, 0, 4)  # 200 records: about 3 segments
        await applied_everywhere(c, last)

        # No scrubber: the read finds the damage, answers DATA_LOSS, and starts the repair.
        # The victims lie in the active segment: no checkpoint hash covers it before the
        # next records seal it, so nothing else can find the damage first.
        base = int(stores(c, one)[-1].stem)
        assert base == int(stores(c, other)[-1].stem) and base + 2 <= last
        damaged, victim = base + 2, base + 1
        flip(c, one, damaged)
        async with c.channel(one, c.client_tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Consume(log_pb2.ConsumeRequest(offset=damaged), timeout=5)
            assert info.value.code() == grpc.StatusCode.DATA_LOSS
            assert f"offset {damaged}" in (info.value.details() or "")
            error = error_info_from_metadata(info.value.trailing_metadata())
            assert error is not None and error.reason == Reason.DATA_LOSS
            assert error.metadata[Key.OFFSET] == str(damaged)
            assert error.metadata[Key.NODE_ID] == one
            await repaired(c, one, damaged)
            got = await stub.Consume(log_pb2.ConsumeRequest(offset=damaged), timeout=5)
            assert got.record.value == numbered(damaged)
        assert "found by a read" in c.log_text(one)

        # other bytes with a valid checksum, in the active segment (not hashed yet); the
        # records that follow seal it and the next checkpoint hash covers it
        rewrite_frame(stores(c, other)[-1], FRAME, FRAME, b"X" * RECORD)
        async with c.channel(other, c.client_tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            got = await stub.Consume(log_pb2.ConsumeRequest(offset=victim), timeout=5)
            assert got.record.value == b"X" * RECORD  # nothing but a hash can tell
        last = await produce_numbered(c, leader, last + 1, 4)
        await applied_everywhere(c, last)
        await wait_until(
            lambda: "checkpoint hash mismatch" in c.log_text(other),
            30,
            f"{other} reports a checkpoint hash mismatch",
            interval=0.2,
        )
        await repaired(c, other, victim)
        await identical(c, last)
        assert "checkpoint hash of offsets" in c.log_text(leader)
        for name in (leader, one):
            assert "checkpoint hash mismatch" not in c.log_text(name)

        # the peer mark on a read (which lets it see a range its node refuses to clients
        # while comparing) needs `replicate`: a client certificate cannot use it
        async with c.channel(one, c.client_tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            marked = ((FORWARDED_KEY, "1"),)
            request = log_pb2.ConsumeRequest(offset=0, max_records=10)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.ConsumeStream(request, timeout=5, metadata=marked):
                    pass
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Consume(log_pb2.ConsumeRequest(offset=0), timeout=5, metadata=marked)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_partition_replica_is_scrubbed_and_repaired_from_its_peers(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    """The same bit rot in a topic's partition: its replica's scrubber finds it and repairs
    the record from another replica of that partition (read through the partition's own
    Consume), as for the default partition."""
    async with three_node_cluster_async(
        tmp_path, dev_certs, names=NAMES, agent_args=SCRUB_ARGS, static_peers=True
    ) as c:
        assert c.client_tls is not None
        async with c.channel("n1", c.client_tls) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)  # type: ignore[no-untyped-call]

            await create_topic(admin, "rot", 1, timeout=40, attempt_timeout=20)

            placed = await wait_placed(admin, "rot", timeout=40)
            leader = placed.partitions[0].leader_id
            log = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            for batch in range(8):  # 400 records: about 6 segments
                await log.Produce(
                    log_pb2.ProduceRequest(
                        records=[log_pb2.Record(value=numbered(batch * 50 + i)) for i in range(50)],
                        topic="rot",
                        partition=0,
                    ),
                    timeout=20,
                )
        follower = next(n for n in NAMES if n != leader)
        folder = c.nodes[follower].data_dir / "partitions" / "rot" / "0" / "fsm" / "log"

        async def all_there() -> bool:
            sealed = sorted(int(p.stem) for p in folder.glob("*.store"))
            return len(sealed) > 2 and sealed[-1] > 70

        await wait_until(all_there, 30, f"{follower}'s replica holding offset 70 sealed")
        path = max(
            (p for p in folder.glob("*.store") if int(p.stem) <= 70), key=lambda p: int(p.stem)
        )
        base = int(path.stem)
        with open(path, "r+b") as f:
            f.seek((70 - base) * FRAME + 8 + 100)
            byte = f.read(1)
            f.seek((70 - base) * FRAME + 8 + 100)
            f.write(bytes([byte[0] ^ 0x20]))
        await repaired(c, follower, 70)

        async with c.channel(follower, c.client_tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            r = await stub.Consume(
                log_pb2.ConsumeRequest(topic="rot", partition=0, offset=70), timeout=10
            )
        assert r.record.value == numbered(70)

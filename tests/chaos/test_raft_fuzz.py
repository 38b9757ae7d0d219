"""Fuzz the Raft wire of a running node (docs/reliability.md, "Fuzzing the Raft wire").

An authenticated peer (the peer certificate, through the mux's Raft marker, a hello as
node ``fuzzer``) sends a follower of a 3-node cluster random frames, frames of a valid
payload kind with random bodies, and mutations (bit flips, cut, inserted and replaced
bytes) of well-formed messages of every type, snapshot chunks and chunk acknowledgements.
The well-formed ones are built with a stale term (1; the cluster is at term 2 or later) and
a mutant that still decodes with a current term is not sent: Raft trusts an authenticated
peer's well-formed messages of the current term (it is not Byzantine-tolerant), so those
are not input the node must refuse.

For every case the node must answer, close the connection, or drop it and keep going; it
must never crash; and nothing may be applied or changed: after the run every node lists
the same members and leader, the log ends at the same offset, no node changed its term
or role, no snapshot was installed or stored from the fuzzer's chunks.

Seeded (``derandomize``): the same cases every run. ``CHAOS_PROFILE=full`` (``make
chaos``) tries more; ``RAFT_FUZZ_EXAMPLES`` overrides. The number of cases tried goes to
``.build/chaos/raft_fuzz.json`` for the report.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from raftlog.agent.devcluster import DevCluster
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.raft.codec import (
    KIND_CHUNK,
    KIND_CHUNK_ACK,
    KIND_MESSAGE,
    ChunkAck,
    decode_chunk_ack,
    decode_message,
    decode_snapshot_chunk,
    encode_chunk_ack,
    encode_message,
    encode_snapshot_chunk,
)
from raftlog.raft.errors import CodecError
from raftlog.raft.transport import HELLO_MAGIC, RAFT_MARKER, encode_frame, encode_hello
from raftlog.raft.types import (
    Entry,
    EntryType,
    Membership,
    Message,
    MessageType,
    Server,
    SnapshotChunk,
    SnapshotMeta,
)
from raftlog.security import CertFiles, client_ssl_context
from support.chaos_run import results_dir
from support.client_nodes import tls_of
from support.cluster import three_node_cluster
from support.wait import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(300)]

PROFILE = os.environ.get("CHAOS_PROFILE", "ci")
EXAMPLES = int(os.environ.get("RAFT_FUZZ_EXAMPLES", "2000" if PROFILE == "full" else "150"))
#: How long a case waits for the node to answer or close before it counts as dropped.
READ_WAIT = 0.05
STALE_TERM = 1
TRIED: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, dev_certs: dict[str, CertFiles]
) -> Iterator[DevCluster]:
    root = tmp_path_factory.mktemp("raft-fuzz")
    args = ("--serf-profile", "local", "--sync", "never", "--log-level", "info")
    with three_node_cluster(root, dev_certs, agent_args=args) as c:
        yield c
    (results_dir() / "raft_fuzz.json").write_text(
        json.dumps({"cases": sum(TRIED.values()), "by_kind": TRIED, "outcomes": OUTCOMES})
    )


# -- what is sent ----------------------------------------------------------------------------

MEMBERSHIP = Membership.of([Server("n1", "127.0.0.1:1"), Server("fuzzer", "127.0.0.1:2")])
META = SnapshotMeta(index=5, term=STALE_TERM, membership=MEMBERSHIP)


def messages(dst: str) -> st.SearchStrategy[bytes]:
    entry = st.builds(
        Entry,
        term=st.just(STALE_TERM),
        index=st.integers(1, 50),
        type=st.sampled_from(list(EntryType)),
        data=st.binary(max_size=64),
    )
    return st.builds(
        Message,
        type=st.sampled_from(list(MessageType)),
        src=st.just("fuzzer"),
        dst=st.just(dst),
        term=st.just(STALE_TERM),
        log_term=st.integers(0, 3),
        index=st.integers(0, 100),
        entries=st.lists(entry, max_size=3).map(tuple),
        commit=st.integers(0, 100),
        reject=st.booleans(),
        hint_index=st.integers(0, 100),
        hint_term=st.integers(0, 3),
        context=st.binary(max_size=16),
        snapshot=st.none() | st.just(META),
    ).map(lambda m: bytes([KIND_MESSAGE]) + encode_message(m))


def chunks(dst: str) -> st.SearchStrategy[bytes]:
    return st.builds(
        SnapshotChunk,
        src=st.just("fuzzer"),
        dst=st.just(dst),
        term=st.just(STALE_TERM),
        meta=st.just(META),
        offset=st.integers(0, 64),
        data=st.binary(max_size=128),
        done=st.booleans(),
    ).map(lambda c: bytes([KIND_CHUNK]) + encode_snapshot_chunk(c))


def acks(dst: str) -> st.SearchStrategy[bytes]:
    return st.builds(
        ChunkAck,
        src=st.just("fuzzer"),
        dst=st.just(dst),
        index=st.integers(0, 100),
        term=st.just(STALE_TERM),
        next_offset=st.integers(0, 1000),
        ok=st.booleans(),
    ).map(lambda a: bytes([KIND_CHUNK_ACK]) + encode_chunk_ack(a))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "replace"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


def current(payload: bytes) -> bool:
    """Whether ``payload`` decodes to something of a current term (see the module doc)."""
    if not payload:
        return False
    kind, body = payload[0], payload[1:]
    try:
        if kind == KIND_MESSAGE:
            return decode_message(body).term > STALE_TERM
        if kind == KIND_CHUNK:
            c = decode_snapshot_chunk(body)
            return c.term > STALE_TERM or c.meta.term > STALE_TERM
        if kind == KIND_CHUNK_ACK:
            return decode_chunk_ack(body).term > STALE_TERM
    except (CodecError, ValueError, TypeError, KeyError):
        return False
    return False


def cases(dst: str) -> st.SearchStrategy[tuple[str, list[bytes]]]:
    valid = messages(dst) | chunks(dst) | acks(dst)
    kinds = st.sampled_from([bytes([KIND_MESSAGE]), bytes([KIND_CHUNK]), bytes([KIND_CHUNK_ACK])])
    one = st.one_of(
        st.tuples(st.just("random frame"), st.binary(max_size=256)),
        st.tuples(
            st.just("kind + random body"),
            st.tuples(kinds, st.binary(max_size=256)).map(lambda t: t[0] + t[1]),
        ),
        st.tuples(st.just("stale message"), messages(dst)),
        st.tuples(st.just("stale snapshot chunk"), chunks(dst)),
        st.tuples(st.just("stale chunk ack"), acks(dst)),
        st.tuples(st.just("mutated message/chunk/ack"), mutated(valid)),
    )
    return st.lists(one, min_size=1, max_size=4).map(
        lambda items: (items[0][0], [payload for _, payload in items])
    )


# -- sending ---------------------------------------------------------------------------------


async def send_case(port: int, ctx: ssl.SSLContext, frames: list[bytes], raw_tail: bytes) -> str:
    """One connection: hello, the frames (and maybe bytes that are no frame); what the node
    did: "answered", "closed" or "dropped" (nothing within READ_WAIT, connection open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(RAFT_MARKER)
        await writer.drain()
        await asyncio.wait_for(writer.start_tls(ctx, server_hostname="127.0.0.1"), 5)
        writer.write(encode_frame(encode_hello(HELLO_MAGIC, "fuzzer")))
        for payload in frames:
            writer.write(encode_frame(payload) if payload else b"\0\0\0\0")
        writer.write(raw_tail)
        await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(65536), 5)
        except (ConnectionError, ssl.SSLError):
            return "closed"
        if not data:
            return "closed"
        # the hello-ack comes first; anything after it is an answer
        try:
            more = await asyncio.wait_for(reader.read(65536), READ_WAIT)
        except TimeoutError:
            return "dropped"
        except (ConnectionError, ssl.SSLError):
            return "closed"
        return "answered" if more else "closed"
    finally:
        writer.close()


async def state_of(c: DevCluster) -> dict[str, object]:
    """What every node says: members, leader, and the log's end."""
    assert c.client_tls is not None
    out: dict[str, object] = {}
    for name in c.nodes:
        servers = await c.servers(name, c.client_tls)
        async with c.channel(name, c.client_tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            offsets = await stub.GetOffsets(log_pb2.GetOffsetsRequest(), timeout=5)
        out[name] = (
            sorted((s.id, s.rpc_addr, s.is_leader, s.is_learner) for s in servers),
            offsets.highest_offset,
        )
    return out


def test_fuzzed_raft_frames_never_crash_or_change_a_node(
    cluster: DevCluster, dev_certs: dict[str, CertFiles]
) -> None:
    c = cluster
    assert c.client_tls is not None
    tls = c.client_tls

    async def settled() -> tuple[str, dict[str, object]]:
        async def all_vote() -> bool:
            leaders = [s for s in await c.servers("n1", tls) if s.is_leader]
            return bool(leaders) and not any(s.is_learner for s in await c.servers("n1", tls))

        await wait_until(all_vote, 30, "every member to vote", interval=0.1)
        # one write, so that every node's log is non-empty and their ends agree
        async with c.channel("n1", tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            await stub.Produce(
                log_pb2.ProduceRequest(record=log_pb2.Record(value=b"x")), timeout=10
            )
        before: dict[str, object] = {}

        async def agree() -> bool:
            before.clear()
            before.update(await state_of(c))
            return len({str(v) for v in before.values()}) == 1

        await wait_until(agree, 20, "every node to agree", interval=0.1)
        leader = next(s.id for s in await c.servers("n1", tls) if s.is_leader)
        return str(leader), dict(before)

    leader, before = asyncio.run(settled())
    target = next(n for n in c.nodes if n != leader)
    port = c.nodes[target].rpc_port
    ctx = client_ssl_context(tls_of(dev_certs["server"]))
    logs_before = {n: len(c.log_text(n)) for n in c.nodes}

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases(target), tail=st.binary(max_size=8))
    def one(case: tuple[str, list[bytes]], tail: bytes) -> None:
        kind, frames = case
        assume(not any(current(p) for p in frames))
        TRIED[kind] += 1
        OUTCOMES[asyncio.run(send_case(port, ctx, frames, tail))] += 1
        assert c.nodes[target].running, c.log_text(target)[-3000:]

    one()

    async def after() -> None:
        assert await state_of(c) == before
        # and the node still takes part: a write through it reaches every replica
        async with c.channel(target, tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            await stub.Produce(
                log_pb2.ProduceRequest(record=log_pb2.Record(value=b"y")), timeout=10
            )

        async def caught_up() -> bool:
            ends = {str(v) for v in (await state_of(c)).values()}
            return len(ends) == 1

        await wait_until(caught_up, 20, "every replica to hold the write", interval=0.1)

    asyncio.run(after())
    for name, node in c.nodes.items():
        assert node.running, f"{name} died"
        new = c.log_text(name)[logs_before[name] :]
        # the log's own Raft group (the controller group "_controller", named in its
        # lines, forms while the cluster starts and may still be adding this node)
        default = "\n".join(line for line in new.splitlines() if "(group " not in line)
        assert ", role " not in default, f"{name} changed term or role:\n{new[-3000:]}"
        for sign in ("restored from", "committed: index", "snapshot received"):
            assert sign not in new, f"{name}: {sign!r} after the fuzzer:\n{new[-3000:]}"
    assert sum(TRIED.values()) >= EXAMPLES // 2, TRIED

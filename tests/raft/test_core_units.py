"""Unit tests of the core's small parts: codec, config, quorum, tracker, log view, bootstrap."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftlog.raft import (
    BootstrapError,
    CodecError,
    ConfChange,
    ConfChangeRecord,
    ConfChangeType,
    ConfigError,
    Entry,
    EntryType,
    HardState,
    Membership,
    Message,
    MessageType,
    PersistentState,
    RaftConfig,
    RaftCore,
    Server,
    SnapshotChunk,
    SnapshotMeta,
    Suffrage,
    bootstrap_state,
    check_can_bootstrap,
    decode_conf_change_record,
    decode_hard_state,
    decode_message,
    decode_snapshot_chunk,
    decode_snapshot_meta,
    encode_conf_change_record,
    encode_hard_state,
    encode_message,
    encode_snapshot_chunk,
    encode_snapshot_meta,
    quorum,
)
from raftlog.raft.confchange import apply_change
from raftlog.raft.log_view import LogInvariantError, RaftLog
from raftlog.raft.tracker import Inflights, Progress, ProgressState

MEM = Membership.of([Server("b", "h:2"), Server("a", "h:1"), Server("c", "h:3", Suffrage.LEARNER)])


def E(index: int, term: int, data: bytes = b"") -> Entry:
    return Entry(term, index, EntryType.NORMAL, data)


# -- codec --------------------------------------------------------------------------------


def test_message_roundtrip_all_fields() -> None:
    m = Message(
        MessageType.APPEND,
        "a",
        "b",
        7,
        log_term=6,
        index=41,
        entries=(E(42, 7, b"x" * 10), Entry(7, 43, EntryType.CONF_CHANGE, b"\x00")),
        commit=40,
        reject=True,
        hint_index=3,
        hint_term=2,
        context=b"ctx",
        snapshot=SnapshotMeta(10, 3, MEM),
    )
    assert decode_message(encode_message(m)) == m
    minimal = Message(MessageType.HEARTBEAT, "a", "b", 1)
    assert decode_message(encode_message(minimal)) == minimal


def test_other_codecs_roundtrip() -> None:
    meta = SnapshotMeta(5, 2, MEM)
    assert decode_snapshot_meta(encode_snapshot_meta(meta)) == meta
    hs = HardState(3, "a", 9)
    assert decode_hard_state(encode_hard_state(hs)) == hs
    rec = ConfChangeRecord(ConfChange(ConfChangeType.ADD_LEARNER, "d", "h:4"), MEM)
    assert decode_conf_change_record(encode_conf_change_record(rec)) == rec
    chunk = SnapshotChunk("a", "b", 4, meta, 1024, b"data", True)
    assert decode_snapshot_chunk(encode_snapshot_chunk(chunk)) == chunk
    install = chunk.install_message()
    assert (install.type, install.src, install.dst, install.term) == (
        MessageType.SNAPSHOT,
        "a",
        "b",
        4,
    )
    assert install.snapshot == meta


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        msgpack.packb([2, 1, "a", "b"]),  # wrong version
        msgpack.packb({"a": 1}),
        msgpack.packb([1, 99, "a", "b", 1, 0, 0, [], 0, False, 0, 0, b"", None]),  # bad type
        msgpack.packb([1, 1, "a", "b", -1, 0, 0, [], 0, False, 0, 0, b"", None]),  # negative
        msgpack.packb([1, 1, "a", "b", 1, 0, 0, [[1, 2]], 0, False, 0, 0, b"", None]),
        msgpack.packb([1, 1, "a", "b", 1, 0, 0, [], 0, 1, 0, 0, b"", None]),  # reject not bool
        msgpack.packb([1, 1, "a", "b", 1, 0, 0, [], 0, False, 0, 0, "str", None]),
    ],
)
def test_decode_message_rejects_malformed_input(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_message(data)


# -- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"id": ""}, "id"),
        ({"election_tick": 2, "heartbeat_tick": 2}, "greater than heartbeat_tick"),
        ({"heartbeat_tick": 0}, "heartbeat_tick"),
        ({"max_inflight_msgs": 0}, "max_inflight_msgs"),
        ({"max_size_per_msg": 0}, "max_size_per_msg"),
        ({"snapshot_threshold": -1}, "snapshot_threshold"),
        ({"snapshot_chunk_bytes": 0}, "snapshot_chunk_bytes"),
        ({"max_committed_per_ready": 0}, "max_committed_per_ready"),
    ],
)
def test_config_validate_says_what_is_wrong(kw: dict[str, object], words: str) -> None:
    args: dict[str, object] = {"id": "a"}
    args.update(kw)
    with pytest.raises(ConfigError, match=words):
        RaftConfig(**args).validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        RaftCore(RaftConfig(**args))  # type: ignore[arg-type]


def test_default_config_is_valid() -> None:
    assert RaftConfig(id="a").validate().election_tick == 10


# -- quorum and tracker -------------------------------------------------------------------


def test_quorum_arithmetic() -> None:
    assert quorum.committed_index(["a", "b", "c"], {"a": 5, "b": 3, "c": 1}) == 3
    assert quorum.committed_index(["a", "b", "c", "d"], {"a": 5, "b": 3, "c": 1, "d": 9}) == 3
    assert quorum.committed_index(["a"], {"a": 4, "z": 100}) == 4
    vr = quorum.vote_result
    assert vr(["a", "b", "c"], {"a": True, "b": True}) is quorum.VoteResult.WON
    assert vr(["a", "b", "c"], {"a": True, "b": False}) is quorum.VoteResult.PENDING
    assert vr(["a", "b", "c"], {"a": True, "b": False, "c": False}) is quorum.VoteResult.LOST
    assert vr(["a", "b", "c", "d"], {"a": True, "b": True}) is quorum.VoteResult.PENDING


def test_progress_flow_control_and_backtracking() -> None:
    p = Progress(match=0, next=11, inflights=Inflights(2))
    assert p.paused is False
    p.probe_sent = True
    assert p.paused  # probe: one message at a time
    assert p.maybe_decr_to(rejected=10, match_hint=4)
    assert p.next == 5 and not p.paused
    assert not p.maybe_decr_to(rejected=10, match_hint=4), "stale rejection ignored"
    assert p.maybe_update(5)
    p.become_replicate()
    p.inflights.add(7)
    p.inflights.add(9)
    assert p.paused
    p.inflights.free_le(7)
    assert not p.paused
    p.become_snapshot(20)
    assert p.paused and p.state is ProgressState.SNAPSHOT
    p.become_probe()
    assert p.next == 21


# -- log view -----------------------------------------------------------------------------


def test_log_append_conflict_and_commit_guard() -> None:
    log = RaftLog(entries=[E(1, 1), E(2, 1), E(3, 2)])
    assert log.maybe_append(1, 1, 2, [E(2, 1), E(3, 3), E(4, 3)]) == 4
    assert [log.term(i) for i in range(1, 5)] == [1, 1, 3, 3]
    assert log.committed == 2
    assert log.maybe_append(4, 9, 4, [E(5, 9)]) is None
    with pytest.raises(LogInvariantError):
        log.append([E(2, 5)])  # below commit


def test_find_conflict_by_term_skips_a_term() -> None:
    log = RaftLog(entries=[E(1, 1), E(2, 1), E(3, 2), E(4, 2), E(5, 2), E(6, 4)])
    assert log.find_conflict_by_term(6, 3) == (5, 2)
    assert log.find_conflict_by_term(6, 1) == (2, 1)
    assert log.find_conflict_by_term(100, 9) == (6, 4)


def test_log_restart_trims_to_snapshot() -> None:
    snap = SnapshotMeta(3, 2, MEM)
    log = RaftLog(snap, [E(2, 1), E(3, 2), E(4, 2)], commit=0, applied=0)
    assert (log.offset, log.offset_term, log.last_index) == (3, 2, 4)
    assert log.committed == 3 and log.applied == 3
    # entries that disagree with the snapshot are dropped
    log2 = RaftLog(snap, [E(3, 1), E(4, 1)])
    assert log2.last_index == 3
    with pytest.raises(LogInvariantError, match="gap"):
        RaftLog(snap, [E(5, 2)])
    # entries without a known predecessor keep their first one as the offset
    log3 = RaftLog(None, [E(5, 2), E(6, 2)])
    assert (log3.offset, log3.offset_term, log3.last_index) == (5, 2, 6)


def test_conf_change_rules() -> None:
    m = apply_change(MEM, ConfChange(ConfChangeType.PROMOTE_LEARNER, "c"))
    assert m.voters == ("a", "b", "c")
    m = apply_change(m, ConfChange(ConfChangeType.REMOVE, "a"))
    assert m.ids == ("b", "c")
    only = Membership.of([Server("a", "x")])
    from raftlog.raft import ConfChangeError

    with pytest.raises(ConfChangeError, match="last voter"):
        apply_change(only, ConfChange(ConfChangeType.REMOVE, "a"))
    with pytest.raises(ConfChangeError, match="learner"):
        apply_change(only, ConfChange(ConfChangeType.ADD_LEARNER, "a", "x"))


# -- bootstrap ----------------------------------------------------------------------------


def test_bootstrap_state_and_refusal_when_state_exists() -> None:
    st = bootstrap_state(MEM)
    assert st.entries[0].index == 1 and st.entries[0].type is EntryType.CONF_CHANGE
    assert decode_conf_change_record(st.entries[0].data).membership == MEM
    check_can_bootstrap(PersistentState())
    with pytest.raises(BootstrapError, match="already has Raft state"):
        check_can_bootstrap(st)
    with pytest.raises(BootstrapError, match="term=3"):
        check_can_bootstrap(PersistentState(hard_state=HardState(3, "", 0)))
    with pytest.raises(ValueError):
        bootstrap_state(Membership())
    core = RaftCore(RaftConfig(id="a"), st)
    assert core.membership == MEM


_ids = st.text(alphabet="abcdefgh0123456789-", min_size=1, max_size=8)
_u = st.integers(min_value=0, max_value=2**63 - 1)
_entries = st.builds(Entry, _u, _u, st.sampled_from(list(EntryType)), st.binary(max_size=64))
_membership = st.lists(
    st.builds(Server, _ids, st.text(max_size=20), st.sampled_from(list(Suffrage))),
    max_size=5,
    unique_by=lambda s: s.id,
).map(Membership.of)


@given(
    kind=st.sampled_from(list(MessageType)),
    src=_ids,
    dst=_ids,
    nums=st.tuples(_u, _u, _u, _u, _u, _u),
    entries=st.lists(_entries, max_size=4),
    reject=st.booleans(),
    context=st.binary(max_size=16),
    snap=st.none() | st.builds(SnapshotMeta, _u, _u, _membership),
)
@settings(max_examples=200, deadline=None)
def test_message_codec_roundtrips_any_message(
    kind: MessageType,
    src: str,
    dst: str,
    nums: tuple[int, int, int, int, int, int],
    entries: list[Entry],
    reject: bool,
    context: bytes,
    snap: SnapshotMeta | None,
) -> None:
    term, log_term, index, commit, hint_i, hint_t = nums
    m = Message(
        kind,
        src,
        dst,
        term,
        log_term=log_term,
        index=index,
        entries=tuple(entries),
        commit=commit,
        reject=reject,
        hint_index=hint_i,
        hint_term=hint_t,
        context=context,
        snapshot=snap,
    )
    assert decode_message(encode_message(m)) == m


@given(st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_decode_message_never_crashes_on_garbage(data: bytes) -> None:
    try:
        decode_message(data)
    except CodecError:
        pass

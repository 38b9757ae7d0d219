"""msgpack encoding of Raft values for the wire and the disk.

Every top-level encoding starts with a format version so that a future change can be
detected instead of misread. Decoders validate shapes and types and raise CodecError on
anything else: bytes from a peer are untrusted input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack

from raftlog.raft.errors import CodecError
from raftlog.raft.types import (
    ConfChange,
    ConfChangeRecord,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Membership,
    Message,
    MessageType,
    NodeId,
    Server,
    SnapshotChunk,
    SnapshotMeta,
    Suffrage,
)

VERSION = 1

_E = TypeVar("_E", EntryType, MessageType, Suffrage, ConfChangeType)


def _pack(obj: Any) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def _unpack(data: bytes, what: str) -> list[Any]:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise CodecError(f"{what}: not valid msgpack ({exc})") from exc
    if not isinstance(obj, list) or not obj or obj[0] != VERSION:
        raise CodecError(f"{what}: expected a list starting with version {VERSION}")
    return obj[1:]


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise CodecError(f"{what}: expected a non-negative integer, got {v!r}")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise CodecError(f"{what}: expected a string, got {type(v).__name__}")
    return v


def _bytes(v: Any, what: str) -> bytes:
    if not isinstance(v, bytes):
        raise CodecError(f"{what}: expected bytes, got {type(v).__name__}")
    return v


def _list(v: Any, n: int, what: str) -> list[Any]:
    if not isinstance(v, list) or len(v) != n:
        raise CodecError(f"{what}: expected a list of {n} items")
    return v


def _enum(cls: type[_E], v: Any) -> _E:
    try:
        return cls(_int(v, cls.__name__))
    except ValueError as exc:
        raise CodecError(f"unknown {cls.__name__} {v!r}") from exc


# -- membership ------------------------------------------------------------------------


def _membership_obj(m: Membership) -> list[Any]:
    return [[s.id, s.address, int(s.suffrage)] for s in m]


def _membership_from(v: Any) -> Membership:
    if not isinstance(v, list):
        raise CodecError("membership: expected a list of servers")
    servers = []
    for item in v:
        sid, addr, suf = _list(item, 3, "server")
        servers.append(Server(_str(sid, "server id"), _str(addr, "address"), _enum(Suffrage, suf)))
    try:
        return Membership.of(servers)
    except ValueError as exc:
        raise CodecError(f"membership: {exc}") from exc


def _meta_obj(m: SnapshotMeta) -> list[Any]:
    return [m.index, m.term, _membership_obj(m.membership)]


def _meta_from(v: Any) -> SnapshotMeta:
    index, term, mem = _list(v, 3, "snapshot meta")
    return SnapshotMeta(_int(index, "index"), _int(term, "term"), _membership_from(mem))


def encode_membership(m: Membership) -> bytes:
    return _pack([VERSION, _membership_obj(m)])


def decode_membership(data: bytes) -> Membership:
    (obj,) = _list(_unpack(data, "membership"), 1, "membership")
    return _membership_from(obj)


def encode_snapshot_meta(m: SnapshotMeta) -> bytes:
    return _pack([VERSION, _meta_obj(m)])


def decode_snapshot_meta(data: bytes) -> SnapshotMeta:
    (obj,) = _list(_unpack(data, "snapshot meta"), 1, "snapshot meta")
    return _meta_from(obj)


def encode_conf_change_record(rec: ConfChangeRecord) -> bytes:
    """Payload of a CONF_CHANGE entry."""
    ch = rec.change
    change = None if ch is None else [int(ch.type), ch.node_id, ch.address]
    return _pack([VERSION, change, _membership_obj(rec.membership)])


def decode_conf_change_record(data: bytes) -> ConfChangeRecord:
    change_obj, mem = _list(_unpack(data, "conf change"), 2, "conf change")
    change = None
    if change_obj is not None:
        kind, node, addr = _list(change_obj, 3, "conf change")
        change = ConfChange(
            _enum(ConfChangeType, kind), _str(node, "node id"), _str(addr, "address")
        )
    return ConfChangeRecord(change, _membership_from(mem))


def encode_hard_state(hs: HardState) -> bytes:
    return _pack([VERSION, hs.term, hs.vote, hs.commit])


def decode_hard_state(data: bytes) -> HardState:
    term, vote, commit = _list(_unpack(data, "hard state"), 3, "hard state")
    return HardState(_int(term, "term"), _str(vote, "vote"), _int(commit, "commit"))


# -- entries and messages ----------------------------------------------------------------


def _entry_obj(e: Entry) -> list[Any]:
    return [e.term, e.index, int(e.type), e.data]


_ENTRY_TYPES: dict[int, EntryType] = {int(t): t for t in EntryType}


def _entry_from(v: Any) -> Entry:
    # Hot path: followers decode every replicated entry here. Exact type checks and a dict
    # lookup validate a well-formed entry without the generic helpers' calls; anything
    # else takes the checked path below, which names what is wrong.
    if type(v) is list and len(v) == 4:
        term, index, kind, data = v
        kind_enum = _ENTRY_TYPES.get(kind) if type(kind) is int else None
        if (
            type(term) is int
            and type(index) is int
            and term >= 0
            and index >= 0
            and kind_enum is not None
            and type(data) is bytes
        ):
            return Entry(term, index, kind_enum, data)
    return _entry_from_checked(v)


def _entry_from_checked(v: Any) -> Entry:
    term, index, kind, data = _list(v, 4, "entry")
    return Entry(
        _int(term, "entry term"),
        _int(index, "entry index"),
        _enum(EntryType, kind),
        _bytes(data, "entry data"),
    )


def encode_entry(e: Entry) -> bytes:
    return _pack([VERSION, *_entry_obj(e)])


def decode_entry(data: bytes) -> Entry:
    return _entry_from(_unpack(data, "entry"))


def encode_message(msg: Message) -> bytes:
    """Encode a peer message for the wire (one msgpack array)."""
    return _pack(
        [
            VERSION,
            int(msg.type),
            msg.src,
            msg.dst,
            msg.term,
            msg.log_term,
            msg.index,
            [_entry_obj(e) for e in msg.entries],
            msg.commit,
            msg.reject,
            msg.hint_index,
            msg.hint_term,
            msg.context,
            None if msg.snapshot is None else _meta_obj(msg.snapshot),
        ]
    )


def decode_message(data: bytes) -> Message:
    """Decode bytes from the wire into a Message; CodecError if they are not one."""
    fields = _list(_unpack(data, "message"), 13, "message")
    (kind, src, dst, term, log_term, index, entries, commit, reject, hint_i, hint_t, ctx, snap) = (
        fields
    )
    if not isinstance(entries, list):
        raise CodecError("message: entries must be a list")
    if not isinstance(reject, bool):
        raise CodecError("message: reject must be a boolean")
    return Message(
        type=_enum(MessageType, kind),
        src=_str(src, "src"),
        dst=_str(dst, "dst"),
        term=_int(term, "term"),
        log_term=_int(log_term, "log_term"),
        index=_int(index, "index"),
        entries=tuple(_entry_from(e) for e in entries),
        commit=_int(commit, "commit"),
        reject=reject,
        hint_index=_int(hint_i, "hint_index"),
        hint_term=_int(hint_t, "hint_term"),
        context=_bytes(ctx, "context"),
        snapshot=None if snap is None else _meta_from(snap),
    )


def encode_snapshot_chunk(c: SnapshotChunk) -> bytes:
    """Encode a chunk of a streamed snapshot for the wire."""
    return _pack([VERSION, c.src, c.dst, c.term, _meta_obj(c.meta), c.offset, c.data, c.done])


def decode_snapshot_chunk(data: bytes) -> SnapshotChunk:
    src, dst, term, meta, offset, chunk, done = _list(_unpack(data, "chunk"), 7, "chunk")
    if not isinstance(done, bool):
        raise CodecError("chunk: done must be a boolean")
    return SnapshotChunk(
        _str(src, "src"),
        _str(dst, "dst"),
        _int(term, "term"),
        _meta_from(meta),
        _int(offset, "offset"),
        _bytes(chunk, "data"),
        done,
    )


# -- runtime payloads -----------------------------------------------------------------------

#: First byte of every payload a RaftNode puts on its transport: a Raft message, a snapshot
#: chunk, or a chunk acknowledgement (see docs/raft-runtime.md).
KIND_MESSAGE = b"M"[0]
KIND_CHUNK = b"C"[0]
KIND_CHUNK_ACK = b"K"[0]


@dataclass(frozen=True, slots=True)
class ChunkAck:
    """A follower's answer to one snapshot chunk: it holds ``next_offset`` bytes of the
    snapshot at (``index``, ``term``) and wants the chunk there (``ok``), or refuses the
    stream (``ok`` False: the sender gives up and the leader retries the snapshot later)."""

    src: NodeId
    dst: NodeId
    index: int
    term: int
    next_offset: int
    ok: bool
    #: The receiver's resume point (what its state machine already holds, see
    #: ``StateMachine.resume_point``), -1 when it has none: the sender of a snapshot by
    #: reference sends only what lies after it. Encoded only when set (older peers).
    resume: int = -1


def encode_chunk_ack(ack: ChunkAck) -> bytes:
    """Encode a chunk acknowledgement (without its payload kind byte)."""
    fields = [ack.src, ack.dst, ack.index, ack.term, ack.next_offset, ack.ok]
    if ack.resume >= 0:
        fields.append(ack.resume)
    return _pack([VERSION, *fields])


def decode_chunk_ack(data: bytes) -> ChunkAck:
    """Decode :func:`encode_chunk_ack`'s bytes; CodecError on anything else."""
    raw = _unpack(data, "chunk ack")
    resume = -1
    if isinstance(raw, list) and len(raw) == 7:
        resume = _int(raw[6], "resume")
        if resume < 0:
            raise CodecError("chunk ack: resume must be >= 0")
        raw = raw[:6]
    src, dst, index, term, nxt, ok = _list(raw, 6, "chunk ack")
    if not isinstance(ok, bool):
        raise CodecError("chunk ack: ok must be a boolean")
    return ChunkAck(
        _str(src, "src"),
        _str(dst, "dst"),
        _int(index, "index"),
        _int(term, "term"),
        _int(nxt, "next_offset"),
        ok,
        resume,
    )

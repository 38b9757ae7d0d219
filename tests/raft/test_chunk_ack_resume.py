"""The chunk acknowledgement's optional resume point (issue 12: catch-up sends only what a
follower lacks): encoded only when set, so an acknowledgement without it is the old
six-field one, and the decoder takes both."""

from __future__ import annotations

import msgpack
import pytest

from raftlog.raft.codec import VERSION, ChunkAck, CodecError, decode_chunk_ack, encode_chunk_ack


def test_resume_round_trips_and_is_absent_when_unset() -> None:
    with_resume = ChunkAck("b", "a", 120, 3, 0, True, 4_000_000)
    assert decode_chunk_ack(encode_chunk_ack(with_resume)) == with_resume
    without = ChunkAck("b", "a", 120, 3, 1 << 20, True)
    raw = encode_chunk_ack(without)
    assert len(msgpack.unpackb(raw)) == 7  # version + the six fields of before
    assert decode_chunk_ack(raw) == without and without.resume == -1


def test_a_negative_or_malformed_resume_is_refused() -> None:
    bad = msgpack.packb([VERSION, "b", "a", 1, 1, 0, True, -5])
    with pytest.raises(CodecError):
        decode_chunk_ack(bad)
    with pytest.raises(CodecError):
        decode_chunk_ack(msgpack.packb([VERSION, "b", "a", 1, 1, 0, True, "x"]))

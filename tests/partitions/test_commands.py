"""Controller commands as log entries (raftlog.partitions.commands): every command round
trips with its time; anything else is a CommandDecodeError, never another exception."""

from __future__ import annotations

import pytest

from raftlog.partitions import (
    COMMANDS,
    ClusterMetadata,
    CommandDecodeError,
    CreateTopic,
    DeleteTopic,
    ForgetNode,
    LearnerAdded,
    LearnerCaughtUp,
    LearnerPromoted,
    NodeDown,
    NodeUp,
    Rejected,
    ReplicaRemoved,
    SetRetention,
    TopicSpec,
    decode_command,
    encode_command,
)

EVERY = [
    CreateTopic("orders", TopicSpec(12, 3, 1 << 30, None)),
    DeleteTopic("orders"),
    SetRetention("orders", None, 86_400_000),
    NodeUp("n1"),
    NodeDown("n1"),
    ForgetNode("n1"),
    LearnerAdded("orders", 3, "n4"),
    LearnerCaughtUp("orders", 3, "n4"),
    LearnerPromoted("orders", 3, "n4"),
    ReplicaRemoved("orders", 3, "n1"),
]


def test_every_command_round_trips_with_its_time() -> None:
    assert {type(c).__name__ for c in EVERY} == set(COMMANDS)
    for command in EVERY:
        data = encode_command(command, 1733450000.25)
        assert decode_command(data) == (command, 1733450000.25)
        assert encode_command(command, 1733450000.25) == data  # deterministic bytes


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"command":"NodeUp","fields":{"node":"a"}}',
        b'{"command":"NodeUp","fields":{"node":"a"},"now":1,"x":2}',
        b'{"command":["NodeUp"],"fields":{"node":"a"},"now":1}',
        b'{"command":"Nope","fields":{},"now":1}',
        b'{"command":"NodeUp","fields":[],"now":1}',
        b'{"command":"NodeUp","fields":{},"now":1}',
        b'{"command":"NodeUp","fields":{"node":"a","extra":1},"now":1}',
        b'{"command":"NodeUp","fields":{"node":"a"},"now":"soon"}',
        b'{"command":"NodeUp","fields":{"node":"a"},"now":true}',
        b'{"command":"CreateTopic","fields":{"name":"t","spec":[1,3]},"now":1}',
        b'{"command":"CreateTopic","fields":{"name":"t","spec":{"partitions":1}},"now":1}',
        b"[" * 100_000,
    ],
)
def test_anything_else_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(CommandDecodeError):
        decode_command(data)


def test_bad_values_decode_and_apply_rejects_them() -> None:
    """Values are the state's to judge: a bad one decodes, and applying it is a
    rejection that changes nothing."""
    command, now = decode_command(
        b'{"command":"CreateTopic","fields":{"name":"bad/name","spec":{"partitions":-1,'
        b'"replication":"x","retention_bytes":null,"retention_ms":null}},"now":1}'
    )
    state = ClusterMetadata()
    before = state.encode()
    assert isinstance(state.apply(command, now), Rejected)
    assert state.encode() == before

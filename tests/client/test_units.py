"""Units without a server: error classification from rich statuses, the batcher's rules."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from raftlog.client import (
    ClientConfig,
    ClientConfigError,
    InvalidArgumentError,
    LogClient,
    SequenceTooOldError,
    UnavailableError,
)
from raftlog.client.batcher import Batcher
from raftlog.client.errors import (
    AttemptTimeoutError,
    NotLeaderError,
    OffsetOutOfRangeError,
    PermissionDeniedError,
    ServerError,
    from_rpc_error,
)
from support.wait import wait_until


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, info: Any = None) -> None:
        self._code, self._details = code, details
        self._trailing: tuple[tuple[str, bytes], ...] = ()
        if info is not None:
            detail = any_pb2.Any()
            detail.Pack(info)
            status = status_pb2.Status(code=code.value[0], message=details, details=[detail])
            self._trailing = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailing


def info(reason: str, **metadata: str) -> Any:
    return error_details_pb2.ErrorInfo(reason=reason, domain="raftlog", metadata=metadata)


def test_classification() -> None:
    e = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.UNAVAILABLE,
            "not the leader",
            info("NOT_LEADER", leader_id="n2", leader_addr="h:2"),
        ),
        "h:1",
    )
    assert isinstance(e, NotLeaderError) and e.leader_addr == "h:2" and e.addr == "h:1"
    assert e.retriable and e.refresh_metadata
    e = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down"))
    assert type(e) is UnavailableError and e.retriable
    for code, reason in (
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "NO_SPACE"),
        (grpc.StatusCode.UNAVAILABLE, "DISK_FAILED"),
        (grpc.StatusCode.DATA_LOSS, "DATA_LOSS"),
    ):
        e = from_rpc_error(FakeRpcError(code, "disk", info(reason, node_id="n1")))
        assert type(e) is UnavailableError and e.retriable and e.refresh_metadata, reason
    e = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.OUT_OF_RANGE,
            "oor",
            info("OFFSET_OUT_OF_RANGE", offset="9", lowest="0", highest="4"),
        )
    )
    assert isinstance(e, OffsetOutOfRangeError) and not e.retriable
    assert (e.offset, e.lowest, e.highest, e.beyond_end) == (9, 0, 4, True)
    assert isinstance(
        from_rpc_error(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "")), AttemptTimeoutError
    )
    assert isinstance(
        from_rpc_error(FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "")), PermissionDeniedError
    )
    assert isinstance(
        from_rpc_error(
            FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "", info("RECORD_TOO_LARGE"))
        ),
        InvalidArgumentError,
    )
    e = from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "disk"))
    assert type(e) is ServerError and not e.retriable and e.reason == "INTERNAL"
    # a malformed rich status does not hide the error
    bad = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "x")
    bad._trailing = (("grpc-status-details-bin", b"\xff\xff"),)
    assert type(from_rpc_error(bad)) is UnavailableError


async def test_a_failed_batch_fails_each_of_its_callers() -> None:
    sizes: list[int] = []

    async def send(values: Sequence[bytes]) -> int:
        sizes.append(len(values))
        if b"poison" in values:
            raise InvalidArgumentError("refused")
        return 100

    batcher = Batcher(send, ClientConfig(linger_s=0))
    results = await asyncio.gather(
        *(batcher.add(v) for v in (b"a", b"poison", b"c")), return_exceptions=True
    )
    assert sizes == [3]
    assert all(isinstance(r, InvalidArgumentError) for r in results)
    assert await asyncio.gather(batcher.add(b"x"), batcher.add(b"y")) == [100, 101]
    await batcher.close(1.0)


async def test_buffer_limit_makes_callers_wait() -> None:
    gate = asyncio.Event()
    sent: list[list[bytes]] = []

    async def send(values: Sequence[bytes]) -> int:
        sent.append(list(values))
        await gate.wait()
        return 10 * len(sent)

    config = ClientConfig(linger_s=0, batch_max_bytes=100, buffer_max_bytes=100)
    batcher = Batcher(send, config)
    first = asyncio.create_task(batcher.add(bytes(60)))
    second = asyncio.create_task(batcher.add(bytes(60)))
    # the second caller waits for room: linger 0 would have sent it at once otherwise
    await wait_until(
        lambda: bool(sent) and batcher.buffer_waits == 1, 5, "a batch sent, the second waiting"
    )
    assert len(sent) == 1 and not second.done()
    assert batcher.buffered_bytes == 60
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 5) == [10, 20]
    assert batcher.buffered_bytes == 0
    await batcher.close(1.0)


def test_idempotence_settings_are_validated() -> None:
    ClientConfig(producer_id="x" * 64, first_sequence=7).validate()
    for bad, words in (
        (ClientConfig(producer_id=""), "producer_id must be None or a non-empty"),
        (ClientConfig(producer_id="\u00e9" * 33), "66 bytes"),
        (ClientConfig(first_sequence=0), "first_sequence must be a positive"),
        (ClientConfig(max_sequence_span=0), "max_sequence_span must be a positive"),
    ):
        with pytest.raises(ClientConfigError, match=words):
            bad.validate()


async def test_requests_in_flight_stay_within_the_sequence_span() -> None:
    config = ClientConfig(max_sequence_span=3, producer_id="me", first_sequence=10)
    client = LogClient("127.0.0.1:1", tls=None, insecure=True, config=config)
    assert client.producer_id == "me"
    taken = [await client._take_sequence() for _ in range(3)]
    assert taken == [10, 11, 12]
    blocked = asyncio.create_task(client._take_sequence())
    await wait_until(lambda: client.stats.sequence_waits == 1, 1, "the request to wait")
    assert not blocked.done()  # 13 - 10 >= 3: waits for the oldest (10) to finish
    client._release_sequence(11)
    await wait_until(lambda: client.stats.sequence_waits == 2, 1, "the request to wait again")
    assert not blocked.done()  # 10 still in flight
    client._release_sequence(10)
    assert await asyncio.wait_for(blocked, 1) == 13
    assert LogClient("127.0.0.1:1", tls=None, insecure=True).producer_id != ""
    off = LogClient("127.0.0.1:1", tls=None, insecure=True, config=ClientConfig(idempotent=False))
    assert off.producer_id == ""


def test_sequence_too_old_is_classified_and_not_retried() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="SEQUENCE_TOO_OLD", domain="raftlog", metadata={"oldest": "5"}
    )
    error = from_rpc_error(FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "old", info))
    assert isinstance(error, SequenceTooOldError) and not error.retriable
    assert error.metadata["oldest"] == "5"

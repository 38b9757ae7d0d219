"""LocalLog: appends return (first, last) and wake waiters; no polling needed; the
idempotent producer on a single node."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raftlog.domain.errors import SequenceTooOldError
from raftlog.domain.producers import ProducerConfig
from raftlog.domain.protocols import Appended, CommitLog, IdempotentLog, ServerLister
from raftlog.log import Log, LogConfig, OffsetOutOfRangeError, SyncPolicy
from raftlog.server import LocalLog
from raftlog.server.local import PRODUCERS_FILE


async def test_wait_for_wakes_on_append_and_times_out(tmp_path: Path) -> None:
    local = LocalLog(Log.open(tmp_path, LogConfig(sync=SyncPolicy.NEVER)), node_id="n1")
    assert isinstance(local, CommitLog) and isinstance(local, ServerLister)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await local.wait_for(0, 0.05) is False
    assert loop.time() - started >= 0.04
    # Both park on the same signal, the waiter first; asyncio wakes them in that order, so
    # once the probe has returned, the waiter has seen the append of offset 0 too.
    waiter = asyncio.create_task(local.wait_for(1, 10))
    probe = asyncio.create_task(local.wait_for(0, 10))
    await asyncio.sleep(0)  # both start and park (offset 0 is not there either)
    assert not probe.done()
    assert await local.append([b"a"]) == (0, 0)
    assert await asyncio.wait_for(probe, 1) is True
    assert not waiter.done(), "offset 1 is not readable yet"
    assert await local.append([b"b", b"c"]) == (1, 2)
    assert await asyncio.wait_for(waiter, 1) is True
    assert local.read_batch(0, 1 << 20, 10) == [b"a", b"b", b"c"]
    # a waiter left sleeping is released (False) when the log closes
    late = asyncio.create_task(local.wait_for(10, 10))
    await asyncio.sleep(0)
    await local.close()
    assert await asyncio.wait_for(late, 1) is False
    servers = await local.get_servers()
    assert [s.id for s in servers] == ["n1"] and servers[0].is_leader


async def test_readers_see_only_committed_records(tmp_path: Path) -> None:
    """With sync=always a record waiting for its fsync is not served yet."""
    log = Log.open(tmp_path, LogConfig(sync=SyncPolicy.ALWAYS))
    local = LocalLog(log)
    appending = asyncio.create_task(local.append([b"pending"]))
    await asyncio.sleep(0)  # the append wrote the file and now waits for its fsync
    assert not appending.done()
    assert log.highest_offset == 0, "written to the file"
    assert local.highest_offset == -1, "but not committed"
    with pytest.raises(OffsetOutOfRangeError) as err:
        local.read(0)
    assert (err.value.lowest, err.value.highest) == (0, -1)
    assert await asyncio.wait_for(appending, 10) == (0, 0)
    assert local.read(0) == b"pending" and local.highest_offset == 0
    await local.close()


def test_errors_map_to_status_codes_with_retry_advice() -> None:
    import grpc

    from raftlog.domain.errors import NotLeaderError
    from raftlog.log import CorruptRecordError, DurabilityError, LogClosedError
    from raftlog.log import OffsetOutOfRangeError as LogOutOfRange
    from raftlog.server.errors import code_of, status_for
    from raftlog.server.service import to_api_error

    cases = [
        (LogOutOfRange(9, 0, 3), grpc.StatusCode.OUT_OF_RANGE, False),
        (LogClosedError("closed"), grpc.StatusCode.UNAVAILABLE, True),
        (DurabilityError("fsync failed"), grpc.StatusCode.INTERNAL, False),
        (CorruptRecordError(4, "checksum mismatch"), grpc.StatusCode.DATA_LOSS, True),
        (TimeoutError(), grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (NotLeaderError("leader is n2", {"leader": "n2"}), grpc.StatusCode.UNAVAILABLE, True),
        (RuntimeError("boom"), grpc.StatusCode.INTERNAL, False),
    ]
    for exc, code, retriable in cases:
        err = to_api_error(exc)
        assert (code_of(err), err.retriable) == (code, retriable), exc
        got_code, message, trailing = status_for(err)
        assert got_code is code and message and trailing[0][0] == "grpc-status-details-bin"
    assert to_api_error(NotLeaderError("x")).refresh_leader
    assert "boom" not in to_api_error(RuntimeError("boom")).message  # no internals leak


async def test_idempotent_appends_once_even_when_the_retry_races_the_first(
    tmp_path: Path,
) -> None:
    local = LocalLog(Log.open(tmp_path, LogConfig(sync=SyncPolicy.ALWAYS)))
    assert isinstance(local, IdempotentLog)
    # the retry arrives while the first attempt still waits for its fsync
    first, retry = await asyncio.gather(
        local.append_idempotent([b"a", b"b"], "p", 1),
        local.append_idempotent([b"a", b"b"], "p", 1),
    )
    assert first == Appended(0, 1) and retry == Appended(0, 1, duplicate=True)
    assert await local.append_idempotent([b"a", b"b"], "p", 1) == Appended(0, 1, True)
    assert await local.append_idempotent([b"c"], "p", 2) == Appended(2, 2)
    assert await local.append_idempotent([b"c"], "other", 2) == Appended(3, 3)
    assert local.read_batch(0, 1 << 20, 10) == [b"a", b"b", b"c", b"c"]
    await local.close()


async def test_idempotent_window_and_the_table_across_restarts(tmp_path: Path) -> None:
    config = LogConfig(sync=SyncPolicy.NEVER)
    local = LocalLog(Log.open(tmp_path, config), producers=ProducerConfig(window=2))
    for seq in (1, 2, 3):
        await local.append_idempotent([b"%d" % seq], "p", seq)
    with pytest.raises(SequenceTooOldError) as info:
        await local.append_idempotent([b"1"], "p", 1)
    assert info.value.metadata == {"producer_id": "p", "sequence": "1", "oldest": "2"}
    assert local.highest_offset == 2
    await local.close()
    await local.close()  # idempotent
    # a clean restart keeps the table (saved at close, the log still ends where it did)
    again = LocalLog(Log.open(tmp_path, config))
    assert await again.append_idempotent([b"3"], "p", 3) == Appended(2, 2, duplicate=True)
    assert await again.append_idempotent([b"4"], "p", 4) == Appended(3, 3)
    again.log.close_sync()  # a crash: no clean close, the saved table is now stale
    third = LocalLog(Log.open(tmp_path, config))
    assert len(third.producers) == 0  # memory only after a crash (documented)
    assert await third.append_idempotent([b"4"], "p", 4) == Appended(4, 4)
    await third.close()
    assert (tmp_path / PRODUCERS_FILE).exists()
    # an unreadable file is ignored, not fatal
    (tmp_path / PRODUCERS_FILE).write_text("{not json")
    fourth = LocalLog(Log.open(tmp_path, config))
    assert len(fourth.producers) == 0
    await fourth.close()

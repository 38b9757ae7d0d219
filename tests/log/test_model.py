"""Model-based test: random operation sequences on a Log checked against a Python list."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from raftlog.log import Log, LogConfig, OffsetOutOfRangeError, SyncPolicy

payloads = st.binary(max_size=48)
batches = st.lists(payloads, min_size=0, max_size=40)  # both the small and numpy paths


class LogModel(RuleBasedStateMachine):
    """The model: ``lowest`` plus the list of records held from it on."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="raftlog-model-"))
        self.log: Log | None = None
        self.lowest = 0
        self.records: list[bytes] = []
        self.config = LogConfig()

    @initialize(
        initial=st.integers(0, 1000),
        max_store=st.integers(60, 400),
        entries=st.integers(2, 20),
        sync=st.sampled_from(list(SyncPolicy)),
    )
    def open_log(self, initial: int, max_store: int, entries: int, sync: SyncPolicy) -> None:
        self.config = LogConfig(
            initial_offset=initial,
            max_store_bytes=max_store,
            max_index_bytes=8 * entries,
            sync=sync,
        )
        self.log = Log.open(self.dir, self.config)
        self.lowest = initial

    @property
    def next(self) -> int:
        return self.lowest + len(self.records)

    def _log(self) -> Log:
        assert self.log is not None
        return self.log

    @rule(batch=batches)
    def append_nosync(self, batch: list[bytes]) -> None:
        assert self._log().append_batch_nosync(batch) == self.next
        self.records.extend(batch)

    @rule(batch=batches)
    def append_async(self, batch: list[bytes]) -> None:
        first = asyncio.run(self._log().append_batch(batch))
        assert first == self.next
        self.records.extend(batch)

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(self.lowest - 3, self.next + 3))
        if self.lowest <= offset < self.next:
            assert self._log().read(offset) == self.records[offset - self.lowest]
        else:
            with pytest.raises(OffsetOutOfRangeError) as info:
                self._log().read(offset)
            assert (info.value.lowest, info.value.highest) == (self.lowest, self.next - 1)

    @precondition(lambda self: len(self.records) > 0)
    @rule(data=st.data(), max_bytes=st.integers(0, 300))
    def read_batch(self, data: st.DataObject, max_bytes: int) -> None:
        offset = data.draw(st.integers(self.lowest, self.next - 1))
        got = self._log().read_batch(offset, max_bytes)
        assert len(got) >= 1
        i = offset - self.lowest
        assert got == self.records[i : i + len(got)]
        assert len(got) == 1 or sum(map(len, got)) <= max_bytes

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        lowest = data.draw(st.integers(self.lowest - 2, self.next + 2))
        log = self._log()
        log.truncate(lowest)
        new_lowest = log.lowest_offset
        assert self.lowest <= new_lowest <= max(lowest, self.lowest)
        assert log.next_offset == self.next
        del self.records[: new_lowest - self.lowest]
        self.lowest = new_lowest

    @rule(data=st.data())
    def truncate_after(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(self.lowest - 1, self.next + 1))
        self._log().truncate_after(offset)
        del self.records[max(0, offset + 1 - self.lowest) :]

    @rule(initial=st.integers(0, 2000))
    def reset(self, initial: int) -> None:
        self._log().reset(initial)
        self.lowest, self.records = initial, []

    @rule()
    def sync_then_durable(self) -> None:
        log = self._log()
        asyncio.run(log.sync())
        assert log.durable_offset == self.next

    @rule()
    def reopen(self) -> None:
        self._log().close_sync()
        self.log = Log.open(self.dir, self.config)
        assert not any(r.cut_bytes or r.index_rebuilt for r in self.log.recovery)

    @invariant()
    def offsets_match(self) -> None:
        if self.log is not None:
            assert self.log.lowest_offset == self.lowest
            assert self.log.next_offset == self.next

    def teardown(self) -> None:
        if self.log is not None and not self.log.closed:
            self.log.close_sync()
        shutil.rmtree(self.dir, ignore_errors=True)


TestLogModel = LogModel.TestCase
TestLogModel.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

"""The log-store contract as a reusable pytest suite.

The contract is written down in ``raftlog.log``'s package docstring. To check a store,
subclass :class:`LogStoreContract` in a test module and override the ``open_store``
fixture with a factory ``(directory, config) -> store`` that opens (or reopens) the store
kept in ``directory``. The store must offer the :class:`raftlog.log.Log` methods used here:
``append_batch``/``append``/``append_batch_nosync``/``sync``, ``read``/``read_batch``,
``lowest_offset``/``highest_offset``/``next_offset``/``durable_offset``,
``truncate``/``truncate_after``,
``close``/``close_sync``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from raftlog.log import LogConfig, OffsetOutOfRangeError, SyncPolicy

StoreFactory = Callable[[Path, LogConfig], Any]

SMALL = LogConfig(max_store_bytes=256, max_index_bytes=8 * 8, sync=SyncPolicy.ALWAYS)


def records(n: int, start: int = 0, size: int = 10) -> list[bytes]:
    return [f"r{start + i:06d}".encode().ljust(size, b".") for i in range(n)]


class LogStoreContract:
    """Every test here states one promise of the contract."""

    @pytest.fixture
    def open_store(self) -> StoreFactory:
        raise NotImplementedError("override open_store in the subclass")

    @pytest.fixture
    def config(self) -> LogConfig:
        return SMALL

    async def test_new_store_is_empty_at_initial_offset(
        self, open_store: StoreFactory, tmp_path: Path
    ) -> None:
        store = open_store(tmp_path, LogConfig(initial_offset=42))
        assert store.lowest_offset == 42
        assert store.next_offset == 42
        assert store.highest_offset == 41
        with pytest.raises(OffsetOutOfRangeError) as info:
            store.read(42)
        assert (info.value.offset, info.value.lowest, info.value.highest) == (42, 42, 41)
        await store.close()

    async def test_offsets_are_dense_and_reads_return_what_was_appended(
        self, open_store: StoreFactory, config: LogConfig, tmp_path: Path
    ) -> None:
        store = open_store(tmp_path, config)
        first = await store.append_batch(records(30))
        assert first == 0
        assert await store.append(b"") == 30
        assert await store.append_batch(records(5, 31)) == 31
        assert store.next_offset == 36
        assert store.highest_offset == 35
        for i in range(30):
            assert store.read(i) == records(1, i)[0]
        assert store.read(30) == b""
        await store.close()

    async def test_empty_batch_writes_nothing(
        self, open_store: StoreFactory, config: LogConfig, tmp_path: Path
    ) -> None:
        store = open_store(tmp_path, config)
        await store.append_batch(records(3))
        assert await store.append_batch([]) == 3
        assert store.next_offset == 3
        await store.close()

    async def test_out_of_range_reads_name_the_range(
        self, open_store: StoreFactory, config: LogConfig, tmp_path: Path
    ) -> None:
        store = open_store(tmp_path, config)
        await store.append_batch(records(4))
        for bad in (-1, 4, 1000):
            with pytest.raises(OffsetOutOfRangeError) as info:
                store.read(bad)
            assert info.value.lowest == 0 and info.value.highest == 3
            assert str(bad) in str(info.value) and "0..3" in str(info.value)
        with pytest.raises(OffsetOutOfRangeError):
            store.read_batch(4, 100)
        await store.close()

    async def test_read_batch_is_consecutive_and_bounded(
        self, open_store: StoreFactory, config: LogConfig, tmp_path: Path
    ) -> None:
        store = open_store(tmp_path, config)
        want = records(40)
        await store.append_batch(want)
        got: list[bytes] = []
        offset = 0
        while offset < store.next_offset:
            batch = store.read_batch(offset, 35)
            assert len(batch) >= 1
            assert sum(map(len, batch)) <= 35
            got.extend(batch)
            offset += len(batch)
        assert got == want
        # A record larger than max_bytes still comes back alone.
        assert store.read_batch(0, 1) == [want[0]]
        await store.close()

    async def test_reopen_keeps_every_record(
        self, open_store: StoreFactory, config: LogConfig, tmp_path: Path
    ) -> None:
        store = open_store(tmp_path, config)
        want = records(50)
        await store.append_batch(want[:20])
        await store.append_batch(want[20:])
        await store.close()
        store = open_store(tmp_path, config)
        assert (store.lowest_offset, store.next_offset) == (0, 50)
        assert [store.read(i) for i in range(50)] == want
        assert await store.append(b"more") == 50
        await store.close()

    async def test_truncate_removes_only_records_below_lowest(
        self, open_store: StoreFactory, config: LogConfig, tmp_path: Path
    ) -> None:
        store = open_store(tmp_path, config)
        want = records(60)
        await store.append_batch(want)
        store.truncate(35)
        assert store.lowest_offset <= 35
        assert store.next_offset == 60
        for i in range(store.lowest_offset, 60):
            assert store.read(i) == want[i]
        with pytest.raises(OffsetOutOfRangeError):
            store.read(store.lowest_offset - 1)
        # Offsets are never reused, even when retention drops everything.
        store.truncate(1000)
        assert store.next_offset == 60
        assert await store.append(b"x") == 60
        await store.close()

    async def test_truncate_after_drops_the_suffix_and_reassigns_it(
        self, open_store: StoreFactory, config: LogConfig, tmp_path: Path
    ) -> None:
        store = open_store(tmp_path, config)
        want = records(60)
        await store.append_batch(want)
        store.truncate_after(12)
        assert store.next_offset == 13 and store.highest_offset == 12
        with pytest.raises(OffsetOutOfRangeError):
            store.read(13)
        assert await store.append_batch([b"new-13", b"new-14"]) == 13
        assert store.read(13) == b"new-13"
        assert store.read(12) == want[12]
        store.truncate_after(store.lowest_offset - 1)
        assert store.next_offset == store.lowest_offset
        await store.close()
        store = open_store(tmp_path, config)
        assert store.next_offset == store.lowest_offset == 0
        await store.close()

    async def test_nosync_appends_become_durable_with_sync(
        self, open_store: StoreFactory, config: LogConfig, tmp_path: Path
    ) -> None:
        store = open_store(tmp_path, config)
        a = store.append_batch_nosync(records(3))
        b = store.append_batch_nosync(records(3, 3))
        assert (a, b) == (0, 3)
        await store.sync()
        assert store.durable_offset == 6
        await store.close()

    async def test_concurrent_appenders_get_disjoint_offsets(
        self, open_store: StoreFactory, config: LogConfig, tmp_path: Path
    ) -> None:
        store = open_store(tmp_path, config)
        firsts = await asyncio.gather(*(store.append_batch(records(3, 3 * i)) for i in range(20)))
        assert sorted(firsts) == list(range(0, 60, 3))
        for i, first in enumerate(firsts):
            assert [store.read(first + j) for j in range(3)] == records(3, 3 * i)
        await store.close()

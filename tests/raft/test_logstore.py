"""The Raft log store (commit-log engine underneath): the log-store contract and Raft's needs.

The contract suite (``support.log_contract``) speaks in opaque byte records at dense
offsets. :class:`EntryRecords` presents a :class:`RaftLogStore` that way: each record is
the data of a Raft entry (term 7) at index = offset, so every promise of the contract is
checked through the store's own encoding, truncation, compaction and sync paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from raftlog.log import LogConfig, OffsetOutOfRangeError
from raftlog.raft import CodecError, Entry, EntryType
from raftlog.raft.logstore import (
    HEADER_BYTES,
    LogStoreError,
    RaftLogStore,
    decode_record,
    encode_record,
)
from support.log_contract import LogStoreContract, StoreFactory

TERM = 7


class EntryRecords:
    """The byte-record view of a RaftLogStore that the contract suite talks to."""

    def __init__(self, store: RaftLogStore) -> None:
        self.store = store

    @property
    def lowest_offset(self) -> int:
        return self.store.first_index

    @property
    def highest_offset(self) -> int:
        return self.store.last_index

    @property
    def next_offset(self) -> int:
        return self.store.next_index

    @property
    def durable_offset(self) -> int:
        return self.store.durable_index

    def append_batch_nosync(self, records: Sequence[bytes]) -> int:
        first = self.store.next_index
        self.store.append(
            [Entry(TERM, first + i, EntryType.NORMAL, r) for i, r in enumerate(records)]
        )
        return first

    async def append_batch(self, records: Sequence[bytes]) -> int:
        first = self.append_batch_nosync(records)
        await self.store.sync()
        return first

    async def append(self, record: bytes) -> int:
        return await self.append_batch([record])

    async def sync(self) -> None:
        await self.store.sync()

    def read(self, offset: int) -> bytes:
        e = self.store.entry(offset)
        assert e.index == offset and e.term == TERM
        return e.data

    def read_batch(self, offset: int, max_bytes: int) -> list[bytes]:
        return [e.data for e in self.store.entries(offset, self.store.next_index, max_bytes)]

    def truncate(self, lowest: int) -> None:
        self.store.compact(lowest - 1)

    def truncate_after(self, offset: int) -> None:
        self.store.truncate_after(offset)

    async def close(self) -> None:
        await self.store.close()

    def close_sync(self) -> None:
        self.store.close_sync()


def _open(directory: Path, config: LogConfig) -> EntryRecords:
    return EntryRecords(RaftLogStore.open(directory, config=config))


class TestRaftLogStoreContract(LogStoreContract):
    @pytest.fixture
    def open_store(self) -> StoreFactory:
        return _open


def _entries(first: int, n: int, term: int, tag: str = "e") -> list[Entry]:
    return [
        Entry(term, first + i, EntryType.NORMAL, f"{tag}{first + i}".encode()) for i in range(n)
    ]


def test_record_round_trip_and_corrupt_records() -> None:
    for e in (
        Entry(1, 1, EntryType.CONF_CHANGE, b"\x00conf"),
        Entry(2**40, 5, EntryType.NOOP, b""),
        Entry(3, 9, EntryType.NORMAL, b"x" * 1000),
    ):
        rec = encode_record(e)
        assert len(rec) == HEADER_BYTES + len(e.data)
        assert decode_record(e.index, rec) == e
    with pytest.raises(CodecError, match="too short"):
        decode_record(1, b"\x01\x00")
    with pytest.raises(CodecError, match="version"):
        decode_record(1, b"\x09" + encode_record(Entry(1, 1))[1:])
    with pytest.raises(CodecError, match="entry type"):
        decode_record(1, encode_record(Entry(1, 1))[:-1] + b"\x7f")


async def test_new_store_starts_at_index_one(tmp_path: Path) -> None:
    store = RaftLogStore.open(tmp_path)
    assert (store.first_index, store.last_index, store.next_index) == (1, 0, 1)
    assert store.is_empty()
    assert store.term(1) is None
    store.append(_entries(1, 3, 1))
    assert store.term(2) == 1 and not store.is_empty()
    await store.close()


async def test_store_overwrites_conflicting_suffix_and_persists(tmp_path: Path) -> None:
    store = RaftLogStore.open(tmp_path)
    store.store(_entries(1, 10, 1, "old"))
    await store.sync()
    assert store.durable_index == 11
    # A new leader (term 2) overwrites entries 6.. with its own.
    store.store(_entries(6, 2, 2, "new"))
    await store.sync()
    assert store.last_index == 7
    assert [e.term for e in store.load()] == [1] * 5 + [2, 2]
    assert store.entry(6).data == b"new6"
    await store.close()
    reopened = RaftLogStore.open(tmp_path)
    assert reopened.load() == _entries(1, 5, 1, "old") + _entries(6, 2, 2, "new")
    await reopened.close()


async def test_store_refuses_gaps_and_compacted_starts(tmp_path: Path) -> None:
    store = RaftLogStore.open(tmp_path)
    store.store(_entries(1, 3, 1))
    with pytest.raises(LogStoreError, match="gap"):
        store.store(_entries(5, 1, 1))
    with pytest.raises(LogStoreError, match="continues at 4"):
        store.append(_entries(3, 1, 1))
    with pytest.raises(LogStoreError, match="contiguous"):
        store.append([Entry(1, 4), Entry(1, 6)])
    store.reset(100)
    with pytest.raises(LogStoreError, match="compacted"):
        store.store(_entries(50, 1, 1))
    await store.close()


async def test_compact_drops_whole_segments_below_a_snapshot(tmp_path: Path) -> None:
    cfg = LogConfig(initial_offset=1, max_store_bytes=400, max_index_bytes=8 * 10)
    store = RaftLogStore.open(tmp_path, config=cfg)
    store.store(_entries(1, 50, 3))
    await store.sync()
    store.compact(25)
    assert store.first_index == 21  # 10 entries per segment: 21..30 holds 26..30 too
    assert store.last_index == 50
    with pytest.raises(OffsetOutOfRangeError):
        store.entry(store.first_index - 1)
    # Startup loads from the snapshot index only.
    assert [e.index for e in store.load(25)] == list(range(25, 51))
    store.compact(50)
    assert store.first_index > 40
    await store.close()
    reopened = RaftLogStore.open(tmp_path, config=cfg)
    assert reopened.first_index == store.first_index
    assert reopened.next_index == 51
    await reopened.close()


async def test_reset_after_snapshot_install_survives_reopen(tmp_path: Path) -> None:
    store = RaftLogStore.open(tmp_path)
    store.store(_entries(1, 5, 1))
    store.reset(41)
    store.store(_entries(41, 2, 4))
    await store.sync()
    await store.close()
    reopened = RaftLogStore.open(tmp_path)
    assert (reopened.first_index, reopened.last_index) == (41, 42)
    assert reopened.load(40) == _entries(41, 2, 4)
    await reopened.close()


async def test_entries_respects_byte_budget(tmp_path: Path) -> None:
    store = RaftLogStore.open(tmp_path)
    store.store([Entry(1, i, EntryType.NORMAL, b"x" * 100) for i in range(1, 21)])
    got = store.entries(1, 21, max_bytes=350)
    assert [e.index for e in got] == [1, 2, 3]
    assert [e.index for e in store.entries(5, 21, max_bytes=1)] == [5]
    assert len(store.entries(1, 21)) == 20
    assert store.entries(3, 3) == []
    with pytest.raises(OffsetOutOfRangeError):
        store.entries(40, 50)
    await store.close()


async def test_without_fsync_sync_is_a_no_op(tmp_path: Path) -> None:
    store = RaftLogStore.open(tmp_path, fsync=False)
    store.store(_entries(1, 3, 1))
    await store.sync()
    assert store.durable_index < 4  # nothing was fsynced
    await store.close()
    await store.close()  # idempotent

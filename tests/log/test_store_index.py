"""Unit tests of the bottom layers: framing, Store, Index."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import crc32c
import numpy as np
import pytest

from raftlog.log import Index, Store
from raftlog.log.framing import CHECK_MASK, encode_batch, parse_headers


def test_encode_batch_frames_every_record() -> None:
    recs = [b"", b"a", b"hello world", bytes(range(256)) * 3]
    data, sizes = encode_batch(recs)
    assert sizes.tolist() == [8 + len(r) for r in recs]
    assert len(data) == sum(sizes.tolist())
    pos = 0
    for r in recs:
        length, check = struct.unpack_from("<II", data, pos)
        assert length == len(r)
        assert check == crc32c.crc32c(r) ^ CHECK_MASK
        assert data[pos + 8 : pos + 8 + length] == r
        pos += 8 + length


def test_zero_header_is_not_a_valid_empty_frame() -> None:
    data, _ = encode_batch([b""])
    assert data != bytes(8)  # an all-zero (preallocated) tail never parses as records


def test_parse_headers_gathers_every_frame() -> None:
    recs = [b"x" * n for n in (0, 5, 17, 3)]
    data, sizes = encode_batch(recs)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
    lengths, checks = parse_headers(np.frombuffer(data, dtype=np.uint8), starts)
    assert lengths.tolist() == [0, 5, 17, 3]
    assert checks.tolist() == [crc32c.crc32c(r) ^ CHECK_MASK for r in recs]


def test_store_appends_with_one_write_and_reads_by_position(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    assert store.append(b"abc") == 0
    assert store.append(memoryview(b"defgh")) == 3
    assert store.size == 8
    assert store.read(2, 4) == b"cdef"
    assert store.read(6, 100) == b"gh"  # short only at the end of the file
    store.truncate(4)
    assert store.read(0, 100) == b"abcd"
    assert store.synced_size == 0
    store.sync()
    assert store.synced_size == 4
    store.close()
    assert Store(tmp_path / "s").size == 4


def test_index_batch_insert_lookup_and_cut_on_close(tmp_path: Path) -> None:
    path = tmp_path / "i"
    index = Index(path, capacity=100)
    index.reserve()
    assert path.stat().st_size == 100 * 8  # preallocated (sparse)
    index.append(np.array([0, 10, 25], dtype=np.uint64))
    index.append(np.array([40], dtype=np.uint64))
    assert index.count == 4
    assert index.position(2) == 25
    assert index.positions(1, 4).tolist() == [10, 25, 40]
    assert index.raw()["rel"][:4].tolist() == [0, 1, 2, 3]
    index.truncate(2)
    assert index.raw()["pos"][2:4].tolist() == [0, 0]  # cleared, never misread
    index.close()
    assert path.stat().st_size == 2 * 8
    reopened = Index(path, capacity=100)
    assert reopened.raw()["pos"].tolist() == [0, 10]


def test_index_write_all_replaces_and_clears(tmp_path: Path) -> None:
    index = Index(tmp_path / "i", capacity=10)
    index.reserve()
    index.append(np.arange(8, dtype=np.uint64) * 9)
    index.write_all(np.array([0, 7], dtype=np.uint64))
    assert index.count == 2
    assert np.all(index.raw()["pos"][2:] == 0)
    assert np.all(index.raw()["rel"][2:] == 0)


@pytest.mark.parametrize("size", [0, 1, 100_000])
def test_store_read_of_large_and_empty_ranges(tmp_path: Path, size: int) -> None:
    store = Store(tmp_path / "s")
    payload = os.urandom(size)
    store.append(payload)
    assert store.read(0, size) == payload
    store.close()


def test_checksum_is_crc32c() -> None:
    """The on-disk check is CRC-32C (check value of the standard test vector, inverted)."""
    from raftlog.log.framing import checksum

    assert checksum(b"123456789") == 0xE3069283 ^ CHECK_MASK

"""The native framing helper (internal/log/_frames.c) writes exactly what the numpy path
writes, and checks payloads exactly as the ``crc32c`` package does.

The on-disk format must not depend on which path framed a batch: a store written on a
machine without a compiler is read by one with it, and the other way round.
"""

from __future__ import annotations

import asyncio
import platform
import threading
from pathlib import Path

import numpy as np
import pytest
from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from raftlog.log import Log, LogConfig, framing
from raftlog.log.config import SyncPolicy

# lengths around the 8-byte words and the three-records-at-a-time loop of the helper
records_st = st.lists(
    st.one_of(
        st.binary(min_size=0, max_size=40),
        st.binary(min_size=1000, max_size=1100),
        st.sampled_from([b"", b"x" * 7, b"y" * 8, b"z" * 9, b"w" * 1024]),
    ),
    max_size=40,
)

native = pytest.mark.skipif(not framing.NATIVE, reason="native framing helper not in use")


def test_the_helper_is_built_where_the_makefile_builds_it() -> None:
    """`make install` builds the helper with the machine's C compiler; on x86-64 Linux
    losing it silently would cost 3x on batched appends (docs/commitlog.md)."""
    if platform.machine() != "x86_64" or platform.system() != "Linux":
        pytest.skip("the hardware CRC path is x86-64 only")
    assert framing.NATIVE, "raftlog.log._frames is missing: run `make install`"


@native
@settings(max_examples=300, deadline=None)
@given(records=records_st)
def test_encode_is_byte_for_byte_the_numpy_path(records: list[bytes]) -> None:
    data, sizes = framing.encode_batch(records)
    ref_data, ref_sizes = framing.encode_batch_numpy(records)
    assert data == ref_data
    assert sizes.dtype == np.uint64
    assert sizes.tolist() == ref_sizes.tolist()


@native
@settings(max_examples=300, deadline=None)
@given(records=records_st)
def test_checks_match_the_crc32c_package(records: list[bytes]) -> None:
    want = [crc32c(r) ^ framing.CHECK_MASK for r in records]
    assert framing.stored_checks(records).tolist() == want
    views: list[bytes | memoryview] = [memoryview(bytearray(r)) for r in records]
    assert framing.stored_checks(views).tolist() == want
    assert framing.encode_batch([bytes(v) for v in views])[0] == framing.encode_batch(records)[0]


@native
def test_a_flipped_bit_is_found_in_any_lane() -> None:
    """The helper checks three payloads side by side: a bad one is found in each position."""
    payloads = [bytes([i]) * (1024 + i) for i in range(7)]
    checks = framing.stored_checks(payloads)
    for k in range(len(payloads)):
        damaged = list(payloads)
        b = bytearray(damaged[k])
        b[len(b) // 2] ^= 0x10
        damaged[k] = bytes(b)
        assert framing.bad_payload_checksums(damaged, checks).tolist() == [k]


@native
def test_stores_written_by_either_path_are_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same batches through Log.append_batch with and without the helper: the same
    store files, and each log reads the other's records back."""
    batches = [[b"r%d-%d" % (i, j) * (j % 50) for j in range(i * 37 % 200 + 1)] for i in range(20)]

    async def write(directory: Path) -> None:
        log = Log.open(directory, LogConfig(sync=SyncPolicy.NEVER))
        for batch in batches:
            await log.append_batch(batch)
        await log.close()

    asyncio.run(write(tmp_path / "native"))
    monkeypatch.setattr(framing, "NATIVE", False)
    asyncio.run(write(tmp_path / "numpy"))
    stores = sorted(p.name for p in (tmp_path / "native").glob("*.store"))
    assert stores
    for name in stores:
        assert (tmp_path / "native" / name).read_bytes() == (tmp_path / "numpy" / name).read_bytes()
    monkeypatch.setattr(framing, "NATIVE", True)
    flat = [r for batch in batches for r in batch]
    for directory in ("native", "numpy"):
        log = Log.open(tmp_path / directory, LogConfig(sync=SyncPolicy.NEVER))
        try:
            got: list[bytes] = []
            while len(got) < len(flat):
                got.extend(log.read_batch(len(got), 1 << 20, 10_000))
            assert got == flat
        finally:
            asyncio.run(log.close())


@native
def test_logs_of_one_thread_share_one_frame_buffer_and_keep_their_own_records(
    tmp_path: Path,
) -> None:
    """Every log appended to in one thread frames its batches in the thread's one buffer
    (a node with many partitions holds one buffer per thread, not up to 8 MiB per log);
    interleaved large batches to several logs each read back exactly; another thread has
    its own buffer."""
    logs = [Log.open(tmp_path / f"log{i}", LogConfig(sync=SyncPolicy.NEVER)) for i in range(4)]
    expected: list[list[bytes]] = [[] for _ in logs]
    try:
        buf = framing.thread_frame_buffer()
        for round_ in range(6):
            for i, log in enumerate(logs):
                # above SMALL_BATCH, sizes that make the buffer grow, in a different order
                # per log
                batch = [
                    bytes([65 + i]) * (100 + 997 * ((round_ + i + j) % 7)) + b"%d" % j
                    for j in range(200 + 150 * ((round_ + i) % 4))
                ]
                log.append_batch_nosync(batch)
                expected[i].extend(batch)
                assert framing.thread_frame_buffer() is buf
        assert len(buf._buf) > 1 << 20, "the logs framed their batches in the thread's buffer"
        for log, want in zip(logs, expected, strict=True):
            got: list[bytes] = []
            while len(got) < len(want):
                got.extend(log.read_batch(len(got), 1 << 22, 100_000))
            assert got == want
        other: list[framing.FrameBuffer] = []
        worker = threading.Thread(target=lambda: other.append(framing.thread_frame_buffer()))
        worker.start()
        worker.join(timeout=10)
        assert other and other[0] is not buf
    finally:
        for log in logs:
            asyncio.run(log.close())

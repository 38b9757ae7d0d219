"""Crash tests: kill -9 mid-append, files cut short, flipped bytes, power loss.

After each kind of damage the log must reopen and: serve only records that were written,
intact, at their offsets (or refuse with CorruptRecordError); keep offsets dense; accept
appends again. Under sync=always a power loss must not lose an acknowledged record.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from raftlog.log import CorruptRecordError, Log, LogConfig, SyncPolicy
from support.log_crash import cut_file, flip_bytes, power_loss_image

SMALL = LogConfig(max_store_bytes=2000, max_index_bytes=8 * 64)


def make_record(offset: int) -> bytes:
    """The record the writers put at ``offset``: checkable without a copy of the log."""
    size = offset * 7 % 90
    return b"%d:" % offset + hashlib.sha256(b"%d" % offset).digest()[: size % 32] * (size // 32 + 1)


def check_log(directory: Path, config: LogConfig, written_next: int) -> Log:
    """Reopen and check the invariants; return the open log (appends verified)."""
    log = Log.open(directory, config)
    assert log.lowest_offset == config.initial_offset
    assert log.next_offset <= written_next
    active_base = log.segments[-1].base_offset
    offset = log.lowest_offset
    while offset < log.next_offset:
        try:
            assert log.read(offset) == make_record(offset), f"offset {offset} is wrong"
        except CorruptRecordError:
            # Damage in the middle of a sealed segment: refused, never served. The active
            # segment was verified whole on open, so it may hold no such record.
            assert offset < active_base, f"active segment serves a corrupt record {offset}"
        offset += 1
    first = asyncio.run(log.append_batch([make_record(log.next_offset + i) for i in range(5)]))
    assert first == offset
    assert [log.read(first + i) for i in range(5)] == [make_record(first + i) for i in range(5)]
    return log


def build_log(directory: Path, n: int, config: LogConfig = SMALL) -> None:
    log = Log.open(directory, config)
    rng = random.Random(n)
    while log.next_offset < n:
        k = min(rng.randint(1, 20), n - log.next_offset)
        log.append_batch_nosync([make_record(log.next_offset + i) for i in range(k)])
    log.close_sync()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, sys.argv[2])
    from support_records import make_record
    from raftlog.log import Log, LogConfig, SyncPolicy

    async def main():
        log = Log.open(sys.argv[1], LogConfig(max_store_bytes=2000, max_index_bytes=8 * 64,
                                              sync=SyncPolicy.ALWAYS))
        i = 0
        while True:
            k = 1 + i % 13
            nxt = log.next_offset
            first = await log.append_batch([make_record(nxt + j) for j in range(k)])
            assert first == nxt
            print(first + k, flush=True)
            i += 1

    asyncio.run(main())
    """
)


@pytest.mark.slow
@pytest.mark.timeout(60)  # readline() below has no deadline of its own
@pytest.mark.parametrize("kill_after", [5, 40, 120])
def test_sigkill_in_the_middle_of_appending(tmp_path: Path, kill_after: int) -> None:
    helper = tmp_path / "helper"
    helper.mkdir()
    (helper / "support_records.py").write_text(
        "import hashlib\n"
        + textwrap.dedent(
            """
            def make_record(offset):
                size = offset * 7 % 90
                return b"%d:" % offset + hashlib.sha256(b"%d" % offset).digest()[
                    : size % 32] * (size // 32 + 1)
            """
        )
    )
    data = tmp_path / "log"
    acked = 0
    for round_ in range(2):  # kill, reopen, and kill again on top of the recovered log
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(data), str(helper)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 30
            lines = 0
            while lines < kill_after:
                assert time.monotonic() < deadline, "writer made no progress"
                line = proc.stdout.readline()
                assert line, f"writer died: {proc.stderr.read() if proc.stderr else ''}"
                acked = max(acked, int(line))
                lines += 1
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(10)
        log = check_log(data, LogConfig(**{**SMALL.__dict__, "sync": SyncPolicy.ALWAYS}), 10**9)
        assert log.next_offset >= acked + 5, f"round {round_}: acknowledged records lost"
        log.close_sync()


@pytest.mark.parametrize("seed", range(12))
def test_files_cut_at_random_positions(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    src = tmp_path / "src"
    build_log(src, 400)
    data = tmp_path / f"cut{seed}"
    shutil.copytree(src, data)
    files = sorted(data.iterdir())
    for path in rng.sample(files, k=rng.randint(1, 3)):
        cut_file(path, rng)
    check_log(data, SMALL, 400).close_sync()
    Log.open(data, SMALL).close_sync()  # and it stays clean


@pytest.mark.parametrize("seed", range(16))
def test_random_bytes_flipped_in_stores_and_indexes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(1000 + seed)
    src = tmp_path / "src"
    build_log(src, 400)
    data = tmp_path / f"flip{seed}"
    shutil.copytree(src, data)
    stores = sorted(data.glob("*.store"))
    indexes = sorted(data.glob("*.index"))
    targets = [rng.choice(stores), rng.choice(indexes)]
    if seed % 3 == 0:
        targets = [stores[-1], indexes[-1]]  # the active segment: recovery checks it all
    for path in targets:
        flip_bytes(path, rng, rng.randint(1, 3))
    log = check_log(data, SMALL, 400)
    log.close_sync()
    log = Log.open(data, SMALL)
    assert log.next_offset >= 405 - 400 + log.lowest_offset  # the appends survived reopen
    log.close_sync()


@pytest.mark.parametrize("seed", range(8))
async def test_power_loss_keeps_everything_acknowledged(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    config = LogConfig(max_store_bytes=1500, max_index_bytes=8 * 40, sync=SyncPolicy.ALWAYS)
    src = tmp_path / "src"
    log = Log.open(src, config)
    acked: dict[int, bytes] = {}
    cuts: list[int] = []  # every truncate_after so far

    async def appender(tag: int) -> None:
        for i in range(rng.randint(5, 25)):
            batch = [
                b"w%d-%d-%d" % (tag, i, j) * rng.randint(1, 6) for j in range(rng.randint(1, 8))
            ]
            seen = len(cuts)
            first = await log.append_batch(batch)
            # A suffix cut between the fsync and this task resuming removed them again.
            floor = min(cuts[seen:], default=first + len(batch))
            acked.update({first + j: r for j, r in enumerate(batch) if first + j <= floor})

    tasks = [asyncio.ensure_future(appender(t)) for t in range(4)]
    for _ in range(rng.randint(10, 200)):
        await asyncio.sleep(0)
        if rng.random() < 0.02 and log.highest_offset > log.lowest_offset + 5:
            cut = rng.randint(log.durable_offset - 1, log.highest_offset)
            cut = max(cut, log.lowest_offset - 1)
            log.truncate_after(cut)  # Raft discarding a suffix (may fail waiting appenders)
            cuts.append(cut)
            for o in [o for o in acked if o > cut]:
                del acked[o]
        if all(t.done() for t in tasks):
            break
    # The power goes out now: whatever is in flight is not acknowledged.
    image = tmp_path / "image"
    power_loss_image(src, log.durable_lengths(), image, rng, keep_unsynced=seed % 2 == 0)
    at_crash = dict(acked)  # appenders may still finish after this point: not our business
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await log.close()

    recovered = Log.open(image, config)
    held = range(recovered.lowest_offset, recovered.next_offset)
    missing = [o for o in sorted(at_crash) if o not in held]
    assert not missing, f"acknowledged offsets lost: {missing[:10]}"
    for o, record in at_crash.items():
        assert recovered.read(o) == record
    assert await recovered.append(b"after") == recovered.next_offset - 1
    await recovered.close()
    assert os.listdir(image)

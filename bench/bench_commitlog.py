"""Commit-log benchmark: appends and reads of raftlog.log against a raw-file baseline.

Every figure is measured in this run on this machine, next to its baseline: a plain
Python loop that writes the same record bytes to a file with the same sync policy
(``never``: ``os.write(fd, b"".join(batch))`` per batch; ``always``: the same plus
``os.fdatasync`` per batch, the call the log uses). Reads compare ``Log.read_batch`` with
``os.pread`` of the same bytes in 1 MiB chunks. Ratios are ours / raw (higher is better).

Usage: python bench/bench_commitlog.py [--seconds S] [--dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raftlog.log import Log, LogConfig, SyncPolicy

MIB = 1 << 20
#: Alternating rounds per measurement (best of each side is reported).
ROUNDS = 5


@dataclass
class Result:
    records: int
    batches: int
    payload_bytes: int
    seconds: float

    @property
    def rec_s(self) -> float:
        return self.records / self.seconds

    @property
    def mb_s(self) -> float:
        return self.payload_bytes / self.seconds / MIB

    @property
    def us_batch(self) -> float:
        return self.seconds / self.batches * 1e6


def make_batches(size: int, batch: int, count: int) -> list[list[bytes]]:
    """``count`` distinct batches of ``batch`` records of ``size`` bytes (reused cyclically)."""
    blob = os.urandom(size * batch * count + 64)
    return [
        [
            blob[(b * batch + i) * size + (b % 7) : (b * batch + i + 1) * size + (b % 7)]
            for i in range(batch)
        ]
        for b in range(count)
    ]


def timed_loop(step: Callable[[int], None], seconds: float, max_steps: int) -> tuple[int, float]:
    """Call ``step(i)`` until ``seconds`` passed (checked every few steps) or max_steps."""
    start = time.perf_counter()
    i = 0
    every = 1
    while i < max_steps:
        for _ in range(every):
            step(i)
            i += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return i, elapsed
        if elapsed < seconds / 50:
            every = min(every * 2, 256)
    return i, time.perf_counter() - start


def raw_append(
    path: Path, batches: list[list[bytes]], sync: str, seconds: float, cap: int
) -> Result:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        n = len(batches)
        fsync = os.fdatasync if sync == "always" else None

        def step(i: int) -> None:
            os.write(fd, b"".join(batches[i % n]))
            if fsync is not None:
                fsync(fd)

        steps, elapsed = timed_loop(step, seconds, cap)
    finally:
        os.close(fd)
    per = len(batches[0])
    return Result(steps * per, steps, steps * per * len(batches[0][0]), elapsed)


async def log_append(
    directory: Path,
    batches: list[list[bytes]],
    sync: str,
    seconds: float,
    cap: int,
    appenders: int = 1,
) -> Result:
    log = Log.open(directory, LogConfig(sync=SyncPolicy(sync)))
    n = len(batches)
    per = len(batches[0])
    done = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def appender(k: int) -> None:
        nonlocal done
        i = k
        while done < cap:
            await log.append_batch(batches[i % n])
            done += 1
            i += appenders
            if done % 64 == 0 and time.perf_counter() >= deadline:
                break
            if sync == "always" and time.perf_counter() >= deadline:
                break

    await asyncio.gather(*(appender(k) for k in range(appenders)))
    elapsed = time.perf_counter() - start
    await log.close()
    return Result(done * per, done, done * per * len(batches[0][0]), elapsed)


def log_read(directory: Path, seconds: float) -> tuple[Result, Result]:
    """Sequential read_batch over a log, and pread of its store files as the baseline."""
    best: tuple[Result, Result] | None = None
    for _ in range(ROUNDS):
        ours, raw = _log_read_round(directory, seconds / ROUNDS)
        if best is None:
            best = (ours, raw)
        else:
            best = (
                max(best[0], ours, key=lambda r: r.mb_s),
                max(best[1], raw, key=lambda r: r.mb_s),
            )
    assert best is not None
    return best


def _log_read_round(directory: Path, seconds: float) -> tuple[Result, Result]:
    log = Log.open(directory, LogConfig(sync=SyncPolicy.NEVER))
    records = payload = 0
    start = time.perf_counter()
    rounds = 0
    while True:
        offset = log.lowest_offset
        while offset < log.next_offset:
            got = log.read_batch(offset, MIB)
            offset += len(got)
            records += len(got)
            payload += sum(map(len, got))
        rounds += 1
        if time.perf_counter() - start >= seconds:
            break
    ours = Result(records, rounds, payload, time.perf_counter() - start)
    stores = [s.store.path for s in log.segments]
    log.close_sync()
    total = 0
    start = time.perf_counter()
    rounds = 0
    while True:
        for path in stores:
            fd = os.open(path, os.O_RDONLY)
            pos = 0
            while chunk := os.pread(fd, MIB, pos):
                pos += len(chunk)
            os.close(fd)
            total += pos
        rounds += 1
        if time.perf_counter() - start >= seconds:
            break
    raw = Result(0, rounds, total, time.perf_counter() - start)
    return ours, raw


def row(name: str, ours: Result, raw: Result) -> str:
    return (
        f"{name:<34} {ours.rec_s:>12,.0f} {ours.mb_s:>9.1f} {raw.mb_s:>9.1f} "
        f"{ours.mb_s / raw.mb_s:>6.2f}x {ours.us_batch:>10.1f} {raw.us_batch:>10.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="0.15 s per measurement")
    args, _unknown = parser.parse_known_args()
    seconds = 0.15 if args.quick else args.seconds
    scratch = Path(tempfile.mkdtemp(prefix="raftlog-bench-", dir=args.dir))
    print(
        f"commit log benchmark: python {platform.python_version()}, {os.cpu_count()} cpus, "
        f"scratch {scratch}, {seconds:.2f} s per measurement"
    )
    print(
        "baseline = plain loop: os.write(b''.join(batch)) [+ os.fdatasync] per batch; "
        "ratio = ours MB/s / raw MB/s"
    )
    header = (
        f"{'case':<34} {'ours rec/s':>12} {'ours MB/s':>9} {'raw MB/s':>9} {'ratio':>7} "
        f"{'us/batch':>10} {'raw us/b':>10}"
    )
    print(header)
    print("-" * len(header))
    results: dict[tuple[int, int, str, int], tuple[Result, Result]] = {}
    cases = [
        (size, batch, sync, appenders)
        for sync in ("never", "always")
        for size in (100, 1024)
        for batch in (1, 100, 1000)
        for appenders in ((1, 8) if sync == "always" and batch < 1000 else (1,))
    ]
    cap_bytes = 512 * MIB
    try:
        for size, batch, sync, appenders in cases:
            batches = make_batches(size, batch, max(1, 2000 // batch) if batch < 1000 else 8)
            cap = max(1, cap_bytes // (size * batch))
            raw_path = scratch / "raw.bin"
            log_dir = scratch / f"log-{size}-{batch}-{sync}-{appenders}"
            # Alternate short rounds of raw and ours and keep the best of each, so that
            # noise from other processes on the machine hits both sides alike.
            raw_runs: list[Result] = []
            our_runs: list[Result] = []
            for _ in range(ROUNDS):
                raw_runs.append(raw_append(raw_path, batches, sync, seconds / ROUNDS, cap))
                raw_path.unlink()
                if log_dir.exists():
                    shutil.rmtree(log_dir)
                our_runs.append(
                    asyncio.run(
                        log_append(log_dir, batches, sync, seconds / ROUNDS, cap, appenders)
                    )
                )
            raw = max(raw_runs, key=lambda r: r.mb_s)
            ours = max(our_runs, key=lambda r: r.mb_s)
            results[(size, batch, sync, appenders)] = (ours, raw)
            name = f"append {size}B x{batch} sync={sync}"
            if appenders > 1:
                name += f" {appenders} tasks"
            print(row(name, ours, raw), flush=True)
            if (size, batch) not in ((100, 1000), (1024, 1000)) or sync != "never":
                shutil.rmtree(log_dir)
        for size in (100, 1024):
            log_dir = scratch / f"log-{size}-1000-never-1"
            ours, raw = log_read(log_dir, seconds)
            ours.batches = max(1, ours.records // 1000)
            raw.batches = max(1, ours.batches)
            print(row(f"read_batch {size}B (1 MiB per call)", ours, raw), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print()
    big_ours, big_raw = results[(1024, 1000, "never", 1)]
    small_ours, _ = results[(100, 1000, "never", 1)]
    conc_ours, conc_raw = results[(100, 1, "always", 8)]
    targets = [
        ("1000 x 1 KiB, sync=never: >= 0.7x raw MB/s", big_ours.mb_s / big_raw.mb_s, 0.7, "x"),
        ("100 B in batches of 1000, sync=never: >= 1,000,000 rec/s", small_ours.rec_s, 1e6, ""),
        (
            "sync=always, 8 appenders of 1 x 100 B: us/batch <= 2x raw fsync per batch",
            conc_raw.us_batch * 2 / conc_ours.us_batch,
            1.0,
            "x headroom",
        ),
    ]
    for text, value, goal, unit in targets:
        status = "MET " if value >= goal else "MISS"
        shown = f"{value:,.0f}" if goal >= 1000 else f"{value:.2f}{unit}"
        print(f"[{status}] {text}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

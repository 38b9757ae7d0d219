"""The checker and the power-loss image must be able to fail: each violation the chaos
scenarios look for is planted in a small history and must be reported."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from support import chaos_fsync
from support.chaos_checker import check
from support.chaos_harness import History, LinRead, Op

pytestmark = pytest.mark.chaos


def clean() -> tuple[History, dict[str, list[str]]]:
    h = History(seed=1, scenario="unit")
    h.ops = [
        Op(0.0, "client-0", "client-0-0", "ok", 0),
        Op(0.1, "raw-0@n1", "raw-0-0", "ok", 1),
        Op(0.2, "client-0", "client-0-1", "info", None, "UNAVAILABLE"),
        Op(0.3, "raw-0@n2", "raw-0-1", "info", None, "DEADLINE_EXCEEDED"),
    ]
    h.reads = {"r": [[(0, "client-0-0"), (1, "raw-0-0")], [(2, "raw-0-1")]]}
    log = ["client-0-0", "raw-0-0", "raw-0-1", "sentinel"]
    return h, {"n1": list(log), "n2": list(log), "n3": list(log)}


def test_a_clean_history_passes() -> None:
    h, logs = clean()
    v = check(h, logs)
    assert v.ok, v.problems
    assert (v.acknowledged, v.acknowledged_raw, v.records_read, v.final_length) == (2, 1, 3, 4)


def test_lost_acknowledged_value() -> None:
    h, logs = clean()
    for log in logs.values():
        log[1] = "raw-0-1"
    v = check(h, logs)
    assert v.lost == 1 and v.duplicated_raw == 1 and not v.ok


def test_value_at_another_offset() -> None:
    h, logs = clean()
    for log in logs.values():
        log[0], log[1] = log[1], log[0]
    v = check(h, logs)
    assert v.wrong_offset == 2 and v.dirty_reads == 2


def test_client_duplicates_fail_the_run() -> None:
    """The client's retries carry its producer id and sequence: a duplicate is a bug."""
    h, logs = clean()
    for log in logs.values():
        log.append("client-0-0")
    v = check(h, logs)
    assert v.duplicated_client == 1 and v.duplicated_raw == 0 and not v.ok
    assert "client-0-0" in v.problems[0]


def test_divergent_replica_gap_and_invented_value() -> None:
    h, logs = clean()
    logs["n2"][2] = "forged"
    logs["n3"].insert(1, "<offset 2 where 1 was expected>")
    v = check(h, logs)
    assert v.divergent_replicas == 2 and v.gaps == 1
    h2, logs2 = clean()
    for log in logs2.values():
        log.append("forged")
    assert check(h2, logs2).invented == 1


def test_reads_out_of_order_and_dirty() -> None:
    h, logs = clean()
    h.reads["r"].append([(0, "client-0-0"), (2, "raw-0-1"), (3, "not-committed")])
    v = check(h, logs)
    assert v.out_of_order_reads == 1 and v.dirty_reads == 1


def test_crash_fails_the_run() -> None:
    h, logs = clean()
    h.crashes.append("n2 exited with -6")
    assert not check(h, logs).ok


CHILD = """
import os, sys
sys.path.insert(0, {tests!r})
from support import chaos_fsync
chaos_fsync.install(chaos_fsync.journal_path(__import__("pathlib").Path({data!r})))
d = {data!r}
fd = os.open(d + "/synced", os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"a" * 100); os.fsync(fd)
dfd = os.open(d, os.O_RDONLY); os.fsync(dfd)
os.write(fd, b"b" * 50)
fd2 = os.open(d + "/never", os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd2, b"c" * 70)
os._exit(0)
"""


def test_power_loss_cuts_to_the_last_fsync(tmp_path: Path) -> None:
    data = tmp_path / "node"
    data.mkdir()
    tests = str(Path(__file__).resolve().parents[1])
    code = CHILD.format(tests=tests, data=str(data))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    journal = chaos_fsync.Journal.read(chaos_fsync.journal_path(data))
    seen_never = False
    for seed in range(20):
        image = tmp_path / f"img{seed}"
        subprocess.run(["cp", "-a", str(data), str(image)], check=True)
        # the copy has new inodes: map the journal onto them by name
        durable = journal.sizes[(data / "synced").stat().st_ino]
        j = chaos_fsync.Journal(
            sizes={(image / "synced").stat().st_ino: durable},
            dirs={image.stat().st_ino: {"synced": (image / "synced").stat().st_ino}},
        )
        chaos_fsync.apply_power_loss(image, j, random.Random(seed))
        synced = (image / "synced").read_bytes()
        assert synced[:100] == b"a" * 100 and len(synced) <= 150
        never = image / "never"
        if never.exists():
            assert len(never.read_bytes()) <= 70
        else:
            seen_never = True
    assert seen_never, "a file created without a directory fsync never vanished"
    assert journal.sizes[(data / "synced").stat().st_ino] == 100


def test_stale_linearizable_reads() -> None:
    """A linearizable read of an acknowledged offset that answers another value, or says
    the offset is not there, is stale; one that fails (no leader) proves nothing."""
    h, logs = clean()
    h.lin_reads = [
        LinRead(0.5, 0, "client-0-0", got="client-0-0"),
        LinRead(0.6, 1, "raw-0-0", error="DeadlineExceededError: no leader"),
    ]
    v = check(h, logs)
    assert v.ok, v.problems
    assert (v.linearizable_reads, v.linearizable_answered, v.stale_reads) == (2, 1, 0)
    h.lin_reads.append(LinRead(0.7, 1, "raw-0-0", got="client-0-0"))
    h.lin_reads.append(
        LinRead(0.8, 1, "raw-0-0", error="OffsetOutOfRangeError: offset 1 is past the end")
    )
    v = check(h, logs)
    assert v.stale_reads == 2 and not v.ok
    assert any("returned 'client-0-0'" in p for p in v.problems)
    assert any("found nothing there" in p for p in v.problems)

"""Finding what a test's processes left behind: processes (by /proc), held file locks."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from pathlib import Path


def serf_pids(markers: Iterable[str]) -> list[int]:
    """Serf agents whose command line holds one of ``markers`` as a whole argument
    (e.g. ``-bind=127.0.0.1:1234``)."""
    wanted = {m.encode() for m in markers}
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"serf" in part for part in argv[:1]) and wanted.intersection(argv):
            pids.append(int(entry))
    return pids


def pid_gone(pid: int) -> bool:
    """``pid`` no longer runs: it has exited, or it is a zombie awaiting its reaper (a
    process reparented to init after its parent was killed)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def pid_reaped(pid: int) -> bool:
    """``pid`` no longer exists at all, not even as a zombie: its parent has reaped it."""
    return not Path(f"/proc/{pid}").exists()


def locks_free(data_dir: Path) -> list[Path]:
    """Every LOCK file under ``data_dir``, after checking that nobody holds its flock any
    more (raises BlockingIOError if a process still does)."""
    locks = sorted(data_dir.rglob("LOCK"))
    for lock in locks:
        with open(lock, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if still held
            fcntl.flock(fh, fcntl.LOCK_UN)
    return locks

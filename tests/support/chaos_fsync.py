"""Power loss for a whole agent process: an fsync journal and the crash image built from it;
and disk faults (EIO, ENOSPC) switched on and off from outside (:func:`set_fault`).

A power loss keeps, of every file, at least what its last fsync covered; names created or
renamed since the last fsync of their directory may be lost. In one process the commit log
reports this itself (:meth:`raftlog.log.Log.durable_lengths`); an agent running as a
separate process cannot be asked after it was killed. So the chaos harness starts agents
through this module (``python chaos_fsync.py --journal J agent ...``), which wraps
``os.fsync`` and ``os.fdatasync`` before raftlog is imported: after each sync returns it
appends to the journal what that sync made durable (the file's inode and its size taken
*before* the sync; for a directory, its entries taken before the sync). The journal is
written without fsync: the simulated power loss is a SIGKILL, so the page cache survives.

:func:`apply_power_loss` then turns a killed node's data directory into one state a power
loss could have left: commit-log directories through :func:`support.log_crash.power_loss_image`
(the commit log's own power-loss mechanism), every other file cut back to its last synced
length (plus a random part of what was written after it), unsynced new names dropped at
random.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JOURNAL_SUFFIX = ".fsync-journal"


def journal_path(data_dir: Path) -> Path:
    """Where the journal of the agent with ``data_dir`` lives (beside it, not inside)."""
    return data_dir.with_name(data_dir.name + JOURNAL_SUFFIX)


def install(journal: Path) -> None:
    """Wrap ``os.fsync`` and ``os.fdatasync`` so every completed sync is journaled."""
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    lock = threading.Lock()

    def wrap(real: Callable[[Any], None]) -> Callable[[Any], None]:
        def synced(target: Any) -> None:
            num: int = target if isinstance(target, int) else target.fileno()
            st = os.fstat(num)
            entry: dict[str, object]
            if stat.S_ISDIR(st.st_mode):
                with os.scandir(num) as it:
                    names = {e.name: e.inode() for e in it}
                entry = {"d": st.st_ino, "names": names}
            else:
                entry = {"f": st.st_ino, "size": st.st_size}
            real(target)
            line = (json.dumps(entry) + "\n").encode()
            with lock:
                os.write(fd, line)

        return synced

    for name in ("fsync", "fdatasync"):
        setattr(os, name, wrap(getattr(os, name)))


@dataclass
class Journal:
    """What the journal says is durable: file inode -> size, directory inode -> entries."""

    sizes: dict[int, int] = field(default_factory=dict)
    dirs: dict[int, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Journal:
        journal = cls()
        if not path.exists():
            return journal
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill: its sync had not returned
            if "f" in entry:
                journal.sizes[int(entry["f"])] = int(entry["size"])
            else:
                journal.dirs[int(entry["d"])] = {k: int(v) for k, v in entry["names"].items()}
        return journal


@dataclass
class PowerLossReport:
    """What :func:`apply_power_loss` did, for the history file."""

    cut: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (before, after)
    dropped: list[str] = field(default_factory=list)
    log_dirs: list[str] = field(default_factory=list)


def _name_durable(journal: Journal, dir_ino: int, name: str, ino: int) -> bool | None:
    """True: the name is durable; None: an older file had the name (either may survive);
    False: the name is new since the directory's last sync (it may vanish)."""
    listing = journal.dirs.get(dir_ino, {})
    if listing.get(name) == ino:
        return True
    if name in listing:
        return None
    return False


def apply_power_loss(data_dir: Path, journal: Journal, rng: random.Random) -> PowerLossReport:
    """Turn the (killed) agent's ``data_dir`` into what a power loss could have left."""
    from raftlog.log.segment import STORE_SUFFIX
    from support.log_crash import power_loss_image

    report = PowerLossReport()
    for dirpath, _dirnames, filenames in os.walk(data_dir):
        here = Path(dirpath)
        dir_ino = here.stat().st_ino
        if any(name.endswith(STORE_SUFFIX) for name in filenames):
            durable: dict[Path, int] = {}
            for name in filenames:
                path = here / name
                ino = path.stat().st_ino
                if (
                    name.endswith(STORE_SUFFIX)
                    and ino in journal.sizes
                    and _name_durable(journal, dir_ino, name, ino) is not False
                ):
                    durable[path] = journal.sizes[ino]
            before = {name: (here / name).stat().st_size for name in filenames}
            image = here.with_name(here.name + ".powerloss")
            shutil.rmtree(image, ignore_errors=True)
            power_loss_image(here, durable, image, rng)
            shutil.rmtree(here)
            image.rename(here)
            for name, size in before.items():
                after = here / name
                if not after.exists():
                    report.dropped.append(str(after))
                elif after.stat().st_size != size:
                    report.cut[str(after)] = (size, after.stat().st_size)
            report.log_dirs.append(str(here))
            continue
        for name in filenames:
            path = here / name
            st = path.stat()
            durable_name = _name_durable(journal, dir_ino, name, st.st_ino)
            if durable_name is False and rng.random() < 0.5:
                path.unlink()
                report.dropped.append(str(path))
                continue
            keep = journal.sizes.get(st.st_ino, 0)
            if st.st_size > keep:
                new = rng.randint(keep, st.st_size)
                if new != st.st_size:
                    os.truncate(path, new)
                    report.cut[str(path)] = (st.st_size, new)
    return report


# -- disk faults ---------------------------------------------------------------------------

FAULT_SUFFIX = ".disk-fault"
#: What a fault file may hold: the errno that the data directory's writes (``os.pwrite``,
#: ``os.write``) and syncs (``os.fsync``, ``os.fdatasync``) then fail with.
FAULTS = {"eio": errno.EIO, "enospc": errno.ENOSPC}
#: Which calls each fault fails: a full disk fails writes (where a file system reports
#: ENOSPC); a failing disk fails writes and syncs.
_WRITES = ("pwrite", "write")
_FAILS = {"eio": {"fsync", "fdatasync", *_WRITES}, "enospc": set(_WRITES)}


def fault_path(data_dir: Path) -> Path:
    """The fault switch of the agent with ``data_dir`` (beside it, not inside): while it
    exists and holds ``eio`` (every write and fsync) or ``enospc`` (every write) of a file
    under the data directory fails with that errno (a failing disk, a full disk); removed,
    the disk heals."""
    return data_dir.with_name(data_dir.name + FAULT_SUFFIX)


def set_fault(data_dir: Path, fault: str | None) -> None:
    """Turn the agent's disk fault on (``"eio"``, ``"enospc"``) or off (None)."""
    path = fault_path(data_dir)
    if fault is None:
        path.unlink(missing_ok=True)
        return
    if fault not in FAULTS:
        raise ValueError(f"unknown disk fault {fault!r}; one of {sorted(FAULTS)}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(fault)
    os.replace(tmp, path)


def install_faults(switch: Path, data_dir: Path) -> None:
    """Wrap the file calls the stores make (a Python seam, no LD_PRELOAD) so that, while
    ``switch`` names a fault, those on files under ``data_dir`` fail with its errno before
    doing anything (a write writes nothing; a failed fsync syncs nothing)."""
    root = str(data_dir.resolve()) + os.sep

    def active(call: str, fd: Any) -> int:
        try:
            fault = switch.read_text().strip()
        except OSError:
            return 0
        code = FAULTS.get(fault, 0)
        if not code or call not in _FAILS[fault]:
            return 0
        num = fd if isinstance(fd, int) else fd.fileno()
        try:
            target = os.readlink(f"/proc/self/fd/{num}")
        except OSError:
            return 0
        return code if (target + os.sep).startswith(root) else 0

    def wrap(call: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(fd: Any, *args: Any) -> Any:
            code = active(call, fd)
            if code:
                raise OSError(code, os.strerror(code))
            return real(fd, *args)

        return faulty

    for name in ("fsync", "fdatasync", *_WRITES):
        setattr(os, name, wrap(name, getattr(os, name)))


def _die_with_parent() -> None:
    """SIGTERM when the test process dies (even by SIGKILL): no agent outlives its run."""
    parent = int(os.environ.get("CHAOS_PARENT_PID", "0"))
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != parent:  # the parent died before the prctl took effect
        sys.exit(1)


def main(argv: list[str]) -> None:
    """``chaos_fsync.py agent ...``: run the raftlog CLI with the journal beside --data-dir."""
    _die_with_parent()
    data_dir = Path(argv[argv.index("--data-dir") + 1])
    install(journal_path(data_dir))
    install_faults(fault_path(data_dir), data_dir)
    from raftlog.cmd.main import main as raftlog_main

    sys.exit(raftlog_main(argv))


if __name__ == "__main__":
    main(sys.argv[1:])

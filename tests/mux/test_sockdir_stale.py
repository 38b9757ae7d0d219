"""Socket directories name their owner; a new agent removes those of dead agents only.

Each case builds, under its own base dir, what a SIGKILLed agent leaves behind next to
what must survive: a live process's directory, another pid namespace's, another user's, a
symlink, a directory of the old naming whose socket still has a listener.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftlog.mux import PrivateSocketDir, remove_stale_socket_dirs
from raftlog.mux.sockdir import socket_dirs_of
from support.procs import pid_gone
from support.wait import wait_until_sync

NS = os.stat("/proc/self/ns/pid").st_ino if Path("/proc/self/ns/pid").exists() else 0


@pytest.fixture
def base() -> Iterator[Path]:
    """A short base dir (unix socket paths must stay under 104 bytes)."""
    with PrivateSocketDir(prefix="rlt-", base_dir="/tmp") as holder:
        yield holder.directory


def dead_pid() -> int:
    """The pid of a process that has exited and was reaped."""
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    return proc.pid


def fake_dir(base: Path, name: str, *, socket_file: bool = True) -> Path:
    """A 0700 directory with a socket file nobody listens on (as a killed agent leaves)."""
    path = base / name
    path.mkdir(mode=0o700)
    if socket_file:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path / "grpc.sock"))  # bound, never listening, closed: refuses
    return path


def test_the_directory_name_carries_namespace_and_pid(base: Path) -> None:
    with PrivateSocketDir(base_dir=base) as sockdir:
        assert re.fullmatch(rf"raftlog-{NS}-{os.getpid()}-[a-z0-9_]{{8}}", sockdir.directory.name)
        assert stat.S_IMODE(os.stat(sockdir.directory).st_mode) == 0o700
        assert socket_dirs_of(os.getpid(), base) == [sockdir.directory]
        assert socket_dirs_of(dead_pid(), base) == []
    assert socket_dirs_of(os.getpid(), base) == []


def test_only_dead_owners_directories_are_removed(base: Path) -> None:
    gone = dead_pid()
    sleeper = subprocess.Popen(["sleep", "30"])
    zombie = subprocess.Popen(["/bin/true"])  # exits, not reaped yet: a zombie
    try:
        # not reaped (nobody waits on it), so gone means a zombie
        wait_until_sync(lambda: pid_gone(zombie.pid), 10, "true(1) to exit")
        stale = fake_dir(base, f"raftlog-{NS}-{gone}-abcd1234")
        stale_empty = fake_dir(base, f"raftlog-{NS}-{gone}-empty_00", socket_file=False)
        of_zombie = fake_dir(base, f"raftlog-{NS}-{zombie.pid}-zombie00")
        live = fake_dir(base, f"raftlog-{NS}-{sleeper.pid}-live0000")
        ours = PrivateSocketDir(base_dir=base)
        other_ns = fake_dir(base, f"raftlog-{NS + 1}-{gone}-otherns0")
        other_prefix = fake_dir(base, f"other-{NS}-{gone}-abcd1234")
        not_the_shape = fake_dir(base, f"raftlog-{NS}-{gone}-x")
        removed = remove_stale_socket_dirs(base)
        assert sorted(removed) == sorted([stale, stale_empty, of_zombie])
        for path in (stale, stale_empty, of_zombie):
            assert not path.exists()
        for path in (live, ours.directory, other_ns, other_prefix, not_the_shape):
            assert path.is_dir(), f"{path} was removed"
        assert remove_stale_socket_dirs(base) == []  # idempotent
        ours.cleanup()
    finally:
        sleeper.kill()
        sleeper.wait()
        zombie.wait()


def test_other_users_symlinks_and_open_directories_are_left_alone(
    base: Path, tmp_path: Path
) -> None:
    gone = dead_pid()
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep").write_text("x")
    link = base / f"raftlog-{NS}-{gone}-symlink0"
    link.symlink_to(target)
    world_readable = fake_dir(base, f"raftlog-{NS}-{gone}-opendir0")
    world_readable.chmod(0o755)
    others = []
    if os.geteuid() == 0:  # only root can hand a directory to another user
        other = fake_dir(base, f"raftlog-{NS}-{gone}-nobody00")
        os.chown(other, 65534, 65534)
        others.append(other)
    assert remove_stale_socket_dirs(base) == []
    assert link.is_symlink() and (target / "keep").read_text() == "x"
    assert world_readable.is_dir()
    for other in others:
        assert other.is_dir()


def test_old_style_directories_go_only_when_nobody_listens(base: Path) -> None:
    refused = fake_dir(base, "raftlog-old_0001")
    without_socket = fake_dir(base, "raftlog-old_0002", socket_file=False)
    listening = fake_dir(base, "raftlog-old_0003", socket_file=False)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(listening / "grpc.sock"))
        server.listen()
        assert remove_stale_socket_dirs(base) == [refused]
        assert without_socket.is_dir() and listening.is_dir()


def test_a_sigkilled_owner_is_swept_by_the_next_start(base: Path) -> None:
    """A process makes its socket dir, listens, is SIGKILLed: the dir stays; the sweep of
    the next agent removes it."""
    script = (
        "import socket, sys, time\n"
        "from raftlog.mux import PrivateSocketDir\n"
        "d = PrivateSocketDir(base_dir=sys.argv[1])\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(str(d.path)); s.listen()\n"
        "print(d.directory, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(base)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        directory = Path(owner.stdout.readline().strip())
        assert socket_dirs_of(owner.pid, base) == [directory]
        assert remove_stale_socket_dirs(base) == []  # alive: kept
        owner.kill()
        owner.wait(10)
        assert directory.is_dir()  # a SIGKILLed process cannot clean up
        assert remove_stale_socket_dirs(base) == [directory]
        assert not directory.exists()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()

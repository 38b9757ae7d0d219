"""A private directory for the gRPC server's unix socket, and the sweep of dead agents' ones.

The mux relays gRPC connections to the grpc.aio server over a unix socket, so that server
is never reachable from the network except through the mux. The socket lives in a fresh
directory of mode 0700: only our own user can connect to it, whatever the umask.

An agent that is SIGKILLed cannot remove its directory. So the directory's name says who
owns it, ``<prefix><pid namespace>-<pid>-<8 random chars>`` (e.g.
``raftlog-4026531836-4242-k2j_x9aa``), and :func:`remove_stale_socket_dirs`, run by every
agent as it starts, removes those whose owner is gone. It is careful: only entries with our
prefix and that name shape; only real directories (not symlinks) owned by our user with no
access for anybody else; only owners in our own pid namespace (a pid says nothing about
another namespace: another container sharing /tmp) that no longer exist (a zombie counts as
gone). Directories of the earlier naming (``<prefix><8 random chars>``, no owner pid) are
removed only when their socket refuses connections (nobody listens on it any more).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_PREFIX",
    "MAX_UNIX_PATH",
    "PrivateSocketDir",
    "remove_stale_socket_dirs",
    "socket_dirs_of",
]

log = logging.getLogger("raftlog.mux.sockdir")

#: sun_path is 108 bytes on Linux and 104 on macOS; stay under the smaller one.
MAX_UNIX_PATH: Final = 103
#: Prefix of the directories the agent creates (in the system temp dir, ``$TMPDIR``).
DEFAULT_PREFIX: Final = "raftlog-"
#: Seconds a connection attempt to an old-style directory's socket may take.
_PROBE_TIMEOUT: Final = 1.0
#: What ``tempfile.mkdtemp`` appends: 8 of these characters.
_RANDOM: Final = r"[a-z0-9_]{8}"


def _pid_namespace() -> int:
    """Inode of this process's pid namespace (0 where /proc does not say)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _owner_prefix(prefix: str, pid: int | None = None) -> str:
    return f"{prefix}{_pid_namespace()}-{os.getpid() if pid is None else pid}-"


class PrivateSocketDir:
    """A 0700 temporary directory holding one unix socket path.

    ``PrivateSocketDir(name="grpc.sock", prefix="raftlog-", base_dir=None)`` creates the
    directory at once (under ``base_dir``, default the system temp dir), named after this
    process (see the module docstring). ``path`` is the socket path, ``address`` the grpc
    form (``unix:/...``) to pass to ``server.add_secure_port``. ``cleanup()`` (or leaving
    the ``with`` block) removes the socket and the directory; it is idempotent.
    """

    def __init__(
        self,
        name: str = "grpc.sock",
        *,
        prefix: str = DEFAULT_PREFIX,
        base_dir: str | Path | None = None,
    ) -> None:
        if not name or "/" in name:
            raise ValueError(f"socket name must be a plain file name, got {name!r}")
        if not prefix or "/" in prefix:
            raise ValueError(f"prefix must be a non-empty name part, got {prefix!r}")
        base = Path(base_dir if base_dir is not None else tempfile.gettempdir()).absolute()
        owned = _owner_prefix(prefix)
        # mkdtemp appends 8 random characters to the prefix.
        planned = base / (owned + "x" * 8) / name
        if len(os.fsencode(planned)) > MAX_UNIX_PATH:
            raise ValueError(
                f"unix socket path too long ({len(os.fsencode(planned))} > {MAX_UNIX_PATH} "
                f"bytes): {planned}; use a shorter base_dir"
            )
        self.directory = Path(tempfile.mkdtemp(prefix=owned, dir=base))
        os.chmod(self.directory, stat.S_IRWXU)  # mkdtemp does 0700; say it explicitly
        self.path = self.directory / name

    @property
    def address(self) -> str:
        """The gRPC address of the socket: ``unix:<absolute path>``."""
        return f"unix:{self.path}"

    def cleanup(self) -> None:
        """Remove the socket file and the directory (idempotent)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivateSocketDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _process_gone(pid: int) -> bool:
    """True when no process ``pid`` runs here: it does not exist, or it is a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, another user's
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return bool(fields) and fields[0] in ("Z", "X")


def _socket_refuses(path: Path) -> bool:
    """True when ``path`` is a unix socket nobody listens on (connect: ECONNREFUSED)."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT)
        try:
            probe.connect(os.fspath(path))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def _ours(entry: Path) -> bool:
    """A real directory (not a symlink) of our user, closed to everybody else."""
    try:
        st = os.lstat(entry)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.geteuid()
        and stat.S_IMODE(st.st_mode) & (stat.S_IRWXG | stat.S_IRWXO) == 0
    )


def remove_stale_socket_dirs(
    base_dir: str | Path | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    name: str = "grpc.sock",
) -> list[Path]:
    """Remove the socket directories of agents that are gone; the removed paths.

    ``base_dir``: where to look (default the system temp dir); ``prefix``/``name``: as
    given to :class:`PrivateSocketDir`. The rules are in the module docstring; a directory
    that cannot be removed (a race with another agent's sweep) is skipped. Blocking file
    system work: async callers run it in a thread.
    """
    base = Path(base_dir if base_dir is not None else tempfile.gettempdir())
    owned = re.compile(re.escape(prefix) + r"(\d+)-(\d+)-" + _RANDOM)
    legacy = re.compile(re.escape(prefix) + _RANDOM)
    namespace = _pid_namespace()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(base))
    except OSError as exc:
        log.warning("cannot list %s for stale socket directories: %s", base, exc)
        return removed
    for entry in entries:
        path = Path(entry.path)
        match = owned.fullmatch(entry.name)
        if match is not None:
            ns, pid = int(match.group(1)), int(match.group(2))
            stale = ns == namespace and pid != os.getpid() and _process_gone(pid)
        elif legacy.fullmatch(entry.name) is not None:
            stale = _ours(path) and _socket_refuses(path / name)
        else:
            continue
        if not stale or not _ours(path):
            continue
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            continue  # another agent's sweep was first
        except OSError as exc:
            log.warning("cannot remove stale socket directory %s: %s", path, exc)
            continue
        removed.append(path)
    return removed


def socket_dirs_of(pid: int, base_dir: str | Path | None = None) -> list[Path]:
    """The socket directories process ``pid`` (of our pid namespace) created under
    ``base_dir`` (default the system temp dir) with the default prefix and still there."""
    base = Path(base_dir if base_dir is not None else tempfile.gettempdir())
    with contextlib.suppress(OSError):
        return sorted(base.glob(_owner_prefix(DEFAULT_PREFIX, pid) + "*"))
    return []

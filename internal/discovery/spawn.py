"""Start child processes that die with their parent, without a ``preexec_fn``.

Why: the Serf agent (beside every node) and the dev cluster's ``raftlog agent`` processes
must not outlive the process that started them, even when it is killed with SIGKILL. Linux
offers that through ``prctl(PR_SET_PDEATHSIG)``, which a process sets *for itself*. The
obvious way to set it for a child, ``subprocess.Popen(..., preexec_fn=hook)``, makes Python
``fork()`` and run Python code in the child before ``exec``; with gRPC threads busy in the
parent, gRPC's fork handlers abort or crash such a child now and then before it execs
(``tests/chaos/test_known_bugs.py`` pins that down). Without a ``preexec_fn`` Python spawns
with ``vfork``/``posix_spawn`` and runs no Python code (and no fork handler) in the child.

So the signal is set by a small launcher that runs first in the child and then execs the
real program (same pid, so the caller's ``pid``, signals and ``wait`` see the program):

- :attr:`Launcher.SETPRIV`: ``setpriv --pdeathsig SIGTERM -- <argv>``. ``setpriv`` is part
  of util-linux (Essential in Debian, so present on a minimal install; ``--pdeathsig``
  since util-linux 2.33). Preferred: no interpreter start-up.
- :attr:`Launcher.PYTHON`: ``<this python> -I -S -c <trampoline> <parent pid> <signal>
  <argv>``; the trampoline calls ``prctl`` through ctypes, exits if the parent is already
  gone (``getppid()`` differs), then ``execv``'s the program. The fallback when
  ``setpriv`` is missing or lacks ``--pdeathsig`` (about 0.1 s more per start).
- :attr:`Launcher.NONE`: the program itself, no guarantee (not Linux, or no launcher).

The default comes from :func:`default_launcher`; the environment variable
``RAFTLOG_PDEATHSIG_LAUNCHER`` (``setpriv``, ``python`` or ``none``) overrides it.

What the kernel guarantees, and what it does not:

- The signal survives ``execve`` (of setpriv's or the trampoline's target) as long as the
  program is not set-user-id/set-group-id and has no file capabilities (Serf, Python: no).
- It fires when the **thread** that spawned the child exits, not only the process. With
  :func:`spawn_async` the spawn happens on the event loop's thread (asyncio calls
  ``subprocess.Popen`` there), so the child lives as long as the loop's thread. Call
  :func:`spawn` from a long-lived thread too (the main thread or the loop's thread): a
  child spawned from a worker thread (``asyncio.to_thread``) gets the signal when that
  worker thread exits.
- A parent that dies between the spawn and the launcher's ``prctl`` (a window of about a
  millisecond) is not noticed by ``setpriv``; the Python trampoline checks ``getppid()``
  after the ``prctl`` and exits in that case.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Final

__all__ = [
    "LAUNCHER_ENV",
    "Launcher",
    "default_launcher",
    "find_setpriv",
    "parent_death_argv",
    "spawn",
    "spawn_async",
]

log = logging.getLogger("raftlog.spawn")

#: Environment variable overriding :func:`default_launcher`: setpriv, python or none.
LAUNCHER_ENV: Final = "RAFTLOG_PDEATHSIG_LAUNCHER"
#: Where ``setpriv`` lives when it is not on ``PATH`` (an agent may run with a bare PATH).
_SETPRIV_PLACES: Final = ("/usr/bin/setpriv", "/bin/setpriv")
#: Seconds the one-off ``setpriv --help`` probe may take.
_PROBE_TIMEOUT: Final = 5.0

#: Run by ``python -I -S -c``: argv = [-c, parent pid, signal number, program, args...].
_TRAMPOLINE: Final = """\
import ctypes, os, sys
parent, sig = int(sys.argv[1]), int(sys.argv[2])
if ctypes.CDLL(None, use_errno=True).prctl(1, sig, 0, 0, 0) != 0:
    sys.exit("raftlog spawn: prctl(PR_SET_PDEATHSIG): " + os.strerror(ctypes.get_errno()))
if os.getppid() != parent:
    sys.exit("raftlog spawn: the parent died before the child started")
os.execv(sys.argv[3], sys.argv[3:])
"""


class Launcher(enum.Enum):
    """How the parent-death signal gets set in the child (see the module docstring)."""

    SETPRIV = "setpriv"
    PYTHON = "python"
    NONE = "none"


@functools.cache
def find_setpriv() -> str | None:
    """Path of a ``setpriv`` that supports ``--pdeathsig``, or None (cached).

    Looks on ``PATH``, then in /usr/bin and /bin; probes ``setpriv --help`` once (bounded
    by 5 s) because util-linux before 2.33 has no ``--pdeathsig``.
    """
    if not sys.platform.startswith("linux"):
        return None
    found = shutil.which("setpriv")
    places = ([found] if found else []) + [p for p in _SETPRIV_PLACES if p != found]
    for place in places:
        if not (os.path.isfile(place) and os.access(place, os.X_OK)):
            continue
        try:
            probe = subprocess.run(
                [place, "--help"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_PROBE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("setpriv at %s unusable: %s", place, exc)
            continue
        if b"--pdeathsig" in probe.stdout + probe.stderr:
            return place
        log.debug("setpriv at %s has no --pdeathsig (util-linux < 2.33)", place)
    return None


@functools.cache
def _default_launcher(override: str | None) -> Launcher:
    if override:
        try:
            return Launcher(override.strip().lower())
        except ValueError:
            log.warning(
                "%s=%r is not one of setpriv, python, none; using the default",
                LAUNCHER_ENV,
                override,
            )
    if not sys.platform.startswith("linux"):
        return Launcher.NONE
    if find_setpriv() is not None:
        return Launcher.SETPRIV
    if sys.executable:
        log.info("setpriv with --pdeathsig not found; children set it through a Python trampoline")
        return Launcher.PYTHON
    log.warning("no setpriv and no Python executable: children will not die with this process")
    return Launcher.NONE


def default_launcher() -> Launcher:
    """``$RAFTLOG_PDEATHSIG_LAUNCHER`` if set; else (Linux) setpriv when usable, else the
    Python trampoline; :attr:`Launcher.NONE` elsewhere. Cached per override value; the
    first call may run ``setpriv --help`` (a few ms): async code calls it in a thread."""
    return _default_launcher(os.environ.get(LAUNCHER_ENV))


def _resolve(program: str, env: Mapping[str, str] | None, cwd: str | Path | None) -> str:
    """The program's path, found as ``exec`` would; FileNotFoundError in the parent (as
    ``Popen`` would raise) instead of a launcher failing in the child."""
    if os.sep in program:
        if cwd is not None and not os.path.isabs(program):
            program = os.path.join(cwd, program)
        if os.path.isfile(program) and os.access(program, os.X_OK):
            return program
        raise FileNotFoundError(f"not an executable file: {program!r}")
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    found = shutil.which(program, path=path)
    if found is None:
        raise FileNotFoundError(f"{program!r} not found on PATH ({path})")
    return found


def parent_death_argv(
    argv: Sequence[str],
    *,
    sig: signal.Signals = signal.SIGTERM,
    launcher: Launcher | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> list[str]:
    """``argv`` wrapped so that the child gets ``sig`` (default SIGTERM) when the spawning
    thread dies. ``launcher``: default :func:`default_launcher`. ``env``: the child's
    environment (its ``PATH`` finds the program; default ours); ``cwd``: its working
    directory (a relative program path is taken from there). Raises FileNotFoundError
    when the program does not exist, and ValueError for an empty ``argv``."""
    if not argv:
        raise ValueError("argv must name a program")
    chosen = launcher if launcher is not None else default_launcher()
    if chosen is Launcher.NONE:
        return list(argv)
    program = _resolve(argv[0], env, cwd)
    if chosen is Launcher.SETPRIV:
        setpriv = find_setpriv()
        if setpriv is None:
            raise FileNotFoundError("setpriv with --pdeathsig is not available here")
        return [setpriv, "--pdeathsig", sig.name, "--", program, *argv[1:]]
    if not sys.executable:
        raise FileNotFoundError("no Python executable for the parent-death trampoline")
    return [
        sys.executable,
        "-I",
        "-S",
        "-c",
        _TRAMPOLINE,
        str(os.getpid()),
        str(int(sig)),
        program,
        *argv[1:],
    ]


Stream = IO[bytes] | int | None


def spawn(
    argv: Sequence[str],
    *,
    stdin: Stream = subprocess.DEVNULL,
    stdout: Stream = None,
    stderr: Stream = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    start_new_session: bool = False,
    sig: signal.Signals = signal.SIGTERM,
    launcher: Launcher | None = None,
) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` of ``argv`` that dies (``sig``) with the calling thread.

    No ``preexec_fn`` by design (the point of this module); the other arguments are
    Popen's. Call it from a long-lived thread (see the module docstring): from a thread
    that is neither the main thread nor running an event loop (a worker thread, whose
    exit would stop the child) it logs a warning.
    """
    if threading.current_thread() is not threading.main_thread():
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            log.warning(
                "spawning %s from worker thread %r: the child gets %s when that thread "
                "exits, not when this process does",
                argv[0] if argv else "?",
                threading.current_thread().name,
                sig.name,
            )
    return subprocess.Popen(
        parent_death_argv(argv, sig=sig, launcher=launcher, env=env, cwd=cwd),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=env,
        cwd=cwd,
        start_new_session=start_new_session,
    )


async def spawn_async(
    argv: Sequence[str],
    *,
    stdin: Stream = asyncio.subprocess.DEVNULL,
    stdout: Stream = None,
    stderr: Stream = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    start_new_session: bool = False,
    sig: signal.Signals = signal.SIGTERM,
    launcher: Launcher | None = None,
) -> asyncio.subprocess.Process:
    """``asyncio.create_subprocess_exec`` of ``argv`` that dies (``sig``) with the event
    loop's thread. No ``preexec_fn``; the other arguments are asyncio's (``PIPE``
    gives a stream). The launcher lookup runs in a thread (it may probe setpriv once)."""
    if launcher is None:
        launcher = await asyncio.to_thread(default_launcher)
    wrapped = parent_death_argv(argv, sig=sig, launcher=launcher, env=env, cwd=cwd)
    return await asyncio.create_subprocess_exec(
        *wrapped,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=env,
        cwd=cwd,
        start_new_session=start_new_session,
    )

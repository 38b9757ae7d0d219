"""raftlog.discovery.spawn: children die with their parent, and no preexec_fn is used.

The gRPC-load regression (a preexec_fn crashing children before exec) lives in
tests/chaos/test_known_bugs.py; here: what reaches ``Popen`` from every caller (Serf, the
dev cluster), SIGKILL of a parent really stops its child with SIGTERM (both launchers,
both helpers, the dev cluster's start), the trampoline's checks, the launcher choice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raftlog.agent.devcluster import ClusterFiles, DevCluster
from raftlog.discovery import SerfAgent, SerfAgentConfig, SerfAgentError
from raftlog.discovery import spawn as spawn_mod
from raftlog.discovery.spawn import (
    LAUNCHER_ENV,
    Launcher,
    default_launcher,
    find_setpriv,
    parent_death_argv,
    spawn,
    spawn_async,
)
from support.procs import pid_gone
from support.wait import wait_until, wait_until_sync

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux"),
    pytest.mark.timeout(60),
]

LAUNCHERS = [Launcher.SETPRIV, Launcher.PYTHON]


def _need(launcher: Launcher) -> None:
    if launcher is Launcher.SETPRIV and find_setpriv() is None:
        pytest.skip("no setpriv with --pdeathsig here")


# -- no preexec_fn, from every caller -----------------------------------------------------


class _Recorded:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, Any]]] = []


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Recorded]:
    """Every ``subprocess.Popen`` (asyncio's too) records its argv and keyword arguments,
    then really starts the process. The launcher probes (cached, and spawning a probe of
    their own the first time) run before recording starts, so what is recorded does not
    depend on whether an earlier test made them already."""
    find_setpriv()
    default_launcher()
    record = _Recorded()

    class RecordingPopen(subprocess.Popen[Any]):
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            record.calls.append((list(args), dict(kwargs)))
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    yield record


def _assert_launched_without_preexec(record: _Recorded, program: str) -> None:
    assert record.calls, "nothing was spawned"
    for argv, kwargs in record.calls:
        assert kwargs.get("preexec_fn") is None, f"preexec_fn used to spawn {argv}"
        launcher = default_launcher()
        if launcher is Launcher.SETPRIV:
            assert argv[:3] == [find_setpriv(), "--pdeathsig", "SIGTERM"], argv
        elif launcher is Launcher.PYTHON:
            assert argv[0] == sys.executable and "prctl" in argv[4], argv
        assert any(program in part for part in argv), argv


async def test_the_helpers_pass_no_preexec_fn(recorded: _Recorded) -> None:
    usable = [la for la in LAUNCHERS if la is not Launcher.SETPRIV or find_setpriv()]
    for launcher in usable:
        recorded.calls.clear()
        proc = await spawn_async(["/bin/true"], launcher=launcher)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        popen = spawn(["/bin/true"], launcher=launcher)
        assert await asyncio.to_thread(popen.wait, 10) == 0
        assert len(recorded.calls) == 2
        for argv, kwargs in recorded.calls:
            assert kwargs.get("preexec_fn") is None, argv
            assert argv[-1] == "/bin/true"


async def test_serf_agent_spawns_through_the_helper(recorded: _Recorded, free_port: Any) -> None:
    # /bin/false exits at once: the start fails fast, after the one spawn we look at
    agent = SerfAgent(
        SerfAgentConfig(
            node_name="spawned",
            bind_addr=f"127.0.0.1:{free_port()}",
            rpc_addr=f"127.0.0.1:{free_port()}",
            advertise_rpc_addr="127.0.0.1:1",
            binary="/bin/false",
            start_timeout=10.0,
        )
    )
    with pytest.raises(SerfAgentError, match="exited with status 1"):
        await agent.start()
    assert [kw.get("start_new_session") for _, kw in recorded.calls] == [True]
    _assert_launched_without_preexec(recorded, "/bin/false")


def test_dev_cluster_spawns_through_the_helper(recorded: _Recorded, tmp_path: Path) -> None:
    files = ClusterFiles.from_dir(tmp_path / "certs")  # never read: the "agent" is true(1)
    cluster = DevCluster(tmp_path, files, raftlog=("/bin/true",))
    cluster.add_node("n1")
    cluster.start("n1", bootstrap=True)
    assert cluster.wait_exit("n1", 10) == 0
    _assert_launched_without_preexec(recorded, "/bin/true")


# -- the parent-death guarantee ----------------------------------------------------------

#: The child: notes SIGTERM in the file $0, then exits; else it runs for a minute.
CHILD = (
    'trap "echo TERM > \\"$0\\"; exit 0" TERM; '
    "i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done"
)

#: The parent: spawns CHILD (argv: mode, launcher, marker file), prints its pid, waits.
PARENT = """
import asyncio, subprocess, sys, time
from pathlib import Path
from raftlog.discovery.spawn import Launcher, spawn, spawn_async
mode, launcher, marker, child = sys.argv[1], Launcher(sys.argv[2]), sys.argv[3], sys.argv[4]
argv = ["sh", "-c", child, marker]

async def run_async() -> None:
    proc = await spawn_async(
        argv, launcher=launcher, start_new_session=True, stdout=asyncio.subprocess.DEVNULL
    )
    print(proc.pid, flush=True)
    await asyncio.sleep(60)

if mode == "spawn_async":
    asyncio.run(run_async())
elif mode == "spawn":
    proc = spawn(argv, launcher=launcher, start_new_session=True, stdout=subprocess.DEVNULL)
    print(proc.pid, flush=True)
    time.sleep(60)
else:  # DevCluster.start: the "raftlog" command is the child script ($0 = "agent")
    from raftlog.agent.devcluster import ClusterFiles, DevCluster
    root = Path(marker).parent
    cluster = DevCluster(root, ClusterFiles.from_dir(root), raftlog=("sh", "-c", child))
    cluster.add_node("n1")
    cluster.start("n1")
    print(cluster.nodes["n1"].proc.pid, flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize(
    ("mode", "launcher"),
    [
        ("spawn_async", Launcher.SETPRIV),
        ("spawn_async", Launcher.PYTHON),
        ("spawn", Launcher.SETPRIV),
        ("spawn", Launcher.PYTHON),
        ("devcluster", None),
    ],
)
async def test_a_sigkilled_parent_takes_its_child_along(
    mode: str, launcher: Launcher | None, tmp_path: Path
) -> None:
    if launcher is not None:
        _need(launcher)
    # the dev cluster's node writes its marker into its own working directory: "agent"
    marker = tmp_path / ("agent" if mode == "devcluster" else "marker")
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PARENT,
        mode,
        (launcher or default_launcher()).value,
        str(marker),
        CHILD,
        stdout=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    child = 0
    try:
        assert parent.stdout is not None
        async with asyncio.timeout(15.0):
            child = int(await parent.stdout.readline())
        # the child runs (past the launcher: its trap is set once sh runs the loop)
        await wait_until(
            lambda: b"sleep" in b"".join(_children_cmdlines(child)), 10.0, "the child's loop"
        )
        assert not marker.exists()
        parent.kill()
        await parent.wait()
        await wait_until(lambda: pid_gone(child), 10.0, f"child {child} to die with its parent")
        assert marker.read_text().strip() == "TERM", "the child died, but not of SIGTERM"
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if child and not pid_gone(child):
            os.kill(child, signal.SIGKILL)


def _children_cmdlines(pid: int) -> list[bytes]:
    """Command lines of ``pid``'s children (the shell's ``sleep``)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(Path(f"/proc/{entry}/cmdline").read_bytes())
        except (OSError, ValueError, IndexError):
            continue
    return out


def test_spawning_from_a_worker_thread_warns(caplog: pytest.LogCaptureFixture) -> None:
    """The signal is tied to the spawning thread: a worker thread is a trap (its exit stops
    the child at once), so spawn says so."""
    procs: list[subprocess.Popen[bytes]] = []
    with caplog.at_level("WARNING", logger="raftlog.spawn"):
        procs.append(spawn(["/bin/true"]))  # main thread: fine
        assert "worker thread" not in caplog.text

        def in_a_worker() -> None:
            child = spawn(["sleep", "30"])
            procs.append(child)
            wait_until_sync(  # past the launcher: the signal is set
                lambda: b"sleep" in Path(f"/proc/{child.pid}/cmdline").read_bytes().split(b"\0")[0],
                10,
                "the launcher to exec sleep",
            )

        worker = threading.Thread(target=in_a_worker)
        worker.start()
        worker.join(15)
    try:
        assert procs[0].wait(10) == 0
        assert procs[1].wait(10) == -signal.SIGTERM  # the worker thread is gone
    finally:
        procs[1].kill()
        procs[1].wait()
    assert "from worker thread" in caplog.text and "when that thread exits" in caplog.text


# -- the launchers -------------------------------------------------------------------------


def test_the_trampoline_refuses_to_run_an_orphan() -> None:
    argv = parent_death_argv(["/bin/echo", "ran"], launcher=Launcher.PYTHON)
    ok = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert (ok.returncode, ok.stdout) == (0, "ran\n"), ok.stderr
    parent_at = argv.index(str(os.getpid()))
    argv[parent_at] = "1"  # as if this process had died and the child was reparented
    orphan = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert orphan.returncode == 1
    assert orphan.stdout == ""
    assert "the parent died before the child started" in orphan.stderr


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_missing_program_fails_in_the_parent(launcher: Launcher, tmp_path: Path) -> None:
    _need(launcher)
    with pytest.raises(FileNotFoundError, match="not found on PATH"):
        spawn(["raftlog-no-such-program"], launcher=launcher)
    with pytest.raises(FileNotFoundError, match="not an executable file"):
        spawn([str(tmp_path / "missing")], launcher=launcher)
    with pytest.raises(ValueError, match="must name a program"):
        parent_death_argv([], launcher=launcher)


def test_the_environment_overrides_the_launcher(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(LAUNCHER_ENV, "python")
    assert default_launcher() is Launcher.PYTHON
    monkeypatch.setenv(LAUNCHER_ENV, "none")
    assert default_launcher() is Launcher.NONE
    assert parent_death_argv(["x", "y"]) == ["x", "y"]
    monkeypatch.setenv(LAUNCHER_ENV, "bogus")
    with caplog.at_level("WARNING", logger="raftlog.spawn"):
        spawn_mod._default_launcher.cache_clear()
        chosen = default_launcher()
    assert "not one of setpriv, python, none" in caplog.text
    assert chosen is (Launcher.SETPRIV if find_setpriv() else Launcher.PYTHON)

"""The Serf agent supervisor: lookup, validation, start/stop, restart, no leftovers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from raftlog.discovery import (
    SERF_BIN_ENV,
    SerfAgent,
    SerfAgentConfig,
    SerfAgentError,
    SerfConfigError,
    SerfNotFoundError,
    SerfRPCClient,
    find_serf_binary,
)
from raftlog.discovery.spawn import LAUNCHER_ENV, find_setpriv
from support.procs import pid_gone, pid_reaped
from support.wait import wait_until

AgentFactory = Callable[..., Awaitable[SerfAgent]]


def base_config(**overrides: object) -> SerfAgentConfig:
    settings: dict[str, object] = {
        "node_name": "n1",
        "bind_addr": "127.0.0.1:7946",
        "rpc_addr": "127.0.0.1:7373",
        "advertise_rpc_addr": "127.0.0.1:8400",
    }
    settings.update(overrides)
    return SerfAgentConfig(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"node_name": ""}, "node_name"),
        ({"bind_addr": "nohost"}, "bind_addr"),
        ({"rpc_addr": "10.0.0.1:7373"}, "rpc_addr"),
        ({"advertise_rpc_addr": "x:99999"}, "advertise_rpc_addr"),
        ({"encrypt_key": "not base64!"}, "encrypt_key"),
        ({"encrypt_key": "YWJj"}, "encrypt_key"),
        ({"profile": "fast"}, "profile"),
        ({"start_timeout": 0}, "start_timeout"),
        ({"restart_backoff": 5.0, "restart_backoff_max": 1.0}, "restart_backoff"),
        ({"start_join_addrs": ("127.0.0.1",)}, "start_join_addrs"),
    ],
)
def test_config_validation_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(SerfConfigError, match=field):
        base_config(**overrides).validate()


def test_command_line_carries_name_addresses_tag_key_and_joins() -> None:
    key = "cg8StVXbQJ0gPvMd9o7yrg=="
    argv = base_config(
        encrypt_key=key, start_join_addrs=("127.0.0.1:7000",), tags={"rpc_addr": "ignored"}
    ).command("/bin/serf")
    assert argv[:2] == ["/bin/serf", "agent"]
    assert "-node=n1" in argv
    assert "-bind=127.0.0.1:7946" in argv
    assert "-rpc-addr=127.0.0.1:7373" in argv
    assert argv[argv.index("-tag") + 1] == "rpc_addr=127.0.0.1:8400"
    assert f"-encrypt={key}" in argv
    assert "-retry-join=127.0.0.1:7000" in argv


def test_binary_lookup_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serf_bin: Path
) -> None:
    with pytest.raises(SerfNotFoundError, match="configured path"):
        find_serf_binary(tmp_path / "missing")
    monkeypatch.setenv(SERF_BIN_ENV, str(serf_bin))
    assert find_serf_binary() == serf_bin
    monkeypatch.setenv(SERF_BIN_ENV, str(tmp_path / "nope"))
    with pytest.raises(SerfNotFoundError, match=SERF_BIN_ENV):
        find_serf_binary()
    monkeypatch.delenv(SERF_BIN_ENV)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    # Falls back to <repo>/.tools/bin/serf, where `make install` put it.
    found = find_serf_binary()
    assert found.name == "serf"
    assert found.parent.parent.name == ".tools"


async def test_supervisor_restarts_a_killed_agent(make_agent: AgentFactory) -> None:
    agent = await make_agent("phoenix")
    first = agent.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await wait_until(
        lambda: agent.running and agent.pid not in (None, first), 15.0, "the agent's restart"
    )
    assert agent.restarts == 1
    assert pid_reaped(first)  # the killed one was reaped, not left a zombie
    async with SerfRPCClient(agent.rpc_addr, timeout=3.0) as client:
        assert [m.name for m in await client.members()] == ["phoenix"]
    second = agent.pid
    assert second is not None
    await agent.stop()
    assert pid_reaped(second)
    assert agent.pid is None
    await agent.stop()  # idempotent


async def test_start_failure_is_clear_and_leaves_nothing(
    serf_bin: Path, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rpc_port = busy.getsockname()[1]
        agent = SerfAgent(
            base_config(
                bind_addr=f"127.0.0.1:{free_port()}",
                rpc_addr=f"127.0.0.1:{rpc_port}",  # taken: the agent cannot listen
                binary=str(serf_bin),
                start_timeout=10.0,
            )
        )
        with pytest.raises(SerfAgentError, match="exited with status"):
            await agent.start()
        assert agent.pid is None


async def test_cancelled_start_leaves_no_process(
    serf_bin: Path, free_port: Callable[[], int]
) -> None:
    agent = SerfAgent(
        base_config(
            bind_addr=f"127.0.0.1:{free_port()}",
            rpc_addr=f"127.0.0.1:{free_port()}",
            binary=str(serf_bin),
        )
    )
    task = asyncio.create_task(agent.start())
    await wait_until(lambda: agent.pid is not None, 5.0, "the agent's process", interval=0.005)
    pid = agent.pid
    assert pid is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # killed on cancellation, reaped by the child watcher
    await wait_until(lambda: pid_reaped(pid), 5.0, f"serf pid {pid} to be reaped after cancel")


async def test_encrypted_agents_join(make_agent: AgentFactory) -> None:
    key = "cg8StVXbQJ0gPvMd9o7yrg=="
    a = await make_agent("ea", encrypt_key=key)
    b = await make_agent("eb", encrypt_key=key, start_join_addrs=(a.config.bind_addr,))
    async with SerfRPCClient(a.rpc_addr, timeout=3.0) as client:

        async def both_alive() -> bool:
            alive = {m.name for m in await client.members() if m.status == "alive"}
            return alive == {"ea", "eb"}

        await wait_until(both_alive, 10.0, "retry-join to bring eb in", interval=0.1)
    assert b.running
    # the key never shows on the command line (ps, /proc/PID/cmdline): a 0600 config file
    # in a private directory carries it, removed when the agent stops
    assert a.pid is not None
    cmdline = Path(f"/proc/{a.pid}/cmdline").read_bytes().decode()
    assert key not in cmdline
    key_files = [Path(arg.removeprefix("-config-file=")) for arg in cmdline.split("\0")]
    key_file = next(p for p in key_files if p.name == "gossip-key.json")
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.parent.stat().st_mode & 0o777 == 0o700
    await a.stop()
    assert not key_file.parent.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
@pytest.mark.parametrize("launcher", ["setpriv", "python"])
async def test_agent_dies_with_a_killed_node(
    serf_bin: Path, free_port: Callable[[], int], tmp_path: Path, launcher: str
) -> None:
    """kill -9 of the node process: the kernel's parent-death signal stops serf too, set
    by either launcher of raftlog.discovery.spawn.

    The agent logs to a file here, so no broken stdout pipe can be what stops it."""
    if launcher == "setpriv" and find_setpriv() is None:
        pytest.skip("no setpriv with --pdeathsig here")
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from raftlog.discovery import SerfAgent, SerfAgentConfig\n"
        "async def main():\n"
        "    a = SerfAgent(SerfAgentConfig(node_name='orphan', bind_addr=sys.argv[1],\n"
        "        rpc_addr=sys.argv[2], advertise_rpc_addr='127.0.0.1:1', binary=sys.argv[3],\n"
        "        log_file=Path(sys.argv[4])))\n"
        "    await a.start()\n"
        "    print(a.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    node = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        f"127.0.0.1:{free_port()}",
        f"127.0.0.1:{free_port()}",
        str(serf_bin),
        str(tmp_path / "orphan.log"),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, LAUNCHER_ENV: launcher},
    )
    serf_pid = 0
    try:
        assert node.stdout is not None
        async with asyncio.timeout(15.0):
            serf_pid = int(await node.stdout.readline())
        assert not pid_gone(serf_pid)
        node.kill()
        await node.wait()
        await wait_until(lambda: pid_gone(serf_pid), 10.0, "serf to die with its parent")
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
        if serf_pid and not pid_gone(serf_pid):
            os.kill(serf_pid, signal.SIGKILL)

"""Fixtures for discovery tests: real Serf agents on 127.0.0.1 with free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from raftlog.agent.devcluster import free_port as _free_port
from raftlog.discovery import SerfAgent, SerfAgentConfig, find_serf_binary
from support.procs import pid_reaped


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a port free for TCP and UDP on 127.0.0.1."""
    return _free_port


@pytest.fixture(scope="session")
def serf_bin() -> Path:
    try:
        return find_serf_binary()
    except FileNotFoundError as exc:  # pragma: no cover - the Makefile installs it
        pytest.skip(f"serf binary not available: {exc}")


AgentFactory = Callable[..., Awaitable[SerfAgent]]


@pytest.fixture
async def make_agent(serf_bin: Path, tmp_path: Path) -> AsyncIterator[AgentFactory]:
    """Start real agents; every one is stopped (and checked gone) at teardown."""
    agents: list[SerfAgent] = []
    pids: list[int] = []

    async def make(name: str, **overrides: object) -> SerfAgent:
        settings: dict[str, object] = {
            "node_name": name,
            "bind_addr": f"127.0.0.1:{_free_port()}",
            "rpc_addr": f"127.0.0.1:{_free_port()}",
            "advertise_rpc_addr": f"127.0.0.1:{_free_port()}",
            "binary": str(serf_bin),
            "profile": "local",
            "log_file": tmp_path / f"serf-{name}.log",
            "stop_timeout": 3.0,
            "start_timeout": 10.0,
            "restart_backoff": 0.1,
            "restart_backoff_max": 1.0,
        }
        settings.update(overrides)
        agent = SerfAgent(SerfAgentConfig(**settings))  # type: ignore[arg-type]
        agents.append(agent)
        await agent.start()
        assert agent.pid is not None
        pids.append(agent.pid)
        return agent

    yield make
    for agent in reversed(agents):
        await agent.stop()
    for pid in pids:
        assert pid_reaped(pid), f"serf pid {pid} left behind"

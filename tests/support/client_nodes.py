"""Client-test helpers: in-process nodes that can be stopped and restarted on the same port,
with a server-side membership list the test controls (to drive the client's resolver)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from raftlog.auth import CasbinAuthorizer, write_example_acl
from raftlog.client import ClientConfig, LogClient
from raftlog.domain.errors import NotLeaderError
from raftlog.domain.protocols import ServerInfo
from raftlog.log import Log, LogConfig, SyncPolicy
from raftlog.security import CertFiles, TLSConfig, write_dev_certs
from raftlog.server import LocalLog, LogServer

#: Client settings for tests: short backoffs, so retries happen within test time.
FAST = ClientConfig(
    request_timeout_s=10.0,
    attempt_timeout_s=2.0,
    backoff_initial_s=0.02,
    backoff_max_s=0.2,
    refresh_timeout_s=1.0,
    min_refresh_interval_s=0.02,
    down_cooldown_s=0.2,
)


def tls_of(files: CertFiles) -> TLSConfig:
    return TLSConfig(files.cert_file, files.key_file, files.ca_file)


class Directory:
    """A server-side member list: what GetServers answers (None = the node itself)."""

    def __init__(self) -> None:
        self.members: list[ServerInfo] | None = None


class ListedLog(LocalLog):
    """A LocalLog whose GetServers answer comes from a :class:`Directory`, and which can
    refuse writes with NOT_LEADER naming another server (a follower without forwarding)."""

    def __init__(self, log: Log, directory: Directory, node_id: str) -> None:
        super().__init__(log, node_id=node_id)
        self.directory = directory
        self.not_leader_hint: str | None = None

    async def append(self, records: Sequence[bytes]) -> tuple[int, int]:
        if self.not_leader_hint is not None:
            raise NotLeaderError(
                "this node is not the leader", {"leader_addr": self.not_leader_hint}
            )
        return await super().append(records)

    async def get_servers(self) -> list[ServerInfo]:
        if self.directory.members is None:
            return await super().get_servers()
        return list(self.directory.members)


@dataclass
class RestartableNode:
    """An in-process node that can stop and start again on the same port and data."""

    root: Path
    certs: dict[str, CertFiles]
    node_id: str
    port: int = 0
    directory: Directory = field(default_factory=Directory)
    server: LogServer | None = None
    local: ListedLog | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def counts(self, method: str, code: str = "OK") -> int:
        """Calls of ``method`` (e.g. "Produce") this run of the server ended with ``code``."""
        assert self.server is not None
        return self.server.observability.counts[f"/log.v1.Log/{method}", code]

    async def start(self) -> None:
        acl = self.root / "acl"
        if not acl.exists():
            write_example_acl(acl)
        log = Log.open(self.root / "data", LogConfig(sync=SyncPolicy.NEVER))
        self.local = ListedLog(log, self.directory, self.node_id)
        self.server = LogServer(
            self.local,
            self.local,
            CasbinAuthorizer(acl / "model.conf", acl / "policy.csv"),
            tls=tls_of(self.certs["server"]),
        )
        self.port = self.server.bind("127.0.0.1", self.port)
        self.local.rpc_addr = self.addr
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0.5)
            self.server = None
        if self.local is not None:
            await self.local.close()
            self.local = None

    def info(self, leader: bool) -> ServerInfo:
        return ServerInfo(id=self.node_id, rpc_addr=self.addr, is_leader=leader)


@contextlib.asynccontextmanager
async def open_client(
    addrs: str | Sequence[str],
    certs: dict[str, CertFiles],
    role: str = "root",
    config: ClientConfig = FAST,
) -> AsyncIterator[LogClient]:
    async with LogClient(addrs, tls=tls_of(certs[role]), config=config) as client:
        yield client


RAFTLOG = str(Path(sys.executable).parent / "raftlog")
BANNER = re.compile(rb"serving log\.v1\.Log on (127\.0\.0\.1:\d+)")


def write_agent_certs(root: Path) -> dict[str, CertFiles]:
    """Certificates and the example ACL in ``root/certs``, where the agent's defaults look."""
    certs = write_dev_certs(root / "certs")
    write_example_acl(root / "certs")
    return certs


class AgentProcess:
    """A ``raftlog agent`` subprocess (cwd ``root``, data in ``root/<name>``) that can be
    killed (SIGKILL) and started again on the same port with the same data."""

    def __init__(self, root: Path, name: str, extra: Sequence[str] = ()) -> None:
        self.root = root
        self.name = name
        self.extra = list(extra)
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start the agent; returns once it prints the address it serves on."""
        self.starts += 1
        log = open(self.root / f"{self.name}.{self.starts}.log", "wb")  # noqa: SIM115
        try:
            self.proc = await asyncio.create_subprocess_exec(
                RAFTLOG,
                "agent",
                "--node-name",
                self.name,
                "--data-dir",
                self.name,
                "--rpc-port",
                str(self.port),
                "--log-level",
                "info",
                *self.extra,
                cwd=self.root,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        finally:
            log.close()
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"agent {self.name} exited: {self.log_tail()}")
                    match = BANNER.search(line)
                    if match:
                        break
        except BaseException:
            await self.kill()
            raise
        self.port = int(match.group(1).decode().rpartition(":")[2])

    def log_tail(self, chars: int = 3000) -> str:
        path = self.root / f"{self.name}.{self.starts}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    async def kill(self) -> None:
        """SIGKILL (no clean shutdown), and reap."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), 10)

    async def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not end within ``timeout_s``."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            await self.kill()

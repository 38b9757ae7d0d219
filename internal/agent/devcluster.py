"""A local cluster of ``raftlog agent`` processes on one machine (make run, tests, bench).

Each node is a real agent subprocess with its own data dir, one mux port (gRPC + Raft),
a Serf gossip port and a Serf RPC port on the loopback interface. The first node
bootstraps; the others join through Serf (``--start-join-addrs``). Every wait is bounded;
:meth:`DevCluster.stop_all` terminates (SIGTERM, then SIGKILL after a bound) and reaps
every process it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.discovery.spawn import spawn
from raftlog.security import TLSConfig
from raftlog.security.grpc_tls import grpc_channel_credentials


class DevClusterError(RuntimeError):
    """A node did not start, or the cluster did not reach the wanted state in time."""


@dataclass(frozen=True)
class ClusterFiles:
    """Certificates and ACL every node uses (peer certificate = server certificate), and
    the gossip key file (None: gossip in clear text)."""

    server_cert: Path
    server_key: Path
    ca: Path
    acl_model: Path
    acl_policy: Path
    gossip_key: Path | None = None

    @classmethod
    def from_dir(cls, certs: Path) -> ClusterFiles:
        """The layout ``make certs`` / ``raftlog cert`` writes (``gossip.key`` when there)."""
        gossip = certs / "gossip.key"
        return cls(
            certs / "server.pem",
            certs / "server-key.pem",
            certs / "ca.pem",
            certs / "model.conf",
            certs / "policy.csv",
            gossip if gossip.is_file() else None,
        )


def default_raftlog() -> tuple[str, ...]:
    """The ``raftlog`` script beside this interpreter, else ``python -m raftlog.cmd``."""
    script = Path(sys.executable).parent / "raftlog"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (sys.executable, "-m", "raftlog.cmd")


#: Where the kernel picks the local ports of outgoing connections (and of ``bind(0)``).
_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def unassigned_ports() -> range:
    """Ports the kernel never hands out on its own: below the ephemeral range (where
    outgoing connections take their local port), from 10000. A port chosen there and
    released stays free until a process binds it on purpose, even while other tests (or
    pytest workers) open connections; a port from ``bind(0)`` can be taken by any outgoing
    connection in between. Falls back to the whole ephemeral range where it cannot tell."""
    try:
        low, high = (int(x) for x in _EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return range(32768, 61000)
    if low - 10000 >= 2000:
        return range(10000, low)
    if 65535 - high >= 2000:
        return range(high + 1, 65536)
    return range(low, high + 1)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing holds ``port`` for TCP or UDP on ``host`` now (Serf gossip uses both)."""
    try:
        with contextlib.ExitStack() as stack:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
                sock.bind((host, port))
    except OSError:
        return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for TCP and UDP now, drawn at random from :func:`unassigned_ports`."""
    ports = unassigned_ports()
    for _ in range(200):
        port = random.choice(ports)
        if port_is_free(port, host):
            return port
    raise DevClusterError(f"no free port found in {ports.start}-{ports.stop - 1}")


@dataclass
class NodeProcess:
    """One agent process and its addresses."""

    name: str
    data_dir: Path
    rpc_port: int
    gossip_port: int
    serf_rpc_port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)
    #: Set once the process was waited for on purpose (killed or stopped by the owner).
    stopped: bool = False

    @property
    def rpc_addr(self) -> str:
        return f"{self.host}:{self.rpc_port}"

    @property
    def gossip_addr(self) -> str:
        return f"{self.host}:{self.gossip_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class DevCluster:
    """Start, kill, restart and stop local agent processes.

    ``root``: parent of the data dirs (``root/<name>``) and logs (``root/<name>.log``).
    ``files``: certificates and ACL. ``agent_args``: extra flags for every agent (e.g.
    ``--snapshot-threshold 64``). ``ports``: fixed (rpc, gossip, serf rpc) per node index,
    else free ports. ``raftlog``: the command that runs the CLI.
    """

    def __init__(
        self,
        root: Path,
        files: ClusterFiles,
        *,
        agent_args: tuple[str, ...] = ("--serf-profile", "local"),
        raftlog: tuple[str, ...] | None = None,
        host: str = "127.0.0.1",
        log_to_files: bool = True,
    ) -> None:
        self.root = root
        self.files = files
        self.agent_args = agent_args
        self.raftlog = raftlog or default_raftlog()
        self.host = host
        self.log_to_files = log_to_files
        self.nodes: dict[str, NodeProcess] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self.client_tls: TLSConfig | None = None

    # -- processes -------------------------------------------------------------------------

    def add_node(self, name: str, ports: tuple[int, int, int] | None = None) -> NodeProcess:
        """Register a node (not started) with fixed or free ports."""
        rpc, gossip, serf = ports or (free_port(), free_port(), free_port())
        node = NodeProcess(name, self.root / name, rpc, gossip, serf, host=self.host)
        self.nodes[name] = node
        return node

    def command(self, node: NodeProcess, *, bootstrap: bool, join: list[str]) -> list[str]:
        """The ``raftlog agent`` command line of ``node``."""
        f = self.files
        argv = [
            *self.raftlog,
            "agent",
            "--node-name",
            node.name,
            "--data-dir",
            str(node.data_dir),
            "--rpc-port",
            str(node.rpc_port),
            "--bind-addr",
            node.gossip_addr,
            "--serf-rpc-addr",
            f"127.0.0.1:{node.serf_rpc_port}",
            "--server-tls-cert-file",
            str(f.server_cert),
            "--server-tls-key-file",
            str(f.server_key),
            "--server-tls-ca-file",
            str(f.ca),
            "--peer-tls-cert-file",
            str(f.server_cert),
            "--peer-tls-key-file",
            str(f.server_key),
            "--peer-tls-ca-file",
            str(f.ca),
            "--acl-model-file",
            str(f.acl_model),
            "--acl-policy-file",
            str(f.acl_policy),
            *(["--serf-encrypt-key-file", str(f.gossip_key)] if f.gossip_key else []),
            *self.agent_args,
            *node.extra,
        ]
        if bootstrap:
            argv.append("--bootstrap")
        if join:
            argv += ["--start-join-addrs", ",".join(join)]
        return argv

    def start(self, name: str, *, bootstrap: bool = False, join: list[str] | None = None) -> None:
        """Start node ``name`` (joining ``join`` gossip addresses, default: the others).

        The node gets SIGTERM when the calling thread exits (parent-death signal): call
        this from a long-lived thread (the main thread or the event loop's), never from
        ``asyncio.to_thread``."""
        node = self.nodes[name]
        if node.running:
            raise DevClusterError(f"node {name} is already running")
        if join is None:
            join = [n.gossip_addr for n in self.nodes.values() if n.name != name and n.running]
        self.root.mkdir(parents=True, exist_ok=True)
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_to_files:
            node.log_path = self.root / f"{name}.log"
            fh = open(node.log_path, "ab")  # noqa: SIM115 - closed in _reap
            self._logs[name] = fh
            out = fh
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        node.stopped = False
        # SIGTERM when the runner (the thread calling start) dies, even by SIGKILL, so no
        # agent outlives the test or `make run` that started it; no preexec_fn (gRPC's fork
        # handlers can crash a forked child before exec: raftlog.discovery.spawn).
        node.proc = spawn(
            self.command(node, bootstrap=bootstrap, join=join),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if self.log_to_files else subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the runner only
        )

    def signal(self, name: str, sig: signal.Signals) -> None:
        """Send ``sig`` to node ``name``."""
        node = self.nodes[name]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(sig)

    def wait_exit(self, name: str, timeout: float) -> int:
        """Wait for node ``name`` to exit; its exit code (SIGKILL after ``timeout``)."""
        node = self.nodes[name]
        if node.proc is None:
            return 0
        try:
            code = node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            code = node.proc.wait(10)
        node.stopped = True
        self._reap(name)
        return code

    def _reap(self, name: str) -> None:
        fh = self._logs.pop(name, None)
        if fh is not None:
            fh.close()

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM every running node at once, wait (SIGKILL after ``timeout``), reap."""
        for name in self.nodes:
            self.signal(name, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in self.nodes:
            self.wait_exit(name, max(0.1, deadline - time.monotonic()))

    def log_text(self, name: str) -> str:
        """The node's log so far (for failure messages)."""
        path = self.nodes[name].log_path
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")

    # -- client side -------------------------------------------------------------------------

    def channel(self, name: str, tls: TLSConfig) -> grpc.aio.Channel:
        """A mutual-TLS channel to node ``name`` as the holder of ``tls``."""
        return grpc.aio.secure_channel(
            self.nodes[name].rpc_addr,
            grpc_channel_credentials(tls),
            options=[("grpc.max_receive_message_length", 64 << 20)],
        )

    async def servers(self, name: str, tls: TLSConfig, timeout_s: float = 2.0) -> list[Any]:
        """GetServers on node ``name``."""
        async with self.channel(name, tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            resp = await stub.GetServers(log_pb2.GetServersRequest(), timeout=timeout_s)
            return list(resp.servers)

    async def wait_for(
        self,
        tls: TLSConfig,
        *,
        members: int,
        timeout_s: float,
        via: list[str] | None = None,
        every: bool = False,
    ) -> str:
        """Wait until a node reports a leader and ``members`` members or more; the leader.

        With ``every``, wait until each node asked (``via``, default: every live node)
        reports ``members`` or more and they all name the same leader: a node that has
        just joined knows no configuration until the leader has replicated one to it, so
        "one node sees three members" does not yet mean "every node does".
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last = "no answer yet"
        while loop.time() < deadline:
            live = [n for n, p in self.nodes.items() if p.proc is not None and not p.stopped]
            for name in live:
                proc = self.nodes[name].proc
                if proc is not None and proc.poll() is not None:
                    raise DevClusterError(
                        f"node {name} exited (code {proc.returncode}):\n"
                        + self.log_text(name)[-2000:]
                    )
            seen: dict[str, str | None] = {}
            for name in via or live:
                seen[name] = None
                with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                    servers = await self.servers(name, tls, timeout_s=1.0)
                    leaders = [s.id for s in servers if s.is_leader]
                    last = f"{name} sees {[(s.id, s.is_leader) for s in servers]}"
                    if leaders and len(servers) >= members:
                        if not every:
                            return str(leaders[0])
                        seen[name] = str(leaders[0])
            named = {leader for leader in seen.values() if leader is not None}
            if every and len(named) == 1 and None not in seen.values():
                return named.pop()
            if every:
                last = f"leaders seen per node: {seen}; last answer: {last}"
            await asyncio.sleep(0.2)
        raise DevClusterError(f"no leader with {members} members within {timeout_s} s ({last})")

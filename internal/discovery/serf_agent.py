"""Run the real HashiCorp Serf agent beside a node, as a supervised subprocess.

:class:`SerfAgent` starts ``serf agent`` with the node's name, its gossip address
(``-bind``), an RPC address on 127.0.0.1 (``-rpc-addr``), a tag carrying the node's own RPC
address (:data:`RPC_ADDR_TAG`), the gossip key (in a 0600 Serf config file, never on the
command line) when one is configured and the
addresses to join (``-retry-join``: unlike ``-join``, a peer that is not up yet does not make
the agent exit). It waits, bounded, until the agent answers RPC; it restarts an agent that
dies (with a bounded, growing backoff) and stops it gracefully: an RPC ``leave``, then
SIGINT, then SIGKILL, each bounded. No process is left behind: not on ``stop()``, not when
the task running ``start()``/``stop()`` is cancelled, and (Linux) not when this process
dies, since the child is started with a parent-death signal (SIGTERM, set by a launcher
in the child: :mod:`raftlog.discovery.spawn`; never a ``preexec_fn``).

Binary lookup order (:func:`find_serf_binary`): the configured path, then the environment
variable ``RAFTLOG_SERF_BIN``, then ``serf`` on ``PATH``, then ``.tools/bin/serf`` under the
current directory, then ``.tools/bin/serf`` in the source tree this module lives in (where
``make install`` puts it).
"""

# Every call here takes an explicit bound (`timeout`, in seconds) by design.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from raftlog.discovery.serf_rpc import SerfRPCClient, SerfRPCError
from raftlog.discovery.spawn import spawn_async

__all__ = [
    "RPC_ADDR_TAG",
    "SERF_BIN_ENV",
    "SerfAgent",
    "SerfAgentConfig",
    "SerfAgentError",
    "SerfConfigError",
    "SerfNotFoundError",
    "find_serf_binary",
]

log = logging.getLogger("raftlog.discovery.serf_agent")

#: The Serf tag whose value is the node's own RPC address (``host:port`` of its mux port).
RPC_ADDR_TAG: Final = "rpc_addr"
#: Environment variable naming the Serf binary (second in the lookup order).
SERF_BIN_ENV: Final = "RAFTLOG_SERF_BIN"
_PROFILES: Final = ("lan", "wan", "local")
_LOG_LEVELS: Final = ("trace", "debug", "info", "warn", "err")


class SerfConfigError(ValueError):
    """A Serf agent setting is invalid; the message names the field and the reason."""


class SerfNotFoundError(FileNotFoundError):
    """No Serf binary was found at any place of the documented lookup order."""


class SerfAgentError(RuntimeError):
    """The Serf agent could not be started, did not answer RPC in time, or died at start."""


def _split_hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SerfConfigError(f"{what}: expected host:port with a port in 1..65535, got {value!r}")
    return host, int(port)


@dataclass(frozen=True)
class SerfAgentConfig:
    """How to run one node's Serf agent.

    - ``node_name``: the node's id; Serf member names are node ids (unique in the cluster).
    - ``bind_addr``: gossip ``host:port`` (TCP and UDP), e.g. ``127.0.0.1:8401``. Required.
    - ``rpc_addr``: the agent's RPC ``host:port``; must be a loopback address, because the
      RPC protocol has no encryption. Required.
    - ``advertise_rpc_addr``: the node's own RPC (mux) address, published in the tag
      :data:`RPC_ADDR_TAG` so that the leader can add this node to Raft. Required.
    - ``tags``: extra tags (the rpc address tag wins on a clash). Default none.
    - ``encrypt_key``: base64 gossip key of 16, 24 or 32 bytes (``serf keygen``); every
      member must use the same. Default none (gossip in clear text).
    - ``start_join_addrs``: gossip addresses of members to join (retried every
      ``retry_join_interval`` seconds, default 2.0, until one answers). Default none.
    - ``profile``: Serf timing profile, ``lan`` (default), ``wan`` or ``local`` (``local``
      detects failures faster; meant for one machine).
    - ``binary``: path of the Serf binary; default: the lookup order of
      :func:`find_serf_binary`.
    - ``log_file``: append the agent's output to this file; default: forward each line to
      the ``raftlog.serf`` logger (errors at ERROR, warnings at WARNING, the rest at DEBUG).
    - ``log_level``: the agent's own level (trace, debug, info (default), warn, err).
    - ``start_timeout``: seconds to wait for the agent's RPC to answer after a start
      (default 15.0).
    - ``stop_timeout``: seconds for each stop step: graceful leave, exit after SIGINT
      (default 5.0); SIGKILL follows.
    - ``restart_backoff`` / ``restart_backoff_max``: seconds to wait before restarting an
      agent that died, doubling per failed restart up to the max (defaults 0.5 and 10.0);
      back to the minimum once an agent stayed up for ``restart_backoff_max * 3`` seconds.
    - ``rpc_timeout``: seconds bounding each RPC call made by this supervisor (default 5.0).
    """

    node_name: str
    bind_addr: str
    rpc_addr: str
    advertise_rpc_addr: str
    tags: Mapping[str, str] = field(default_factory=dict)
    encrypt_key: str | None = None
    start_join_addrs: tuple[str, ...] = ()
    retry_join_interval: float = 2.0
    profile: str = "lan"
    binary: str | None = None
    log_file: Path | None = None
    log_level: str = "info"
    start_timeout: float = 15.0
    stop_timeout: float = 5.0
    restart_backoff: float = 0.5
    restart_backoff_max: float = 10.0
    rpc_timeout: float = 5.0

    def validate(self) -> None:
        """Raise :class:`SerfConfigError` naming the first invalid field."""
        if not self.node_name or any(c.isspace() for c in self.node_name):
            raise SerfConfigError(
                f"node_name: must be a non-empty name without spaces, got {self.node_name!r}"
            )
        _split_hostport(self.bind_addr, "bind_addr")
        rpc_host, _ = _split_hostport(self.rpc_addr, "rpc_addr")
        if rpc_host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            raise SerfConfigError(
                f"rpc_addr: must be on the loopback interface (Serf RPC is not encrypted), "
                f"got {self.rpc_addr!r}"
            )
        _split_hostport(self.advertise_rpc_addr, "advertise_rpc_addr")
        for addr in self.start_join_addrs:
            _split_hostport(addr, "start_join_addrs")
        if self.encrypt_key is not None:
            try:
                key = base64.b64decode(self.encrypt_key, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise SerfConfigError(f"encrypt_key: not valid base64: {exc}") from exc
            if len(key) not in (16, 24, 32):
                raise SerfConfigError(
                    f"encrypt_key: must decode to 16, 24 or 32 bytes, got {len(key)}"
                )
        if self.profile not in _PROFILES:
            raise SerfConfigError(f"profile: must be one of {_PROFILES}, got {self.profile!r}")
        if self.log_level not in _LOG_LEVELS:
            raise SerfConfigError(
                f"log_level: must be one of {_LOG_LEVELS}, got {self.log_level!r}"
            )
        for name in ("retry_join_interval", "start_timeout", "stop_timeout", "rpc_timeout"):
            if getattr(self, name) <= 0:
                raise SerfConfigError(f"{name}: must be > 0 seconds, got {getattr(self, name)}")
        if not 0 < self.restart_backoff <= self.restart_backoff_max:
            raise SerfConfigError(
                "restart_backoff: must be > 0 and <= restart_backoff_max, got "
                f"{self.restart_backoff} and {self.restart_backoff_max}"
            )
        for tag_name, tag_value in self.tags.items():
            if not tag_name or "=" in tag_name:
                raise SerfConfigError(f"tags: invalid tag name {tag_name!r}")
            if not isinstance(tag_value, str):
                raise SerfConfigError(f"tags: value of {tag_name!r} must be a string")

    def command(self, binary: str | Path, key_file: Path | None = None) -> list[str]:
        """The argument vector that starts this agent with ``binary``.

        With ``key_file`` (a Serf config file holding ``encrypt_key``), the gossip key is
        read from there and stays off the command line (``ps``, ``/proc/PID/cmdline``,
        the start log line); without it, ``-encrypt`` carries the key."""
        argv = [
            str(binary),
            "agent",
            f"-node={self.node_name}",
            f"-bind={self.bind_addr}",
            f"-rpc-addr={self.rpc_addr}",
            f"-profile={self.profile}",
            f"-log-level={self.log_level}",
        ]
        tags = {k: v for k, v in self.tags.items() if k != RPC_ADDR_TAG}
        tags[RPC_ADDR_TAG] = self.advertise_rpc_addr
        for key, value in sorted(tags.items()):
            argv += ["-tag", f"{key}={value}"]
        if self.encrypt_key and key_file is not None:
            argv.append(f"-config-file={key_file}")
        elif self.encrypt_key:
            argv.append(f"-encrypt={self.encrypt_key}")
        for addr in self.start_join_addrs:
            argv.append(f"-retry-join={addr}")
        if self.start_join_addrs:
            argv.append(f"-retry-interval={max(1, round(self.retry_join_interval * 1000))}ms")
        return argv


def _candidates(explicit: str | Path | None) -> list[tuple[str, Path | None]]:
    found: list[tuple[str, Path | None]] = []
    if explicit:
        found.append(("configured path", Path(explicit)))
    env = os.environ.get(SERF_BIN_ENV)
    if env:
        found.append((f"${SERF_BIN_ENV}", Path(env)))
    on_path = shutil.which("serf")
    found.append(("serf on PATH", Path(on_path) if on_path else None))
    found.append(("./.tools/bin/serf", Path.cwd() / ".tools" / "bin" / "serf"))
    repo_root = Path(__file__).resolve().parents[2]
    found.append(("<repo>/.tools/bin/serf", repo_root / ".tools" / "bin" / "serf"))
    return found


def find_serf_binary(explicit: str | Path | None = None) -> Path:
    """Locate the Serf binary (lookup order in the module docstring).

    An explicit path or ``$RAFTLOG_SERF_BIN`` that does not name an executable is an error
    (it is not silently skipped); the later places are tried in turn.
    """
    tried: list[str] = []
    for what, path in _candidates(explicit):
        if path is None:
            tried.append(f"{what}: not found")
            continue
        if path.is_file() and os.access(path, os.X_OK):
            return path
        if what in ("configured path", f"${SERF_BIN_ENV}"):
            raise SerfNotFoundError(f"serf binary from {what} is not an executable file: {path}")
        tried.append(f"{what}: {path} missing")
    raise SerfNotFoundError(
        "no serf binary found (run `make install`, or set "
        f"{SERF_BIN_ENV}); tried: " + "; ".join(tried)
    )


class SerfAgent:
    """One supervised Serf agent process.

    ``await start()`` spawns it and returns once its RPC answers (raises
    :class:`SerfAgentError` otherwise, leaving no process). While running, a supervisor task
    restarts the agent if it exits on its own. ``await stop()`` is idempotent: graceful leave,
    then signals, then reaping. ``connect()`` opens a new RPC client to the agent.
    """

    def __init__(self, config: SerfAgentConfig, *, logger: logging.Logger | None = None) -> None:
        config.validate()
        self.config = config
        self._log = logger or logging.getLogger("raftlog.serf")
        self._binary: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._log_fh: IO[bytes] | None = None
        self._pipe_task: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        self._started_at = 0.0
        self._tail: collections.deque[str] = collections.deque(maxlen=20)
        #: How many times the agent was restarted after exiting on its own.
        self.restarts = 0
        #: A private directory (0700) holding the gossip key as a Serf config file (0600)
        #: while the agent may run (restarts read it again); removed by stop().
        self._key_dir: Path | None = None

    # --- public ------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """Process id of the running agent, or None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def rpc_addr(self) -> str:
        return self.config.rpc_addr

    @property
    def running(self) -> bool:
        """True while an agent process is up and answered RPC since it started."""
        return self._ready.is_set() and self.pid is not None

    async def start(self) -> None:
        """Spawn the agent and wait (``start_timeout``) until its RPC answers."""
        if self._supervisor is not None or self._stopping:
            raise SerfAgentError("serf agent already started (or stopped: make a new one)")
        self._binary = find_serf_binary(self.config.binary)
        try:
            await self._spawn()
            await self._wait_ready()
        except BaseException:
            await self._terminate(graceful=False)
            self._remove_key_file()
            raise
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"serf-supervisor:{self.config.node_name}"
        )

    async def wait_running(self, timeout: float) -> None:
        """Wait until an agent is up and answering RPC (e.g. after a restart)."""
        async with asyncio.timeout(timeout):
            while True:
                await self._ready.wait()
                if self.running:
                    return
                await asyncio.sleep(0.05)

    async def connect(self, timeout: float | None = None) -> SerfRPCClient:
        """A new, connected RPC client to this agent (the caller closes it)."""
        client = SerfRPCClient(self.config.rpc_addr, timeout=self.config.rpc_timeout)
        return await client.connect(timeout)

    async def join(self, addrs: list[str], timeout: float | None = None) -> int:
        """Join the gossip addresses ``addrs`` now; returns how many answered."""
        client = await self.connect(timeout)
        try:
            return await client.join(addrs, timeout=timeout)
        finally:
            await client.close()

    async def stop(self) -> None:
        """Leave the cluster gracefully and stop the agent; idempotent, always reaps."""
        if self._stopping and self._proc is None:
            return
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        try:
            await self._terminate(graceful=True)
        finally:
            self._remove_key_file()

    async def __aenter__(self) -> SerfAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- process management ------------------------------------------------------------
    def _key_file(self) -> Path | None:
        """The Serf config file with the gossip key (written once), or None without a key."""
        if not self.config.encrypt_key:
            return None
        if self._key_dir is None:
            self._key_dir = Path(tempfile.mkdtemp(prefix="raftlog-serf-key-"))
        path = self._key_dir / "gossip-key.json"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"encrypt_key": self.config.encrypt_key}, f)
        return path

    def _remove_key_file(self) -> None:
        key_dir, self._key_dir = self._key_dir, None
        if key_dir is not None:
            shutil.rmtree(key_dir, ignore_errors=True)

    async def _spawn(self) -> None:
        assert self._binary is not None
        argv = self.config.command(self._binary, await asyncio.to_thread(self._key_file))
        self._ready.clear()
        self._tail.clear()
        if self.config.log_file is not None and self._log_fh is None:
            await asyncio.to_thread(self.config.log_file.parent.mkdir, parents=True, exist_ok=True)
            self._log_fh = await asyncio.to_thread(self.config.log_file.open, "ab")
        out: IO[bytes] | int = self._log_fh if self._log_fh is not None else asyncio.subprocess.PIPE
        self._log.info("starting serf agent %s: %s", self.config.node_name, " ".join(argv))
        # SIGTERM when this process (its event loop's thread) dies; no preexec_fn, which
        # gRPC's fork handlers can crash before exec (see raftlog.discovery.spawn).
        self._proc = await spawn_async(
            argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop serf
        )
        self._started_at = time.monotonic()
        if self._proc.stdout is not None:
            self._pipe_task = asyncio.create_task(
                self._forward_output(self._proc.stdout), name="serf-output"
            )

    async def _forward_output(self, stream: asyncio.StreamReader) -> None:
        name = self.config.node_name
        while True:
            line_b = await stream.readline()
            if not line_b:
                return
            line = line_b.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self._tail.append(line)
            if "[ERR]" in line:
                self._log.error("serf[%s] %s", name, line.strip())
            elif "[WARN]" in line:
                self._log.warning("serf[%s] %s", name, line.strip())
            else:
                self._log.debug("serf[%s] %s", name, line.strip())

    def _last_output(self) -> str:
        if self._tail:
            return "\n".join(self._tail)
        if self.config.log_file is not None and self.config.log_file.exists():
            with contextlib.suppress(OSError):
                data = self.config.log_file.read_bytes()[-2000:]
                return data.decode("utf-8", "replace")
        return "(no output)"

    async def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.config.start_timeout
        last_error: Exception | None = None
        while True:
            if proc.returncode is not None:
                if self._pipe_task is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(self._pipe_task), 1.0)
                raise SerfAgentError(
                    f"serf agent {self.config.node_name} exited with status {proc.returncode} "
                    f"while starting; last output:\n{self._last_output()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SerfAgentError(
                    f"serf agent {self.config.node_name} did not answer RPC at "
                    f"{self.config.rpc_addr} within {self.config.start_timeout:g} s "
                    f"(last error: {last_error}); last output:\n{self._last_output()}"
                )
            try:
                client = await self.connect(timeout=min(1.0, remaining))
            except SerfRPCError as exc:
                last_error = exc
                await asyncio.sleep(min(0.1, max(remaining, 0.0)))
                continue
            await client.close()
            self._ready.set()
            self._log.info(
                "serf agent %s up (pid %s, rpc %s)",
                self.config.node_name,
                proc.pid,
                self.config.rpc_addr,
            )
            return

    async def _supervise(self) -> None:
        backoff = self.config.restart_backoff
        while True:
            proc = self._proc
            if proc is not None:
                rc = await proc.wait()
                self._ready.clear()
                if self._stopping:
                    return
                uptime = time.monotonic() - self._started_at
                if uptime > self.config.restart_backoff_max * 3:
                    backoff = self.config.restart_backoff
                self._log.error(
                    "serf agent %s (pid %s) exited unexpectedly with status %s after %.1f s; "
                    "restarting in %.1f s",
                    self.config.node_name,
                    proc.pid,
                    rc,
                    uptime,
                    backoff,
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.restart_backoff_max)
            try:
                await self._spawn()
                await self._wait_ready()
            except (SerfAgentError, OSError) as exc:
                self._log.error("restarting serf agent %s failed: %s", self.config.node_name, exc)
                await self._terminate(graceful=False, close_log=False)
                continue
            self.restarts += 1

    async def _terminate(self, *, graceful: bool, close_log: bool = True) -> None:
        """Stop the current process: leave (if graceful), SIGINT, SIGKILL; always reap."""
        proc = self._proc
        try:
            if proc is not None and proc.returncode is None:
                if graceful:
                    await self._graceful_leave(proc)
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGINT)
                    try:
                        await asyncio.wait_for(proc.wait(), self.config.stop_timeout)
                    except TimeoutError:
                        self._log.warning(
                            "serf agent %s ignored SIGINT for %.1f s; killing it",
                            self.config.node_name,
                            self.config.stop_timeout,
                        )
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await asyncio.wait_for(proc.wait(), self.config.stop_timeout)
        finally:
            # Reached on cancellation too: never leave the child running.
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            pipe, self._pipe_task = self._pipe_task, None
            if pipe is not None:
                pipe.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(pipe, 1.0)
            if close_log and self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None
            self._ready.clear()
            self._proc = None

    async def _graceful_leave(self, proc: asyncio.subprocess.Process) -> None:
        timeout = self.config.stop_timeout
        try:
            client = await self.connect(timeout=min(1.0, timeout))
        except SerfRPCError as exc:
            self._log.warning("serf agent %s: no RPC for leave: %s", self.config.node_name, exc)
            return
        try:
            await client.leave(timeout=timeout)
        except SerfRPCError as exc:
            # The agent closes the connection as it shuts down; that is not a failure.
            self._log.debug("serf leave of %s: %s", self.config.node_name, exc)
        finally:
            await client.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            self._log.warning(
                "serf agent %s still running %.1f s after leave", self.config.node_name, timeout
            )

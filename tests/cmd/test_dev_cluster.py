"""What `make run` runs: `raftlog dev-cluster` as a real process, used through the commands
it prints, stopped with Ctrl-C (SIGINT), and started again on the same data.

The test works where a user would: a directory with `certs/` made by `raftlog cert` (what
`make certs` runs) and the default data dir `.data/cluster` under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import random
import re
import shlex
import signal
from pathlib import Path

import pytest

from raftlog.agent.devcluster import port_is_free, unassigned_ports
from raftlog.api.partitioning import partition_for_key
from support.cli import RAFTLOG, run_raftlog
from support.procs import serf_pids

NODES = 3
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def free_base_port() -> int:
    """A base port whose node ports (base + 10 i + 0..2) are all free right now, outside
    the range the kernel hands out to outgoing connections (see ``unassigned_ports``)."""
    ports = unassigned_ports()
    for _ in range(100):
        base = random.randrange(ports.start, ports.stop - 10 * NODES) // 10 * 10
        if all(port_is_free(base + 10 * i + k) for i in range(NODES) for k in range(3)):
            return base
    raise AssertionError("no free block of ports found")


async def run(args: list[str], cwd: Path) -> str:
    """``raftlog ARGS...``, which must succeed; its stdout."""
    rc, out, err = await run_raftlog(*args, cwd=cwd)
    assert rc == 0, f"raftlog {args} exited {rc}: {err[-2000:]}"
    return out


async def run_on_tty(
    args: list[str], cwd: Path, stdin: bytes = b"", timeout: float = 60
) -> tuple[str, str]:
    """``raftlog ARGS...`` with stderr on a pseudo-terminal; (stdout, what it showed)."""
    master, slave = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            RAFTLOG,
            *args,
            cwd=cwd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        slave = -1
        out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
        assert proc.returncode == 0, f"raftlog {args} exited {proc.returncode}"
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(master, 65536):
                shown += chunk
        return out.decode(), shown.decode(errors="replace")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


class DevClusterProcess:
    """``raftlog dev-cluster`` in ``cwd``: its stdout banner, then SIGINT."""

    def __init__(self, cwd: Path, base: int) -> None:
        self.cwd = cwd
        self.base = base
        self.proc: asyncio.subprocess.Process | None = None
        self.banner: list[str] = []

    async def start(self, timeout: float = 90) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            RAFTLOG,
            "dev-cluster",
            "--nodes",
            str(NODES),
            "--base-port",
            str(self.base),
            "--agent-arg=--sync=never",
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a stray SIGINT from the terminal never reaches it
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    err = await self.stderr()
                    raise AssertionError(f"dev-cluster ended before its banner:\n{err}")
                self.banner.append(line.rstrip("\n"))
                if line.startswith("stop every node"):
                    return

    async def stderr(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                return (await self.proc.stderr.read()).decode()[-3000:]
        return "(no stderr)"

    def command(self, verb: str) -> list[str]:
        """The printed `raftlog VERB ...` line, as the arguments after `raftlog`."""
        line = next(x for x in self.banner if x.strip().split(" ")[1:2] == [verb])
        argv = shlex.split(line)
        assert argv[0].endswith("raftlog"), line
        return argv[1:]

    async def interrupt(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(timeout):
            await self.proc.communicate()
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


def serf_of(base: int) -> list[int]:
    """Serf agents gossiping on one of this cluster's ports."""
    return serf_pids(f"-bind=127.0.0.1:{base + 10 * i + 1}" for i in range(NODES))


async def test_make_run_cluster_serves_the_printed_commands_and_restarts(
    tmp_path: Path,
) -> None:
    await run(["cert", "--out-dir", "certs"], tmp_path)
    base = free_base_port()
    first = DevClusterProcess(tmp_path, base)
    try:
        await first.start()
        head = first.banner[0]
        assert re.fullmatch(rf"raftlog dev-cluster: {NODES} nodes up, leader node-\d", head)
        for i in range(NODES):
            assert any(f"node-{i}: rpc 127.0.0.1:{base + 10 * i} " in x for x in first.banner)

        # make run's gossip is encrypted: each Serf agent reads certs/gossip.key from a
        # private config file (never from its command line)
        key = (tmp_path / "certs" / "gossip.key").read_text().strip()
        agents = serf_of(base)
        assert len(agents) == NODES
        for pid in agents:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            assert "-config-file=" in argv and key not in argv, argv

        # The commands exactly as printed, run from the same directory.
        servers = await run(first.command("servers"), tmp_path)
        assert all(f"node-{i}" in servers for i in range(NODES)), servers
        produced = await run(first.command("produce"), tmp_path)  # "hello world"
        assert produced.split() == ["0", "1"], produced
        consumed = await run([*first.command("consume"), "--count", "2"], tmp_path)
        assert consumed.split() == ["hello", "world"], consumed
        # the printed topic commands: a topic of 3 partitions, a keyed record in it
        created = await run(first.command("topic"), tmp_path)
        assert "demo" in created, created
        keyed = next(x for x in first.banner if " produce " in x and "--topic demo" in x)
        partition, offset = (await run(shlex.split(keyed)[1:], tmp_path)).split()
        assert (int(partition), int(offset)) == (partition_for_key(b"user-1", 3), 0)

        # Long work shows progress on stderr when it is a terminal.
        lines = b"".join(b"line-%d\n" % i for i in range(3000))
        produce_stdin = first.command("produce")[:-2]  # without "hello world": reads stdin
        out, shown = await run_on_tty(produce_stdin, tmp_path, stdin=lines)
        assert out.split()[-1] == "3001", out[-200:]
        assert "produced 3,000 records" in shown, shown
        out, shown = await run_on_tty(
            [*first.command("consume"), "--from", "2", "--count", "3000"], tmp_path
        )
        assert out.split()[-1] == "line-2999", out[-200:]
        assert "consumed 3,000 records" in shown, shown

        assert await first.interrupt() == 0, await first.stderr()
        assert serf_of(base) == []
        data = tmp_path / ".data" / "cluster"
        assert sorted(p.name for p in data.iterdir() if p.is_dir()) == [
            f"node-{i}" for i in range(NODES)
        ]

        # Started again on the same data: no second bootstrap, the records are still there.
        second = DevClusterProcess(tmp_path, base)
        try:
            await second.start()
            again = await run([*second.command("consume"), "--count", "2"], tmp_path)
            assert again.split() == ["hello", "world"], again
            latest = await run([*second.command("consume"), "--linearizable"], tmp_path)
            assert latest.split()[-1] == "line-2999", latest[-200:]
            assert await second.interrupt() == 0, await second.stderr()
        finally:
            await second.kill()
        logs = "".join(p.read_text() for p in (tmp_path / ".data" / "cluster").glob("*.log"))
        assert logs.count("bootstrapped a new cluster") == 1, "bootstrapped twice (or never)"
        # make run's gossip is encrypted with certs/gossip.key (raftlog cert wrote it)
        assert "gossip is neither encrypted nor authenticated" not in logs
        assert serf_of(base) == []
    finally:
        await first.kill()


async def test_dev_cluster_refuses_a_certificate_that_names_no_node(tmp_path: Path) -> None:
    """Certificates made before the membership check (no name for the nodes): the leader
    would refuse every node, so dev-cluster says so at once instead of timing out."""
    from raftlog.security.certs import CertPair, issue_cert

    code, _, err = await run_raftlog("cert", "--out-dir", "certs", cwd=tmp_path)
    assert code == 0, err
    certs = tmp_path / "certs"
    ca = CertPair((certs / "ca.pem").read_bytes(), (certs / "ca-key.pem").read_bytes())
    old = issue_cert(ca, "server", hosts=["localhost", "127.0.0.1"])
    (certs / "server.pem").write_bytes(old.cert_pem)
    (certs / "server-key.pem").write_bytes(old.key_pem)
    code, _, err = await run_raftlog("dev-cluster", "--certs-dir", "certs", cwd=tmp_path)
    assert code == 2, err
    assert "does not name node-0, node-1, node-2" in err, err
    assert not (tmp_path / ".data").exists()

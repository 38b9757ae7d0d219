"""SIGHUP on a real `raftlog agent`: the ACL and the deny list reload, checked with the
`raftlog` client commands and with streams opened before the reload (issue 18, items 3-4)."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import grpc
import pytest

from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import TLSConfig
from raftlog.security.grpc_tls import grpc_channel_credentials
from support.cli import RAFTLOG
from support.cli import run_raftlog as _run
from support.wait import wait_until

ROOT_GRANTS = ("p, root, *, produce\n", "p, root, *, consume\n")


class AgentLog:
    """The agent's stderr, read as it comes (a full pipe never blocks the node)."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.text = ""
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(4096):
            self.text += chunk.decode(errors="replace")

    async def wait_for(self, needle: str, count: int = 1, timeout: float = 15) -> None:
        await wait_until(lambda: self.text.count(needle) >= count, timeout, repr(needle))


@pytest.mark.slow
async def test_sighup_reloads_acl_and_deny_list_for_cli_and_open_streams(tmp_path: Path) -> None:
    rc, _, err = await _run("cert", "--out-dir", "certs", cwd=tmp_path)
    assert rc == 0, err
    certs, deny = tmp_path / "certs", tmp_path / "certs" / "deny.txt"
    policy = certs / "policy.csv"
    full_policy = policy.read_text()
    assert all(line in full_policy for line in ROOT_GRANTS)
    deny.write_text("# nothing revoked yet\n")
    agent = await asyncio.create_subprocess_exec(
        RAFTLOG,
        "agent",
        "--rpc-port",
        "0",
        "--data-dir",
        "data",
        "--deny-list-file",
        "certs/deny.txt",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert agent.stdout is not None and agent.stderr is not None
    log = AgentLog(agent.stderr)
    try:
        banner = (await asyncio.wait_for(agent.stdout.readline(), 30)).decode()
        match = re.search(r"serving log\.v1\.Log on (127\.0\.0\.1:\d+)", banner)
        assert match, banner + log.text
        addr = ["--addr", match.group(1)]
        as_server = ["--cert-file", "certs/server.pem", "--key-file", "certs/server-key.pem"]

        async def produce(*extra: str) -> tuple[int, str]:
            rc, out, err = await _run("produce", *addr, *extra, "x", cwd=tmp_path)
            return rc, out + err

        async def reload(needle: str, count: int) -> None:
            agent.send_signal(signal.SIGHUP)
            await log.wait_for(needle, count)

        assert await produce() == (0, "0\n")

        # streams opened before the reload, as root
        root = TLSConfig(certs / "root-client.pem", certs / "root-client-key.pem", certs / "ca.pem")
        channel = grpc.aio.secure_channel(match.group(1), grpc_channel_credentials(root))
        stub = log_pb2_grpc.LogStub(channel)  # type: ignore[no-untyped-call]
        outgoing: asyncio.Queue[log_pb2.ProduceRequest | None] = asyncio.Queue()

        async def requests():  # type: ignore[no-untyped-def]
            while (item := await outgoing.get()) is not None:
                yield item

        producing = stub.ProduceStream(requests(), timeout=60)
        await outgoing.put(log_pb2.ProduceRequest(record=log_pb2.Record(value=b"s1")))
        first = await asyncio.wait_for(producing.read(), 10)
        assert first.offset == 1
        consuming = stub.ConsumeStream(log_pb2.ConsumeRequest(offset=2), timeout=60)

        # 1. the ACL loses root's grants: denied from the next call and the next message
        policy.write_text(
            "".join(ln for ln in full_policy.splitlines(True) if ln not in ROOT_GRANTS)
        )
        await reload("ACL reloaded", 1)
        rc, out = await produce()
        assert rc == 1 and "permission denied" in out and "'root'" in out, out
        rc, out, err = await _run("consume", *addr, "--from", "0", cwd=tmp_path)
        assert rc == 1 and "permission denied" in err, err
        await outgoing.put(log_pb2.ProduceRequest(record=log_pb2.Record(value=b"s2")))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(producing.read(), 10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert await produce(*as_server) == (0, "2\n")  # the server subject may produce
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(consuming.read(), 10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # "s2" was refused, not appended: offsets 0 (x), 1 (s1), 2 (x as server)
        rc, out, err = await _run("consume", *addr, *as_server, "--from", "0", cwd=tmp_path)
        assert (rc, out) == (0, "x\ns1\nx\n"), err
        await outgoing.put(None)
        await channel.close()

        # 2. a broken ACL is refused and the loaded one stays
        policy.unlink()
        await reload("ACL reload refused, keeping the loaded ACL", 1)
        assert (await produce())[0] == 1
        assert await produce(*as_server) == (0, "3\n")

        # 3. root's grants back: allowed again from the next call
        policy.write_text(full_policy)
        await reload("ACL reloaded", 2)
        assert await produce() == (0, "4\n")

        # 4. revocation by subject, then by serial; a renewed certificate (new serial) works
        deny.write_text("subject:root\n")
        await reload("deny list reloaded", 1)
        rc, out = await produce()
        assert rc == 1 and "not authenticated" in out and "'root' is on the deny list" in out, out
        serial = _serial(certs / "root-client.pem")
        deny.write_text(f"serial:{serial:X}  # root's leaked key\n")
        await reload("deny list reloaded", 2)
        rc, out = await produce()
        assert rc == 1 and f"serial {serial:X} is on the deny list" in out, out
        rc, _, err = await _run("cert", "--out-dir", "certs", "--renew", "root", cwd=tmp_path)
        assert rc == 0, err
        assert _serial(certs / "root-client.pem") != serial
        assert await produce() == (0, "5\n")
        deny.write_text("serial:zz\n")  # malformed: refused, the list loaded stays
        await reload("deny list reload refused", 1)
        assert await produce() == (0, "6\n")

        assert agent.returncode is None, "SIGHUP must not stop the node"
        agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), 15) == 0
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
    await asyncio.wait_for(log._task, 10)
    assert log.text.count("SIGHUP received") == 6
    assert "Traceback" not in log.text and "PRIVATE KEY" not in log.text


def _serial(cert_file: Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number

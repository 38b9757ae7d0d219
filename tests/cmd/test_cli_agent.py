"""The path a user takes: `raftlog cert`, `raftlog agent` as a real process, and the client
commands against it; SIGTERM stops the node cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
from pathlib import Path

import pytest

from raftlog.cmd.main import main
from raftlog.security import CertFiles
from support.cli import RAFTLOG
from support.cli import run_raftlog as _run


@pytest.mark.slow
async def test_agent_process_with_client_commands(tmp_path: Path) -> None:
    rc, out, err = await _run("cert", "--out-dir", "certs", cwd=tmp_path)
    assert rc == 0, err
    for name in (
        "ca.pem",
        "server.pem",
        "root-client.pem",
        "nobody-client.pem",
        "model.conf",
        "policy.csv",
    ):
        assert (tmp_path / "certs" / name).is_file(), name

    # defaults (certs/..., the example ACL) resolve against the working directory
    agent = await asyncio.create_subprocess_exec(
        RAFTLOG,
        "agent",
        "--rpc-port",
        "0",
        "--data-dir",
        "data",
        "--log-level",
        "debug",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert agent.stdout is not None and agent.stderr is not None
    # drain the agent's log as it comes, so a full pipe never blocks the node
    log_task = asyncio.create_task(agent.stderr.read())
    try:
        banner = (await asyncio.wait_for(agent.stdout.readline(), 30)).decode()
        match = re.search(r"serving log\.v1\.Log on (127\.0\.0\.1:\d+)", banner)
        assert match, banner
        addr = ["--addr", match.group(1)]

        rc, out, err = await _run("produce", *addr, "hello", "world", cwd=tmp_path)
        assert (rc, out) == (0, "0\n1\n"), err
        lines = b"".join(b"line-%d\n" % i for i in range(2500)) + b"\xff\xfe\n"
        rc, out, err = await _run("produce", *addr, cwd=tmp_path, stdin=lines)
        assert rc == 0, err
        assert out.split() == [str(i) for i in range(2, 2503)]

        rc, out, err = await _run("consume", *addr, "--from", "0", "--count", "3", cwd=tmp_path)
        assert (rc, out) == (0, "hello\nworld\nline-0\n"), err
        rc, out, err = await _run("consume", *addr, "--from", "2", "--format", "json", cwd=tmp_path)
        assert rc == 0, err
        records = [json.loads(line) for line in out.splitlines()]
        assert len(records) == 2501
        assert records[0] == {"offset": 2, "value": "line-0", "encoding": "utf-8"}
        assert records[-1] == {"offset": 2502, "value": "//4=", "encoding": "base64"}

        rc, out, err = await _run("servers", *addr, cwd=tmp_path)
        assert rc == 0 and out == f"node-0\t{match.group(1)}\tleader\n", err
        # several addresses (repeated and comma-separated): the first that answers will do
        dead = f"127.0.0.1:{_closed_port()}"
        many = ["--addr", dead, "--addr", f"{dead},{match.group(1)}"]
        rc, out, err = await _run("servers", *many, cwd=tmp_path)
        assert rc == 0 and out == f"node-0\t{match.group(1)}\tleader\n", err
        rc, out, err = await _run("consume", *many, "--from", "1", "--count", "1", cwd=tmp_path)
        assert (rc, out) == (0, "world\n"), err

        nobody = [
            "--cert-file",
            "certs/nobody-client.pem",
            "--key-file",
            "certs/nobody-client-key.pem",
        ]
        rc, out, err = await _run("produce", *addr, *nobody, "x", cwd=tmp_path)
        assert rc == 1 and "permission denied" in err and "'nobody'" in err
        assert "Traceback" not in err
        rc, out, err = await _run("consume", *addr, "--from", "99999", cwd=tmp_path)
        assert rc == 1 and "OUT_OF_RANGE" in err and "highest 2502" in err

        # a follower sees a record produced after it started; when the node stops it keeps
        # trying to resume for --timeout seconds, then gives up with one line
        follower = await asyncio.create_subprocess_exec(
            RAFTLOG,
            "consume",
            *addr,
            "--from",
            "2503",
            "--follow",
            "--timeout",
            "2",
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert follower.stdout is not None
        # produce until the follower (which may still be starting) has seen a record
        got = b""
        async with asyncio.timeout(30):
            rc, out, err = await _run("produce", *addr, "late", cwd=tmp_path)
            assert rc == 0, err
            got = await follower.stdout.readline()
        assert got == b"late\n"

        agent.send_signal(signal.SIGTERM)
        agent_rc = await asyncio.wait_for(agent.wait(), 15)
        assert agent_rc == 0
        follower_rc = await asyncio.wait_for(follower.wait(), 15)
        follower_err = (await follower.stderr.read()).decode() if follower.stderr else ""
        assert follower_rc == 1 and "Traceback" not in follower_err, follower_err
        assert "gave up after --timeout 2 s; last error: UNAVAILABLE" in follower_err
        assert len(follower_err.splitlines()) == 1
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
    logs = (await asyncio.wait_for(log_task, 10)).decode()
    assert "SIGTERM received" in logs and "node node-0 stopped" in logs
    assert "code=PERMISSION_DENIED" in logs  # debug logging was on
    assert "PRIVATE KEY" not in logs and "Traceback" not in logs
    # a bad setting is refused before the node starts: exit 2, naming the key
    rc, out, err = await _run(
        "agent", "--rpc-port", "0", "--data-dir", "data", "--node-name", "x y", cwd=tmp_path
    )
    assert rc == 2 and "node_name" in err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_client_errors_are_one_line_and_nonzero(
    dev_certs: dict[str, CertFiles], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = dev_certs["root"]
    tls = [
        "--ca-file",
        str(root.ca_file),
        "--cert-file",
        str(root.cert_file),
        "--key-file",
        str(root.key_file),
    ]
    port = _closed_port()
    assert main(["servers", "--addr", f"127.0.0.1:{port}", *tls]) == 1
    err = capsys.readouterr().err
    assert "connection refused" in err and "Traceback" not in err and len(err.splitlines()) == 1
    missing = ["--cert-file", str(tmp_path / "nope.pem")]
    assert main(["produce", "--addr", f"127.0.0.1:{port}", *tls[:2], *missing, "x"]) == 2
    assert "--cert-file" in capsys.readouterr().err
    assert main(["consume", "--from", "-1", "--insecure"]) == 2
    assert main(["agent", "--rpc-port", "http"]) == 2
    err = capsys.readouterr().err
    assert "rpc_port (from flag --rpc-port)" in err
    assert main([]) == 2


def test_cert_command_writes_the_make_certs_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c"
    assert main(["cert", "--out-dir", str(out), "--host", "node.example", "--client", "alice"]) == 0
    for name in ("ca.pem", "server.pem", "server-key.pem", "alice-client.pem", "policy.csv"):
        assert (out / name).is_file()
    assert not (out / "root-client.pem").exists()
    assert oct((out / "alice-client-key.pem").stat().st_mode & 0o777) == "0o600"
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node.example" in names.get_values_for_type(x509.DNSName)
    assert "PRIVATE KEY" not in capsys.readouterr().out
    assert os.access(out / "ca.pem", os.R_OK)


def test_agent_reports_a_port_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(
            ["agent", "--insecure", "--rpc-port", str(port), "--data-dir", str(tmp_path / "d")]
        )
    assert rc == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err

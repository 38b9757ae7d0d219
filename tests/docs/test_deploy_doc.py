"""Every ``curl`` example of docs/deploy.md, run as written against a live ``raftlog agent``
process (``--http-port``), with the node's address and certificates put in for
``$RAFTLOG_HTTP`` and ``$CERTS``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from raftlog.agent.devcluster import default_raftlog, free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def curl_blocks() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)
    return [b for b in blocks if "curl" in b]


async def _bash(script: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_every_curl_example_runs_against_a_live_node(tmp_path: Path) -> None:
    raftlog = default_raftlog()
    cert = await asyncio.create_subprocess_exec(
        *raftlog,
        "cert",
        "--out-dir",
        "certs",
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(cert.communicate(), 60)
    assert cert.returncode == 0, err
    http_port = free_port()
    agent = await asyncio.create_subprocess_exec(
        *raftlog,
        "agent",
        "--rpc-port",
        "0",
        "--http-port",
        str(http_port),
        "--data-dir",
        "data",
        "--sync",
        "never",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert agent.stdout is not None and agent.stderr is not None
    log = asyncio.ensure_future(agent.stderr.read())
    try:
        banner = (await asyncio.wait_for(agent.stdout.readline(), 30)).decode()
        assert "serving log.v1.Log" in banner, banner
        http_line = (await asyncio.wait_for(agent.stdout.readline(), 5)).decode()
        assert http_line == f"HTTP/JSON API on https://127.0.0.1:{http_port} (docs/deploy.md)\n"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAFTLOG_")},
            "RAFTLOG_HTTP": f"https://127.0.0.1:{http_port}",
            "CERTS": "certs",
        }
        blocks = curl_blocks()
        assert len(blocks) == 6
        outputs = []
        for block in blocks:
            code, out, err = await _bash(block, tmp_path, env)
            assert code == 0, f"{block}\n-> {code}: {err}"
            outputs.append(out)
        produced, read, follow, idempotent, members, out_of_range = outputs
        assert json.loads(produced) == {"offset": 0, "last_offset": 1, "duplicate": False}
        records = json.loads(read)["records"]
        assert records[0] == {"offset": 0, "value": "hello", "encoding": "utf8"}
        assert records[1] == {"offset": 1, "value": "\x00\x01\x02", "encoding": "utf8"}
        lines = [json.loads(line) for line in follow.splitlines()]
        assert [x["offset"] for x in lines] == [0, 1]
        assert json.loads(idempotent) == {"offset": 2, "last_offset": 2, "duplicate": False}
        code, again, _ = await _bash(blocks[3], tmp_path, env)
        assert json.loads(again) == {"offset": 2, "last_offset": 2, "duplicate": True}
        decoder = json.JSONDecoder()
        servers, end = decoder.raw_decode(members)
        offsets = decoder.decode(members[end:].strip())
        assert servers["servers"][0]["is_leader"] is True
        assert offsets["next_offset"] == 3
        body, status = out_of_range.strip().rsplit("\n", 1)
        assert status == "404"
        assert json.loads(body)["error"]["metadata"] == {
            "offset": "1000",
            "lowest": "0",
            "highest": "2",
        }
    finally:
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(agent.wait(), 20)
        await log
    assert rc == 0, (await log).decode()[-2000:]

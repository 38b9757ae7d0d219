"""The soak scenario of issue 12, scaled down (``make soak`` runs the full one).

Three ``raftlog agent`` processes with default settings, 300 k records of 100 B in
batches of 1000 over ProduceStream, every node killed -9 at once and restarted: every
acknowledged record is read back at its offset (nothing lost), and a write is
acknowledged again within a bound that does not depend on the log's size. With
``--retention-bytes`` the lowest offset moves (through the restart) and every record above
it is still there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
RECORDS = 300_000

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def soak(tmp_path: Path, *agent_args: str) -> dict[str, Any]:
    out = tmp_path / "soak.json"
    args = [sys.executable, str(SOAK), "--records", str(RECORDS), "--check", "--idle", "1"]
    args += ["--json", str(out), "--dir", str(tmp_path / "run"), "--restart-timeout", "60"]
    if agent_args:
        args += ["--agent-args", " ".join(agent_args)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=140, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["records"] == RECORDS
    return result


def test_nothing_is_lost_across_kill_9_of_every_node(tmp_path: Path) -> None:
    result = soak(tmp_path)
    assert result["lowest_offset"] == 0
    # every record acknowledged before the kill is there, dense, in order (the write
    # acknowledged after the restart may follow them)
    assert result["read_back"] >= RECORDS
    # restart: generous on a shared machine; the benchmark's goal is 3 s
    assert result["restart_s"] < 20, result
    # memory and disk stay bounded: no node holds the payload in memory, one copy on disk
    payload = result["payload"]
    for name, (allocated, _apparent) in result["disk"].items():
        assert allocated < 1.6 * payload + (48 << 20), (name, allocated, payload)
    for name, kib in result["rss_kib"].items():
        assert kib < 400 * 1024, (name, kib)


def test_with_retention_the_lowest_offset_moves_and_the_rest_survives(tmp_path: Path) -> None:
    limit = 8 << 20  # 8 MB of segments (of the 36 MB written), 1 MiB each
    result = soak(tmp_path, "--retention-bytes", str(limit), "--segment-bytes", str(1 << 20))
    lowest = result["lowest_offset"]
    assert lowest > RECORDS // 2, result  # retention moved it, through the restart
    assert lowest + result["read_back"] >= RECORDS  # everything above it is there, in order
    for name, (allocated, _apparent) in result["disk"].items():
        # the kept segments, the active one, their indexes, the bounded Raft log
        assert allocated < limit + (60 << 20), (name, allocated)

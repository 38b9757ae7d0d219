"""The audit log file: JSON lines, mode 0600, nothing but the facts handed over."""

from __future__ import annotations

import json
from pathlib import Path

from raftlog.server.interceptors import peer_of
from raftlog.telemetry import NO_AUDIT, AuditLog


def test_records_are_json_lines_with_the_required_fields(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "audit.jsonl"
    audit = AuditLog(path)
    audit.record("call", subject="nobody", peer="127.0.0.1:5", method="/m", decision="denied")
    audit.record(
        "membership", subject="n2", peer="", method="join", decision="refused", reason="why"
    )
    audit.close()
    audit.record("call", subject="late", peer="-", method="/m", decision="denied")  # dropped
    audit.close()  # idempotent
    assert path.stat().st_mode & 0o777 == 0o600
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["subject"] for e in lines] == ["nobody", "n2"]
    assert set(lines[0]) == {"time", "event", "subject", "peer", "method", "decision"}
    assert lines[1]["peer"] == "-" and lines[1]["reason"] == "why"
    assert lines[0]["time"].endswith("+00:00")
    assert audit.written == 2
    NO_AUDIT.record("call", subject="x", peer="y", method="z", decision="denied")


def test_a_call_relayed_by_the_mux_is_attributed_to_the_tcp_client() -> None:
    assert peer_of("unix-abstract:raftlog-peer%20127.0.0.1:4242%20123-7") == "127.0.0.1:4242"
    assert peer_of("unix-abstract:raftlog-peer%20[::1]:4242%201-0") == "[::1]:4242"
    assert peer_of("ipv4:10.0.0.1:99") == "ipv4:10.0.0.1:99"
    assert peer_of("unix:") == "unix:"

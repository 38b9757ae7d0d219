"""The retention settings: --retention-bytes, --retention-age, --segment-bytes from flags,
env and YAML, their validation, and what the agent builds from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftlog.agent.cluster import segment_config
from raftlog.cmd.main import build_parser
from raftlog.config import AgentConfig, ConfigError, load_config
from raftlog.config.agent_config import parse_duration
from support.config_check import INSECURE, assert_refused


def test_defaults_are_no_limit_and_64_mib_segments() -> None:
    c = AgentConfig()
    assert (c.retention_bytes, c.retention_age, c.segment_bytes) == (0, 0.0, 64 << 20)
    log = segment_config(c.segment_bytes)
    # the default LogConfig's: 4 M entries of 8 bytes (48 MiB with the 12-byte entries before)
    assert log.max_store_bytes == 64 << 20 and log.max_index_bytes == 32 << 20


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("168h", 168 * 3600.0),
        ("30m", 1800.0),
        ("90s", 90.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("7d", 7 * 86400.0),
        ("0", 0.0),
        ("12", 12.0),
        ("1.5h", 5400.0),
        (45, 45.0),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text, "retention_age") == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5x", "unknown duration unit 'x'"),
        ("1w", "unknown duration unit 'w'"),
        ("h", "expected a duration"),
        ("-5m", "expected a duration"),
        ("5 m", "expected a duration"),
        (-3, "must be a duration >= 0"),
        (True, "expected a duration"),
    ],
)
def test_bad_durations_are_named(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_duration(value, "retention_age (from flag --retention-age)")
    assert "retention_age" in str(info.value)


def test_flags_env_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("retention-bytes: 1000000\nretention_age: 168h\nsegment_bytes: 65536\n")
    c = load_config(INSECURE, env={}, config_file=cfg)
    assert (c.retention_bytes, c.retention_age, c.segment_bytes) == (1_000_000, 604800.0, 65536)
    env = {"RAFTLOG_RETENTION_BYTES": "2000", "RAFTLOG_RETENTION_AGE": "30m"}
    c = load_config({**INSECURE, "segment_bytes": "8192"}, env=env, config_file=cfg)
    assert (c.retention_bytes, c.retention_age, c.segment_bytes) == (2000, 1800.0, 8192)
    args = build_parser().parse_args(
        ["agent", "--retention-bytes", "5", "--retention-age", "90s", "--segment-bytes", "4096"]
    )
    flags = {k: getattr(args, k) for k in ("retention_bytes", "retention_age", "segment_bytes")}
    c = load_config({**INSECURE, **flags}, env={})
    assert (c.retention_bytes, c.retention_age, c.segment_bytes) == (5, 90.0, 4096)
    assert segment_config(4096).max_store_bytes == 4096


@pytest.mark.parametrize(
    ("flags", "env", "file_text", "message"),
    [
        ({"retention_bytes": "-1"}, {}, None, "retention_bytes (from flag --retention-bytes)"),
        ({}, {}, "retention_bytes: -1\n", "retention_bytes: must be >= 0"),
        ({}, {"RAFTLOG_RETENTION_AGE": "3 days"}, None, "retention_age (from env"),
        ({"retention_age": "10y"}, {}, None, "unknown duration unit 'y'"),
        ({"segment_bytes": "100"}, {}, None, "segment_bytes: must be between 4096"),
        ({}, {}, "segment_bytes: 2147483648\n", "segment_bytes: must be between"),
        ({"segment_bytes": "64MiB"}, {}, None, "segment_bytes (from flag --segment-bytes)"),
    ],
)
def test_bad_values_are_refused_clearly(
    tmp_path: Path, flags: dict[str, str], env: dict[str, str], file_text: str | None, message: str
) -> None:
    assert_refused(tmp_path, message, flags=flags, env=env, file_text=file_text)

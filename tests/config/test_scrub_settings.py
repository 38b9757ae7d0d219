"""The scrub settings: --scrub-rate-mb-s, --scrub-interval, --checkpoint-hash-interval from
flags, env and YAML, their validation, and the help text that names their units."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftlog.cmd.main import build_parser
from raftlog.config import AgentConfig, load_config
from support.config_check import INSECURE, assert_refused

KEYS = ("scrub_rate_mb_s", "scrub_interval", "checkpoint_hash_interval")


def values(c: AgentConfig) -> tuple[float, float, float]:
    return (c.scrub_rate_mb_s, c.scrub_interval, c.checkpoint_hash_interval)


def test_defaults_scrub_slowly_and_hash_every_minute() -> None:
    assert values(AgentConfig()) == (1.0, 3600.0, 60.0)


def test_flags_env_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("scrub-rate-mb-s: 2.5\nscrub_interval: 30m\ncheckpoint_hash_interval: 5m\n")
    assert values(load_config(INSECURE, env={}, config_file=cfg)) == (2.5, 1800.0, 300.0)
    env = {
        "RAFTLOG_SCRUB_RATE_MB_S": "0",
        "RAFTLOG_SCRUB_INTERVAL": "90s",
        "RAFTLOG_CHECKPOINT_HASH_INTERVAL": "0",
    }
    assert values(load_config(INSECURE, env=env, config_file=cfg)) == (0.0, 90.0, 0.0)
    args = build_parser().parse_args(
        [
            "agent",
            "--scrub-rate-mb-s",
            "0.5",
            "--scrub-interval",
            "1h",
            "--checkpoint-hash-interval",
            "2s",
        ]
    )
    flags = {k: getattr(args, k) for k in KEYS}
    assert values(load_config({**INSECURE, **flags}, env=env)) == (0.5, 3600.0, 2.0)


def test_help_names_the_units(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["agent", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "in MB/s (10^6 bytes per second)" in out
    assert "RAFTLOG_SCRUB_INTERVAL" in out and "RAFTLOG_CHECKPOINT_HASH_INTERVAL" in out


@pytest.mark.parametrize(
    ("flags", "env", "file_text", "message"),
    [
        ({"scrub_rate_mb_s": "-1"}, {}, None, "scrub_rate_mb_s: must be >= 0 MB/s"),
        ({"scrub_rate_mb_s": "fast"}, {}, None, "scrub_rate_mb_s (from flag --scrub-rate-mb-s)"),
        ({}, {"RAFTLOG_SCRUB_RATE_MB_S": "nan"}, None, "scrub_rate_mb_s: must be >= 0"),
        ({}, {}, "scrub_interval: 0\n", "scrub_interval: must be a duration > 0"),
        ({"checkpoint_hash_interval": "1y"}, {}, None, "unknown duration unit 'y'"),
        ({}, {}, "checkpoint_hash_interval: -5\n", "checkpoint_hash_interval"),
    ],
)
def test_bad_values_are_refused_clearly(
    tmp_path: Path, flags: dict[str, str], env: dict[str, str], file_text: str | None, message: str
) -> None:
    assert_refused(tmp_path, message, flags=flags, env=env, file_text=file_text)

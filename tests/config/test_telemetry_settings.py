"""The telemetry settings: --metrics-addr, --otlp-endpoint, --log-format (flag, env, YAML)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftlog.cmd.main import build_parser
from raftlog.config import AgentConfig, ConfigError, load_config


def test_defaults_are_off_and_text() -> None:
    c = AgentConfig()
    assert (c.metrics_addr, c.otlp_endpoint, c.log_format) == ("", "", "text")
    assert c.tracing_endpoint({}) == ""


def test_each_setting_comes_from_flag_env_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        "metrics-addr: 127.0.0.1:9100\notlp_endpoint: http://127.0.0.1:4317\nlog_format: json\n"
    )
    c = load_config({}, env={"RAFTLOG_INSECURE": "1"}, config_file=cfg)
    assert (c.metrics_addr, c.otlp_endpoint, c.log_format) == (
        "127.0.0.1:9100",
        "http://127.0.0.1:4317",
        "json",
    )
    env = {"RAFTLOG_INSECURE": "1", "RAFTLOG_METRICS_ADDR": "0.0.0.0:0"}
    c = load_config({"log_format": "text"}, env=env, config_file=cfg)
    assert (c.metrics_addr, c.log_format) == ("0.0.0.0:0", "text")
    args = build_parser().parse_args(
        ["agent", "--metrics-addr", "127.0.0.1:0", "--log-format", "json"]
    )
    assert (args.metrics_addr, args.log_format) == ("127.0.0.1:0", "json")


def test_the_standard_otel_variable_turns_tracing_on() -> None:
    c = AgentConfig()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    assert c.tracing_endpoint(env) == "http://collector:4317"
    explicit = AgentConfig(otlp_endpoint="https://other:4317")
    assert explicit.tracing_endpoint(env) == "https://other:4317"  # the flag wins


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("metrics_addr", "nonsense", "metrics_addr (from flag --metrics-addr): expected HOST:PORT"),
        ("metrics_addr", "127.0.0.1:99999", "expected HOST:PORT (port 0-65535)"),
        ("otlp_endpoint", "collector:4317", "otlp_endpoint (from flag --otlp-endpoint): expected"),
        ("otlp_endpoint", "ftp://x:1", "expected http://HOST:PORT or https://HOST:PORT"),
        ("log_format", "xml", "log_format (from flag --log-format): must be one of text, json"),
    ],
)
def test_bad_values_get_clear_errors(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config({key: value, "insecure": True}, env={})


def test_validate_checks_a_config_built_in_code() -> None:
    with pytest.raises(ConfigError, match="log_format: must be one of text, json"):
        AgentConfig(log_format="yaml", insecure=True).validate()
    with pytest.raises(ConfigError, match="metrics_addr: expected HOST:PORT"):
        AgentConfig(metrics_addr="localhost", insecure=True).validate()
    with pytest.raises(ConfigError, match="otlp_endpoint: expected"):
        AgentConfig(otlp_endpoint="localhost:4317", insecure=True).validate()

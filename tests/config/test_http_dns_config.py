"""The settings of issue 15: --http-port, --join-dns, --dns-server and their bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftlog.cmd.main import build_parser
from raftlog.config import AgentConfig, ConfigError, load_config


def test_defaults_keep_http_and_dns_join_off() -> None:
    c = AgentConfig()
    assert c.http_port == 0 and c.join_dns == "" and c.dns_server == ""
    assert (c.join_dns_timeout_s, c.dns_bootstrap_wait_s) == (300.0, 5.0)
    assert not AgentConfig(insecure=True, data_dir=Path("/nonexistent")).cluster_mode
    assert AgentConfig(join_dns="raftlog.default.svc.cluster.local").cluster_mode


def test_flag_env_and_file_spellings(tmp_path: Path) -> None:
    cfg = tmp_path / "n.yaml"
    cfg.write_text("http-port: 8480\njoin_dns: from-file:8401\ndns_server: 10.0.0.10:53\n")
    c = load_config({"insecure": True}, env={}, config_file=cfg)
    assert (c.http_port, c.join_dns, c.dns_server) == (8480, "from-file:8401", "10.0.0.10:53")
    env = {
        "RAFTLOG_HTTP_PORT": "8481",
        "RAFTLOG_JOIN_DNS": "svc.ns.svc.cluster.local",
        "RAFTLOG_DNS_SERVER": "127.0.0.1:5353",
        "RAFTLOG_JOIN_DNS_TIMEOUT_S": "12.5",
        "RAFTLOG_DNS_BOOTSTRAP_WAIT_S": "2",
        "RAFTLOG_PEER_TLS_SERVER_NAME": "raftlog.ns.svc.cluster.local",
    }
    c = load_config({"insecure": True, "http_port": "8482"}, env=env, config_file=cfg)
    assert c.http_port == 8482  # the flag wins
    assert (c.join_dns, c.dns_server) == ("svc.ns.svc.cluster.local", "127.0.0.1:5353")
    assert (c.join_dns_timeout_s, c.dns_bootstrap_wait_s) == (12.5, 2.0)
    assert c.peer_tls_server_name == "raftlog.ns.svc.cluster.local"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"http_port": "70000"}, "http_port: must be a port number 0-65535 (0 = off)"),
        ({"http_port": "web"}, "http_port (from flag --http-port): expected a port"),
        ({"http_port": "8400", "rpc_port": "8400"}, "http_port: must differ from rpc_port"),
        ({"join_dns": "svc:99999"}, "join_dns: expected NAME[:PORT] with a port 1-65535"),
        ({"join_dns": "a b"}, "join_dns: expected NAME[:PORT]"),
        ({"join_dns": "svc", "peers": ["n1=127.0.0.1:1"]}, "cannot be combined with peers"),
        ({"join_dns": "svc", "bootstrap": True}, "cannot be combined with bootstrap"),
        ({"dns_server": "nameserver"}, "dns_server: expected HOST:PORT"),
        ({"join_dns_timeout_s": "0"}, "join_dns_timeout_s: must be a positive number"),
        ({"dns_bootstrap_wait_s": "soon"}, "dns_bootstrap_wait_s (from flag"),
        ({"peer_tls_server_name": "raftlog.svc:8400"}, "peer_tls_server_name: expected a host"),
        ({"peer_tls_server_name": "a b"}, "peer_tls_server_name: expected a host"),
    ],
)
def test_bad_values_name_the_key(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"insecure": True, **flags}, env={})
    assert message in str(err.value)


def test_help_gives_unit_default_and_env(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["agent", "--help"])
    flat = " ".join(capsys.readouterr().out.split())
    assert "(0 = off; see docs/deploy.md) (env RAFTLOG_HTTP_PORT; default: 0)" in flat
    assert "(env RAFTLOG_JOIN_DNS; default: )" in flat
    assert "empty = the system resolver (env RAFTLOG_DNS_SERVER; default: )" in flat
    assert "before it gives up, seconds (env RAFTLOG_JOIN_DNS_TIMEOUT_S; default: 300.0)" in flat
    assert "(env RAFTLOG_DNS_BOOTSTRAP_WAIT_S; default: 5.0)" in flat
    assert "(env RAFTLOG_PEER_TLS_SERVER_NAME; default: )" in flat

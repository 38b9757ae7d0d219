"""AgentConfig: defaults, precedence (flags > env > file > defaults) and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftlog.cmd.main import build_parser
from raftlog.config import FIELDS, AgentConfig, ConfigError, load_config


def test_defaults_are_the_documented_ones() -> None:
    c = AgentConfig()
    assert (c.rpc_port, c.bind_host, c.rpc_addr) == (8400, "127.0.0.1", "127.0.0.1:8400")
    assert c.data_dir == Path(".data/node-0") and c.sync == "always"
    assert c.server_tls_cert_file == Path("certs/server.pem")
    assert c.acl_policy_file == Path("certs/policy.csv")
    assert c.max_message_bytes == 4 << 20
    for name, f in FIELDS.items():
        assert f.metadata["help"], f"{name} has no documentation"


def test_flags_override_env_override_file(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        "rpc-port: 9001\nnode_name: from-file\nlog_level: debug\ndata_dir: d\n"
        "start_join_addrs: [127.0.0.1:9100, '127.0.0.1:9101']\ninsecure: true\n"
    )
    env = {"RAFTLOG_RPC_PORT": "9002", "RAFTLOG_NODE_NAME": "from-env"}
    c = load_config({"rpc_port": "9003", "bootstrap": None}, env=env, config_file=cfg)
    assert c.rpc_port == 9003  # flag wins over env and file
    assert c.node_name == "from-env"  # env wins over file
    assert c.log_level == "debug"  # file wins over defaults
    assert c.data_dir == tmp_path / "d"  # relative to the config file
    assert c.start_join_addrs == ("127.0.0.1:9100", "127.0.0.1:9101")
    assert c.bootstrap is False
    c2 = load_config({}, env={"RAFTLOG_CONFIG_FILE": str(cfg), "RAFTLOG_INSECURE": "yes"})
    assert c2.rpc_port == 9001 and c2.insecure


@pytest.mark.parametrize(
    ("flags", "env", "file_text", "message"),
    [
        (
            {},
            {"RAFTLOG_RPC_PORT": "http"},
            None,
            "rpc_port (from env RAFTLOG_RPC_PORT): expected a port",
        ),
        ({"rpc_port": "70000"}, {}, None, "rpc_port: must be a port number 0-65535"),
        ({}, {}, "rpc_prot: 1\n", "rpc_prot"),
        ({}, {}, "- a\n- b\n", "must hold a mapping"),
        ({}, {}, "bootstrap: maybe\n", "bootstrap (from"),
        ({"sync": "sometimes"}, {}, None, "sync (from flag --sync): must be one of always"),
        (
            {"bind_addr": "localhost"},
            {},
            None,
            "bind_addr (from flag --bind-addr): expected HOST:PORT",
        ),
        ({"start_join_addrs": ["a:1,b"]}, {}, None, "start_join_addrs"),
        ({"insecure": False}, {}, None, "acl_model_file: no such file: certs/model.conf"),
    ],
)
def test_errors_name_the_key_and_the_problem(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: dict[str, object],
    env: dict[str, str],
    file_text: str | None,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # no certs/ here
    cfg = None
    if file_text is not None:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(file_text)
    flags = {"insecure": True, **flags}
    with pytest.raises(ConfigError) as err:
        load_config(flags, env=env, config_file=cfg)
    assert message in str(err.value)


def test_agent_help_lists_every_flag_and_marks_cluster_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["agent", "--help"])
    text = capsys.readouterr().out
    for name in ["config_file", *FIELDS]:
        assert "--" + name.replace("_", "-") in text
    assert "RAFTLOG_RPC_PORT" in text
    flat = " ".join(text.split())
    assert flat.count("[used in cluster mode only]") == 10


def test_audit_log_and_gossip_key_file_are_paths_off_by_default(tmp_path: Path) -> None:
    assert AgentConfig().audit_log == "" and AgentConfig().serf_encrypt_key_file == ""
    cfg = tmp_path / "node.yaml"
    cfg.write_text("audit_log: audit/node.jsonl\nserf_encrypt_key_file: gossip.key\n")
    (tmp_path / "gossip.key").write_text("cg8StVXbQJ0gPvMd9o7yrg==\n")
    c = load_config({}, env={"RAFTLOG_INSECURE": "yes"}, config_file=cfg)
    assert c.audit_log == str(tmp_path / "audit" / "node.jsonl")  # relative to the file
    assert c.serf_encrypt_key_file == str(tmp_path / "gossip.key")
    env = {"RAFTLOG_AUDIT_LOG": str(tmp_path / "a.jsonl"), "RAFTLOG_INSECURE": "yes"}
    assert load_config({}, env=env).audit_log == str(tmp_path / "a.jsonl")
    missing = AgentConfig(insecure=True, serf_encrypt_key_file=str(tmp_path / "nope.key"))
    with pytest.raises(ConfigError, match="serf_encrypt_key_file: no such file"):
        missing.validate()

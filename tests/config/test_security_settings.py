"""The revocation setting: --deny-list-file from flags, env and YAML (relative to the
file's directory there), and a missing file refused before the node starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftlog.cmd.main import build_parser
from raftlog.config import AgentConfig, ConfigError, load_config
from raftlog.security import CertFiles
from support.cluster_files import agent_tls
from support.config_check import INSECURE


def test_default_is_no_deny_list() -> None:
    assert AgentConfig().deny_list_file is None


def test_flags_env_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("deny-list-file: revoked.txt\n")
    c = load_config(INSECURE, env={}, config_file=cfg)
    assert c.deny_list_file == tmp_path / "revoked.txt"
    c = load_config(INSECURE, env={"RAFTLOG_DENY_LIST_FILE": "/etc/deny"}, config_file=cfg)
    assert c.deny_list_file == Path("/etc/deny")
    args = build_parser().parse_args(["agent", "--deny-list-file", "x.txt"])
    c = load_config({**INSECURE, "deny_list_file": args.deny_list_file}, env={})
    assert c.deny_list_file == Path("x.txt")


def test_a_missing_deny_list_is_refused(tmp_path: Path, dev_certs: dict[str, CertFiles]) -> None:
    server = dev_certs["server"]
    config = AgentConfig(
        data_dir=tmp_path / "data",
        **agent_tls(server),
        acl_model_file=server.cert_file,  # any file: only existence is checked here
        acl_policy_file=server.cert_file,
        deny_list_file=tmp_path / "nope.txt",
    )
    with pytest.raises(ConfigError, match=r"deny_list_file: no such file: .*nope.txt"):
        config.validate()

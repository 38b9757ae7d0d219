"""Cluster settings of AgentConfig and the agent's choice of steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftlog.agent import Agent
from raftlog.auth import write_example_acl
from raftlog.config import AgentConfig, ConfigError, load_config
from raftlog.security import CertFiles
from support.cluster_files import agent_tls


def _config(tmp_path: Path, certs: dict[str, CertFiles], **changes: object) -> AgentConfig:
    write_example_acl(tmp_path / "acl")
    server = certs["server"]
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "rpc_port": 0,
        "acl_model_file": tmp_path / "acl" / "model.conf",
        "acl_policy_file": tmp_path / "acl" / "policy.csv",
        **agent_tls(server),
    }
    values.update(changes)
    return AgentConfig(**values)  # type: ignore[arg-type]


def test_cluster_mode_is_chosen_by_flags_or_existing_raft_state(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    assert not _config(tmp_path, dev_certs).cluster_mode
    assert [s.name for s in Agent(_config(tmp_path, dev_certs)).steps] == ["log", "server"]
    for changes in (
        {"bootstrap": True},
        {"start_join_addrs": ("127.0.0.1:9401",)},
        {"peers": ("n2=127.0.0.1:9410",)},
    ):
        config = _config(tmp_path, dev_certs, **changes)
        assert config.cluster_mode, changes
        assert [s.name for s in Agent(config).steps] == [
            "mux",
            "raft",
            "topics",
            "server",
            "membership",
        ]
    (tmp_path / "data" / "raft").mkdir(parents=True)
    assert _config(tmp_path, dev_certs).cluster_mode  # a restarted member needs no flag


def test_cluster_keys_parse_and_validate(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    config = load_config(
        {
            "insecure": True,
            "data_dir": str(tmp_path),
            "peers": ["n1=127.0.0.1:9400,n2=127.0.0.1:9410"],
            "snapshot_threshold": "64",
            "snapshot_bytes": "1048576",
            "serf_profile": "local",
            "failed_grace_s": "2.5",
            "bind_addr": "127.0.0.1:9401",
        },
        env=env,
    )
    assert config.peers == ("n1=127.0.0.1:9400", "n2=127.0.0.1:9410")
    assert (config.snapshot_threshold, config.serf_profile, config.failed_grace_s) == (
        64,
        "local",
        2.5,
    )
    assert config.snapshot_bytes == 1 << 20
    assert AgentConfig().snapshot_bytes == 32 << 20  # the default bounds the Raft log in bytes
    assert config.serf_rpc == "127.0.0.1:9402"  # gossip port + 1 by default
    bad = [
        ({"peers": ["127.0.0.1:9400"]}, "expected ID=HOST:PORT"),
        ({"serf_rpc_addr": "10.0.0.1:9402"}, "loopback"),
        ({"serf_profile": "fast"}, "serf_profile"),
        ({"snapshot_threshold": "-1"}, "snapshot_threshold"),
        ({"snapshot_bytes": "-5"}, "snapshot_bytes"),
        ({"snapshot_bytes": "lots"}, "snapshot_bytes"),
    ]
    for flags, message in bad:
        with pytest.raises(ConfigError) as err:
            load_config({"insecure": True, "data_dir": str(tmp_path), **flags}, env=env)
        assert message in str(err.value), flags


def test_cluster_mode_refuses_insecure(tmp_path: Path) -> None:
    config = AgentConfig(data_dir=tmp_path / "d", insecure=True, bootstrap=True)
    with pytest.raises(ValueError, match="cluster mode needs TLS"):
        Agent(config)

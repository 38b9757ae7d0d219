"""raftlog.config: the node's validated configuration (file, env, flags)."""

from raftlog.config.agent_config import (
    ENV_PREFIX,
    FIELDS,
    AgentConfig,
    ConfigError,
    env_name,
    load_config,
    read_config_file,
)

__all__ = [
    "ENV_PREFIX",
    "FIELDS",
    "AgentConfig",
    "ConfigError",
    "env_name",
    "load_config",
    "read_config_file",
]

"""``raftlog agent``: run one node. Flags override RAFTLOG_* env vars, which override the file."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import TYPE_CHECKING, Any

from raftlog.config import FIELDS, AgentConfig, ConfigError, env_name, load_config

if TYPE_CHECKING:
    from raftlog.agent import Agent

CLUSTER_NOTE = " [cluster mode: takes effect with Raft/Serf]"


def register(sub: Any) -> None:
    """Add the ``agent`` sub-command with one flag per config key."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "agent",
        help="run a raftlog node",
        description=(
            "Run one raftlog node: the commit log in --data-dir, the gRPC API on the bind "
            "host at --rpc-port with mutual TLS and the Casbin ACL. Every setting can come "
            "from the YAML --config-file, from an environment variable RAFTLOG_<NAME> "
            "(e.g. RAFTLOG_RPC_PORT) or from its flag; flags override env, env overrides "
            "the file. The defaults work from the repository root after `make certs`."
        ),
    )
    parser.add_argument(
        "--config-file", default=None, help="YAML file of settings (keys as below, e.g. rpc_port)"
    )
    defaults = AgentConfig()
    for name, field in FIELDS.items():
        meta = field.metadata
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text = f"{meta['help']} (env {env_name(name)}; default: {shown})"
        if meta["cluster"]:
            help_text += CLUSTER_NOTE
        if meta["kind"] == "bool":
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif meta["kind"] in ("addrs", "peers"):
            parser.add_argument(flag, dest=name, action="append", default=None, help=help_text)
        elif meta["kind"] == "choice":
            parser.add_argument(
                flag, dest=name, choices=meta["choices"], default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)
    parser.set_defaults(handler=run)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # grpc's Python side logs each call's event-loop lookup at DEBUG: noise, not insight.
    logging.getLogger("grpc").setLevel(max(logging.INFO, logging.getLogger().level))
    if level != "debug":
        # Casbin logs the whole model and policy at INFO on every load.
        logging.getLogger("casbin").setLevel(logging.WARNING)


def _announce(agent: Agent) -> None:
    """Where to connect, and commands to try (stdout, flushed at once)."""
    config = agent.config
    addr = agent.rpc_addr
    # show the command as it was typed (e.g. .venv/bin/raftlog under `make run`)
    prog = sys.argv[0] if "/" in sys.argv[0] and sys.argv[0].endswith("raftlog") else "raftlog"
    client = "" if addr == "127.0.0.1:8400" else f" --addr {addr}"
    if config.insecure:
        client += " --insecure"
    mode = "INSECURE: no TLS, no ACL" if config.insecure else "mutual TLS + Casbin ACL"
    role = ""
    if agent.cluster is not None:
        role = (
            f"cluster member (gRPC and Raft on one port, Serf gossip on {config.bind_addr}); "
            if not config.peers
            else "cluster member (gRPC and Raft on one port, static peers); "
        )
    print(
        f"raftlog node {config.node_name} is serving log.v1.Log on {addr} ({mode}); "
        f"{role}data in {config.data_dir}\n"
        "try, in another terminal:\n"
        f"  {prog} produce{client} hello world\n"
        f"  {prog} consume{client} --from 0\n"
        f"  {prog} consume{client} --from 0 --follow --format json\n"
        f"  {prog} servers{client}\n"
        "stop with Ctrl-C (SIGINT) or SIGTERM",
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    """Load the config, run the node until a signal, exit 0 on a clean stop."""
    flags = {name: getattr(args, name, None) for name in FIELDS}
    try:
        config = load_config(flags, config_file=args.config_file)
    except ConfigError as exc:
        print(f"raftlog agent: config error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config.log_level)
    # The node's modules (grpc, numpy, casbin) load here, not when the CLI starts, so the
    # client commands and --help stay quick.
    from raftlog.agent import Agent
    from raftlog.auth import AuthConfigError
    from raftlog.discovery import SerfAgentError, SerfConfigError
    from raftlog.raft import RaftError
    from raftlog.security import TLSConfigError
    from raftlog.server import BindError

    try:
        asyncio.run(Agent(config).run_until_signalled(_announce))
    except (
        BindError,
        AuthConfigError,
        TLSConfigError,
        ConfigError,
        SerfAgentError,
        SerfConfigError,
        RaftError,
    ) as exc:
        print(f"raftlog agent: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"raftlog agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0

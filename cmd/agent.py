"""``raftlog agent``: run one node. Flags override RAFTLOG_* env vars, which override the file."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from raftlog.config import FIELDS, AgentConfig, ConfigError, env_name, load_config

if TYPE_CHECKING:
    from raftlog.agent import Agent

CLUSTER_NOTE = " [used in cluster mode only]"


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
    _register_dev_cluster(sub)


def _register_dev_cluster(sub: Any) -> None:
    """``raftlog dev-cluster``: a local cluster of agent processes (what `make run` runs)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "dev-cluster",
        help="run a local cluster of raftlog agents (make run)",
        description=(
            "Start NODES `raftlog agent` processes on 127.0.0.1 (the first bootstraps, the "
            "others join it through Serf), wait until the cluster has a leader and every "
            "member, print the addresses and commands to try, and stop every node on "
            "SIGINT/SIGTERM (Ctrl-C). Node i listens on BASE_PORT + 10 i (gRPC and Raft), "
            "+1 (Serf gossip) and +2 (Serf RPC); its data lives in DATA_DIR/node-i and is "
            "kept between runs (a restart never bootstraps again)."
        ),
    )
    parser.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    parser.add_argument(
        "--data-dir", default=".data/cluster", help="parent of the nodes' data dirs"
    )
    parser.add_argument(
        "--certs-dir",
        default="certs",
        help="certificates and ACL as `make certs` writes them (default certs)",
    )
    parser.add_argument("--base-port", type=int, default=8400, help="first port (default 8400)")
    parser.add_argument(
        "--start-timeout", type=float, default=60.0, help="seconds to wait for the cluster"
    )
    parser.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        help="extra flag passed to every agent (repeatable), e.g. --agent-arg=--sync=never",
    )
    parser.set_defaults(handler=run_dev_cluster)


def run_dev_cluster(args: argparse.Namespace) -> int:
    """Run the local cluster until a signal; 0 on a clean stop."""
    from pathlib import Path

    from raftlog.agent.devcluster import ClusterFiles, DevCluster, DevClusterError

    if not 1 <= args.nodes <= 9:
        print("raftlog dev-cluster: --nodes must be 1..9", file=sys.stderr)
        return 2
    files = ClusterFiles.from_dir(Path(args.certs_dir).resolve())
    for path in (files.server_cert, files.server_key, files.ca, files.acl_model, files.acl_policy):
        if not path.is_file():
            print(f"raftlog dev-cluster: no such file: {path} (run `make certs`)", file=sys.stderr)
            return 2
    from raftlog.security.certs import decoded_names
    from raftlog.security.peer_identity import names_node

    names = [f"node-{i}" for i in range(args.nodes)]
    server_names = decoded_names(files.server_cert.read_bytes())
    unnamed = [name for name in names if not names_node(server_names, name)]
    if unnamed:
        print(
            f"raftlog dev-cluster: {files.server_cert} does not name {', '.join(unnamed)}, so "
            "the leader would refuse them (docs/security.md); make it again: `raftlog cert "
            f"--out-dir {args.certs_dir}` (or `make certs` after deleting it)",
            file=sys.stderr,
        )
        return 2
    root = Path(args.data_dir).resolve()
    cluster = DevCluster(root, files, agent_args=("--serf-profile", "local", *args.agent_arg))
    from raftlog.security import TLSConfig

    client = TLSConfig(
        files.ca.parent / "root-client.pem", files.ca.parent / "root-client-key.pem", files.ca
    )
    for i, name in enumerate(names):
        base = args.base_port + 10 * i
        cluster.add_node(name, (base, base + 1, base + 2))

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            # all at once: on a restart the first node cannot elect itself alone
            seed = cluster.nodes[names[0]].gossip_addr
            cluster.start(names[0], bootstrap=True, join=[])
            for name in names[1:]:
                cluster.start(name, join=[seed])
            leader = await cluster.wait_for(
                client, members=len(names), timeout_s=args.start_timeout, every=True
            )
        except DevClusterError as exc:
            print(f"raftlog dev-cluster: {exc}", file=sys.stderr)
            return 1
        prog = sys.argv[0] if sys.argv[0].endswith("raftlog") else "raftlog"
        addrs = ",".join(cluster.nodes[n].rpc_addr for n in names)
        lines = [f"raftlog dev-cluster: {len(names)} nodes up, leader {leader}"]
        for name in names:
            node = cluster.nodes[name]
            lines.append(
                f"  {name}: rpc {node.rpc_addr}  gossip {node.gossip_addr}  "
                f"data {node.data_dir}  log {node.log_path}"
            )
        lines += [
            "try, in another terminal:",
            f"  {prog} servers --addr {addrs}",
            f"  {prog} produce --addr {addrs} hello world",
            f"  {prog} consume --addr {addrs} --from 0",
            f"  {prog} topic create demo --partitions 3 --addr {addrs}",
            f"  {prog} produce --addr {addrs} --topic demo --key user-1 hello",
            "stop every node with Ctrl-C (SIGINT) or SIGTERM",
        ]
        print("\n".join(lines), flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            dead = [n for n in names if not cluster.nodes[n].running]
            if dead and not stop.is_set():
                print(f"raftlog dev-cluster: {', '.join(dead)} exited; stopping", file=sys.stderr)
                return 1
        return 0

    try:
        code = asyncio.run(main())
    finally:
        print("raftlog dev-cluster: stopping every node", file=sys.stderr, flush=True)
        cluster.stop_all()
    return code


def _setup_logging(level: str, log_format: str = "text", node_id: str = "") -> None:
    """Log to stderr: text lines, or one JSON object per line (``--log-format json``)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from raftlog.telemetry.jsonlog import JsonFormatter, NodeIdFilter

        handler.setFormatter(JsonFormatter())
        handler.addFilter(NodeIdFilter(node_id))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
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
    if agent.metrics_addr:
        role = f"metrics on http://{agent.metrics_addr}/metrics; "
    if agent.cluster is not None:
        role += (
            f"cluster member (gRPC and Raft on one port, Serf gossip on {config.bind_addr}); "
            if not config.peers
            else "cluster member (gRPC and Raft on one port, static peers); "
        )
    http_line = ""
    if agent.http_addr:
        scheme = "http" if config.insecure else "https"
        http_line = f"HTTP/JSON API on {scheme}://{agent.http_addr} (docs/deploy.md)\n"
    print(
        f"raftlog node {config.node_name} is serving log.v1.Log on {addr} ({mode}); "
        f"{role}data in {config.data_dir}\n"
        f"{http_line}"
        "try, in another terminal:\n"
        f"  {prog} produce{client} hello world\n"
        f"  {prog} consume{client} --from 0\n"
        f"  {prog} consume{client} --from 0 --follow --format json\n"
        f"  {prog} servers{client}\n"
        "stop with Ctrl-C (SIGINT) or SIGTERM",
        flush=True,
    )


async def _run_agent(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    logging.getLogger("raftlog.agent").info(
        "event loop: %s.%s", type(loop).__module__, type(loop).__qualname__
    )
    await agent.run_until_signalled(_announce)


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for ``--event-loop`` (None: asyncio's default loop)."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            logging.getLogger(__name__).warning("uvloop is not installed; running on asyncio")
            return None
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


def run(args: argparse.Namespace) -> int:
    """Load the config, run the node until a signal, exit 0 on a clean stop."""
    flags = {name: getattr(args, name, None) for name in FIELDS}
    try:
        config = load_config(flags, config_file=args.config_file)
    except ConfigError as exc:
        print(f"raftlog agent: config error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config.log_level, config.log_format, config.node_name)
    # The node's modules (grpc, numpy, casbin) load here, not when the CLI starts, so the
    # client commands and --help stay quick.
    from raftlog.agent import Agent
    from raftlog.auth import AuthConfigError
    from raftlog.discovery import SerfAgentError, SerfConfigError
    from raftlog.raft import RaftError
    from raftlog.security import TLSConfigError
    from raftlog.server import BindError

    try:
        with asyncio.Runner(loop_factory=_loop_factory(config.event_loop)) as runner:
            runner.run(_run_agent(Agent(config)))
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

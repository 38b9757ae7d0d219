"""``raftlog servers``: the cluster's members as the server sees them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from raftlog.cmd.clientargs import add_client_flags, log_client, run_command


def register(sub: Any) -> None:
    """Add the ``servers`` sub-command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "servers", help="list the cluster's servers (id, rpc address, leader)"
    )
    add_client_flags(parser)
    parser.set_defaults(handler=lambda args: run_command(run, args, "servers"))


def run(args: argparse.Namespace) -> int:
    """Print one server per line: id, rpc_addr, and 'leader' for the leader."""
    with log_client(args) as client:
        servers = client.servers()
    for server in servers:
        role = "leader" if server.is_leader else "follower"
        sys.stdout.write(f"{server.id}\t{server.rpc_addr}\t{role}\n")
    return 0

"""``raftlog servers``: the cluster's members as the server sees them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from raftlog.api.v1 import log_pb2
from raftlog.cmd.clientargs import add_client_flags, log_stub, run_command


def register(sub: Any) -> None:
    """Add the ``servers`` sub-command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "servers", help="list the cluster's servers (id, rpc address, leader)"
    )
    add_client_flags(parser)
    parser.set_defaults(handler=lambda args: run_command(run, args, "servers"))


def run(args: argparse.Namespace) -> int:
    """Print one server per line: id, rpc_addr, and 'leader' for the leader."""
    with log_stub(args) as stub:
        response = stub.GetServers(log_pb2.GetServersRequest(), timeout=args.timeout)
    for server in response.servers:
        role = "leader" if server.is_leader else "follower"
        sys.stdout.write(f"{server.id}\t{server.rpc_addr}\t{role}\n")
    return 0

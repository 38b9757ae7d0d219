"""The ``raftlog`` command line: node (``agent``) and client commands.

Each sub-command lives in its own module of ``raftlog.cmd`` and registers itself through
``register(subparsers)``; this module only assembles them and dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import raftlog

# Modules of raftlog.cmd that contribute sub-commands, in the order --help lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "agent",
    "produce",
    "consume",
    "servers",
    "admin",
    "topic",
    "cert",
)


# gRPC's C core logs every failed TLS handshake at INFO on stderr; the commands say what
# went wrong in one line of their own. Set GRPC_VERBOSITY yourself to see the core's logs.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftlog",
        description="raftlog: a replicated, secure commit-log service.",
    )
    parser.add_argument("--version", action="version", version=f"raftlog {raftlog.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"raftlog.cmd.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

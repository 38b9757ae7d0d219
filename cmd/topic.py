"""``raftlog topic create|list|describe|delete``: topics through the admin service.

The commands call ``raftlog.admin.v1.Admin`` (CreateTopic, ListTopics, DescribeTopic,
DeleteTopic), which needs the ACL action ``admin`` (the example policy grants it to
``root``, whose certificate they present by default). Any node takes them: create and delete
are forwarded to the controller's leader by the node called, which answers once its own
metadata shows the change, so a ``topic describe`` right after sees it. The command asks
the ``--addr`` nodes in turn and stops at the first that answers; UNAVAILABLE (a node it
cannot reach, or a controller group without a leader yet) moves on to the next, and the
addresses are tried again until ``--timeout``. A refusal (topic exists, unknown topic, bad
settings, not permitted) is one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from raftlog.api.admin.v1 import admin_pb2, admin_pb2_grpc
from raftlog.cmd.admin import _call, _message, _timeout
from raftlog.cmd.clientargs import (
    EXIT_USAGE,
    CommandError,
    add_client_flags,
    addrs_of,
    run_command,
    tls_of,
)

T = TypeVar("T")

#: Table columns of ``raftlog topic describe``: one row per replica.
DESCRIBE_COLUMNS: tuple[str, ...] = (
    "PARTITION",
    "LEADER",
    "EPOCH",
    "REPLICA",
    "ADDRESS",
    "ROLE",
    "STATE",
    "NEXT",
    "LAG",
    "LIVE",
)
#: Table columns of ``raftlog topic list``.
LIST_COLUMNS: tuple[str, ...] = (
    "TOPIC",
    "PARTITIONS",
    "REPLICATION",
    "RETENTION_BYTES",
    "RETENTION_MS",
)


def register(sub: Any) -> None:
    """Add ``topic`` (create, list, describe, delete, set-retention)."""
    topic = sub.add_parser(
        "topic",
        help="topics and their partitions: create, list, describe, delete, set-retention "
        "(needs admin)",
    )
    actions = topic.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create",
        help="create a topic of P partitions",
        description=(
            "Create topic NAME with --partitions partitions (fixed for the topic's life: keys "
            "map to partitions with the count), each replicated on --replication nodes. "
            "Prints the new topic as `topic describe` does (partitions may still be electing "
            "their leaders: LEADER '-')."
        ),
    )
    create.add_argument("name", metavar="NAME", help="the topic's name")
    create.add_argument(
        "--partitions", type=int, required=True, metavar="P", help="number of partitions (>= 1)"
    )
    create.add_argument(
        "--replication",
        type=int,
        default=0,
        metavar="R",
        help="replicas per partition (default 0 = the cluster's default, 3)",
    )
    create.add_argument(
        "--retention-bytes",
        type=int,
        default=0,
        metavar="N",
        help="a partition's log may be trimmed to N bytes (default 0 = keep all)",
    )
    create.add_argument(
        "--retention-ms",
        type=int,
        default=0,
        metavar="N",
        help="records older than N milliseconds may be trimmed (default 0 = keep all)",
    )
    _add_format(create)
    add_client_flags(create)
    create.set_defaults(handler=lambda args: run_command(run_create, args, "topic create"))

    listing = actions.add_parser("list", help="every topic with its settings")
    _add_format(listing)
    add_client_flags(listing)
    listing.set_defaults(handler=lambda args: run_command(run_list, args, "topic list"))

    describe = actions.add_parser(
        "describe",
        help="a topic's partitions: leader, replicas with role, state and lag",
        description=(
            "One row per replica of each partition: the partition's leader and epoch, the "
            "replica's node and address, its role (voter or learner), state, next offset, "
            "lag behind the leader (records) and whether its node is live."
        ),
    )
    describe.add_argument("name", metavar="NAME", help="the topic's name")
    _add_format(describe)
    add_client_flags(describe)
    describe.set_defaults(handler=lambda args: run_command(run_describe, args, "topic describe"))

    delete = actions.add_parser(
        "delete", help="delete a topic and its records (not the default topic)"
    )
    delete.add_argument("name", metavar="NAME", help="the topic's name")
    add_client_flags(delete)
    delete.set_defaults(handler=lambda args: run_command(run_delete, args, "topic delete"))

    retention = actions.add_parser(
        "set-retention",
        help="replace a topic's retention (bytes and age; 0 = keep all)",
        description=(
            "Replace both retention settings of topic NAME: a partition's log may then be "
            "trimmed to --retention-bytes bytes and records older than --retention-ms "
            "milliseconds dropped (whole segments, oldest first; 0 = no limit). Every "
            "replica applies it within about a second. Prints the topic as `topic describe` "
            "does. The default topic's retention is the agents' own flags."
        ),
    )
    retention.add_argument("name", metavar="NAME", help="the topic's name")
    retention.add_argument(
        "--retention-bytes",
        type=int,
        default=0,
        metavar="N",
        help="a partition's log may be trimmed to N bytes (default 0 = no byte limit)",
    )
    retention.add_argument(
        "--retention-ms",
        type=int,
        default=0,
        metavar="N",
        help="records older than N milliseconds may be trimmed (default 0 = no age limit)",
    )
    _add_format(retention)
    add_client_flags(retention)
    retention.set_defaults(
        handler=lambda args: run_command(run_set_retention, args, "topic set-retention")
    )


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=("table", "json"), default="table", help="output (default table)"
    )


# -- calls ----------------------------------------------------------------------------------


#: Sleep between passes over the --addr nodes while they answer UNAVAILABLE, seconds
#: (doubling up to RETRY_MAX_S), within the command's --timeout.
RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 1.0


def _on_any(
    args: argparse.Namespace, call: Callable[[admin_pb2_grpc.AdminStub, float], Awaitable[T]]
) -> T:
    """``call`` on the first ``--addr`` node that takes it. Any other answer settles it,
    yes or no; UNAVAILABLE (the node cannot be reached, or the controller group has no
    leader yet, as right after the cluster starts: "try again") passes the call to the
    next address, and the addresses are tried again, with a growing sleep, until
    ``--timeout`` seconds have passed since the first call."""
    addrs, tls, timeout = addrs_of(args), tls_of(args), _timeout(args)

    async def run() -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sleep = RETRY_INITIAL_S
        while True:
            failures: list[str] = []
            for addr in addrs:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    return await _call(addr, tls, remaining, call)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise CommandError(_message(exc, addr)) from None
                    failures.append(_message(exc, addr))
            if loop.time() + sleep >= deadline:
                raise CommandError(
                    f"gave up after --timeout {timeout:g} s: " + "; ".join(failures)
                    if failures
                    else f"gave up after --timeout {timeout:g} s"
                )
            await asyncio.sleep(sleep)
            sleep = min(sleep * 2, RETRY_MAX_S)

    return asyncio.run(run())


def settings_dict(settings: admin_pb2.TopicSettings) -> dict[str, int]:
    """A topic's settings as JSON-ready numbers (0 = keep all, for retention)."""
    return {
        "partitions": settings.partitions,
        "replication": settings.replication,
        "retention_bytes": settings.retention_bytes,
        "retention_ms": settings.retention_ms,
    }


def description_dict(d: admin_pb2.TopicDescription) -> dict[str, Any]:
    """``topic describe --format json``: the TopicDescription, field for field."""
    return {
        "name": d.name,
        "settings": settings_dict(d.settings),
        "partitions": [
            {
                "partition": p.partition,
                "leader_id": p.leader_id,
                "leader_addr": p.leader_addr,
                "preferred_leader": p.preferred_leader,
                "epoch": p.epoch,
                "replicas": [
                    {
                        "node_id": r.node_id,
                        "rpc_addr": r.rpc_addr,
                        "role": r.role,
                        "state": r.state,
                        "next_offset": r.next_offset,
                        "lag": r.lag,
                        "live": r.live,
                    }
                    for r in p.replicas
                ],
            }
            for p in d.partitions
        ],
    }


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"


def _retention(value: int) -> str:
    return str(value) if value else "-"


def render_description(d: admin_pb2.TopicDescription) -> str:
    """A header line with the settings, then one row per replica (partition and leader
    repeated on each of its rows, so the table greps and sorts)."""
    s = d.settings
    head = (
        f"topic {d.name}: {s.partitions} partitions, replication {s.replication}, "
        f"retention bytes {_retention(s.retention_bytes)}, "
        f"retention ms {_retention(s.retention_ms)}\n"
    )
    rows = [list(DESCRIBE_COLUMNS)]
    for p in d.partitions:
        leader = p.leader_id or "-"
        replicas = list(p.replicas) or [admin_pb2.Replica()]
        for r in replicas:
            rows.append(
                [
                    str(p.partition),
                    leader,
                    str(p.epoch),
                    r.node_id or "-",
                    r.rpc_addr or "-",
                    r.role or "-",
                    r.state or "-",
                    str(r.next_offset),
                    str(r.lag),
                    "yes" if r.live else "no",
                ]
            )
    return head + _table(rows)


def _print_description(d: admin_pb2.TopicDescription, fmt: str) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(description_dict(d), indent=2) + "\n")
    else:
        sys.stdout.write(render_description(d))


# -- commands -------------------------------------------------------------------------------


def run_set_retention(args: argparse.Namespace) -> int:
    """Replace the topic's retention; print its description."""
    for flag, value in (
        ("--retention-bytes", args.retention_bytes),
        ("--retention-ms", args.retention_ms),
    ):
        if value < 0:
            raise CommandError(f"{flag} must be >= 0, got {value}", EXIT_USAGE)
    request = admin_pb2.SetTopicRetentionRequest(
        name=args.name, retention_bytes=args.retention_bytes, retention_ms=args.retention_ms
    )

    async def alter(stub: admin_pb2_grpc.AdminStub, t: float) -> admin_pb2.TopicDescription:
        response: admin_pb2.TopicDescription = await stub.SetTopicRetention(request, timeout=t)
        return response

    _print_description(_on_any(args, alter), args.format)
    return 0


def run_create(args: argparse.Namespace) -> int:
    """Create the topic; print its description."""
    for flag, value, least in (
        ("--partitions", args.partitions, 1),
        ("--replication", args.replication, 0),
        ("--retention-bytes", args.retention_bytes, 0),
        ("--retention-ms", args.retention_ms, 0),
    ):
        if value < least:
            raise CommandError(f"{flag} must be >= {least}, got {value}", EXIT_USAGE)
    request = admin_pb2.CreateTopicRequest(
        name=args.name,
        settings=admin_pb2.TopicSettings(
            partitions=args.partitions,
            replication=args.replication,
            retention_bytes=args.retention_bytes,
            retention_ms=args.retention_ms,
        ),
    )

    async def create(stub: admin_pb2_grpc.AdminStub, t: float) -> admin_pb2.TopicDescription:
        response: admin_pb2.TopicDescription = await stub.CreateTopic(request, timeout=t)
        return response

    _print_description(_on_any(args, create), args.format)
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print every topic with its settings."""

    async def listing(stub: admin_pb2_grpc.AdminStub, t: float) -> admin_pb2.ListTopicsResponse:
        response: admin_pb2.ListTopicsResponse = await stub.ListTopics(
            admin_pb2.ListTopicsRequest(), timeout=t
        )
        return response

    topics = sorted(_on_any(args, listing).topics, key=lambda t: t.name)
    if args.format == "json":
        out = [{"name": t.name, "settings": settings_dict(t.settings)} for t in topics]
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    rows = [list(LIST_COLUMNS)]
    for t in topics:
        s = t.settings
        rows.append(
            [
                t.name,
                str(s.partitions),
                str(s.replication),
                _retention(s.retention_bytes),
                _retention(s.retention_ms),
            ]
        )
    sys.stdout.write(_table(rows))
    return 0


def run_describe(args: argparse.Namespace) -> int:
    """Print the topic's partitions and replicas."""

    async def describe(stub: admin_pb2_grpc.AdminStub, t: float) -> admin_pb2.TopicDescription:
        response: admin_pb2.TopicDescription = await stub.DescribeTopic(
            admin_pb2.DescribeTopicRequest(name=args.name), timeout=t
        )
        return response

    _print_description(_on_any(args, describe), args.format)
    return 0


def run_delete(args: argparse.Namespace) -> int:
    """Delete the topic; say so."""

    async def delete(stub: admin_pb2_grpc.AdminStub, t: float) -> admin_pb2.DeleteTopicResponse:
        response: admin_pb2.DeleteTopicResponse = await stub.DeleteTopic(
            admin_pb2.DeleteTopicRequest(name=args.name), timeout=t
        )
        return response

    _on_any(args, delete)
    print(f"deleted topic {args.name}")
    return 0

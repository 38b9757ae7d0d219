"""``raftlog status`` and ``raftlog admin ...``: the cluster as an operator sees it.

Both talk to ``raftlog.admin.v1.Admin`` (beside log.v1.Log on every node's port, behind
the same mutual TLS) and need the ACL action ``admin`` (the example policy grants it to
``root``, whose certificate the commands present by default).

- ``raftlog status --addr a,b,c [--format table|json]``: asks every node given, plus every
  member the leader names, for its Status; one row per node (id, address, role, term,
  commit, applied, lag, lowest and highest offset, disk bytes); an unreachable node gets a
  row saying so, and the command exits 1.
- ``raftlog admin transfer-leader [--to ID]``, ``raftlog admin remove ID``: find the
  leader through the nodes given and ask it.
- ``raftlog admin snapshot``: every node given takes a snapshot now.
"""

# Each call's deadline is the command's --timeout, passed down as gRPC's own per-call
# timeout (not an asyncio.timeout around it), so ruff's ASYNC109 is waived here.
# ruff: noqa: ASYNC109

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import grpc

from raftlog.api.admin.v1 import admin_pb2, admin_pb2_grpc
from raftlog.api.contract import Key, Reason
from raftlog.api.status import error_info_from_metadata
from raftlog.cmd.clientargs import (
    EXIT_FAILED,
    EXIT_USAGE,
    CommandError,
    add_client_flags,
    addrs_of,
    run_command,
    tls_of,
)
from raftlog.security import TLSConfig
from raftlog.security.grpc_tls import grpc_channel_credentials

T = TypeVar("T")

#: Table columns of ``raftlog status`` (field of :class:`Row`, heading).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "ID"),
    ("address", "ADDRESS"),
    ("role", "ROLE"),
    ("term", "TERM"),
    ("commit", "COMMIT"),
    ("applied", "APPLIED"),
    ("lag", "LAG"),
    ("lowest", "LOWEST"),
    ("highest", "HIGHEST"),
    ("disk_bytes", "DISK"),
)


def register(sub: Any) -> None:
    """Add ``status`` and ``admin`` (transfer-leader, remove, snapshot)."""
    status = sub.add_parser(
        "status",
        help="one row per node: role, term, indexes, lag, offsets, disk (needs admin)",
        description=(
            "Ask every node given with --addr, and every member the leader names, for its "
            "status. An unreachable node gets a row marked unreachable (exit code 1)."
        ),
    )
    add_client_flags(status)
    status.add_argument(
        "--format", choices=("table", "json"), default="table", help="output (default table)"
    )
    status.set_defaults(handler=lambda args: run_command(run_status, args, "status"))

    admin = sub.add_parser("admin", help="operator actions: transfer-leader, remove, snapshot")
    actions = admin.add_subparsers(dest="action", metavar="ACTION", required=True)
    transfer = actions.add_parser(
        "transfer-leader", help="hand leadership to another voter (default: most caught up)"
    )
    add_client_flags(transfer)
    transfer.add_argument("--to", default="", metavar="ID", help="the voter to hand it to")
    transfer.set_defaults(
        handler=lambda args: run_command(run_transfer, args, "admin transfer-leader")
    )
    remove = actions.add_parser("remove", help="remove a member that is dead for good")
    add_client_flags(remove)
    remove.add_argument("id", metavar="ID", help="the member's node id")
    remove.set_defaults(handler=lambda args: run_command(run_remove, args, "admin remove"))
    snapshot = actions.add_parser("snapshot", help="take a snapshot now on every --addr node")
    add_client_flags(snapshot)
    snapshot.set_defaults(handler=lambda args: run_command(run_snapshot, args, "admin snapshot"))


# -- calls ----------------------------------------------------------------------------------


def _message(exc: grpc.aio.AioRpcError, addr: str) -> str:
    """One plain line for a failed admin call."""
    info = error_info_from_metadata(exc.trailing_metadata())
    code = exc.code()
    if info is not None and info.reason == Reason.PERMISSION_DENIED:
        subject = info.metadata.get(Key.SUBJECT, "?")
        action = info.metadata.get(Key.ACTION, "?")
        return f"not permitted: subject {subject!r} lacks action {action}"
    if code == grpc.StatusCode.UNAVAILABLE and info is None:
        return f"cannot reach {addr}: {exc.details()}"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return (
            f"{addr} serves no admin service (a single node outside cluster mode, or an "
            "older raftlog)"
        )
    return exc.details() or code.name


async def _call(
    addr: str,
    tls: TLSConfig | None,
    timeout: float,
    call: Callable[[admin_pb2_grpc.AdminStub, float], Awaitable[T]],
) -> T:
    """``call(stub, timeout)`` on the node at ``addr``, over its own channel."""
    if tls is None:
        channel = grpc.aio.insecure_channel(addr)
    else:
        channel = grpc.aio.secure_channel(addr, grpc_channel_credentials(tls))
    async with channel:
        stub = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
        return await call(stub, timeout)


async def _status(addr: str, tls: TLSConfig | None, timeout: float) -> admin_pb2.StatusResponse:
    async def status(stub: admin_pb2_grpc.AdminStub, t: float) -> admin_pb2.StatusResponse:
        response: admin_pb2.StatusResponse = await stub.Status(
            admin_pb2.StatusRequest(), timeout=t, wait_for_ready=False
        )
        return response

    return await _call(addr, tls, timeout, status)


def _timeout(args: argparse.Namespace) -> float:
    if not args.timeout > 0:
        raise CommandError(f"--timeout must be more than 0 seconds, got {args.timeout}", EXIT_USAGE)
    return float(args.timeout)


# -- status ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One node in ``raftlog status``."""

    id: str
    address: str
    role: str
    term: int | None = None
    commit: int | None = None
    applied: int | None = None
    lag: int | None = None
    lowest: int | None = None
    highest: int | None = None
    disk_bytes: int | None = None
    error: str = ""


def _row(addr: str, s: admin_pb2.StatusResponse) -> Row:
    return Row(
        id=s.id,
        address=addr,
        role=s.role,
        term=s.term,
        commit=s.commit_index,
        applied=s.applied_index,
        lowest=None if s.empty else s.lowest_offset,
        highest=None if s.empty else s.highest_offset,
        disk_bytes=s.disk_bytes,
    )


async def collect_status(addrs: list[str], tls: TLSConfig | None, timeout: float) -> list[Row]:
    """Status of every node in ``addrs`` and of every member a leader names."""
    answers: dict[str, admin_pb2.StatusResponse | str] = {}
    pending = list(dict.fromkeys(addrs))
    names: dict[str, str] = {}  # address -> id, from the leader's member list
    lags: dict[str, int] = {}
    while pending:
        results = await asyncio.gather(
            *(_status(a, tls, timeout) for a in pending), return_exceptions=True
        )
        for addr, result in zip(pending, results, strict=True):
            if isinstance(result, grpc.aio.AioRpcError):
                answers[addr] = _message(result, addr)
            elif isinstance(result, BaseException):
                answers[addr] = f"{type(result).__name__}: {result}"
            else:
                answers[addr] = result
                for m in result.members:
                    names[m.rpc_addr] = m.id
                    lags[m.id] = m.lag
        pending = [a for a in names if a not in answers]
    rows = []
    for addr, answer in answers.items():
        if isinstance(answer, str):
            node_id = names.get(addr, "?")
            rows.append(
                Row(
                    id=node_id,
                    address=addr,
                    role="unreachable",
                    lag=lags.get(node_id),  # the leader still sees how far behind it is
                    error=answer,
                )
            )
            continue
        row = _row(addr, answer)
        row.lag = lags.get(row.id)
        rows.append(row)
    return sorted(rows, key=lambda r: (r.id == "?", r.id, r.address))


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def render_table(rows: list[Row]) -> str:
    """Aligned columns, one row per node, then one line per unreachable node's error."""
    table = [[heading for _, heading in COLUMNS]]
    table += [[_cell(getattr(row, name)) for name, _ in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table
    ]
    lines += [f"{row.address}: {row.error}" for row in rows if row.error]
    return "\n".join(lines) + "\n"


def run_status(args: argparse.Namespace) -> int:
    """Print the status rows; exit 1 when a node did not answer."""
    addrs, tls, timeout = addrs_of(args), tls_of(args), _timeout(args)
    rows = asyncio.run(collect_status(addrs, tls, timeout))
    denied = [r for r in rows if r.error.startswith("not permitted")]
    if denied and len(denied) == len(rows):
        raise CommandError(denied[0].error)
    if args.format == "json":
        sys.stdout.write(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    else:
        sys.stdout.write(render_table(rows))
    return EXIT_FAILED if any(r.error for r in rows) else 0


# -- actions on the leader ------------------------------------------------------------------


async def _leader(addrs: list[str], tls: TLSConfig | None, timeout: float) -> str:
    """The leader's address, as the first node that answers knows it."""
    errors = []
    for addr in addrs:
        try:
            status = await _status(addr, tls, timeout)
        except grpc.aio.AioRpcError as exc:
            message = _message(exc, addr)
            if message.startswith("not permitted"):
                raise CommandError(message) from None
            errors.append(f"{addr}: {message}")
            continue
        if status.role == "leader":
            return addr
        if status.leader_addr:
            return status.leader_addr
        errors.append(f"{addr}: knows no leader")
    raise CommandError("no leader found: " + "; ".join(errors))


def _on_leader(
    args: argparse.Namespace, call: Callable[[admin_pb2_grpc.AdminStub, float], Awaitable[T]]
) -> T:
    addrs, tls, timeout = addrs_of(args), tls_of(args), _timeout(args)

    async def run() -> T:
        leader = await _leader(addrs, tls, timeout)
        try:
            return await _call(leader, tls, timeout, call)
        except grpc.aio.AioRpcError as exc:
            raise CommandError(_message(exc, leader)) from None

    return asyncio.run(run())


def run_transfer(args: argparse.Namespace) -> int:
    """Hand leadership over; print the new leader."""

    async def transfer(
        stub: admin_pb2_grpc.AdminStub, t: float
    ) -> admin_pb2.TransferLeadershipResponse:
        response: admin_pb2.TransferLeadershipResponse = await stub.TransferLeadership(
            admin_pb2.TransferLeadershipRequest(to=args.to), timeout=t
        )
        return response

    done = _on_leader(args, transfer)
    print(f"leadership transferred to {done.leader_id}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    """Remove a member; print the index of the change."""

    async def remove(stub: admin_pb2_grpc.AdminStub, t: float) -> admin_pb2.RemoveServerResponse:
        response: admin_pb2.RemoveServerResponse = await stub.RemoveServer(
            admin_pb2.RemoveServerRequest(id=args.id), timeout=t
        )
        return response

    done = _on_leader(args, remove)
    print(f"removed {args.id} (membership change committed at index {done.index})")
    return 0


def run_snapshot(args: argparse.Namespace) -> int:
    """Every node given takes a snapshot; one line per node."""
    addrs, tls, timeout = addrs_of(args), tls_of(args), _timeout(args)

    async def snapshot(stub: admin_pb2_grpc.AdminStub, t: float) -> admin_pb2.SnapshotResponse:
        response: admin_pb2.SnapshotResponse = await stub.Snapshot(
            admin_pb2.SnapshotRequest(), timeout=t
        )
        return response

    async def run() -> int:
        failed = 0
        for addr in addrs:
            try:
                done = await _call(addr, tls, timeout, snapshot)
            except grpc.aio.AioRpcError as exc:
                message = _message(exc, addr)
                if message.startswith("not permitted"):
                    raise CommandError(message) from None
                print(f"{addr}: {message}", file=sys.stderr)
                failed += 1
                continue
            print(f"{addr}: snapshot at index {done.index}")
        return EXIT_FAILED if failed else 0

    return asyncio.run(run())

"""``raftlog produce``: append values given as arguments, or stdin lines, in batches."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

from raftlog.api.v1 import log_pb2
from raftlog.cmd.clientargs import Progress, add_client_flags, log_stub, run_command

#: Most records / payload bytes in one ProduceRequest read from stdin.
BATCH_RECORDS = 1000
BATCH_BYTES = 1 << 20


def register(sub: Any) -> None:
    """Add the ``produce`` sub-command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "produce",
        help="append records (arguments, or one per stdin line); prints their offsets",
        description=(
            "Append each VALUE as a record (all in one atomic batch), or, without VALUE, each "
            "line of stdin (without its newline), sent in batches of up to "
            f"{BATCH_RECORDS} records over one ProduceStream. Prints one offset per record."
        ),
    )
    parser.add_argument("values", nargs="*", metavar="VALUE", help="record values (UTF-8)")
    add_client_flags(parser)
    parser.set_defaults(handler=lambda args: run_command(run, args, "produce"))


def _batches(stream: BinaryIO, interactive: bool) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for line in stream:
        value = line[:-1] if line.endswith(b"\n") else line
        batch.append(value)
        size += len(value)
        if interactive or len(batch) >= BATCH_RECORDS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _requests(batches: Iterator[list[bytes]]) -> Iterator[log_pb2.ProduceRequest]:
    for batch in batches:
        yield log_pb2.ProduceRequest(records=[log_pb2.Record(value=v) for v in batch])


def _print_offsets(first: int, last: int, out: Any) -> None:
    out.write("".join(f"{o}\n" for o in range(first, last + 1)))


def run(args: argparse.Namespace) -> int:
    """Produce and print offsets."""
    out = sys.stdout
    with log_stub(args) as stub:
        if args.values:
            values = [v.encode() for v in args.values]
            if len(values) == 1:
                request = log_pb2.ProduceRequest(record=log_pb2.Record(value=values[0]))
            else:
                request = log_pb2.ProduceRequest(records=[log_pb2.Record(value=v) for v in values])
            response = stub.Produce(request, timeout=args.timeout)
            _print_offsets(response.offset, max(response.last_offset, response.offset), out)
            return 0
        progress = Progress("produced")
        stdin = sys.stdin.buffer
        responses = stub.ProduceStream(_requests(_batches(stdin, sys.stdin.isatty())))
        for response in responses:
            last = max(response.last_offset, response.offset)
            _print_offsets(response.offset, last, out)
            progress.add(last - response.offset + 1)
        out.flush()
        progress.done()
    return 0

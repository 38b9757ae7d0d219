"""``raftlog produce``: append values given as arguments, or stdin lines, in batches.

Writes go to the cluster's leader through :mod:`raftlog.client` (retried through leader
changes for up to ``--timeout`` seconds). Stdin batches are sent one after another, so the
log keeps the order of the lines. The client is an idempotent producer (a random producer
id per run, a sequence per batch): a batch retried because its answer was lost is appended
once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

from raftlog.cmd.clientargs import Progress, add_client_flags, log_client, run_command

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
            f"{BATCH_RECORDS} records (1 MiB) per request. Prints one offset per record. "
            "Several --addr may be given: writes find the leader. A batch retried after "
            "a lost answer is appended once (idempotent producer)."
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


def _print_offsets(offsets: list[int], out: Any) -> None:
    out.write("".join(f"{o}\n" for o in offsets))


def run(args: argparse.Namespace) -> int:
    """Produce and print offsets."""
    out = sys.stdout
    with log_client(args) as client:
        if args.values:
            _print_offsets(client.produce_batch([v.encode() for v in args.values]), out)
            return 0
        progress = Progress("produced")
        interactive = sys.stdin.isatty()
        for batch in _batches(sys.stdin.buffer, interactive):
            offsets = client.produce_batch(batch)
            _print_offsets(offsets, out)
            if interactive:
                out.flush()
            progress.add(len(offsets))
        out.flush()
        progress.done()
    return 0

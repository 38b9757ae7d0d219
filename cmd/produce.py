"""``raftlog produce``: append values given as arguments, or stdin lines, in batches.

Writes go to the cluster's leader through :mod:`raftlog.client` (retried through leader
changes for up to ``--timeout`` seconds). Stdin batches are sent one after another, so the
log keeps the order of the lines. The client is an idempotent producer (a random producer
id per run, a sequence per batch): a batch retried because its answer was lost is appended
once.

With ``--topic``, ``--partition`` or ``--key`` the records go to one partition of a topic
(the one given, the one the key picks, else 0), through that partition's leader, and each
line printed is ``PARTITION OFFSET``. ``--key`` gives every record (every stdin line) that key.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

from raftlog.client import SyncLogClient
from raftlog.cmd.clientargs import (
    Progress,
    Target,
    add_client_flags,
    add_topic_flags,
    log_client,
    run_command,
    target_of,
)

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
            "a lost answer is appended once (idempotent producer). With --topic, "
            "--partition or --key the records go to one partition of the topic, through "
            "its leader, and each line printed is 'PARTITION OFFSET'."
        ),
    )
    parser.add_argument("values", nargs="*", metavar="VALUE", help="record values (UTF-8)")
    add_topic_flags(parser, reads=False)
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


def _send(client: SyncLogClient, target: Target | None, batch: list[bytes]) -> list[str]:
    """Produce ``batch`` (one atomic request); the lines to print, one per record:
    ``OFFSET``, or ``PARTITION OFFSET`` for a topic's partition."""
    if target is None:
        return [f"{o}\n" for o in client.produce_batch(batch)]
    done = client.produce_to(target.topic, batch, key=target.key, partition=target.partition)
    return [f"{done.partition} {o}\n" for o in done.offsets]


def run(args: argparse.Namespace) -> int:
    """Produce and print offsets."""
    out = sys.stdout
    target = target_of(args)
    with log_client(args) as client:
        if args.values:
            out.write("".join(_send(client, target, [v.encode() for v in args.values])))
            return 0
        progress = Progress("produced")
        interactive = sys.stdin.isatty()
        for batch in _batches(sys.stdin.buffer, interactive):
            lines = _send(client, target, batch)
            out.write("".join(lines))
            if interactive:
                out.flush()
            progress.add(len(lines))
        out.flush()
        progress.done()
    return 0

"""``raftlog consume``: print records from an offset, up to the end or following new ones.

Reads go through :mod:`raftlog.client`: spread over the cluster's followers, and a
``--follow`` stream resumes on another server (or the same one, restarted) at the next
record it has not printed, so a leader change neither skips nor repeats a record. It gives
up when no server lets it progress for ``--timeout`` seconds.

With ``--topic``, ``--partition`` or ``--key`` it reads one partition of a topic (the one
given, the one the key maps to, else 0) from that partition's replicas; ``--format json``
then adds ``"partition"`` to each line.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from raftlog.client import Record
from raftlog.cmd.clientargs import (
    EXIT_USAGE,
    CommandError,
    Progress,
    add_client_flags,
    add_topic_flags,
    log_client,
    run_command,
    target_of,
)


def register(sub: Any) -> None:
    """Add the ``consume`` sub-command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "consume",
        help="print records from an offset (to the current end, or --follow)",
        description=(
            "Print one record per line from --from on: up to the log's end as it is when the "
            "command starts, or, with --follow, every new record until interrupted. "
            '--format json prints {"offset": N, "value": ..., "encoding": "utf-8"|'
            '"base64"} (base64 when the value is not UTF-8 text). With --topic, --partition '
            "or --key it reads one partition of a topic (the one given, the one the key maps "
            'to, else 0), and the JSON lines carry "partition" too.'
        ),
    )
    parser.add_argument(
        "--from", dest="offset", type=int, default=0, help="first offset (default 0)"
    )
    parser.add_argument("--count", type=int, default=None, help="stop after this many records")
    parser.add_argument("--follow", "-f", action="store_true", help="wait for new records")
    parser.add_argument("--format", choices=("raw", "json"), default="raw", help="output format")
    parser.add_argument(
        "--linearizable",
        action="store_true",
        help="read from the leader after a read barrier: every record acknowledged before "
        "the command started is there (default: any server, what it has committed)",
    )
    add_topic_flags(parser, reads=True)
    add_client_flags(parser)
    parser.set_defaults(handler=lambda args: run_command(run, args, "consume"))


def format_json(record: Record, partition: int | None = None) -> str:
    """One JSON line for ``record`` (with its ``partition`` when reading a topic's)."""
    try:
        value, encoding = record.value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        value, encoding = base64.b64encode(record.value).decode("ascii"), "base64"
    line: dict[str, object] = {"offset": record.offset, "value": value, "encoding": encoding}
    if partition is not None:
        line = {"partition": partition, **line}
    return json.dumps(line)


def run(args: argparse.Namespace) -> int:
    """Stream and print."""
    if args.offset < 0:
        raise CommandError(f"--from must be an offset >= 0, got {args.offset}", EXIT_USAGE)
    if args.count is not None and args.count < 0:
        raise CommandError(f"--count must be >= 0, got {args.count}", EXIT_USAGE)
    remaining = args.count
    if remaining == 0:
        return 0
    target = target_of(args)
    out = sys.stdout.buffer
    progress = Progress("consumed")
    with log_client(args) as client:
        partition: int | None = None
        if target is not None:
            partition = target.partition
            if partition is None:
                partition = client.partition_for(target.topic, target.key)
        end: int | None = None
        if not args.follow:
            if target is None:
                offsets = client.offsets()
            else:
                offsets = client.partition_offsets(target.topic, partition or 0)
            if offsets.empty or args.offset > offsets.highest:
                if args.offset < offsets.lowest or args.offset > offsets.next:
                    # the server says what is wrong (OUT_OF_RANGE)
                    if target is None:
                        client.consume(args.offset)
                    else:
                        client.consume_from(target.topic, partition or 0, args.offset)
                return 0
            end = offsets.highest
        if target is None:
            batches = client.stream_batches(args.offset, linearizable=args.linearizable)
        else:
            batches = client.stream_batches_from(
                target.topic, partition or 0, args.offset, linearizable=args.linearizable
            )
        try:
            for batch in batches:
                lines = []
                done = False
                for record in batch:
                    if args.format == "json":
                        lines.append(format_json(record, partition).encode() + b"\n")
                    else:
                        lines.append(record.value + b"\n")
                    if remaining is not None:
                        remaining -= 1
                        done = remaining == 0
                    if end is not None and record.offset >= end:
                        done = True
                    if done:
                        break
                out.write(b"".join(lines))
                out.flush()
                progress.add(len(lines))
                if done:
                    break
        finally:
            batches.close()
    progress.done()
    return 0

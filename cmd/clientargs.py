"""What the client commands share: connection flags, the client, and error messages.

The commands use :class:`raftlog.client.SyncLogClient`: they learn the cluster from one or
more ``--addr`` (repeatable, or comma-separated), send writes to the leader, spread reads
over the followers, and retry through leader changes and restarts for up to ``--timeout``
seconds. Every expected failure (connection refused, TLS handshake, permission denied, bad
offset, deadline) becomes one line on stderr and a nonzero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from raftlog.client import (
    ClientConfig,
    ClientError,
    DeadlineExceededError,
    NoServersError,
    PermissionDeniedError,
    SyncLogClient,
    UnauthenticatedError,
    UnavailableError,
    UnknownTopicError,
    parse_addrs,
)
from raftlog.client.errors import describe as describe_error
from raftlog.security import TLSConfig

DEFAULT_ADDR = "127.0.0.1:8400"
#: Message size limit of the client (bytes): the server's default limit plus its slack.
CLIENT_MAX_MESSAGE_BYTES = 5 << 20
#: Exit codes: 1 = the call failed (server said no, or could not be reached); 2 = usage.
EXIT_FAILED, EXIT_USAGE = 1, 2


class CommandError(Exception):
    """An expected failure: its message is printed, the command exits nonzero."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    """--addr (repeatable), --ca-file, --cert-file, --key-file, --insecure, --timeout."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--addr",
        action="append",
        default=None,
        metavar="HOST:PORT[,HOST:PORT...]",
        help=(
            f"a server of the cluster (default {DEFAULT_ADDR}); repeat it or separate "
            "addresses with commas: the first that answers tells the client the rest"
        ),
    )
    group.add_argument(
        "--ca-file", default="certs/ca.pem", help="CA of the server (default certs/ca.pem)"
    )
    group.add_argument(
        "--cert-file",
        default="certs/root-client.pem",
        help="client certificate (default certs/root-client.pem)",
    )
    group.add_argument(
        "--key-file",
        default="certs/root-client-key.pem",
        help="client key (default certs/root-client-key.pem)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, for a node started with --insecure (no TLS at all)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help=(
            "seconds one call may take, retries through leader changes and restarts "
            "included; for consume, the longest time without progress (default 10)"
        ),
    )


def add_topic_flags(parser: argparse.ArgumentParser, reads: bool) -> None:
    """--topic, --partition, --key (``reads``: the wording of consume)."""
    group = parser.add_argument_group("topic and partition")
    group.add_argument(
        "--topic",
        default=None,
        metavar="NAME",
        help="the topic (default: the default topic, the single log of a cluster without "
        "topics); see `raftlog topic`",
    )
    group.add_argument(
        "--partition",
        type=int,
        default=None,
        metavar="P",
        help=(
            "the partition to read (default 0)"
            if reads
            else "the partition to write to (default: the one --key picks, else 0)"
        ),
    )
    group.add_argument(
        "--key",
        default=None,
        metavar="KEY",
        help=(
            "read the partition KEY (UTF-8) maps to, as produce --key writes it"
            if reads
            else "a key (UTF-8) for every record: its hash picks the partition (Kafka's "
            "murmur2), so records of one key stay in one partition, in order"
        ),
    )


@dataclass(frozen=True)
class Target:
    """Where a command reads or writes: a topic ("" = the default topic) and a partition
    number or a key (neither: partition 0)."""

    topic: str
    partition: int | None
    key: bytes | None


def target_of(args: argparse.Namespace) -> Target | None:
    """The ``--topic/--partition/--key`` of a command; None when none was given (the
    command then behaves as before topics existed). Usage error for both --partition and
    --key, or a negative partition."""
    if args.topic is None and args.partition is None and args.key is None:
        return None
    if args.partition is not None and args.key is not None:
        raise CommandError("give --partition or --key, not both", EXIT_USAGE)
    if args.partition is not None and args.partition < 0:
        raise CommandError(f"--partition must be >= 0, got {args.partition}", EXIT_USAGE)
    key = args.key.encode() if args.key is not None else None
    return Target(args.topic or "", args.partition, key)


def addrs_of(args: argparse.Namespace) -> list[str]:
    """The ``--addr`` values as a list of HOST:PORT (usage error if malformed)."""
    try:
        return parse_addrs(args.addr or [DEFAULT_ADDR])
    except ValueError as exc:
        raise CommandError(f"--addr: {exc}", EXIT_USAGE) from None


def client_config(args: argparse.Namespace) -> ClientConfig:
    """The client settings of a command: ``--timeout`` bounds each call."""
    timeout = args.timeout
    if not timeout > 0:
        raise CommandError(f"--timeout must be more than 0 seconds, got {timeout}", EXIT_USAGE)
    return ClientConfig(
        request_timeout_s=timeout,
        attempt_timeout_s=min(5.0, timeout),
        refresh_timeout_s=min(2.0, timeout),
        max_message_bytes=CLIENT_MAX_MESSAGE_BYTES,
    )


def tls_of(args: argparse.Namespace) -> TLSConfig | None:
    """The client's TLS files (None with --insecure); a usage error names a missing one."""
    if args.insecure:
        return None
    for flag, value in (
        ("--ca-file", args.ca_file),
        ("--cert-file", args.cert_file),
        ("--key-file", args.key_file),
    ):
        if not Path(value).is_file():
            raise CommandError(
                f"{flag} {value}: no such file (run `make certs`, or pass the right {flag})",
                EXIT_USAGE,
            )
    return TLSConfig(Path(args.cert_file), Path(args.key_file), Path(args.ca_file))


@contextmanager
def log_client(args: argparse.Namespace) -> Iterator[SyncLogClient]:
    """A started client; failures inside the block become :class:`CommandError`.

    Starting asks each ``--addr`` once (no retries): an unreachable server or a failed TLS
    handshake fails at once, with a plain reason.
    """
    addrs = addrs_of(args)
    config = client_config(args)
    tls = tls_of(args)
    try:
        client = SyncLogClient(addrs, tls=tls, config=config, insecure=args.insecure)
    except ClientError as exc:
        raise CommandError(describe(exc, args)) from None
    try:
        yield client
    except ClientError as exc:
        raise CommandError(describe(exc, args)) from None
    finally:
        client.close()


def _unreachable(addr: str, args: argparse.Namespace) -> str:
    """Why ``addr`` did not answer: refused, or (likely) TLS, said plainly."""
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=2):
            pass
    except (OSError, ValueError) as exc:
        reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else str(exc)
        return f"cannot connect to {addr}: {reason} (is `raftlog agent` running there?)"
    if args.insecure:
        return f"cannot talk gRPC to {addr} in plaintext (is the node using TLS?)"
    return (
        f"TLS handshake with {addr} failed: the server and this client must trust the "
        f"same CA (--ca-file {args.ca_file}, --cert-file {args.cert_file}), and the server's "
        "certificate must name the host you dial"
    )


def describe(exc: ClientError, args: argparse.Namespace) -> str:
    """One line for a failed call."""
    if isinstance(exc, NoServersError):
        if "(revoked)" in exc.message:  # a server answered: this certificate is denied
            return f"not authenticated: {exc.message}"
        # gRPC's details are long and cryptic; probe the addresses for a plain reason.
        return "; ".join(_unreachable(addr, args) for addr in addrs_of(args))
    if isinstance(exc, PermissionDeniedError):
        return f"permission denied: {exc.message}"
    if isinstance(exc, UnauthenticatedError):
        return f"not authenticated: {exc.message}"
    if isinstance(exc, UnknownTopicError):
        return f"{exc.message} (see `raftlog topic list`)"
    if isinstance(exc, DeadlineExceededError):
        last = describe_error(exc.last_error) if exc.last_error is not None else "none"
        return f"gave up after --timeout {args.timeout:g} s; last error: {last}"
    if isinstance(exc, UnavailableError):
        return f"server {exc.addr or ', '.join(addrs_of(args))} unavailable: {exc.message}"
    name = exc.code.name if exc.code is not None else exc.reason
    return f"{name}: {exc.message}"


def run_command(func: Any, args: argparse.Namespace, prog: str) -> int:
    """Run a client command, turning expected failures into a message and an exit code."""
    try:
        result: int = func(args)
        return result
    except CommandError as exc:
        print(f"raftlog {prog}: {exc}", file=sys.stderr)
        return exc.code
    except ClientError as exc:
        print(f"raftlog {prog}: {describe(exc, args)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


class Progress:
    """Counts on stderr, at most twice a second, only when stderr is a terminal."""

    def __init__(self, verb: str, stream: TextIO = sys.stderr) -> None:
        self.verb = verb
        self.stream = stream
        self.enabled = stream.isatty()
        self.count = 0
        self._started = time.monotonic()
        self._shown = 0.0

    def add(self, n: int) -> None:
        """Count ``n`` more records; repaint if due."""
        self.count += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._shown >= 0.5:
            self._shown = now
            rate = self.count / max(now - self._started, 1e-9)
            self.stream.write(f"\r{self.verb} {self.count:,} records ({rate:,.0f}/s)")
            self.stream.flush()

    def done(self) -> None:
        """Final line (only if progress was shown)."""
        if self.enabled and self._shown:
            self.stream.write(f"\r{self.verb} {self.count:,} records\n")
            self.stream.flush()

"""What the client commands share: connection flags, the channel, and error messages.

Every expected failure (connection refused, TLS handshake, permission denied, bad offset)
becomes one line on stderr and a nonzero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import grpc

from raftlog.api.v1 import log_pb2_grpc
from raftlog.security import TLSConfig, grpc_channel_credentials

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
    """--addr, --ca-file, --cert-file, --key-file, --insecure, --timeout."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--addr", default=DEFAULT_ADDR, help=f"server HOST:PORT (default {DEFAULT_ADDR})"
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
        help="seconds to wait for the server to connect and answer (default 10)",
    )


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to ``--addr`` with mutual TLS (or plaintext with ``--insecure``)."""
    options = [
        ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE_BYTES),
    ]
    if args.insecure:
        return grpc.insecure_channel(args.addr, options=options)
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
    tls = TLSConfig(Path(args.cert_file), Path(args.key_file), Path(args.ca_file))
    return grpc.secure_channel(args.addr, grpc_channel_credentials(tls), options=options)


@contextmanager
def log_stub(args: argparse.Namespace) -> Iterator[log_pb2_grpc.LogStub]:
    """A ``log.v1.Log`` stub; failed calls inside the block become :class:`CommandError`.

    Calls do not wait for the channel to become ready: an unreachable server or a failed
    TLS handshake fails the first call at once, with the reason in its details.
    """
    channel = open_channel(args)
    try:
        yield log_pb2_grpc.LogStub(channel)  # type: ignore[no-untyped-call]
    except grpc.RpcError as exc:
        raise CommandError(describe(exc, args)) from None
    finally:
        channel.close()


def _unreachable(args: argparse.Namespace) -> str:
    """Why a channel did not get ready: refused, or (likely) TLS, said plainly."""
    host, _, port = args.addr.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=2):
            pass
    except (OSError, ValueError) as exc:
        reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else str(exc)
        return f"cannot connect to {args.addr}: {reason} (is `raftlog agent` running there?)"
    if args.insecure:
        return f"cannot talk gRPC to {args.addr} in plaintext (is the node using TLS?)"
    return (
        f"TLS handshake with {args.addr} failed: the server and this client must trust the "
        f"same CA (--ca-file {args.ca_file}, --cert-file {args.cert_file}), and the server's "
        "certificate must name the host you dial"
    )


def describe(exc: grpc.RpcError, args: argparse.Namespace) -> str:
    """One line for a failed call."""
    call: Any = exc
    code: grpc.StatusCode | None = call.code() if hasattr(call, "code") else None
    details = (call.details() if hasattr(call, "details") else None) or str(exc)
    if code is grpc.StatusCode.UNAVAILABLE:
        low = details.lower()
        if any(w in low for w in ("ssl", "tls", "handshake", "certificate", "connect", "refused")):
            # gRPC's details are long and cryptic; probe the address for a plain reason.
            return _unreachable(args)
        return f"server {args.addr} unavailable: {details}"
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return f"permission denied: {details}"
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return f"not authenticated: {details}"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {args.addr} within {args.timeout:g} s"
    name = code.name if code is not None else "error"
    return f"{name}: {details}"


def run_command(func: Any, args: argparse.Namespace, prog: str) -> int:
    """Run a client command, turning expected failures into a message and an exit code."""
    try:
        result: int = func(args)
        return result
    except CommandError as exc:
        print(f"raftlog {prog}: {exc}", file=sys.stderr)
        return exc.code
    except grpc.RpcError as exc:
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

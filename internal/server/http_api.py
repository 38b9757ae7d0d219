"""The HTTP/JSON API of one node (aiohttp), beside ``log.v1.Log`` and behind the same guards.

Routes (the contract is ``api/openapi.yaml``; a test checks it against :data:`ROUTES`)::

    POST /v1/records                   append one record or a batch -> offsets
    GET  /v1/records?offset=N&max_records=M    records from N (at most M)
    GET  /v1/records?offset=N&follow=true      NDJSON: every record from N on, then each new
                                               one as it commits; open until the client
                                               goes or the server shuts down (an error
                                               after the first byte: a last line
                                               {"error": {...}})
    GET  /v1/servers                   the members, leader flagged, with HTTP addresses
    GET  /v1/offsets                   lowest, highest, next offset

Security is the gRPC server's: TLS with :func:`raftlog.security.tls.server_ssl_context` (a
client certificate signed by the CA is required by the handshake), the subject is the
certificate's common name, and each route needs the ACL action its gRPC twin needs
(:data:`ROUTE_ACTIONS`; ``/v1/servers`` is open to any authenticated client, like
GetServers). Writes go through the same :class:`CommitLog`: on a follower the
``DistributedLog`` forwards them to the leader over gRPC.

Errors are JSON, ``{"error": {"reason", "message", "metadata", "retriable"}}``, with the
reason and metadata of the gRPC ErrorInfo (:mod:`raftlog.domain.errors`) and the status of
:data:`HTTP_STATUS` (400 malformed, 403 ACL, 404 offset out of range, 413 too large, 503 not
leader / unavailable, with ``leader_http_addr`` when this node knows the leader's).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from raftlog.api.contract import Action, Key, Reason
from raftlog.domain.errors import (
    DataLossError,
    DeadlineError,
    DomainError,
    InvalidArgumentError,
    NotLeaderError,
    OffsetOutOfRangeError,
    PermissionDeniedError,
    RecordTooLargeError,
    SequenceTooOldError,
    StorageError,
    UnauthenticatedError,
    UnavailableError,
    UnknownTopicError,
    UnsupportedError,
)
from raftlog.domain.producers import producer_id_problem
from raftlog.domain.protocols import Authorizer, CommitLog, IdempotentLog, ServerLister
from raftlog.security import TLSConfig
from raftlog.security.tls import peer_common_name, server_ssl_context
from raftlog.server.config import ServerConfig
from raftlog.server.forward import produce_request_bytes
from raftlog.server.service import PartitionRouter, resolve_target, to_api_error
from raftlog.telemetry.audit import NO_AUDIT, AuditSink

logger = logging.getLogger("raftlog.server.http")

#: Request headers of the idempotent producer (both or neither).
PRODUCER_ID_HEADER: Final = "X-Raftlog-Producer-Id"
SEQUENCE_HEADER: Final = "X-Raftlog-Sequence"
#: Error-body key of the leader's HTTP address (a 503 on a follower that knows it).
LEADER_HTTP_ADDR: Final = "leader_http_addr"
#: Content type of the follow stream: one JSON record per line.
NDJSON: Final = "application/x-ndjson"
#: Encodings of a record value in JSON.
ENCODINGS: Final = ("utf8", "base64")
#: Records per GET when ``max_records`` is not given, and the most one GET returns.
DEFAULT_MAX_RECORDS: Final = 100
MAX_RECORDS: Final = 65536

#: Every (method, path) served: the OpenAPI document must list exactly these.
ROUTES: Final = (
    ("POST", "/v1/records"),
    ("GET", "/v1/records"),
    ("GET", "/v1/servers"),
    ("GET", "/v1/offsets"),
)
#: (method, path) -> the ACL action it needs; a route without an entry is open to any
#: authenticated client.
ROUTE_ACTIONS: Final[Mapping[tuple[str, str], str]] = {
    ("POST", "/v1/records"): Action.PRODUCE,
    ("GET", "/v1/records"): Action.CONSUME,
    ("GET", "/v1/offsets"): Action.CONSUME,
}

#: Error class -> HTTP status; a subclass without an entry takes its nearest ancestor's.
HTTP_STATUS: Final[Mapping[type[DomainError], int]] = {
    DomainError: 500,
    InvalidArgumentError: 400,
    RecordTooLargeError: 413,
    OffsetOutOfRangeError: 404,
    UnauthenticatedError: 401,
    PermissionDeniedError: 403,
    UnavailableError: 503,
    NotLeaderError: 503,
    DeadlineError: 504,
    SequenceTooOldError: 409,
    UnsupportedError: 501,
    StorageError: 500,
    # gRPC's DATA_LOSS maps to 500 (google.rpc.Code): the server holds the record but
    # cannot serve it intact; the body's reason DATA_LOSS says another node may.
    DataLossError: 500,
    # a topic (or a partition of it) that does not exist, as gRPC's NOT_FOUND
    UnknownTopicError: 404,
}


def http_status_of(error: DomainError) -> int:
    """The HTTP status ``error`` is answered with."""
    for cls in type(error).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500


def encode_value(value: bytes, encoding: str) -> dict[str, str]:
    """A record value as JSON: UTF-8 text when asked and possible, else base64 (said)."""
    if encoding == "utf8":
        try:
            return {"value": value.decode("utf-8"), "encoding": "utf8"}
        except UnicodeDecodeError:
            pass
    return {"value": base64.b64encode(value).decode("ascii"), "encoding": "base64"}


def _decode_record(item: object, index: int) -> bytes:
    if not isinstance(item, dict):
        raise InvalidArgumentError(f"records[{index}]: expected an object with value, encoding")
    value, encoding = item.get("value"), item.get("encoding")
    if encoding not in ENCODINGS:
        raise InvalidArgumentError(
            f"records[{index}].encoding: must be one of {', '.join(ENCODINGS)}, got {encoding!r}"
        )
    if not isinstance(value, str):
        raise InvalidArgumentError(f"records[{index}].value: expected a string, got {value!r}")
    if encoding == "utf8":
        return value.encode("utf-8")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgumentError(f"records[{index}].value: not valid base64") from None


def parse_records(body: object) -> list[bytes]:
    """The record values of a POST body: ``{"records": [...]}`` or ``{"record": {...}}``."""
    if not isinstance(body, dict):
        raise InvalidArgumentError("the body must be a JSON object with records or record")
    if ("records" in body) == ("record" in body):
        raise InvalidArgumentError("set exactly one of records (a batch) and record (one)")
    if "record" in body:
        return [_decode_record(body["record"], 0)]
    items = body["records"]
    if not isinstance(items, list) or not items:
        raise InvalidArgumentError("records: expected a non-empty list of records")
    return [_decode_record(item, i) for i, item in enumerate(items)]


def _int_param(request: web.Request, name: str, default: int | None) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise InvalidArgumentError(f"query parameter {name} is required")
        return default
    if not raw.isdigit():
        raise InvalidArgumentError(f"query parameter {name}: expected an integer >= 0, got {raw!r}")
    return int(raw)


def _bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidArgumentError(f"query parameter {name}: expected true or false, got {raw!r}")
    return raw in ("true", "1")


@dataclass(frozen=True)
class HttpApiConfig:
    """Settings of the HTTP API beside those it shares with gRPC (:class:`ServerConfig`).

    Attributes:
        shutdown_grace_s: requests in flight get this long to finish when the server stops
            (follow streams end at once), seconds. Default 5 s.
    """

    shutdown_grace_s: float = 5.0


class HttpApi:
    """The HTTP/JSON API over a :class:`CommitLog` and a :class:`ServerLister`.

    ``peer_http_addrs`` names each member's HTTP address (node id -> HOST:PORT) as far as
    this node knows them (Serf tags in a cluster); it fills ``http_addr`` in
    ``/v1/servers`` and ``leader_http_addr`` in a 503. ``tls=None`` is insecure mode (no
    TLS, no ACL) and needs ``insecure=True``.
    """

    def __init__(
        self,
        commit_log: CommitLog,
        servers: ServerLister,
        authorizer: Authorizer,
        *,
        tls: TLSConfig | None,
        config: ServerConfig | None = None,
        http_config: HttpApiConfig | None = None,
        insecure: bool = False,
        peer_http_addrs: Callable[[], Mapping[str, str]] = dict,
        audit: AuditSink | None = None,
        partitions: PartitionRouter | None = None,
    ) -> None:
        if tls is None and not insecure:
            raise ValueError("an HTTP API without TLS needs insecure=True, explicitly")
        #: serves the requests that name a topic, partition or key (None: the default
        #: topic only), as for gRPC
        self._partitions = partitions
        #: The audit log of refused requests (docs/security.md); None: off.
        self._audit = audit if audit is not None else NO_AUDIT
        self.config = config or ServerConfig()
        self.config.validate()
        self.http_config = http_config or HttpApiConfig()
        self.tls = tls
        self._log = commit_log
        self._idempotent = commit_log if isinstance(commit_log, IdempotentLog) else None
        self._servers = servers
        self._authorizer = authorizer
        self._peer_http_addrs = peer_http_addrs
        self._stopping = asyncio.Event()
        # base64 grows a payload by 4/3; JSON adds a little per record
        limit = self.config.max_message_bytes * 4 // 3 + (1 << 20)
        self._body_limit = limit
        self.app = web.Application(client_max_size=limit, middlewares=[self._errors, self._guard])
        self.app.router.add_post("/v1/records", self.post_records)
        self.app.router.add_get("/v1/records", self.get_records, allow_head=False)
        self.app.router.add_get("/v1/servers", self.get_servers, allow_head=False)
        self.app.router.add_get("/v1/offsets", self.get_offsets, allow_head=False)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        #: Listen with this context instead of one built from ``tls`` (set before
        #: :meth:`start`; the agent passes one that follows TLS reloads).
        self.ssl_context: ssl.SSLContext | None = None
        #: Revocation: the reason to refuse a client certificate (as ``getpeercert()``
        #: decodes it), or None; asked on every request.
        self.check_certificate: Callable[[dict[str, Any] | None], str | None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0 = any free port); returns the bound port."""
        ssl_context: ssl.SSLContext | None = None
        if self.tls is not None:
            ssl_context = self.ssl_context or server_ssl_context(self.tls)
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=self.http_config.shutdown_grace_s,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=False)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        return self.port

    async def stop(self) -> None:
        """End follow streams, let other requests finish (bounded), close. Idempotent."""
        self._stopping.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- middlewares -------------------------------------------------------------------

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            # a chunked body that outgrew the limit while being read (its size is unknown)
            limit = self._body_limit
            return self._error_response(
                RecordTooLargeError(limit + 1, limit, what="request body of more than")
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # routing errors (404 unknown path, 405 method): JSON like every other error
            routing = InvalidArgumentError(f"{request.method} {request.path}: {exc.reason}")
            return self._error_response(routing, status=exc.status)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            error = to_api_error(exc)
            if type(error) is DomainError and not isinstance(exc, DomainError):
                logger.exception("unexpected error in an HTTP request", exc_info=exc)
            return self._error_response(error)

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self._admit(request)
        return await handler(request)

    def _admit(self, request: web.Request) -> None:
        """Authentication, revocation and the ACL for ``request``; raises to refuse it.
        Asked again before each write of a follow stream (a reload applies to it too)."""
        if self.tls is None:
            return
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        subject = peer_common_name(peercert)
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else request.path
        if not subject:
            self._audit_denied(request, "-", path, "UNAUTHENTICATED")
            raise UnauthenticatedError("the connection carries no client certificate subject")
        revoked = self.check_certificate(peercert) if self.check_certificate else None
        if revoked is not None:
            self._audit_denied(request, subject, path, "UNAUTHENTICATED")
            raise UnauthenticatedError(f"{revoked} (revoked)")
        action = ROUTE_ACTIONS.get((request.method, path))
        if action is not None and not self._authorizer.authorize(subject, "*", action):
            self._audit_denied(request, subject, path, "PERMISSION_DENIED")
            raise PermissionDeniedError(subject, action)

    def _audit_denied(self, request: web.Request, subject: str, path: str, code: str) -> None:
        transport = request.transport
        peername = transport.get_extra_info("peername") if transport is not None else None
        peer = (
            f"{peername[0]}:{peername[1]}"
            if isinstance(peername, tuple) and len(peername) >= 2
            else str(request.remote or "-")
        )
        self._audit.record(
            "call",
            subject=subject,
            peer=peer,
            method=f"HTTP {request.method} {path}",
            decision="denied",
            code=code,
        )

    def _error_response(self, error: DomainError, status: int | None = None) -> web.Response:
        body: dict[str, Any] = {
            "reason": error.reason,
            "message": error.message,
            "metadata": error.metadata,
            "retriable": error.retriable,
        }
        leader = error.metadata.get(Key.LEADER_ID, "")
        if error.reason in (Reason.NOT_LEADER, Reason.UNAVAILABLE) and leader:
            address = self._peer_http_addrs().get(leader, "")
            if address:
                body[LEADER_HTTP_ADDR] = address
        return web.json_response({"error": body}, status=status or http_status_of(error))

    # -- handlers ----------------------------------------------------------------------

    def _target(self, request: web.Request) -> tuple[int, CommitLog]:
        """(partition, log) named by the query parameters ``topic``, ``partition`` and
        ``key`` (UTF-8 text), as the gRPC fields (none: the default topic's partition 0)."""
        partition = _int_param(request, "partition", 0) if "partition" in request.query else None
        return resolve_target(
            self._log,
            self._partitions,
            request.query.get("topic", ""),
            partition,
            request.query.get("key", "").encode("utf-8"),
        )

    async def post_records(self, request: web.Request) -> web.Response:
        """Append one record or a batch (to a topic's partition with ``topic`` and
        ``partition`` or ``key``); the idempotent producer through two headers."""
        number, log = self._target(request)
        size = request.content_length
        if size is not None and size > self._body_limit:
            raise RecordTooLargeError(size, self._body_limit, what="request body")
        try:
            body = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"the body is not JSON: {exc}") from None
        records = parse_records(body)
        limit = self.config.max_message_bytes
        total = sum(map(len, records))
        if total > limit:
            biggest = max(map(len, records))
            if biggest > limit:
                raise RecordTooLargeError(biggest, limit)
            raise RecordTooLargeError(total, limit, what=f"batch of {len(records)} records")
        # what a gRPC client could not send in one Produce is not forwarded either
        wire_limit = self.config.transport_limit_bytes
        if total + 12 * len(records) > wire_limit:
            wire = produce_request_bytes(records)
            if wire > wire_limit:
                raise RecordTooLargeError(
                    wire, wire_limit, what=f"batch of {len(records)} records as a Produce"
                )
        producer_id = request.headers.get(PRODUCER_ID_HEADER, "")
        raw_sequence = request.headers.get(SEQUENCE_HEADER, "")
        if producer_id or raw_sequence:
            if not raw_sequence.isdigit():
                raise InvalidArgumentError(
                    f"{SEQUENCE_HEADER}: expected an integer >= 1 with {PRODUCER_ID_HEADER}, "
                    f"got {raw_sequence!r}"
                )
            sequence = int(raw_sequence)
            problem = producer_id_problem(producer_id, sequence)
            if problem:
                raise InvalidArgumentError(problem)
            idempotent = self._idempotent if log is self._log else log
            if not isinstance(idempotent, IdempotentLog):
                raise UnsupportedError("this server's log does not support idempotent producers")
            done = await idempotent.append_idempotent(records, producer_id, sequence)
            first, last, duplicate = done.first, done.last, done.duplicate
        else:
            first, last = await log.append(records)
            duplicate = False
        answer: dict[str, object] = {"offset": first, "last_offset": last, "duplicate": duplicate}
        if {"topic", "partition", "key"} & set(request.query):  # named: say which
            answer["partition"] = number
        return web.json_response(answer)

    async def get_records(self, request: web.Request) -> web.StreamResponse:
        """Records from ``offset``: a JSON page, or (follow=true) an NDJSON stream (of a
        topic's partition with ``topic`` and ``partition`` or ``key``)."""
        _, log = self._target(request)
        offset = _int_param(request, "offset", 0)
        max_records = _int_param(request, "max_records", DEFAULT_MAX_RECORDS)
        if not 1 <= max_records <= MAX_RECORDS:
            raise InvalidArgumentError(f"max_records: must be 1..{MAX_RECORDS}, got {max_records}")
        encoding = request.query.get("encoding", "base64")
        if encoding not in ENCODINGS:
            raise InvalidArgumentError(
                f"encoding: must be one of {', '.join(ENCODINGS)}, got {encoding!r}"
            )
        follow = _bool_param(request, "follow")
        if _bool_param(request, "linearizable"):
            await log.read_barrier(self.config.read_barrier_timeout_s)
        budget = min(self.config.consume_max_bytes, self.config.max_message_bytes)
        if follow:
            if offset < log.lowest_offset or offset > log.highest_offset + 1:
                raise OffsetOutOfRangeError(offset, log.lowest_offset, log.highest_offset)
            return await self._follow(
                request,
                log=log,
                offset=offset,
                max_records=max_records,
                budget=budget,
                encoding=encoding,
            )
        if offset < log.lowest_offset or offset > log.highest_offset:
            raise OffsetOutOfRangeError(offset, log.lowest_offset, log.highest_offset)
        values = log.read_batch(offset, budget, max_records)
        records = [
            {"offset": offset + i, **encode_value(v, encoding)} for i, v in enumerate(values)
        ]
        return web.json_response({"records": records})

    async def _follow(
        self,
        request: web.Request,
        *,
        log: CommitLog,
        offset: int,
        max_records: int,
        budget: int,
        encoding: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    break  # the client went away while we waited
                if offset <= log.highest_offset:
                    self._admit(request)  # an ACL or deny list reloaded since: from now on
                    values = log.read_batch(offset, budget, max_records)
                    lines = []
                    for value in values:
                        line = {"offset": offset, **encode_value(value, encoding)}
                        lines.append(json.dumps(line, separators=(",", ":")))
                        offset += 1
                    await response.write(("\n".join(lines) + "\n").encode())
                    continue
                appended = asyncio.ensure_future(log.wait_for(offset, self.config.follow_recheck_s))
                try:
                    await asyncio.wait((appended, stopping), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    appended.cancel()
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            # the status line is sent: the error goes as the stream's last line
            error = to_api_error(exc)
            line = {
                "error": {
                    "reason": error.reason,
                    "message": error.message,
                    "metadata": error.metadata,
                }
            }
            with contextlib.suppress(ConnectionResetError):
                await response.write((json.dumps(line) + "\n").encode())
        finally:
            stopping.cancel()
        if request.transport is not None and not request.transport.is_closing():
            await response.write_eof()
        return response

    async def get_servers(self, request: web.Request) -> web.Response:
        """The members, the leader flagged, with their HTTP addresses where known."""
        servers = await self._servers.get_servers()
        http = self._peer_http_addrs()
        return web.json_response(
            {
                "servers": [
                    {
                        "id": s.id,
                        "rpc_addr": s.rpc_addr,
                        "http_addr": http.get(s.id, ""),
                        "is_leader": s.is_leader,
                        "is_learner": s.is_learner,
                    }
                    for s in servers
                ]
            }
        )

    async def get_offsets(self, request: web.Request) -> web.Response:
        """The offsets the log holds now (as GetOffsets; a topic's partition with ``topic``
        and ``partition`` or ``key``)."""
        _, log = self._target(request)
        lowest, highest = log.lowest_offset, log.highest_offset
        return web.json_response(
            {
                "lowest_offset": lowest,
                "highest_offset": max(highest, 0),
                "next_offset": highest + 1,
                "empty": highest < lowest,
            }
        )

"""Server interceptors: authentication, authorization (Casbin), request decoding, observability.

grpc.aio interceptors see only the method name before the call starts; the client
certificate is in the servicer context's auth context. So each interceptor wraps the
method's handler in a function that runs first inside the call, with the context at hand.

Order of the checks a call goes through (the server builds the chain in this order):

1. the TLS handshake (transport, before any call): no CA-signed client certificate, no call;
2. observability (outermost): records every call with its final status code;
3. authentication: a client-certificate subject is required (UNAUTHENTICATED);
4. authorization: the ACL (PERMISSION_DENIED);
5. (cluster only) the forwarded-write mark;
6. request decoding (:class:`DecodeGuardInterceptor`, innermost): a request whose bytes are
   not a valid protobuf message gets INVALID_ARGUMENT (reason ``UNDECODABLE_REQUEST``).

So a client the ACL refuses learns nothing about its bytes: garbage from an unauthorized
subject gets PERMISSION_DENIED, garbage from an authorized one INVALID_ARGUMENT.

Refusing a request-streaming call: the status is sent only after the client finished
sending (or after :data:`DRAIN_TIMEOUT_S`), the rest of its messages read and discarded.
grpc.aio's client turns a request message whose send fails because the server's status has
just arrived into INTERNAL ("Failed execute_batch ... SendMessageOperation", its
``_StreamRequestMixin._write`` calls ``set_internal_error`` over the real status): a server
that answers before reading the stream makes a refused call end INTERNAL now and then
(about 1 in 300 on two processes of this machine).
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from raftlog.api.contract import (
    ADMIN_SERVICE,
    CLUSTER_SERVICE,
    OBJECT_WILDCARD,
    Action,
    Key,
    Reason,
)
from raftlog.domain.errors import (
    DomainError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from raftlog.domain.protocols import Authorizer
from raftlog.server.errors import status_for
from raftlog.telemetry.audit import NO_AUDIT, AuditSink
from raftlog.telemetry.budget import CURRENT, LatencyBudget, RequestTrace

logger = logging.getLogger("raftlog.server.calls")

#: Method -> the action it needs (:class:`raftlog.api.contract.Action`). Methods outside
#: ``log.v1.Log`` (health, reflection) and the ones in :data:`OPEN_METHODS` need an
#: authenticated client only. The cluster adds its peer methods with ``replicate``.
DEFAULT_ACTIONS: Mapping[str, str] = {
    "/log.v1.Log/Produce": Action.PRODUCE,
    "/log.v1.Log/ProduceStream": Action.PRODUCE,
    "/log.v1.Log/Consume": Action.CONSUME,
    "/log.v1.Log/ConsumeStream": Action.CONSUME,
    "/log.v1.Log/GetOffsets": Action.CONSUME,
    f"/{ADMIN_SERVICE}/Status": Action.ADMIN,
    f"/{ADMIN_SERVICE}/TransferLeadership": Action.ADMIN,
    f"/{ADMIN_SERVICE}/RemoveServer": Action.ADMIN,
    f"/{ADMIN_SERVICE}/Snapshot": Action.ADMIN,
    f"/{ADMIN_SERVICE}/CreateTopic": Action.ADMIN,
    f"/{ADMIN_SERVICE}/DeleteTopic": Action.ADMIN,
    f"/{ADMIN_SERVICE}/ListTopics": Action.ADMIN,
    f"/{ADMIN_SERVICE}/DescribeTopic": Action.ADMIN,
    f"/{ADMIN_SERVICE}/SetTopicRetention": Action.ADMIN,
    f"/{CLUSTER_SERVICE}/SubmitCommand": Action.REPLICATE,
    f"/{CLUSTER_SERVICE}/LocalReplicas": Action.REPLICATE,
    f"/{CLUSTER_SERVICE}/ControllerState": Action.REPLICATE,
}

#: The service whose every method needs an ACL decision: a method of it that is neither in
#: the actions nor in :data:`OPEN_METHODS` (an rpc added without one) is refused with
#: PERMISSION_DENIED, never served open (fail closed).
GUARDED_SERVICE = "/log.v1.Log/"
#: Every service guarded that way: ``log.v1.Log``, the admin service and the cluster's.
GUARDED_SERVICES: tuple[str, ...] = (
    GUARDED_SERVICE,
    f"/{ADMIN_SERVICE}/",
    f"/{CLUSTER_SERVICE}/",
)
#: Methods of the guarded service that any authenticated client may call.
OPEN_METHODS: frozenset[str] = frozenset({"/log.v1.Log/GetServers", "/log.v1.Log/GetPartitions"})
#: The action named in the denial of a guarded method that has none declared.
UNDECLARED_ACTION = "call a method with no declared action"

#: Longest a refused request-streaming call waits for the client to finish sending before
#: its status goes out (seconds). A client that half-closes at once (the usual case) is
#: answered as soon as it did; one that keeps the stream open waits this long at most.
DRAIN_TIMEOUT_S = 1.0
#: Most request messages read and discarded from a refused stream before answering anyway.
DRAIN_MAX_MESSAGES = 256

Context = grpc.aio.ServicerContext[Any, Any]
#: A method handler (grpc.RpcMethodHandler); typed loosely because grpc's stubs describe the
#: synchronous API's behaviours, while grpc.aio's are coroutines and async generators.
Handler = Any
#: A check run inside the call before the method; raises DomainError to refuse it.
Check = Callable[[str, Context], None]


#: What ``context.peer()`` looks like for a connection relayed by the mux, whose upstream
#: socket is bound to an abstract name carrying the client's address
#: (raftlog.mux.mux.PEER_NAME_PREFIX; the server may not import the mux, a sibling).
_RELAYED_PEER = "unix-abstract:raftlog-peer%20"


def peer_of(peer: str) -> str:
    """The client's address of a call: ``context.peer()``, or for a call relayed by the
    mux the TCP client's ``HOST:PORT`` it passed along."""
    if peer.startswith(_RELAYED_PEER):
        return urllib.parse.unquote(peer[len(_RELAYED_PEER) :]).split(" ", 1)[0]
    return peer


#: The subject of the call running in this task, read once by the outermost interceptor
#: (:class:`ObservabilityInterceptor`) for the checks inside it; unset outside a call.
_CALL_SUBJECT: ContextVar[str | None] = ContextVar("raftlog_call_subject")


def subject_of(context: Context) -> str | None:
    """The client certificate's common name (gRPC's ``x509_common_name``), if any.

    Within a call the outermost interceptor reads it once (``auth_context()`` builds a
    new dict from the TLS session on every call) and the checks inside it reuse it."""
    try:
        return _CALL_SUBJECT.get()
    except LookupError:
        pass
    return _read_subject(context)


def _read_subject(context: Context) -> str | None:
    names: Any = context.auth_context().get("x509_common_name")
    if not names:
        return None
    name = next(iter(names))
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


async def _refuse(context: Context, error: DomainError) -> None:
    code, message, trailing = status_for(error)
    await context.abort(code, message, trailing_metadata=trailing)


async def _drain(requests: AsyncIterator[Any]) -> None:
    """Read and discard what is left of a request stream: until the client half-closes,
    :data:`DRAIN_MAX_MESSAGES` messages or :data:`DRAIN_TIMEOUT_S`, whichever comes first.

    Called before refusing a request-streaming call (see the module docstring: a status
    sent while the client is still sending may reach it as INTERNAL)."""
    read = 0
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            async for _ in requests:
                read += 1
                if read >= DRAIN_MAX_MESSAGES:
                    return
    except TimeoutError:
        return
    except Exception as exc:  # a broken stream: nothing left to wait for
        logger.debug("draining a refused request stream ended with %r", exc)


async def _admit(check: Check, method: str, context: Context) -> None:
    """Run ``check`` for one call; abort the call with the error's status if it refuses."""
    try:
        check(method, context)
    except DomainError as exc:
        await _refuse(context, exc)


async def _admit_stream(
    check: Check, method: str, context: Context, requests: AsyncIterator[Any]
) -> None:
    """:func:`_admit` for a request-streaming call: a refusal waits for the client to finish
    sending (:func:`_drain`) so the client gets the refusal's code, not INTERNAL."""
    try:
        check(method, context)
    except DomainError as exc:
        await _drain(requests)
        await _refuse(context, exc)


def _rechecked(
    check: Check,
    method: str,
    context: Context,
    generation: Callable[[], int],
    requests: AsyncIterator[Any],
    *,
    refused: list[DomainError],
) -> AsyncIterator[Any]:
    """The request stream, with ``check`` run again before a message when ``generation()``
    moved since the last check (a reloaded ACL or deny list). A refusal ends the stream for
    the handler (as a half-close would) and is left in ``refused`` for the caller."""

    async def gen() -> AsyncIterator[Any]:
        seen = generation()
        async for message in requests:
            now = generation()
            if now != seen:
                seen = now
                try:
                    check(method, context)
                except DomainError as exc:
                    refused.append(exc)
                    return
            yield message

    return gen()


def _checked(
    handler: Handler, method: str, check: Check, generation: Callable[[], int] | None = None
) -> Handler:
    """``handler`` with ``check`` run at the start of each call and, with ``generation``,
    again at the next message of an open stream (either way) once it has changed."""
    if handler.request_streaming and handler.response_streaming:
        inner_ss = handler.stream_stream

        async def stream_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
            await _admit_stream(check, method, context, requests)
            refused: list[DomainError] = []
            stream = requests
            if generation is not None:
                stream = _rechecked(check, method, context, generation, requests, refused=refused)
            # responses to the messages admitted before a refusal still go out (the
            # handler ends once the checked stream has ended)
            async for response in inner_ss(stream, context):
                yield response
            if refused:
                await _drain(requests)
                await _refuse(context, refused[0])

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.response_streaming:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await _admit(check, method, context)
            seen = generation() if generation is not None else 0
            async for response in inner_us(request, context):
                if generation is not None and generation() != seen:
                    seen = generation()
                    await _admit(check, method, context)
                yield response

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.request_streaming:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Context) -> Any:
            await _admit_stream(check, method, context, requests)
            refused: list[DomainError] = []
            stream = requests
            if generation is not None:
                stream = _rechecked(check, method, context, generation, requests, refused=refused)
            response = await inner_su(stream, context)
            if refused:
                await _drain(requests)
                await _refuse(context, refused[0])
            return response

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_uu = handler.unary_unary

    async def unary_unary(request: Any, context: Context) -> Any:
        await _admit(check, method, context)
        return await inner_uu(request, context)

    return grpc.unary_unary_rpc_method_handler(
        unary_unary, handler.request_deserializer, handler.response_serializer
    )


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


class WrapCache:
    """The wrapped handler of each method, built once: grpc.aio asks every interceptor for
    the handler of every call, and the method's own handler is the same object each time,
    so a wrapper made for it (closures and a handler tuple) can serve every later call.
    Rebuilt if the inner handler changes."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def get(self, method: str, handler: Handler, build: Callable[[], Handler]) -> Handler:
        hit = self._wrapped.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = build()
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class CallMetrics(Protocol):
    """Where :class:`ObservabilityInterceptor` reports each call (the node's metrics)."""

    def observe_call(self, method: str, code: str, seconds: float) -> None: ...


class AuthenticationInterceptor(grpc.aio.ServerInterceptor):
    """Refuses (UNAUTHENTICATED) any call whose connection has no client-certificate CN.

    With mutual TLS a handshake without a CA-signed certificate already fails; this makes
    the rule hold for every method whatever the transport settings.
    """

    def __init__(self) -> None:
        self._wrapped = WrapCache()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return self._wrapped.get(method, handler, lambda: _checked(handler, method, self._check))

    @staticmethod
    def _check(method: str, context: Context) -> None:
        if subject_of(context) is None:
            raise UnauthenticatedError(
                f"{method}: no client certificate subject (mutual TLS is required)"
            )


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):
    """Asks the :class:`Authorizer` whether the subject may do the method's action.

    ``actions`` maps full method names to actions; unlisted methods of other services and
    :data:`OPEN_METHODS` pass (authentication still applies); unlisted methods of
    :data:`GUARDED_SERVICE` are refused. Decisions are cached per (subject, action) until
    the authorizer's ``generation`` (if it has one) moves: a reloaded ACL applies from the
    next call, and from the next message of a stream already open.
    """

    def __init__(self, authorizer: Authorizer, actions: Mapping[str, str] | None = None) -> None:
        self._authorizer = authorizer
        self._actions = dict(DEFAULT_ACTIONS if actions is None else actions)
        self._cache: dict[tuple[str, str], bool] = {}
        self._cache_generation = self._generation()
        self._wrapped = WrapCache()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in OPEN_METHODS:
            return handler
        if method in self._actions:
            return self._wrapped.get(
                method, handler, lambda: _checked(handler, method, self._check, self._generation)
            )
        if method.startswith(GUARDED_SERVICES):
            return self._wrapped.get(
                method, handler, lambda: _checked(handler, method, self._refuse_undeclared)
            )
        return handler

    @staticmethod
    def _refuse_undeclared(method: str, context: Context) -> None:
        subject = subject_of(context)
        if subject is None:
            raise UnauthenticatedError(f"{method}: no client certificate subject")
        raise PermissionDeniedError(subject, UNDECLARED_ACTION, method)

    def _generation(self) -> int:
        return int(getattr(self._authorizer, "generation", 0))

    def _check(self, method: str, context: Context) -> None:
        action = self._actions[method]
        subject = subject_of(context)
        if subject is None:
            raise UnauthenticatedError(f"{method}: no client certificate subject")
        if self._cache_generation != self._generation():
            self._cache_generation = self._generation()
            self._cache.clear()
        key = (subject, action)
        allowed = self._cache.get(key)
        if allowed is None:
            allowed = self._authorizer.authorize(subject, OBJECT_WILDCARD, action)
            self._cache[key] = allowed
        if not allowed:
            raise PermissionDeniedError(subject, action, OBJECT_WILDCARD)


#: Status codes the audit log records as refused calls.
_DENIED = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})
_ADMIN_PREFIX = f"/{ADMIN_SERVICE}/"


#: The call the latency budget traces (raftlog.telemetry.budget).
_TRACED_METHOD = "/log.v1.Log/Produce"


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Logs every call (method, subject, status code, duration) and counts them.

    Successful (and client-cancelled) calls log at DEBUG, failed ones at INFO (WARNING for
    INTERNAL/UNKNOWN). Nothing but those facts (and the peer address) is logged: no
    payloads, no certificates, no keys.
    ``counts`` holds (method, code name) -> calls, for tests; with ``metrics`` (a
    :class:`CallMetrics`, the node's Prometheus metrics) each call is also counted and
    timed there, once per call.
    """

    def __init__(
        self,
        metrics: CallMetrics | None = None,
        audit: AuditSink | None = None,
        budget: LatencyBudget | None = None,
    ) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.metrics = metrics
        #: The latency budget (debug, ``latency_budget``): every unary Produce is traced
        #: from here, the outermost interceptor (raftlog.telemetry.budget).
        self.budget = budget
        #: The audit log (docs/security.md): every refused call (UNAUTHENTICATED,
        #: PERMISSION_DENIED) and every call of the admin service, allowed or not.
        self.audit = audit if audit is not None else NO_AUDIT
        self._wrapped = WrapCache()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return self._wrapped.get(method, handler, lambda: self._observed(handler, method))

    def _record(
        self, method: str, who: tuple[str, str], started: float, code: grpc.StatusCode
    ) -> None:
        name = code.name
        self.counts[method, name] += 1
        elapsed = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe_call(method, name, elapsed)
        denied = code in _DENIED
        if denied or method.startswith(_ADMIN_PREFIX):
            self.audit.record(
                "call",
                subject=who[0],
                peer=who[1],
                method=method,
                decision="denied" if denied else "allowed",
                code=name,
            )
        if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            level = logging.DEBUG  # success, or the client's own choice to stop
        elif code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            level = logging.WARNING
        else:
            level = logging.INFO
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "call method=%s subject=%s peer=%s code=%s duration_ms=%.3f",
                method,
                who[0],
                who[1],
                name,
                elapsed * 1e3,
                extra={
                    "method": method,
                    "subject": who[0],
                    "peer": who[1],
                    "code": name,
                    "duration_ms": round(elapsed * 1e3, 3),
                },
            )

    @staticmethod
    def _who(context: Context) -> tuple[str, str]:
        # Read while the call is alive: grpc.aio's auth context and peer must not be touched
        # after a client cancelled (the call's core object is gone; it can crash the process).
        # The subject is kept for the checks inside this interceptor (subject_of): each call
        # runs in a task of its own, so the variable is this call's.
        subject = _read_subject(context)
        _CALL_SUBJECT.set(subject)
        return subject or "-", peer_of(context.peer())

    @staticmethod
    def _code(context: Context, exc: BaseException | None) -> grpc.StatusCode:
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            # the client went away (the call is cancelled, its response stream closed)
            return grpc.StatusCode.CANCELLED
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return code
        return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN

    def _observed(self, handler: Handler, method: str) -> Handler:
        record, code_of, who_of = self._record, self._code, self._who
        if handler.response_streaming:
            if handler.request_streaming:
                inner_s: Callable[[Any, Context], AsyncIterator[Any]] = handler.stream_stream
            else:
                inner_s = handler.unary_stream

            async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
                started, failure, who = time.perf_counter(), None, who_of(context)
                try:
                    async for response in inner_s(request, context):
                        yield response
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    record(method, who, started, code_of(context, failure))

            factory = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            return factory(streaming, handler.request_deserializer, handler.response_serializer)

        if handler.request_streaming:
            inner_u: Callable[[Any, Context], Awaitable[Any]] = handler.stream_unary
        else:
            inner_u = handler.unary_unary

        async def unary(request: Any, context: Context) -> Any:
            started, failure, who = time.perf_counter(), None, who_of(context)
            try:
                return await inner_u(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                record(method, who, started, code_of(context, failure))

        budget = self.budget
        if budget is not None and method == _TRACED_METHOD and not handler.request_streaming:
            observed = unary

            async def unary(request: Any, context: Context) -> Any:
                trace = RequestTrace(budget)
                token = CURRENT.set(trace)
                try:
                    return await observed(request, context)
                finally:
                    CURRENT.reset(token)
                    trace.finish()

        factory_u = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return factory_u(unary, handler.request_deserializer, handler.response_serializer)


# -- request decoding ------------------------------------------------------------------------


@dataclass(frozen=True)
class Undecodable:
    """What a tolerant deserializer returns for bytes that are not a valid request message,
    in place of raising inside grpc (which answers such a call UNKNOWN)."""

    message_type: str
    size: int
    error: str


class UndecodableRequestError(InvalidArgumentError):
    """The request bytes do not parse as the method's request message."""

    reason = Reason.UNDECODABLE_REQUEST

    def __init__(self, method: str, bad: Undecodable, index: int | None = None) -> None:
        which = "the request" if index is None else f"request message #{index} of the stream"
        super().__init__(
            f"{method}: {which} ({bad.size} bytes) is not a valid {bad.message_type} ({bad.error})",
            {
                Key.METHOD: method,
                Key.MESSAGE_TYPE: bad.message_type,
                Key.SIZE: str(bad.size),
                **({} if index is None else {Key.INDEX: str(index)}),
            },
        )


Deserializer = Callable[[bytes], Any]


def tolerant_deserializer(deserializer: Deserializer) -> Deserializer:
    """``deserializer`` that returns :class:`Undecodable` instead of raising on bad bytes."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = str(getattr(descriptor, "full_name", "") or getattr(owner, "__name__", "?"))

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError) as exc:
            return Undecodable(message_type, len(data), f"{type(exc).__name__}: {exc}")

    deserialize.__qualname__ = f"tolerant({message_type})"
    return deserialize


async def _decoded(method: str, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The request stream with each message checked: the first undecodable one ends it by
    raising :class:`UndecodableRequestError` (inside the method, which answers the
    requests before it and then ends the call with that error), after the client finished
    sending (:func:`_drain`)."""
    index = 0
    async for request in requests:
        if isinstance(request, Undecodable):
            await _drain(requests)
            raise UndecodableRequestError(method, request, index)
        index += 1
        yield request


class DecodeGuardInterceptor(grpc.aio.ServerInterceptor):
    """Answers INVALID_ARGUMENT (reason ``UNDECODABLE_REQUEST``) to request bytes that are
    not a valid request message, for every method that has a request deserializer.

    It swaps the method's request deserializer for :func:`tolerant_deserializer` and checks
    each request before the method sees it. Installed innermost, so authentication and the
    ACL have already admitted the call (an unauthorized subject's garbage gets their code).
    A stream's bad message ends the stream: the method has answered the earlier messages,
    then the call ends with INVALID_ARGUMENT. A method that lets the error escape (one not
    written for it, e.g. reflection) is answered the same way here.
    """

    def __init__(self) -> None:
        self._wrapped = WrapCache()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        return self._wrapped.get(method, handler, lambda: self._guarded(handler, method))

    @staticmethod
    def _guarded(handler: Handler, method: str) -> Handler:
        deserialize = tolerant_deserializer(handler.request_deserializer)
        serialize = handler.response_serializer

        async def refuse_undecodable(request: Any, context: Context) -> None:
            if isinstance(request, Undecodable):
                await _refuse(context, UndecodableRequestError(method, request))

        if handler.request_streaming and handler.response_streaming:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
                try:
                    async for response in inner_ss(_decoded(method, requests), context):
                        yield response
                except UndecodableRequestError as exc:
                    await _refuse(context, exc)

            return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)
        if handler.request_streaming:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: Context) -> Any:
                try:
                    return await inner_su(_decoded(method, requests), context)
                except UndecodableRequestError as exc:
                    await _refuse(context, exc)

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, serialize)
        if handler.response_streaming:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                await refuse_undecodable(request, context)
                async for response in inner_us(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Context) -> Any:
            await refuse_undecodable(request, context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)

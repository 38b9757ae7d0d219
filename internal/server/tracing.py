"""A server span for every call (OpenTelemetry), continuing the caller's trace.

Installed outermost, and only when the node has a tracer (``--otlp-endpoint``): without
one the server has no such interceptor and calls pay nothing. Each call gets a span named
``<service>/<method>`` (kind SERVER) with the RPC semantic conventions
(``rpc.system = grpc``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``). The
parent comes from the call's metadata (``traceparent``): a write a follower forwards to
the leader continues the follower's trace (see :mod:`raftlog.server.forward`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from raftlog.server.interceptors import Context, Continuation, Handler
from raftlog.telemetry import extract_context

#: Status codes that mark a span as an error (the server's fault or an unknown outcome);
#: a client's bad request or a refusal is the call working as designed.
_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


def _code(context: Context, exc: BaseException | None) -> grpc.StatusCode:
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN


def _finish(span: trace.Span, context: Context, exc: BaseException | None) -> None:
    code = _code(context, exc)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, code.name))


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each call in a SERVER span of ``tracer`` (see the module docstring)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        service, _, name = method.lstrip("/").partition("/")
        parent = extract_context(handler_call_details.invocation_metadata)
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        tracer, span_name = self._tracer, f"{service}/{name}"

        def start() -> Any:
            return tracer.start_as_current_span(
                span_name,
                context=parent,
                kind=trace.SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )

        if handler.response_streaming:
            inner_s: Callable[[Any, Context], AsyncIterator[Any]] = (
                handler.stream_stream if handler.request_streaming else handler.unary_stream
            )

            async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
                failure: BaseException | None = None
                with start() as span:
                    try:
                        async for response in inner_s(request, context):
                            yield response
                    except BaseException as exc:
                        failure = exc
                        raise
                    finally:
                        _finish(span, context, failure)

            factory = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            return factory(streaming, handler.request_deserializer, handler.response_serializer)

        inner_u: Callable[[Any, Context], Awaitable[Any]] = (
            handler.stream_unary if handler.request_streaming else handler.unary_unary
        )

        async def unary(request: Any, context: Context) -> Any:
            failure: BaseException | None = None
            with start() as span:
                try:
                    return await inner_u(request, context)
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    _finish(span, context, failure)

        factory_u = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return factory_u(unary, handler.request_deserializer, handler.response_serializer)

"""Forwarding a follower's Produce to the leader, over gRPC with the peer certificate.

A follower that receives a write calls the leader's ``log.v1.Log/Produce`` with the whole
batch (``records``) and, for an idempotent producer, its ``producer_id`` and ``sequence``
(so the leader deduplicates a retry that came through any node), presenting its **peer**
certificate. The call carries the metadata ``x-raftlog-forwarded: 1`` (and, when tracing
is on, the W3C ``traceparent`` of the follower's span, so the leader's spans join its
trace); a node that receives a forwarded call never forwards it again (it answers
NOT_LEADER), so a stale view of the leader cannot make a request bounce around the
cluster.

The mark is peer traffic: besides the method's own action (``produce``, checked by the
authorization interceptor), the leader requires the subject to hold ``replicate`` for a
marked call, so a client certificate that may produce cannot pass itself off as a
forwarding follower (the example policy grants ``replicate`` to CN ``server`` only). A
marked call from a subject without it is refused with PERMISSION_DENIED.

The mark reaches :class:`~raftlog.distributed.DistributedLog` through the context variable
:data:`raftlog.distributed.forwarding.forwarded_call`, set by :class:`ForwardMarkInterceptor`
inside the call (the servicer only passes the records).

A forwarded Produce never exceeds what the leader accepts: the ProduceStream servicer
gathers at most one Produce's worth of requests into one append (see
:mod:`raftlog.server.service`), the HTTP API refuses a batch whose Produce would be too
large, and :class:`GrpcForwarder` checks the encoded size before sending
(``max_request_bytes``, the transport limit every node shares): a batch above it fails
with RECORD_TOO_LARGE instead of a RESOURCE_EXHAUSTED from the leader's gRPC.

This is the gRPC side of forwarding, so it lives in the server layer: ``raftlog.distributed``
declares the :class:`~raftlog.distributed.forwarding.Forwarder` it needs, and the agent
injects a :class:`GrpcForwarder`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from raftlog.api.admin.v1 import admin_pb2, admin_pb2_grpc
from raftlog.api.contract import FORWARDED_KEY, OBJECT_WILDCARD, Action, Key, Reason
from raftlog.api.status import error_info_from_metadata
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.distributed.forwarding import ForwardError, forwarded_call
from raftlog.distributed.topics import ReplicaState
from raftlog.domain.errors import PermissionDeniedError, UnavailableError
from raftlog.domain.protocols import Appended, Authorizer
from raftlog.partitions import Applied, Rejected, Result
from raftlog.partitions import Reason as MetadataReason
from raftlog.security import TLSConfig
from raftlog.security.grpc_tls import grpc_channel_credentials
from raftlog.server.errors import status_for
from raftlog.server.interceptors import subject_of
from raftlog.telemetry import inject_context

#: The logger forwarding always used (it was part of raftlog.distributed).
log = logging.getLogger("raftlog.distributed")


def _varint_bytes(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def produce_request_bytes(records: Sequence[bytes]) -> int:
    """Encoded size of ``ProduceRequest(records=[Record(value=r) ...])`` (no producer
    fields), computed without building it."""
    total = 0
    for r in records:
        n = len(r)
        inner = 1 + _varint_bytes(n) + n if n else 0
        total += 1 + _varint_bytes(inner) + inner
    return total


class ForwardMarkInterceptor(grpc.aio.ServerInterceptor):
    """Sets :data:`forwarded_call` for unary calls and server streams (a peer's repair
    reads, ``ConsumeStream``) that carry the forwarded mark, after checking that the caller
    may ``replicate`` (peer traffic); refuses the call otherwise.
    """

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        if not any(k == FORWARDED_KEY for k, _ in metadata):
            return handler
        authorizer = self._authorizer

        async def mark(context: Any) -> None:
            subject = subject_of(context) or ""
            if not authorizer.authorize(subject, OBJECT_WILDCARD, Action.REPLICATE):
                code, message, trailing = status_for(
                    PermissionDeniedError(subject, Action.REPLICATE, OBJECT_WILDCARD)
                )
                await context.abort(code, message, trailing_metadata=trailing)
            forwarded_call.set(True)

        if handler.response_streaming:
            inner_stream = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> Any:
                await mark(context)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            await mark(context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )


class GrpcForwarder:
    """The :class:`~raftlog.distributed.forwarding.Forwarder` of a cluster node: one gRPC
    channel per leader address, with the peer TLS certificate.

    ``server_hostname`` overrides the name checked in the leader's certificate (default:
    the dialled host; the dev certificates are valid for 127.0.0.1 and localhost).
    ``tls=None`` dials without TLS (insecure development mode only).
    """

    def __init__(
        self,
        tls: TLSConfig | None,
        *,
        server_hostname: str | None = None,
        max_request_bytes: int = 0,
    ) -> None:
        self._tls = tls
        #: Largest encoded Produce sent to a leader (0: unchecked).
        self.max_request_bytes = max_request_bytes
        self._credentials = grpc_channel_credentials(tls) if tls is not None else None
        self._server_hostname = server_hostname
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._retiring: set[asyncio.Future[None]] = set()
        self._closed = False

    def reload_tls(self, grace_s: float = 30.0) -> None:
        """Read the TLS files again (after the agent checked them): new channels present
        the new certificate; the old channels finish their calls (up to ``grace_s``)."""
        if self._tls is None or self._closed:
            return
        self._credentials = grpc_channel_credentials(self._tls)
        old, self._channels = self._channels, {}
        for channel in old.values():
            task = asyncio.ensure_future(channel.close(grace=grace_s))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def _stub(self, address: str) -> log_pb2_grpc.LogStub:
        return log_pb2_grpc.LogStub(self._channel(address))  # type: ignore[no-untyped-call]

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 64 << 20)]
            options.append(("grpc.max_send_message_length", 64 << 20))
            if self._server_hostname:
                options.append(("grpc.ssl_target_name_override", self._server_hostname))
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(address, self._credentials, options=options)
            else:
                channel = grpc.aio.insecure_channel(address, options=options)
            self._channels[address] = channel
        return channel

    # -- the cluster service (raftlog.distributed.topics.PeerClient) -----------------------

    async def submit(self, address: str, entry: bytes, timeout_s: float) -> Result:
        """Have the controller's leader at ``address`` commit ``entry``. Raises
        UnavailableError when the call fails (no commit is assumed: the caller retries
        on its next tick, and every command is idempotent or rejected when repeated)."""
        if self._closed:
            raise UnavailableError("forwarder is closed")
        stub = admin_pb2_grpc.ClusterStub(self._channel(address))  # type: ignore[no-untyped-call]
        try:
            response = await stub.SubmitCommand(
                admin_pb2.SubmitCommandRequest(entry=entry), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError(
                f"controller command to {address}: {exc.code().name}: {exc.details()}"
            ) from None
        if response.applied:
            return Applied()
        try:
            reason = MetadataReason(response.reason)
        except ValueError:
            reason = MetadataReason.UNKNOWN_COMMAND
        return Rejected(reason, response.message)

    async def has_controller(self, address: str, timeout_s: float) -> bool:
        """Whether the node at ``address`` holds controller state (or is creating it)."""
        stub = admin_pb2_grpc.ClusterStub(self._channel(address))  # type: ignore[no-untyped-call]
        response = await stub.ControllerState(admin_pb2.ControllerStateRequest(), timeout=timeout_s)
        return bool(response.has_state)

    async def local_replicas(
        self, address: str, topic: str, timeout_s: float
    ) -> list[ReplicaState]:
        """The replicas of ``topic`` the node at ``address`` hosts, as it sees them."""
        stub = admin_pb2_grpc.ClusterStub(self._channel(address))  # type: ignore[no-untyped-call]
        response = await stub.LocalReplicas(
            admin_pb2.LocalReplicasRequest(topic=topic), timeout=timeout_s
        )
        return [
            ReplicaState(
                topic=r.topic,
                partition=r.partition,
                node_id=r.node_id,
                state=r.state,
                leader_id=r.leader_id,
                next_offset=r.next_offset,
            )
            for r in response.replicas
        ]

    async def produce(
        self,
        address: str,
        records: Sequence[bytes],
        *,
        timeout_s: float,
        producer_id: str = "",
        sequence: int = 0,
        topic: str = "",
        partition: int | None = None,
    ) -> Appended:
        """Produce ``records`` on the node at ``address`` (with the idempotent producer's
        pair when ``producer_id`` is set, to ``topic``'s ``partition`` when given); the
        offsets and whether it was a duplicate."""
        if self._closed:
            raise ForwardError("forwarder is closed", not_applied=True)
        stub = self._stub(address)
        request = log_pb2.ProduceRequest(
            records=[log_pb2.Record(value=r) for r in records],
            producer_id=producer_id,
            sequence=sequence,
            topic=topic,
            partition=partition,
        )
        limit = self.max_request_bytes
        size = request.ByteSize() if limit else 0
        if size > limit:
            raise ForwardError(
                f"forward to {address}: a Produce of {size} bytes is more than the {limit} "
                "bytes a leader accepts",
                not_applied=True,
                reason=Reason.RECORD_TOO_LARGE,
                metadata={Key.SIZE: str(size), Key.LIMIT: str(limit)},
            )
        # the trace context (if a span is current) rides along: one trace across the hop
        metadata = inject_context(((FORWARDED_KEY, "1"),))
        call = stub.Produce(request, timeout=timeout_s, metadata=metadata)
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            info = error_info_from_metadata(exc.trailing_metadata())
            reason = info.reason if info is not None else ""
            leader = info.metadata.get(Key.LEADER_ID, "") if info is not None else ""
            # NOT_LEADER is raised before anything is proposed, or when the entry was
            # lost in a leader change: never appended. A refused connection never
            # carried the request. Anything else may have been appended.
            not_applied = reason == Reason.NOT_LEADER or (
                exc.code() == grpc.StatusCode.UNAVAILABLE
                and "failed to connect" in (exc.details() or "").lower()
            )
            raise ForwardError(
                f"forward to {address}: {exc.code().name}: {exc.details()}",
                not_applied=not_applied,
                deadline_exceeded=exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED,
                leader_id=leader,
                reason=reason,
                metadata=dict(info.metadata) if info is not None else None,
            ) from None
        first = int(response.offset)
        return Appended(first, first + len(records) - 1, bool(response.duplicate))

    async def fetch(
        self,
        address: str,
        offset: int,
        count: int,
        *,
        timeout_s: float,
        topic: str = "",
        partition: int | None = None,
    ) -> list[bytes]:
        """Up to ``count`` committed records from ``offset`` on the node at ``address``,
        read with ``log.v1.Log/Consume`` (one record) or ``ConsumeStream`` with
        ``max_records`` (more), presenting the peer certificate (its subject needs
        ``consume`` and, for the forwarded mark the call carries, ``replicate``): the
        repair source of :mod:`raftlog.distributed.scrub`. The mark lets a peer read a
        range its own checkpoint hash made it refuse to clients (two replicas comparing
        the same range must see each other's copies); a record that fails its checksum
        there is still refused. ``topic`` and ``partition``: a partition's replica (default:
        the default topic). Raises ForwardError on any failure (the peer's copy damaged:
        its DATA_LOSS)."""
        if self._closed:
            raise ForwardError("forwarder is closed", not_applied=True)
        stub = self._stub(address)
        mark = ((FORWARDED_KEY, "1"),)
        try:
            if count <= 1:
                response = await stub.Consume(
                    log_pb2.ConsumeRequest(offset=offset, topic=topic, partition=partition),
                    timeout=timeout_s,
                    metadata=mark,
                )
                return [response.record.value]
            out: list[bytes] = []
            call = stub.ConsumeStream(
                log_pb2.ConsumeRequest(
                    offset=offset, max_records=count, topic=topic, partition=partition
                ),
                timeout=timeout_s,
                metadata=mark,
            )
            try:
                async for message in call:
                    out.extend(r.value for r in message.records)
                    if len(out) >= count:
                        break
            finally:
                call.cancel()
            return out[:count]
        except grpc.aio.AioRpcError as exc:
            info = error_info_from_metadata(exc.trailing_metadata())
            raise ForwardError(
                f"read from {address} at offset {offset}: {exc.code().name}: {exc.details()}",
                not_applied=True,
                reason=info.reason if info is not None else "",
                metadata=dict(info.metadata) if info is not None else None,
            ) from None

    def forget(self, address: str) -> None:
        """Drop the channel to ``address`` (a node that left)."""
        channel = self._channels.pop(address, None)
        if channel is not None:
            task = asyncio.ensure_future(channel.close())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def close(self) -> None:
        """Close every channel. Idempotent."""
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        for task in list(self._retiring):
            task.cancel()
        for channel in channels:
            try:
                await asyncio.wait_for(channel.close(), 2.0)
            except Exception as exc:
                log.debug("closing a forward channel: %s", exc)

"""The grpc.aio server of one node: ``log.v1.Log``, health and reflection, behind mTLS.

:class:`LogServer` binds, starts and stops the server. Security is mutual TLS through
:func:`raftlog.security.grpc_server_credentials` (a client without a CA-signed certificate
fails the handshake) plus the interceptors; insecure mode (no TLS, no ACL) exists only when
the caller passes ``tls=None`` explicitly, and logs a loud warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from raftlog.api.contract import ADMIN_SERVICE, CLUSTER_SERVICE
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.domain.protocols import Authorizer, CommitLog, ServerLister
from raftlog.security import TLSConfig
from raftlog.security.grpc_tls import grpc_server_credentials
from raftlog.server.admin import AdminService, add_admin_service
from raftlog.server.config import ServerConfig
from raftlog.server.interceptors import (
    AuthenticationInterceptor,
    AuthorizationInterceptor,
    CallMetrics,
    DecodeGuardInterceptor,
    ObservabilityInterceptor,
)
from raftlog.server.service import LogService, PartitionRouter, RecordMetrics
from raftlog.server.topics import ClusterService, add_cluster_service
from raftlog.server.tracing import TracingInterceptor
from raftlog.telemetry.audit import AuditSink
from raftlog.telemetry.budget import LatencyBudget

logger = logging.getLogger("raftlog.server")

LOG_SERVICE_NAME: str = log_pb2.DESCRIPTOR.services_by_name["Log"].full_name
INSECURE_WARNING = (
    "INSECURE MODE: no TLS, no client authentication, no authorization. Anyone who can "
    "reach this port can read and write the log. Never use this outside a sandbox."
)


class _ServerMetrics(CallMetrics, RecordMetrics, Protocol):
    """Both kinds of metrics the server reports (:class:`raftlog.telemetry.NodeMetrics`)."""


class BindError(OSError):
    """The server could not listen on the requested address."""


class LogServer:
    """One grpc.aio server carrying the log service, health and reflection.

    ``tls=None`` means insecure mode and requires ``insecure=True`` (no accidental
    plaintext). ``actions`` extends the method -> ACL action map (the cluster adds its
    peer methods with ``replicate``). ``extra_interceptors`` run after the ACL and before
    the request-decoding check (:class:`DecodeGuardInterceptor`, always innermost: request
    bytes that are not a valid message get INVALID_ARGUMENT, never UNKNOWN).

    Telemetry: ``metrics`` counts and times every call and counts records and bytes;
    ``tracer`` (None = tracing off, no interceptor at all) puts a span around every call.
    ``admin``: the admin service ``raftlog.admin.v1.Admin``, served beside ``log.v1.Log``
    behind the same TLS and interceptors (its rpcs need the ACL action ``admin``).
    ``audit``: the audit log of refused and admin calls (None: off).
    ``budget``: the latency budget (debug; None: off) that traces every unary Produce.
    ``partitions``: serves the requests that name a topic, partition or key (None: the
    default topic only). ``cluster``: the nodes' own service ``raftlog.admin.v1.Cluster``
    (ACL action ``replicate``).
    """

    def __init__(
        self,
        commit_log: CommitLog,
        servers: ServerLister,
        authorizer: Authorizer,
        *,
        tls: TLSConfig | None,
        config: ServerConfig | None = None,
        insecure: bool = False,
        actions: Mapping[str, str] | None = None,
        extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        metrics: _ServerMetrics | None = None,
        tracer: trace.Tracer | None = None,
        admin: AdminService | None = None,
        audit: AuditSink | None = None,
        budget: LatencyBudget | None = None,
        partitions: PartitionRouter | None = None,
        cluster: ClusterService | None = None,
    ) -> None:
        if tls is None and not insecure:
            raise ValueError("a server without TLS needs insecure=True, explicitly")
        self.config = config or ServerConfig()
        self.config.validate()
        self.tls = tls
        self.insecure = tls is None
        self.service = LogService(
            commit_log, servers, self.config, metrics=metrics, partitions=partitions
        )
        self.observability = ObservabilityInterceptor(metrics, audit, budget)
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if tracer is not None:
            interceptors.append(TracingInterceptor(tracer))  # outermost: spans see it all
        interceptors.append(self.observability)
        if not self.insecure:
            interceptors += [
                AuthenticationInterceptor(),
                AuthorizationInterceptor(authorizer, actions),
            ]
        # innermost: bad request bytes are judged only once the call is admitted (see
        # raftlog.server.interceptors for the order and why)
        interceptors += [*extra_interceptors, DecodeGuardInterceptor()]
        limit = self.config.transport_limit_bytes
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Two nodes must never share a port silently (gRPC's default is reuseport).
                ("grpc.so_reuseport", 0),
                ("grpc.server_handshake_timeout_ms", int(self.config.handshake_timeout_s * 1000)),
            ],
        )
        log_pb2_grpc.add_LogServicer_to_server(self.service, self.server)  # type: ignore[no-untyped-call]
        services = [LOG_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
        self.admin = admin
        if admin is not None:
            add_admin_service(admin, self.server)
            services.append(ADMIN_SERVICE)
        if cluster is not None:
            add_cluster_service(cluster, self.server)
            services.append(CLUSTER_SERVICE)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(services, self.server)
        self.port: int | None = None
        self._started = False
        self._stopped = False

    def bind(self, host: str, port: int, credentials: grpc.ServerCredentials | None = None) -> int:
        """Listen on ``host:port`` (0 = any free port); returns the bound port.

        ``credentials`` replace the ones built from ``tls`` (the agent passes credentials
        that follow TLS reloads)."""
        address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        try:
            if self.tls is None:
                bound = self.server.add_insecure_port(address)
            else:
                creds = credentials or grpc_server_credentials(self.tls)
                bound = self.server.add_secure_port(address, creds)
        except RuntimeError as exc:
            raise BindError(f"cannot listen on {address}: {exc}") from exc
        if bound == 0:
            raise BindError(f"cannot listen on {address} (in use, or not a local address?)")
        self.port = bound
        return bound

    async def start(self) -> None:
        """Start serving; health reports SERVING."""
        if self.insecure:
            logger.warning(INSECURE_WARNING)
        await self.server.start()
        self._started = True
        serving = health_pb2.HealthCheckResponse.SERVING
        await self.health.set("", serving)
        await self.health.set(LOG_SERVICE_NAME, serving)

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING through the health service (the whole server and
        ``log.v1.Log``): a node whose disk failed answers health checks NOT_SERVING, so a
        load balancer or an orchestrator takes it out."""
        if self._stopped:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        await self.health.set(LOG_SERVICE_NAME, status)

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, end followers, let calls finish for ``grace_s``, then stop.

        Idempotent; bounded by ``grace_s`` plus gRPC's own teardown.
        """
        if self._stopped:
            return
        self._stopped = True
        self.service.begin_shutdown()
        if self._started:
            await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)

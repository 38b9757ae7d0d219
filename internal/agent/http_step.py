"""The agent's optional ``http`` step: the HTTP/JSON API on ``--http-port`` (0 = off).

It serves the same log as the gRPC step with the same TLS files and ACL
(:class:`raftlog.server.http_api.HttpApi`). In a cluster the step runs before membership,
so that the bound address goes into this node's Serf tag :data:`HTTP_ADDR_TAG`; every node
reads its peers' tags to name the leader's HTTP address in a 503 and in ``/v1/servers``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from raftlog.config import AgentConfig
from raftlog.domain.protocols import Authorizer, CommitLog, ServerLister
from raftlog.security import TLSConfig
from raftlog.server import ServerConfig
from raftlog.server.http_api import HttpApi, HttpApiConfig
from raftlog.server.service import PartitionRouter
from raftlog.telemetry.audit import AuditSink

logger = logging.getLogger("raftlog.agent")

#: Serf tag holding a member's HTTP API address (HOST:PORT); absent when its API is off.
HTTP_ADDR_TAG = "http_addr"


def host_port(host: str, port: int) -> str:
    """HOST:PORT, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_http_api(
    config: AgentConfig,
    *,
    commit_log: CommitLog,
    servers: ServerLister,
    authorizer: Authorizer,
    tls: TLSConfig | None,
    peer_http_addrs: Callable[[], Mapping[str, str]] = dict,
    audit: AuditSink | None = None,
    ssl_context: ssl.SSLContext | None = None,
    check_certificate: Callable[[dict[str, Any] | None], str | None] | None = None,
    partitions: PartitionRouter | None = None,
) -> tuple[HttpApi, Callable[[], Awaitable[None]]]:
    """Bind and start the HTTP API on the bind host at ``config.http_port``; its teardown."""
    api = HttpApi(
        commit_log,
        servers,
        authorizer,
        tls=tls,
        insecure=tls is None,
        config=ServerConfig(max_message_bytes=config.max_message_bytes),
        http_config=HttpApiConfig(shutdown_grace_s=max(config.shutdown_timeout_s / 2, 0.1)),
        peer_http_addrs=peer_http_addrs,
        audit=audit,
        partitions=partitions,
    )
    api.ssl_context = ssl_context
    api.check_certificate = check_certificate
    port = await api.start(config.bind_host, config.http_port)
    logger.info(
        "node %s serving the HTTP/JSON API on %s (%s)",
        config.node_name,
        host_port(config.bind_host, port),
        "INSECURE" if tls is None else "mutual TLS, Casbin ACL",
    )
    return api, api.stop

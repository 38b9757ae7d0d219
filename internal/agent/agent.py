"""The agent: builds one node from an :class:`AgentConfig`, runs it, shuts it down.

The node is an ordered list of setup steps; each returns its teardown. :meth:`Agent.start`
runs them in order (undoing what started if one fails), :meth:`Agent.shutdown` runs the
teardowns in reverse, once, each bounded in time. The single node has two steps::

    telemetry  /metrics, /healthz, /readyz (--metrics-addr) -> stop; flush spans
               (only with --metrics-addr or an OTLP endpoint)
    log        open the commit log in data_dir               -> sync and close it
    server     gRPC API on bind host : rpc_port (mTLS, ACL)  -> drain calls, stop
    http       HTTP/JSON API on --http-port (only when set)  -> end follows, stop

A cluster member (``AgentConfig.cluster_mode``: ``--bootstrap``, ``--start-join-addrs``,
``--peers``, or Raft state in the data dir) runs telemetry and four steps instead (see
:mod:`raftlog.agent.cluster`)::

    telemetry   as above; /readyz once a leader is known
    mux         one port for gRPC and Raft                    -> close, remove socket dir
    raft        commit log (FSM) + Raft node + DistributedLog  -> close them
    server      gRPC API behind the mux (unix socket)          -> drain calls, stop
    http        HTTP/JSON API on --http-port (only when set)   -> end follows, stop
    membership  Serf agent subprocess (or static peers)        -> hand over, leave, reap
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

import raftlog
from raftlog.agent.cluster import ClusterNode, segment_config
from raftlog.agent.http_step import start_http_api
from raftlog.agent.telemetry import (
    NodeTelemetry,
    leader_readiness,
    register_cluster_metrics,
    register_local_metrics,
)
from raftlog.auth import AllowAll, CasbinAuthorizer
from raftlog.config import AgentConfig
from raftlog.domain.protocols import Authorizer
from raftlog.log import Log, SyncPolicy
from raftlog.security import TLSConfig
from raftlog.server import LocalLog, LogServer, ServerConfig
from raftlog.server.http_api import HttpApi
from raftlog.telemetry import AuditLog

logger = logging.getLogger("raftlog.agent")

Teardown = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    """One part of the node: its name and the coroutine that starts it."""

    name: str
    setup: Callable[[], Awaitable[Teardown]]


class Agent:
    """One raftlog node. ``await start()``, then ``await shutdown()`` (idempotent)."""

    def __init__(
        self, config: AgentConfig, *, tracer_provider: TracerProvider | None = None
    ) -> None:
        """``tracer_provider``: trace with this provider instead of the one the config
        asks for (embedders and tests: an in-memory exporter, say); the agent shuts it down
        (flushing its spans) when it shuts down."""
        config.validate()
        self.config = config
        self.local_log: LocalLog | None = None
        self.server: LogServer | None = None
        self._teardowns: list[tuple[str, Teardown]] = []
        self._shutdown_task: asyncio.Task[None] | None = None
        self.cluster: ClusterNode | None = None
        #: Metrics (recorded and served only with --metrics-addr: without it the parts get
        #: no metrics object and count nothing), traces (with an OTLP endpoint).
        self.telemetry = NodeTelemetry(config, raftlog.__version__)
        telemetry = self.telemetry
        if tracer_provider is not None:
            telemetry.use_tracer_provider(tracer_provider)
        metrics = telemetry.metrics if config.metrics_addr else None
        self._metrics = metrics
        self.http_api: HttpApi | None = None
        if config.cluster_mode:
            cluster = ClusterNode(
                config,
                self._authorizer(),
                metrics=metrics,
                tracer=telemetry.tracer,
                disk_usage=telemetry.disk.measure,
            )
            self.cluster = cluster
            if metrics is not None:
                register_cluster_metrics(metrics, cluster)
            telemetry.set_readiness(leader_readiness(cluster))
            self.steps: list[Step] = [
                Step("mux", cluster.setup_mux),
                Step("raft", cluster.setup_raft),
                Step("server", cluster.setup_server),
                *([Step("http", cluster.setup_http)] if config.http_port else []),
                Step("membership", cluster.setup_membership),
            ]
        else:
            if metrics is not None:
                register_local_metrics(metrics, lambda: self.local_log)
            telemetry.set_readiness(self._local_ready)
            self.steps = [
                Step("log", self._setup_log),
                Step("server", self._setup_server),
                *([Step("http", self._setup_http)] if config.http_port else []),
            ]
        if config.metrics_addr or telemetry.tracer_provider is not None:
            # first up, last down: /healthz answers during a long start (recovery), and
            # the spans of the shutdown itself are flushed
            self.steps.insert(0, Step("telemetry", self._setup_telemetry))
        #: The audit log (--audit-log; None: off), open from the first step to the last.
        self.audit: AuditLog | None = None
        if config.audit_log:
            self.steps.insert(0, Step("audit", self._setup_audit))

    @property
    def rpc_addr(self) -> str:
        """HOST:PORT clients dial (the bound port, once the server (or mux) step ran)."""
        if self.cluster is not None:
            return self.cluster.rpc_addr
        if self.server is None or self.server.port is None:
            return self.config.rpc_addr
        host = self.config.bind_host
        return f"[{host}]:{self.server.port}" if ":" in host else f"{host}:{self.server.port}"

    @property
    def metrics_addr(self) -> str:
        """HOST:PORT of /metrics, /healthz and /readyz ("" when not served)."""
        server = self.telemetry.server
        return server.address if server is not None else ""

    def _local_ready(self) -> tuple[bool, str]:
        if self.server is None or self.local_log is None:
            return False, "starting or stopping"
        return True, ""

    @property
    def http_addr(self) -> str:
        """HOST:PORT of the HTTP/JSON API once its step ran ("" when it is off)."""
        api = self.cluster.http_api if self.cluster is not None else self.http_api
        if api is None or api.port is None:
            return ""
        host = self.config.bind_host
        return f"[{host}]:{api.port}" if ":" in host else f"{host}:{api.port}"

    # -- steps -------------------------------------------------------------------------

    async def _setup_telemetry(self) -> Teardown:
        await self.telemetry.start()
        return self.telemetry.close

    async def _setup_audit(self) -> Teardown:
        audit = await asyncio.to_thread(AuditLog, Path(self.config.audit_log))
        self.audit = audit
        if self.cluster is not None:
            self.cluster.audit = audit
        logger.info("audit log: %s", audit.path)

        async def stop() -> None:
            await asyncio.to_thread(audit.close)

        return stop

    async def _setup_log(self) -> Teardown:
        log_config = dataclasses.replace(
            segment_config(self.config.segment_bytes), sync=SyncPolicy(self.config.sync)
        )
        # Opening verifies the active segment (file I/O): keep it off the event loop.
        log = await asyncio.to_thread(Log.open, self.config.data_dir, log_config)
        self.local_log = LocalLog(log, node_id=self.config.node_name)
        logger.info(
            "commit log open in %s: offsets %d..%d, sync=%s",
            self.config.data_dir,
            log.lowest_offset,
            log.highest_offset,
            self.config.sync,
        )
        if self.config.retention_bytes or self.config.retention_age:
            logger.warning(
                "--retention-bytes / --retention-age apply in cluster mode only (decided "
                "through Raft); this single node keeps every record"
            )
        local_log = self.local_log
        return local_log.close

    def _authorizer(self) -> Authorizer:
        if self.config.insecure:
            return AllowAll()
        return CasbinAuthorizer(self.config.acl_model_file, self.config.acl_policy_file)

    async def _setup_server(self) -> Teardown:
        assert self.local_log is not None, "the log step runs first"
        config = self.config
        tls = None
        if not config.insecure:
            tls = TLSConfig(
                config.server_tls_cert_file, config.server_tls_key_file, config.server_tls_ca_file
            )
        server = LogServer(
            self.local_log,
            self.local_log,
            self._authorizer(),
            tls=tls,
            insecure=config.insecure,
            config=ServerConfig(max_message_bytes=config.max_message_bytes),
            metrics=self._metrics,
            tracer=self.telemetry.tracer,
            audit=self.audit,
        )
        server.bind(config.bind_host, config.rpc_port)
        self.server = server
        self.local_log.rpc_addr = self.rpc_addr
        await server.start()
        logger.info(
            "node %s serving log.v1.Log on %s (%s)",
            config.node_name,
            self.rpc_addr,
            "INSECURE" if config.insecure else "mutual TLS, Casbin ACL",
        )
        grace = max(config.shutdown_timeout_s / 2, 0.1)

        async def stop() -> None:
            await server.stop(grace)

        return stop

    async def _setup_http(self) -> Teardown:
        assert self.local_log is not None and self.server is not None
        self.http_api, stop = await start_http_api(
            self.config,
            commit_log=self.local_log,
            servers=self.local_log,
            authorizer=self._authorizer(),
            tls=self.server.tls,
            audit=self.audit,
        )
        return stop

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Run every step in order; if one fails, tear down the started ones and raise."""
        for step in self.steps:
            try:
                teardown = await step.setup()
            except BaseException:
                logger.error(
                    "step %r failed to start; stopping the steps already started", step.name
                )
                await self.shutdown()
                raise
            self._teardowns.append((step.name, teardown))

    async def shutdown(self) -> None:
        """Tear the steps down in reverse order, once; every step bounded in time."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        timeout = self.config.shutdown_timeout_s
        while self._teardowns:
            name, teardown = self._teardowns.pop()
            try:
                await asyncio.wait_for(teardown(), timeout)
            except TimeoutError:
                logger.error("step %r did not stop within %.1f s; moving on", name, timeout)
            except Exception:
                logger.exception("step %r failed to stop cleanly", name)
        logger.info("node %s stopped", self.config.node_name)

    async def run_until_signalled(self, on_started: Callable[[Agent], None] | None = None) -> None:
        """Start, call ``on_started``, serve until SIGINT/SIGTERM, then shut down."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def request_stop(sig: signal.Signals) -> None:
            if stop.is_set():
                logger.warning("%s again: already shutting down", sig.name)
                return
            logger.info("%s received: shutting down", sig.name)
            stop.set()

        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, request_stop, sig)
        try:
            await self.start()
            if on_started is not None:
                on_started(self)
            await stop.wait()
        finally:
            await self.shutdown()
            for sig in signals:
                loop.remove_signal_handler(sig)

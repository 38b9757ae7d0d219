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
    register_tls_metrics,
)
from raftlog.auth import AllowAll, CasbinAuthorizer
from raftlog.config import AgentConfig
from raftlog.domain.protocols import Authorizer
from raftlog.log import Log, SyncPolicy
from raftlog.security import TLSConfig
from raftlog.security.denylist import DenyList
from raftlog.security.grpc_tls import grpc_dynamic_server_credentials
from raftlog.security.reload import ReloadableTLS
from raftlog.server import LocalLog, LogServer, ServerConfig
from raftlog.server.http_api import HttpApi
from raftlog.server.revocation import RevocationInterceptor
from raftlog.telemetry import AuditLog

logger = logging.getLogger("raftlog.agent")

Teardown = Callable[[], Awaitable[None]]

#: How often a running node logs again about certificates close to expiry (s).
EXPIRY_CHECK_INTERVAL_S = 3600.0


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
        #: One ACL and one deny list for every part of the node, reloaded on SIGHUP.
        self.deny_list = DenyList(None if config.insecure else config.deny_list_file)
        #: Made on first use (a single node: by its server step, so a bad ACL fails the
        #: start and undoes the log step).
        self._acl: Authorizer | None = None
        #: Single node: the server's reloadable TLS material (cluster: ClusterNode's).
        self.server_material: ReloadableTLS | None = None
        if config.cluster_mode:
            cluster = ClusterNode(
                config,
                self._authorizer(),
                deny_list=self.deny_list,
                metrics=metrics,
                tracer=telemetry.tracer,
                disk_usage=telemetry.disk.measure,
                budget=telemetry.budget,
            )
            self.cluster = cluster
            if metrics is not None:
                register_cluster_metrics(metrics, cluster)
            telemetry.set_readiness(leader_readiness(cluster))
            if metrics is not None:
                register_tls_metrics(metrics, self.certificate_expiry)
            self.steps: list[Step] = [
                Step("mux", cluster.setup_mux),
                Step("raft", cluster.setup_raft),
                Step("topics", cluster.setup_topics),
                Step("server", cluster.setup_server),
                *([Step("http", cluster.setup_http)] if config.http_port else []),
                Step("membership", cluster.setup_membership),
            ]
        else:
            if metrics is not None:
                register_local_metrics(metrics, lambda: self.local_log)
                register_tls_metrics(metrics, self.certificate_expiry)
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
        """The node's one ACL (every part asks the same one, so one reload reaches all)."""
        if self._acl is None:
            if self.config.insecure:
                self._acl = AllowAll()
            else:
                self._acl = CasbinAuthorizer(
                    self.config.acl_model_file, self.config.acl_policy_file
                )
        return self._acl

    async def _setup_server(self) -> Teardown:
        assert self.local_log is not None, "the log step runs first"
        config = self.config
        tls = None
        if not config.insecure:
            tls = TLSConfig(
                config.server_tls_cert_file, config.server_tls_key_file, config.server_tls_ca_file
            )
        credentials = None
        if tls is not None:
            self.server_material = ReloadableTLS(tls, "server")
            credentials = grpc_dynamic_server_credentials(self.server_material.grpc_material)
        server = LogServer(
            self.local_log,
            self.local_log,
            self._authorizer(),
            tls=tls,
            insecure=config.insecure,
            extra_interceptors=[RevocationInterceptor(self.deny_list)] if tls else [],
            config=ServerConfig(max_message_bytes=config.max_message_bytes),
            metrics=self._metrics,
            tracer=self.telemetry.tracer,
            audit=self.audit,
            budget=self.telemetry.budget,
        )
        server.bind(config.bind_host, config.rpc_port, credentials)
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
            ssl_context=self.server_material.server_context if self.server_material else None,
            check_certificate=self.deny_list.refuses_peercert,
        )
        return stop

    # -- reload (SIGHUP) -----------------------------------------------------------------

    def reload(self) -> dict[str, list[str]]:
        """Read the TLS files, the ACL and the deny list again (SIGHUP does this).

        New connections and calls use what changed; open connections stay; each bad file
        is refused with an error log line and what was loaded before stays in use. Returns
        what changed: ``{"tls": [roles], "acl": [...], "deny_list": [...]}``."""
        changed: dict[str, list[str]] = {"tls": [], "acl": [], "deny_list": []}
        if self.config.insecure:
            logger.info("reload: insecure mode has no TLS, ACL or deny list to reload")
            return changed
        if self.cluster is not None:
            changed["tls"] = self.cluster.reload_tls()
        elif self.server_material is not None and self.server_material.reload():
            changed["tls"] = ["server"]
        reload_acl = getattr(self._acl, "reload", None)
        if reload_acl is not None and reload_acl():
            changed["acl"] = [str(self.config.acl_policy_file)]
        if self.deny_list.reload():
            changed["deny_list"] = [str(self.config.deny_list_file)]
        if self.cluster is not None and (changed["acl"] or changed["deny_list"]):
            self.cluster.recheck_peers()
        logger.info(
            "reload done: TLS %s, ACL %s, deny list %s",
            ", ".join(changed["tls"]) or "unchanged",
            "reloaded" if changed["acl"] else "unchanged",
            "reloaded" if changed["deny_list"] else "unchanged",
        )
        return changed

    def _materials(self) -> list[ReloadableTLS]:
        if self.cluster is not None:
            return list(self.cluster.materials.values())
        return [self.server_material] if self.server_material is not None else []

    def certificate_expiry(self) -> dict[str, float]:
        """Seconds until each certificate of this node expires (its own, its CAs')."""
        if self.cluster is not None:
            return self.cluster.certificate_expiry()
        material = self.server_material
        return material.expiry_seconds() if material is not None else {}

    async def _watch_expiry(self) -> None:
        """Log again, every EXPIRY_CHECK_INTERVAL_S, about certificates close to expiry."""
        while True:
            await asyncio.sleep(EXPIRY_CHECK_INTERVAL_S)
            for material in self._materials():
                material.warn_expiry()

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
        """Start, call ``on_started``, serve until SIGINT/SIGTERM, then shut down.

        SIGHUP reloads the TLS files, the ACL and the deny list (:meth:`reload`)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def request_stop(sig: signal.Signals) -> None:
            if stop.is_set():
                logger.warning("%s again: already shutting down", sig.name)
                return
            logger.info("%s received: shutting down", sig.name)
            stop.set()

        def request_reload() -> None:
            logger.info("SIGHUP received: reloading TLS files, ACL and deny list")
            try:
                self.reload()
            except Exception:
                logger.exception("reload failed; the node keeps what it had")

        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, request_stop, sig)
        # installed before start: a SIGHUP during a long start must not kill the node
        loop.add_signal_handler(signal.SIGHUP, request_reload)
        expiry: asyncio.Task[None] | None = None
        try:
            await self.start()
            expiry = asyncio.create_task(self._watch_expiry(), name="tls-expiry-watch")
            if on_started is not None:
                on_started(self)
            await stop.wait()
        finally:
            if expiry is not None:
                expiry.cancel()
            await self.shutdown()
            for sig in (*signals, signal.SIGHUP):
                loop.remove_signal_handler(sig)

"""The plain-HTTP listener of a node: ``/metrics``, ``/healthz`` and ``/readyz``.

It runs on the node's own event loop (aiohttp), apart from the mTLS port, the way etcd
serves ``--listen-metrics-urls``: Prometheus and Kubernetes probes reach it without client
certificates, so it serves nothing but numbers and yes/no answers (no records, no keys).

- ``/metrics``: every metric of the node in the Prometheus text format;
- ``/healthz``: 200 ``ok`` while the process serves HTTP at all (liveness);
- ``/readyz``: 200 ``ready`` when :data:`HealthCheck` says the node can serve (in a
  cluster: it knows a leader), else 503 with the reason (readiness);
- ``/debug/latency``: only with the latency budget on (debug setting ``latency_budget``):
  p50/p99 per stage of an acknowledged Produce as JSON (raftlog.telemetry.budget).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from raftlog.telemetry.budget import STAGES, LatencyBudget
from raftlog.telemetry.metrics import CONTENT_TYPE, NodeMetrics

logger = logging.getLogger("raftlog.telemetry")

#: Longest the refresh before a scrape may take (seconds); the scrape goes on without it.
SCRAPE_REFRESH_TIMEOUT_S = 2.0

#: The health paths, liveness then readiness: what the Kubernetes probes name
#: (deploy/kubernetes; a test checks the manifests against this one definition).
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
HEALTH_PATHS = (LIVENESS_PATH, READINESS_PATH)
#: The latency budget's JSON (debug).
BUDGET_PATH = "/debug/latency"

#: Readiness: (ready, reason). Called on the event loop for every /readyz; must be quick.
HealthCheck = Callable[[], tuple[bool, str]]


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` (0 = any free port).

    ``before_scrape`` refreshes values that need I/O (the data directory's size, measured
    in a thread) before each scrape, bounded by :data:`SCRAPE_REFRESH_TIMEOUT_S`.
    """

    def __init__(
        self,
        metrics: NodeMetrics,
        ready: HealthCheck,
        host: str,
        port: int,
        *,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
        budget: LatencyBudget | None = None,
    ) -> None:
        self.metrics = metrics
        self.budget = budget
        self._before_scrape = before_scrape
        self._ready = ready
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get(LIVENESS_PATH, self._healthz)
        app.router.add_get(READINESS_PATH, self._readyz)
        if budget is not None:
            app.router.add_get(BUDGET_PATH, self._budget)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._started = False

    @property
    def address(self) -> str:
        """HOST:PORT it listens on (the bound port once started)."""
        port = self.port if self.port is not None else self.requested_port
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address is taken."""
        await self._runner.setup()
        self._started = True
        site = web.TCPSite(self._runner, self.host, self.requested_port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self.close()
            raise
        server = site._server  # aiohttp exposes the bound port only through the server
        sockets = getattr(server, "sockets", None) or ()
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.requested_port

    async def close(self) -> None:
        """Stop serving. Idempotent."""
        if self._started:
            self._started = False
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._before_scrape is not None:
            try:
                async with asyncio.timeout(SCRAPE_REFRESH_TIMEOUT_S):
                    await self._before_scrape()
            except Exception as exc:  # stale values beat no metrics at all
                logger.debug("refreshing metrics before a scrape failed: %r", exc)
        body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _budget(self, request: web.Request) -> web.Response:
        """The latency budget's percentiles per stage as JSON; ``?reset=1`` empties it after
        reading (a benchmark reads once after its warm-up and once at the end)."""
        budget = self.budget
        assert budget is not None
        body = {"stages": budget.summary(), "descriptions": STAGES}
        if request.query.get("reset") in ("1", "true"):
            budget.reset()
        return web.json_response(body)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            ready, reason = self._ready()
        except Exception as exc:
            ready, reason = False, f"readiness check failed: {exc}"
        if ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

"""Telemetry of a node: Prometheus metrics, the plain-HTTP metrics/health listener,
OpenTelemetry traces and JSON logs.

This package sits at the bottom of the layers (beside ``api`` and ``security``): every
layer may use it and it imports no other raftlog package. The layers above hand it what
it reports through callbacks (read at scrape time, so most gauges and counters cost the
hot path nothing) or call its few hot-path instruments once per request or per batch.
"""

from raftlog.telemetry.audit import NO_AUDIT, AuditLog, AuditSink, NoAudit
from raftlog.telemetry.collect import CallbackCollector, Sample
from raftlog.telemetry.http import HealthCheck, MetricsServer
from raftlog.telemetry.jsonlog import JsonFormatter, NodeIdFilter
from raftlog.telemetry.metrics import NodeMetrics
from raftlog.telemetry.tracing import (
    TracingSettings,
    build_tracer_provider,
    extract_context,
    inject_context,
)

__all__ = [
    "NO_AUDIT",
    "AuditLog",
    "AuditSink",
    "CallbackCollector",
    "HealthCheck",
    "JsonFormatter",
    "MetricsServer",
    "NoAudit",
    "NodeIdFilter",
    "NodeMetrics",
    "Sample",
    "TracingSettings",
    "build_tracer_provider",
    "extract_context",
    "inject_context",
]

"""OpenTelemetry traces: a tracer provider per node and W3C trace context in gRPC metadata.

Off by default. A node with an OTLP endpoint (``--otlp-endpoint`` or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``) builds a :class:`TracerProvider` of its own, whose
resource names the service (``raftlog``) and the node (``service.instance.id``), and
exports its spans in batches over OTLP/gRPC. Without one, the parts get no tracer and
create no spans at all (no cost on the hot path).

The context of a write forwarded from a follower to the leader travels as a
``traceparent`` header in the call's metadata (:func:`inject_context` on the follower,
:func:`extract_context` in the leader's server), so both nodes' spans share one trace.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)

#: ``service.name`` of every raftlog span.
SERVICE_NAME = "raftlog"
#: Name of the instrumentation scope of raftlog's own spans.
TRACER_NAME = "raftlog"


@dataclass(frozen=True)
class TracingSettings:
    """Where spans go. ``otlp_endpoint``: an OTLP/gRPC collector (``http://host:4317``
    for plaintext, ``https://`` for TLS); empty = tracing off."""

    node_id: str
    otlp_endpoint: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.otlp_endpoint)


def build_tracer_provider(
    node_id: str,
    *,
    otlp_endpoint: str = "",
    exporter: SpanExporter | None = None,
    batch: bool = True,
) -> TracerProvider:
    """A provider for one node: spans to ``exporter`` if given, else to the OTLP
    collector at ``otlp_endpoint``. ``batch=False`` exports each span as it ends (tests).

    The OTLP exporter is imported only here, so a node without tracing never loads it.
    """
    resource = Resource.create({"service.name": SERVICE_NAME, "service.instance.id": node_id})
    provider = TracerProvider(resource=resource)
    if exporter is None:
        if not otlp_endpoint:
            raise ValueError("build_tracer_provider needs an otlp_endpoint or an exporter")
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=otlp_endpoint, insecure=otlp_endpoint.startswith("http://")
        )
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return provider


def inject_context(metadata: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``metadata`` plus the current trace context (``traceparent``, ``tracestate``);
    unchanged when no span is current."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return (*metadata, *carrier.items())


def extract_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The trace context a caller sent in its call metadata (an empty one if none)."""
    carrier = {k: v for k, v in (metadata or ()) if isinstance(v, str) and k in _PROPAGATION_KEYS}
    return propagate.extract(carrier)


#: The metadata keys the W3C propagators read (gRPC metadata keys are lower case).
_PROPAGATION_KEYS = frozenset({"traceparent", "tracestate", "baggage"})

"""The telemetry package on its own: scrape-time collectors, the HTTP listener, the JSON
log format, trace-context propagation."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import aiohttp
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from raftlog.agent import Agent
from raftlog.config import AgentConfig
from raftlog.telemetry import (
    JsonFormatter,
    MetricsServer,
    NodeIdFilter,
    NodeMetrics,
    build_tracer_provider,
    extract_context,
    inject_context,
)


def test_callbacks_are_read_at_scrape_time_and_a_missing_part_leaves_no_sample() -> None:
    metrics = NodeMetrics("u1", "9.9")
    value: dict[str, float | None] = {"v": None}
    metrics.callbacks.gauge("raftlog_test_value", "A value.", lambda: value["v"])
    metrics.callbacks.counter(
        "raftlog_test_events", "Events.", lambda: {("a",): 2.0, ("b",): 3.0}, labels=("kind",)
    )

    def broken() -> float:
        raise RuntimeError("closing")

    metrics.callbacks.gauge("raftlog_test_broken", "Fails.", broken)
    text = metrics.exposition().decode()
    assert "# TYPE raftlog_test_value gauge" in text
    assert "\nraftlog_test_value " not in text  # no sample while the part is missing
    assert 'raftlog_test_events_total{kind="a"} 2.0' in text
    assert 'raftlog_test_events_total{kind="b"} 3.0' in text
    assert "# TYPE raftlog_test_broken gauge" in text and "\nraftlog_test_broken " not in text
    assert 'raftlog_node_info{node_id="u1",version="9.9"} 1.0' in text
    value["v"] = 5.0
    assert "\nraftlog_test_value 5.0" in metrics.exposition().decode()
    with pytest.raises(ValueError, match="without _total"):
        metrics.callbacks.counter("raftlog_x_total", "x", lambda: 1.0)


def test_hot_path_instruments() -> None:
    metrics = NodeMetrics("u1")
    metrics.observe_call("/log.v1.Log/Produce", "OK", 0.002)
    metrics.observe_call("/log.v1.Log/Produce", "OK", 0.004)
    metrics.observe_call("/log.v1.Log/Produce", "UNAVAILABLE", 0.5)
    metrics.produced(10, 1000)
    metrics.consumed(4, 40)
    metrics.raft_appended(64)
    metrics.raft_synced(0.001)
    metrics.raft_leader_changed(3, "n2")
    text = metrics.exposition().decode()
    assert 'raftlog_grpc_requests_total{code="OK",method="/log.v1.Log/Produce"} 2.0' in text
    assert (
        'raftlog_grpc_requests_total{code="UNAVAILABLE",method="/log.v1.Log/Produce"} 1.0' in text
    )
    assert 'raftlog_grpc_request_duration_seconds_count{method="/log.v1.Log/Produce"} 3.0' in text
    assert "raftlog_produced_records_total 10.0" in text
    assert "raftlog_produced_bytes_total 1000.0" in text
    assert "raftlog_consumed_records_total 4.0" in text
    assert 'raftlog_raft_append_batch_entries_bucket{le="64.0"} 1.0' in text
    assert "raftlog_raft_fsync_seconds_count 1.0" in text
    assert "raftlog_raft_leader_changes_total 1.0" in text


async def test_http_listener_serves_metrics_health_and_readiness() -> None:
    metrics = NodeMetrics("u1")
    state = {"ready": (False, "no leader known")}
    refreshed: list[int] = []

    async def refresh() -> None:
        refreshed.append(1)

    server = MetricsServer(metrics, lambda: state["ready"], "127.0.0.1", 0, before_scrape=refresh)
    await server.start()
    base = f"http://{server.address}"
    assert server.port and server.port > 0
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as resp:
                assert (resp.status, await resp.text()) == (200, "ok\n")
            async with http.get(f"{base}/readyz") as resp:
                assert (resp.status, await resp.text()) == (503, "not ready: no leader known\n")
            state["ready"] = (True, "")
            async with http.get(f"{base}/readyz") as resp:
                assert (resp.status, await resp.text()) == (200, "ready\n")
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                assert "raftlog_node_info" in await resp.text()
            assert refreshed == [1]
            async with http.get(f"{base}/other") as resp:
                assert resp.status == 404
    finally:
        await server.close()
        await server.close()  # idempotent


async def test_listener_reports_a_taken_port() -> None:
    first = MetricsServer(NodeMetrics("u1"), lambda: (True, ""), "127.0.0.1", 0)
    await first.start()
    try:
        second = MetricsServer(NodeMetrics("u2"), lambda: (True, ""), "127.0.0.1", first.port or 0)
        with pytest.raises(OSError):
            await second.start()
    finally:
        await first.close()


def test_json_lines_carry_node_fields_and_extras() -> None:
    formatter, stamp = JsonFormatter(), NodeIdFilter("n7")
    record = logging.LogRecord("raftlog.x", logging.INFO, __file__, 1, "hi %s", ("there",), None)
    record.term, record.peer = 4, "n2"  # what extra={"term": 4, "peer": "n2"} sets
    assert stamp.filter(record)
    line = json.loads(formatter.format(record))
    assert line["message"] == "hi there" and line["node_id"] == "n7"
    assert (line["level"], line["logger"], line["term"], line["peer"]) == (
        "info",
        "raftlog.x",
        4,
        "n2",
    )
    assert line["time"].endswith("Z") and "T" in line["time"]
    assert "offset" not in line  # only the fields that apply
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("raftlog.x", logging.ERROR, __file__, 1, "x", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(formatter.format(failed))["exception"]


def test_trace_context_round_trip_in_metadata() -> None:
    exporter = InMemorySpanExporter()
    provider = build_tracer_provider("u1", exporter=exporter, batch=False)
    tracer = provider.get_tracer("test")
    assert inject_context((("k", "v"),)) == (("k", "v"),)  # no span: nothing added
    with tracer.start_as_current_span("outer") as span:
        metadata = inject_context((("x-raftlog-forwarded", "1"),))
    keys = [k for k, _ in metadata]
    assert keys[0] == "x-raftlog-forwarded" and "traceparent" in keys
    context = extract_context([*metadata, ("binary-bin", b"\x00")])
    parent = trace.get_current_span(context).get_span_context()
    assert parent.trace_id == span.get_span_context().trace_id and parent.is_remote
    provider.shutdown()
    assert [
        s.resource.attributes["service.instance.id"] for s in exporter.get_finished_spans()
    ] == ["u1"]


def test_an_otlp_endpoint_turns_tracing_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--otlp-endpoint, or the standard OTEL_EXPORTER_OTLP_ENDPOINT, gives the node a tracer
    exporting over OTLP/gRPC (and the telemetry step that flushes it); neither: no tracer."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    off = Agent(AgentConfig(data_dir=tmp_path / "a", insecure=True))
    assert off.telemetry.tracer is None and off.server is None
    assert [s.name for s in off.steps] == ["log", "server"]
    on = Agent(
        AgentConfig(data_dir=tmp_path / "b", insecure=True, otlp_endpoint="http://127.0.0.1:1")
    )
    assert on.telemetry.tracer is not None and on.steps[0].name == "telemetry"
    provider = on.telemetry.tracer_provider
    assert provider is not None
    exporters = [p.span_exporter for p in provider._active_span_processor._span_processors]  # type: ignore[attr-defined]
    assert [type(e) for e in exporters] == [OTLPSpanExporter]
    provider.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    from_env = Agent(AgentConfig(data_dir=tmp_path / "c", insecure=True))
    assert from_env.telemetry.tracer is not None
    assert from_env.telemetry.tracer_provider is not None
    from_env.telemetry.tracer_provider.shutdown()

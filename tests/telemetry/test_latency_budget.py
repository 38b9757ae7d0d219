"""The latency budget (debug setting ``latency_budget``) end to end: three agent processes
started with ``--latency-budget --metrics-addr``, unary Produce calls through the leader's
mux port, then what an operator (or ``bench/bench_latency.py``) reads: ``/debug/latency``
on every node and the ``raftlog_debug_request_stage_seconds`` histogram."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles, TLSConfig
from raftlog.telemetry.budget import STAGES
from support.cluster import assert_clean_exit, new_cluster, serve_metrics, start_cluster
from support.config_check import assert_refused

pytestmark = pytest.mark.timeout(120)

CALLS = 30


async def _json(http: aiohttp.ClientSession, url: str) -> dict[str, dict[str, float]]:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        stages: dict[str, dict[str, float]] = body["stages"]
        assert set(body["descriptions"]) == set(STAGES)
        return stages


async def test_every_stage_of_a_replicated_write_is_measured(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    root = dev_certs["root"]
    tls = TLSConfig(root.cert_file, root.key_file, root.ca_file)
    cluster = new_cluster(tmp_path, dev_certs, static_peers=True)
    http_addr = serve_metrics(cluster, "--latency-budget")
    try:
        leader = await start_cluster(cluster, static_peers=True)
        async with cluster.channel(leader, tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            for i in range(CALLS):
                request = log_pb2.ProduceRequest(record=log_pb2.Record(value=b"r%d" % i))
                await stub.Produce(request, timeout=10)
        async with aiohttp.ClientSession() as http:
            lead = await _json(http, f"http://{http_addr[leader]}/debug/latency?reset=1")
            leader_stages = [s for s in STAGES if not s.startswith("follower_")]
            assert set(leader_stages) <= set(lead), sorted(lead)
            for stage in leader_stages:
                assert lead[stage]["count"] >= CALLS, (stage, lead[stage])
                assert 0 <= lead[stage]["p50_ms"] <= lead[stage]["p99_ms"]
            # the parts of a write are within the whole of it
            assert lead["fsync"]["p50_ms"] < lead["server"]["p99_ms"]
            assert lead["replicate"]["p50_ms"] < lead["server"]["p99_ms"]
            # ?reset=1 emptied it
            assert await _json(http, f"http://{http_addr[leader]}/debug/latency") == {}
            for name in cluster.nodes:
                if name == leader:
                    continue
                mine = await _json(http, f"http://{http_addr[name]}/debug/latency")
                assert mine["follower_round"]["count"] >= 1
                assert mine["follower_fsync"]["count"] >= 1
                assert mine["follower_fsync"]["p50_ms"] <= mine["follower_round"]["p99_ms"]
            async with http.get(f"http://{http_addr[leader]}/metrics") as resp:
                text = await resp.text()
            assert 'raftlog_debug_request_stage_seconds_count{stage="replicate"}' in text
    finally:
        cluster.stop_all()
    assert_clean_exit(cluster)


def test_the_budget_needs_the_metrics_listener(tmp_path: Path) -> None:
    assert_refused(tmp_path, "latency_budget: needs metrics_addr", flags={"latency_budget": "true"})

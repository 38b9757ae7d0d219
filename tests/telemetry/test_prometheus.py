"""Metrics end to end: a 3-node process cluster scraped by a real Prometheus server.

Prometheus and promtool come from Debian's package, extracted into .tools/bin by
``make prometheus`` (a dependency of ``make test``). The test checks what an operator
would: exactly one leader in the cluster, the produced records counted once (a write
sent to a follower is forwarded, and counted only by the node the client called), every
node's exposition accepted by ``promtool check metrics``, the health endpoints, and the
Grafana dashboard naming only metrics that exist.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from raftlog.agent.devcluster import free_port
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles, TLSConfig
from support.cluster import assert_clean_exit, new_cluster, serve_metrics, start_cluster
from support.wait import wait_until

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools" / "bin"
PROMETHEUS, PROMTOOL = TOOLS / "prometheus", TOOLS / "promtool"
DASHBOARD = REPO / "deploy" / "grafana" / "raftlog.json"

#: Records produced by the test: batches to the leader, one batch through a follower.
BATCHES, PER_BATCH, FORWARDED = 5, 20, 7


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return resp.status, await resp.text()


async def _query(session: aiohttp.ClientSession, base: str, promql: str) -> list[Any]:
    async with session.get(
        f"{base}/api/v1/query", params={"query": promql}, timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    result: list[Any] = body["data"]["result"]
    return result


def _scalar(result: list[Any]) -> float | None:
    return float(result[0]["value"][1]) if len(result) == 1 else None


def _dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    """Every metric name the dashboard's PromQL expressions read."""
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert exprs, "the dashboard has no queries"
    names: set[str] = set()
    for expr in exprs:
        # strip label matchers, strings and ranges; what is left that starts raftlog_ is a name
        bare = re.sub(r"\{[^}]*\}|\"[^\"]*\"|\[[^\]]*\]", " ", expr)
        names |= set(re.findall(r"\b(raftlog_[a-z0-9_]+)", bare))
    return names


def _exposed_names(text: str) -> set[str]:
    """Series names in an exposition, each histogram's base name, and every family the
    node declares (TYPE lines: a family with no sample now, e.g. Serf's members on a node
    with static peers, still exists)."""
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.MULTILINE))
    for name, kind in re.findall(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)", text, re.MULTILINE):
        names |= {name, f"{name}_total"} if kind == "counter" else {name}
    return names | {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


@pytest.mark.skipif(not PROMETHEUS.exists(), reason="run `make prometheus` (make test does)")
async def test_prometheus_scrapes_a_cluster(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    root = dev_certs["root"]
    tls = TLSConfig(root.cert_file, root.key_file, root.ca_file)
    cluster = new_cluster(tmp_path, dev_certs, static_peers=True)
    metrics_addrs = serve_metrics(cluster)
    names = list(cluster.nodes)
    prom_port = free_port()
    prom_base = f"http://127.0.0.1:{prom_port}"
    targets = [metrics_addrs[n] for n in names]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
                "scrape_configs": [
                    {"job_name": "raftlog", "static_configs": [{"targets": targets}]}
                ],
            }
        )
    )
    prom_log = (tmp_path / "prometheus.log").open("wb")
    prom: subprocess.Popen[bytes] | None = None
    try:
        leader = await start_cluster(cluster, static_peers=True)
        follower = next(n for n in names if n != leader)
        async with cluster.channel(leader, tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            for b in range(BATCHES):
                records = [log_pb2.Record(value=b"m%d-%d" % (b, i)) for i in range(PER_BATCH)]
                await stub.Produce(log_pb2.ProduceRequest(records=records), timeout=10)
        async with cluster.channel(follower, tls) as ch:
            stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
            records = [log_pb2.Record(value=b"f%d" % i) for i in range(FORWARDED)]
            await stub.Produce(log_pb2.ProduceRequest(records=records), timeout=10)
        produced = BATCHES * PER_BATCH + FORWARDED

        prom = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            stdout=prom_log,
            stderr=subprocess.STDOUT,
        )
        async with aiohttp.ClientSession() as http:

            async def scraped_all() -> bool:
                assert prom is not None and prom.poll() is None, "prometheus exited"
                try:
                    up = await _query(http, prom_base, "sum(up)")
                except aiohttp.ClientError:
                    return False
                return _scalar(up) == 3.0

            await wait_until(scraped_all, 30, "Prometheus scraping all three nodes")

            async def leaders() -> float | None:
                return _scalar(await _query(http, prom_base, "sum(raftlog_raft_leader)"))

            async def counted() -> float | None:
                return _scalar(await _query(http, prom_base, "sum(raftlog_produced_records_total)"))

            await wait_until(
                lambda: _eq(counted, produced), 20, f"{produced} produced records in Prometheus"
            )
            assert await leaders() == 1.0
            by_leader = await _query(
                http,
                prom_base,
                "raftlog_node_info * on(instance) group_left raftlog_raft_leader == 1",
            )
            assert [r["metric"]["node_id"] for r in by_leader] == [leader]
            for hooked in (  # counted inside the Raft runtime (its observer)
                "sum(raftlog_raft_append_batch_entries_count)",
                "sum(raftlog_raft_fsync_seconds_count)",
                "sum(raftlog_raft_leader_changes_total)",
                "sum(raftlog_raft_proposal_commit_seconds_count)",
            ):
                value = _scalar(await _query(http, prom_base, hooked))
                assert value is not None and value >= 1, hooked
            lag = await _query(http, prom_base, "raftlog_raft_follower_lag_entries")
            assert {r["metric"]["peer"] for r in lag} == set(names) - {leader}

            dashboard = json.loads(DASHBOARD.read_text())
            wanted = _dashboard_metric_names(dashboard)
            for name in names:
                addr = metrics_addrs[name]
                status, text = await _get(http, f"http://{addr}/metrics")
                assert status == 200
                check = await asyncio.create_subprocess_exec(
                    str(PROMTOOL),
                    "check",
                    "metrics",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
                out, _ = await asyncio.wait_for(check.communicate(text.encode()), 20)
                assert check.returncode == 0, f"promtool on {name}: {out.decode()}"
                assert (await _get(http, f"http://{addr}/healthz")) == (200, "ok\n")
                assert (await _get(http, f"http://{addr}/readyz")) == (200, "ready\n")
                missing = wanted - _exposed_names(text)
                assert not missing, f"the dashboard reads metrics {name} does not expose"
                for secret in (b"m0-0", b"f0"):  # metrics carry numbers, never payloads
                    assert secret.decode() not in text
    finally:
        if prom is not None:
            prom.terminate()
            try:
                prom.wait(10)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait(5)
        prom_log.close()
        cluster.stop_all()
    assert_clean_exit(cluster)


async def _eq(read: Any, expected: float) -> bool:
    return bool(await read() == expected)

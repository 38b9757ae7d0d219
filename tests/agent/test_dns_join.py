"""DNS join with real agent processes: a real DNS server on 127.0.0.1 (dnslib), one
loopback address per node (127.0.0.2..4, the same ports on each, as pods), records that
appear while the nodes wait, the ordinal-0 bootstrap rule, a restart that keeps its
identity, and the HTTP API across the cluster (forwarded writes, 503 with the leader's
HTTP address, HTTP addresses learned from Serf tags)."""

from __future__ import annotations

import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from raftlog.agent.devcluster import DevCluster, free_port
from raftlog.security import CertFiles, write_dev_certs
from raftlog.security.tls import client_ssl_context
from support.client_nodes import tls_of
from support.cluster_files import dev_cluster_files
from support.dns_server import Zone, dns_server
from support.wait import wait_until

NAME = "raftlog.test.svc.cluster.local"
PODS = {"raftlog-0": "127.0.0.2", "raftlog-1": "127.0.0.3", "raftlog-2": "127.0.0.4"}
BOOTSTRAPPED = "bootstrapped a new cluster"


@pytest.fixture(scope="module")
def pod_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertFiles]:
    hosts = ("localhost", "127.0.0.1", *PODS.values())
    return write_dev_certs(tmp_path_factory.mktemp("pod-certs"), hosts=hosts)


@pytest.fixture
def dns() -> Iterator[tuple[Zone, str]]:
    with dns_server() as served:
        yield served


def http_ssl(certs: dict[str, CertFiles]) -> ssl.SSLContext:
    return client_ssl_context(tls_of(certs["root"]))


async def test_nodes_join_as_records_appear_and_a_restart_keeps_identity(
    tmp_path: Path, pod_certs: dict[str, CertFiles], dns: tuple[Zone, str]
) -> None:
    zone, dns_addr = dns
    gossip, rpc, http = free_port(), free_port(), free_port()
    c = DevCluster(
        tmp_path,
        dev_cluster_files(tmp_path, pod_certs),
        agent_args=("--serf-profile", "local", "--sync", "never"),
    )
    c.client_tls = tls_of(pod_certs["root"])
    for name, ip in PODS.items():
        node = c.add_node(name, (rpc, gossip, free_port()))
        node.host = ip
        node.extra = (
            f"--join-dns={NAME}:{gossip}",
            f"--dns-server={dns_addr}",
            "--dns-bootstrap-wait-s=1",
            "--join-dns-timeout-s=60",
            f"--http-port={http}",
        )
    try:
        for name in PODS:  # every pod at once, as podManagementPolicy: Parallel
            c.start(name, join=[])
        # nobody is in DNS yet: nobody bootstraps, everyone keeps resolving
        await wait_until(
            lambda: len(zone.queries) >= 6,
            timeout=20,
            what="every node resolving the empty name",
        )
        assert not any(BOOTSTRAPPED in c.log_text(n) for n in PODS)
        ctx = http_ssl(pod_certs)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            # no leader anywhere yet: a write is a 503 that names no leader
            r = await s.post(
                f"https://{PODS['raftlog-1']}:{http}/v1/records",
                json={"record": {"value": "too early", "encoding": "utf8"}},
            )
            assert r.status == 503
            error = (await r.json())["error"]
            assert error["reason"] in ("NOT_LEADER", "UNAVAILABLE")
            assert error["retriable"] is True and "leader_http_addr" not in error
        zone.add(NAME, PODS["raftlog-1"])  # a non-zero ordinal alone never bootstraps
        zone.add(NAME, PODS["raftlog-0"])
        await wait_until(
            lambda: BOOTSTRAPPED in c.log_text("raftlog-0"), timeout=20, what="pod 0 bootstraps"
        )
        zone.add(NAME, PODS["raftlog-2"])
        leader = await c.wait_for(c.client_tls, members=3, timeout_s=40, every=True)
        assert leader == "raftlog-0"
        assert [n for n in PODS if BOOTSTRAPPED in c.log_text(n)] == ["raftlog-0"]

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            follower = f"https://{PODS['raftlog-2']}:{http}"

            async def all_http_addrs_known() -> bool:
                r = await s.get(follower + "/v1/servers")
                servers = (await r.json())["servers"]
                return len(servers) == 3 and all(x["http_addr"] for x in servers)

            await wait_until(all_http_addrs_known, timeout=20, what="HTTP addrs from Serf tags")
            # a follower forwards a write to the leader, as gRPC does
            r = await s.post(
                follower + "/v1/records",
                json={"records": [{"value": "via follower", "encoding": "utf8"}]},
            )
            assert r.status == 200, await r.text()
            assert (await r.json())["offset"] == 0
            # a linearizable read on a follower: 503 naming the leader's HTTP address
            r = await s.get(follower + "/v1/records", params={"offset": "0", "linearizable": "1"})
            assert r.status == 503
            error = (await r.json())["error"]
            assert error["reason"] == "NOT_LEADER"
            assert error["metadata"]["leader_id"] == "raftlog-0"
            assert error["leader_http_addr"] == f"{PODS['raftlog-0']}:{http}"

        # ordinal 0 crashes and restarts with its data: same identity, no second bootstrap
        c.signal("raftlog-0", signal.SIGKILL)
        c.wait_exit("raftlog-0", 10)
        c.start("raftlog-0", join=[])
        await c.wait_for(c.client_tls, members=3, timeout_s=40, every=True)
        log0 = c.log_text("raftlog-0")
        assert log0.count(BOOTSTRAPPED) == 1
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            url = f"https://{PODS['raftlog-0']}:{http}/v1/records"

            async def restarted_node_has_the_record() -> bool:
                r = await s.get(url, params={"offset": "0", "encoding": "utf8"})
                return r.status == 200 and (await r.json())["records"][0]["value"] == "via follower"

            await wait_until(restarted_node_has_the_record, timeout=20, what="the old record")
            servers = (await (await s.get(url.replace("records", "servers"))).json())["servers"]
            assert sorted(x["id"] for x in servers) == sorted(PODS)
    finally:
        c.stop_all()

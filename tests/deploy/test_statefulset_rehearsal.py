"""A local "StatefulSet rehearsal": three ``raftlog agent`` processes started with exactly
the container command, args and env of deploy/kubernetes/base/statefulset.yaml.

Each pod gets a loopback address (127.0.0.21..23) in the role of its pod IP, and a real DNS
server on 127.0.0.1 (dnslib) plays the cluster DNS: the headless service's name lists the
three, each pod's own name its address. Substituted, because it must be local: the data
dirs (the volume), the certificate paths (the Secret; certificates made here for the same
names), the ACL paths (written from the ConfigMap itself), the DNS server (the cluster's
resolver) and the Serf RPC port (three pods share one loopback here, not one each).

The pods start in parallel; they must form one cluster (only raftlog-0 bootstraps). Then a
rolling restart, one pod at a time as the StatefulSet controller does it (highest ordinal
first, SIGTERM, same data, the next pod only once the restarted one is back), while a
writer keeps producing through the HTTP API: every write is acknowledged, none is lost,
and no pause between two acknowledgements is as long as an outage would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from raftlog.agent.devcluster import default_raftlog, free_port
from raftlog.discovery.spawn import spawn
from raftlog.security import CertFiles, write_dev_certs, write_gossip_key
from raftlog.security.tls import client_ssl_context
from support.client_nodes import tls_of
from support.dns_server import Zone, dns_server
from support.kustomize import KUBERNETES, find, render
from support.wait import wait_until

BASE = KUBERNETES / "base"
IPS = ("127.0.0.21", "127.0.0.22", "127.0.0.23")
#: Longest pause between two acknowledged writes during the rolling restart (s): a
#: leadership hand-over and a re-election fit well inside; a lost quorum would not end.
MAX_GAP_S = 8.0

pytestmark = pytest.mark.timeout(120)


class Pod:
    def __init__(self, ordinal: int, env: dict[str, str], argv: list[str], log: Path) -> None:
        self.name = f"raftlog-{ordinal}"
        self.ip = IPS[ordinal]
        self.env = env
        self.argv = argv
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def start(self) -> None:
        self._out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("RAFTLOG_")}
        self.proc = spawn(
            self.argv,
            env={**environ, **self.env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def stop(self, timeout: float = 30.0) -> int:
        proc = self.proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        try:
            await wait_until(
                lambda: proc.poll() is not None, timeout=timeout, what=f"{self.name} exits"
            )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            if self._out is not None:
                self._out.close()
        return proc.returncode


def expand(value: str, known: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of an env value (earlier variables only)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: known.get(m[1], m[0]), value)


def pod_env(
    container: dict[str, Any], ordinal: int, namespace: str, local: dict[str, str]
) -> dict[str, str]:
    """The container's env for pod ``ordinal``, field refs filled in, ``local`` substituted."""
    fields = {
        "metadata.name": f"raftlog-{ordinal}",
        "metadata.namespace": namespace,
        "status.podIP": IPS[ordinal],
    }
    env: dict[str, str] = {}
    for item in container["env"]:
        if "valueFrom" in item:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[item["name"]] = expand(item["value"], env)
    unknown = set(local) - set(env) - {"RAFTLOG_DNS_SERVER"}
    assert not unknown, f"substitutions for variables the manifest lacks: {unknown}"
    return {**env, **local}


@pytest.fixture
def zone() -> Iterator[tuple[Zone, str]]:
    with dns_server() as served:
        yield served


async def test_three_pods_form_one_cluster_and_survive_a_rolling_restart(
    tmp_path: Path, zone: tuple[Zone, str]
) -> None:
    dns, dns_addr = zone
    docs = render(BASE)
    sts = find(docs, "StatefulSet")
    namespace = sts["metadata"]["namespace"]
    service = sts["spec"]["serviceName"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    service_dns = f"{service}.{namespace}.svc.cluster.local"
    dns.set(service_dns, *IPS)
    for i, ip in enumerate(IPS):
        dns.set(f"raftlog-{i}.{service_dns}", ip)
    certs: dict[str, CertFiles] = write_dev_certs(
        tmp_path / "certs", hosts=("localhost", "127.0.0.1", *IPS, service_dns)
    )
    acl = tmp_path / "acl"
    acl.mkdir()
    for name, text in find(docs, "ConfigMap", "raftlog-acl")["data"].items():
        (acl / name).write_text(text)
    server = certs["server"]
    gossip_key = write_gossip_key(tmp_path / "certs")  # the Secret raftlog-gossip
    files = {
        "gossip.key": str(gossip_key),
        "tls.crt": str(server.cert_file),
        "tls.key": str(server.key_file),
        "ca.crt": str(server.ca_file),
        "model.conf": str(acl / "model.conf"),
        "policy.csv": str(acl / "policy.csv"),
    }
    argv = [*default_raftlog(), *container["command"][1:], *container["args"]]
    assert container["command"] == ["raftlog"]
    pods = []
    for i in range(sts["spec"]["replicas"]):
        template = pod_env(container, i, namespace, {})
        local = {k: files[Path(v).name] for k, v in template.items() if k.endswith("_FILE")}
        local |= {
            "RAFTLOG_DATA_DIR": str(tmp_path / f"data-raftlog-{i}"),
            "RAFTLOG_DNS_SERVER": dns_addr,
            "RAFTLOG_SERF_RPC_ADDR": f"127.0.0.1:{free_port()}",
        }
        env = pod_env(container, i, namespace, local)
        pods.append(Pod(i, env, argv, tmp_path / f"raftlog-{i}.log"))
    http_port = int(pods[0].env["RAFTLOG_HTTP_PORT"])
    ctx = client_ssl_context(tls_of(certs["root"]))

    def logs() -> str:
        return "\n".join(
            f"--- {p.name}\n{p.log.read_text()[-3000:]}" for p in pods if p.log.exists()
        )

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx), timeout=aiohttp.ClientTimeout(total=3)
    )
    acked: list[tuple[float, int, str]] = []
    stop_writing = asyncio.Event()

    async def one_cluster() -> bool:
        leaders = set()
        for pod in pods:
            try:
                r = await session.get(f"https://{pod.ip}:{http_port}/v1/servers")
                servers = (await r.json())["servers"]
            except (aiohttp.ClientError, TimeoutError, KeyError):
                return False
            if len(servers) != len(pods):
                return False
            leaders |= {s["id"] for s in servers if s["is_leader"]}
        return len(leaders) == 1

    async def writer() -> None:
        n = 0
        while not stop_writing.is_set():
            value = f"w-{n}"
            for pod in pods[n % len(pods) :] + pods[: n % len(pods)]:
                try:
                    r = await session.post(
                        f"https://{pod.ip}:{http_port}/v1/records",
                        json={"record": {"value": value, "encoding": "utf8"}},
                    )
                    if r.status == 200:
                        acked.append((time.monotonic(), (await r.json())["offset"], value))
                        n += 1
                        break
                except (aiohttp.ClientError, TimeoutError):
                    continue
            else:
                await asyncio.sleep(0.1)  # nobody took it: retry the same value soon
            await asyncio.sleep(0.05)

    try:
        for pod in pods:  # podManagementPolicy: Parallel
            pod.start()
        try:
            await wait_until(one_cluster, timeout=40, what="one cluster of three pods")
        except TimeoutError:
            pytest.fail("no single cluster formed:\n" + logs())
        booted = [p.name for p in pods if "bootstrapped a new cluster" in p.log.read_text()]
        assert booted == ["raftlog-0"], logs()
        writing = asyncio.ensure_future(writer())
        try:
            await wait_until(lambda: len(acked) >= 5, timeout=10, what="first writes")
            for pod in reversed(pods):  # the controller's order: highest ordinal first
                code = await pod.stop()
                assert code == 0, logs()
                pod.start()
                before = len(acked)
                try:
                    await wait_until(one_cluster, timeout=40, what=f"{pod.name} back")
                except TimeoutError:
                    pytest.fail(f"{pod.name} did not come back:\n" + logs())
                await wait_until(lambda b=before: len(acked) > b + 3, timeout=10, what="writes")
        finally:
            stop_writing.set()
            await asyncio.wait_for(writing, 10)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(acked)]
        print(f"rolling restart: {len(acked)} writes acknowledged, longest pause {max(gaps):.2f} s")
        assert max(gaps) < MAX_GAP_S, f"writes stalled for {max(gaps):.1f} s:\n{logs()}"
        offsets = [offset for _, offset, _ in acked]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        # every acknowledged write is in the log at its offset, on every pod
        for pod in pods:
            url = f"https://{pod.ip}:{http_port}/v1/records"

            async def holds_all(url: str = url) -> bool:
                r = await session.get(
                    url, params={"offset": "0", "max_records": "65536", "encoding": "utf8"}
                )
                if r.status != 200:
                    return False
                held = {x["offset"]: x["value"] for x in (await r.json())["records"]}
                return all(held.get(offset) == value for _, offset, value in acked)

            await wait_until(holds_all, timeout=15, what=f"{pod.name} holds every write")
    finally:
        await session.close()
        for pod in pods:
            if pod.proc is not None and pod.proc.poll() is None:
                with contextlib.suppress(Exception):
                    await pod.stop(15)

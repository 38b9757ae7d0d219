"""deploy/kubernetes: every manifest against the Kubernetes schemas (offline, with
kubernetes-validate), and the references between the objects and to the agent."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from raftlog.config import FIELDS, env_name
from raftlog.telemetry.http import HEALTH_PATHS
from support.kustomize import DEPLOY, KUBERNETES, Doc, find, render

#: Kubernetes release whose schemas the manifests are checked against (the newest the
#: installed kubernetes-validate ships; strict: unknown fields fail).
K8S_VERSION = kubernetes_validate.latest_version()
BASE = KUBERNETES / "base"
FIVE = KUBERNETES / "overlays" / "five-nodes"
ROOT = Path(__file__).resolve().parents[2]


def container(docs: list[Doc]) -> dict[str, Any]:
    pod = find(docs, "StatefulSet")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    c: dict[str, Any] = pod["containers"][0]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def port_of(c: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in c["ports"] if p["name"] == name]
    return int(port)


@pytest.mark.parametrize("directory", [BASE, FIVE], ids=["base", "five-nodes"])
def test_every_rendered_object_validates_against_the_schemas(directory: Path) -> None:
    docs = render(directory)
    assert {d["kind"] for d in docs} == {
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "ConfigMap",
    }
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert find(docs, "StatefulSet")["spec"]["replicas"] == (5 if directory == FIVE else 3)


def test_every_file_validates_and_a_broken_one_does_not() -> None:
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "Kustomization" or doc["apiVersion"].startswith("cert-manager"):
                continue  # not Kubernetes objects: kustomize's own file, cert-manager CRDs
            if path.parent.name == "five-nodes":
                continue  # a patch, validated once merged (above)
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = render(BASE)
    sts = find(broken, "StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


def test_selectors_services_and_the_pdb_point_at_the_pods() -> None:
    docs = render(BASE)
    sts = find(docs, "StatefulSet")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    headless = find(docs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    client = find(docs, "Service", "raftlog-client")
    assert client["spec"].get("clusterIP") != "None"
    c = container(docs)
    names = {p["name"] for p in c["ports"]}
    for service in (headless, client):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, port
            assert port["port"] == port_of(c, port["targetPort"])
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_agent_settings_match_the_ports_the_join_name_and_the_mounts() -> None:
    docs = render(BASE)
    sts = find(docs, "StatefulSet")
    c = container(docs)
    env = env_of(c)
    # every RAFTLOG_* variable is a setting of the agent
    settings = {env_name(key) for key in FIELDS}
    raftlog_vars = {k for k in env if k.startswith("RAFTLOG_")}
    assert raftlog_vars <= settings, f"not agent settings: {raftlog_vars - settings}"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["RAFTLOG_NODE_NAME"] == "$(POD_NAME)"
    assert int(env["RAFTLOG_RPC_PORT"]) == port_of(c, "rpc")
    assert int(env["RAFTLOG_HTTP_PORT"]) == port_of(c, "http")
    assert env["RAFTLOG_BIND_ADDR"] == f"$(POD_IP):{port_of(c, 'serf-tcp')}"
    assert port_of(c, "serf-tcp") == port_of(c, "serf-udp")
    # the join name is the headless service's DNS name, on the gossip port
    headless = sts["spec"]["serviceName"]
    service_dns = f"{headless}.$(POD_NAMESPACE).svc.cluster.local"
    assert env["RAFTLOG_JOIN_DNS"] == f"{service_dns}:{port_of(c, 'serf-tcp')}"
    assert env["RAFTLOG_PEER_TLS_SERVER_NAME"] == service_dns
    assert find(docs, "Service", headless)["metadata"]["namespace"] == "raftlog"
    # the cert-manager certificate carries that name (namespace raftlog) and CN "server"
    certs = list(
        yaml.safe_load_all((KUBERNETES / "cert-manager" / "certificates.yaml").read_text())
    )
    server = next(d for d in certs if d["metadata"]["name"] == "raftlog-server")
    assert service_dns.replace("$(POD_NAMESPACE)", "raftlog") in server["spec"]["dnsNames"]
    assert server["spec"]["commonName"] == "server"
    # files live under the mounts, and the mounts' sources exist
    pod = sts["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert set(mounts) == set(volumes) | claims
    assert env["RAFTLOG_DATA_DIR"] == mounts["data"]
    for key, value in env.items():
        if key.endswith("_FILE"):
            mount = "tls" if "TLS" in key else "gossip" if "SERF" in key else "acl"
            assert value.startswith(mounts[mount] + "/"), key
    assert volumes["tls"]["secret"]["secretName"] == server["spec"]["secretName"]
    # gossip is encrypted with the key of the Secret raftlog-gossip (docs/deploy.md)
    assert env["RAFTLOG_SERF_ENCRYPT_KEY_FILE"] == mounts["gossip"] + "/gossip.key"
    assert volumes["gossip"]["secret"]["secretName"] == "raftlog-gossip"
    assert find(docs, "ConfigMap", volumes["acl"]["configMap"]["name"])


def test_probes_use_the_health_paths_on_the_metrics_port() -> None:
    c = container(render(BASE))
    env = env_of(c)
    metrics_port = port_of(c, "metrics")
    assert env["RAFTLOG_METRICS_ADDR"] == f"$(POD_IP):{metrics_port}"
    live, ready = HEALTH_PATHS
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == live
    assert probes["startupProbe"]["path"] == live
    assert probes["readinessProbe"]["path"] == ready
    for probe in probes.values():
        assert probe["port"] == "metrics"
        assert probe.get("scheme", "HTTP") == "HTTP"


def test_security_context_resources_and_graceful_stop() -> None:
    docs = render(BASE)
    pod = find(docs, "StatefulSet")["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}  # the mux's socket dir
    assert c["lifecycle"]["preStop"]
    # the preStop pause plus every shutdown step's bound fit in the grace period
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    shutdown = float(env_of(c)["RAFTLOG_SHUTDOWN_TIMEOUT_S"])
    assert pause + 4 * shutdown < pod["terminationGracePeriodSeconds"]


def test_the_acl_config_map_is_the_repositorys_acl() -> None:
    data = find(render(BASE), "ConfigMap", "raftlog-acl")["data"]

    def rules(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]

    assert rules(data["model.conf"]) == rules((ROOT / "certs" / "model.conf").read_text())
    assert rules(data["policy.csv"]) == rules((ROOT / "certs" / "policy.csv").read_text())


def test_the_containerfile_runs_the_agent_as_the_manifests_expect() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    c = container(render(BASE))
    assert re.search(r"apt-get install .*\bserf\b", text)
    assert 'ENTRYPOINT ["raftlog"]' in text and 'CMD ["agent"]' in text
    assert c["command"] == ["raftlog"] and c["args"] == ["agent"]
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    assert user is not None
    pod = find(render(BASE), "StatefulSet")["spec"]["template"]["spec"]
    assert int(user.group(1)) == pod["securityContext"]["runAsUser"]
    assert c["image"].split(":")[-1] in text  # the build command tags the image the set runs

"""``raftlog status`` and ``raftlog admin ...`` through the CLI, on a 3-node process cluster.

One cluster for every command, in the order an operator would use them: look at the
cluster, be refused without the admin action, move leadership, take snapshots, fail to
remove a stranger, lose a node for good and remove it.

The nodes log JSON at DEBUG (``--log-format json --log-level debug``): every line is an
object naming its node, and no record payload, producer id or certificate material shows
up at any level, though the test writes a recognizable record through a follower (so it
is forwarded) with an idempotent producer id and reads it back.
"""

from __future__ import annotations

import base64
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.security import CertFiles, TLSConfig
from support.cli import run_raftlog
from support.cluster import AGENT_ARGS, new_cluster, start_cluster
from support.wait import wait_until

pytestmark = pytest.mark.timeout(150)


def _client_flags(cert: CertFiles) -> list[str]:
    return ["--ca-file", str(cert.ca_file), "--cert-file", str(cert.cert_file),
            "--key-file", str(cert.key_file), "--timeout", "10"]  # fmt: skip


async def _status_json(cwd: Path, cert: CertFiles, addrs: list[str]) -> tuple[int, list[dict]]:  # type: ignore[type-arg]
    code, out, err = await run_raftlog(
        "status", "--addr", ",".join(addrs), "--format", "json", *_client_flags(cert), cwd=cwd
    )
    assert out, err
    return code, json.loads(out)


async def test_status_and_admin_commands(tmp_path: Path, dev_certs: dict[str, CertFiles]) -> None:
    root, nobody = dev_certs["root"], dev_certs["nobody"]
    tls = TLSConfig(root.cert_file, root.key_file, root.ca_file)
    cluster = new_cluster(
        tmp_path,
        dev_certs,
        static_peers=True,
        agent_args=(*AGENT_ARGS, "--log-format", "json", "--log-level", "debug"),
    )
    nodes = cluster.nodes
    names = list(nodes)
    try:
        leader = await start_cluster(cluster, static_peers=True)
        addrs = [nodes[n].rpc_addr for n in names]
        await _write_and_read_secrets(cluster, tls, leader)

        async def all_voters() -> bool:  # static peers join as learners, then are promoted
            _, status = await _status_json(tmp_path, root, addrs)
            return sorted(s["role"] for s in status) == ["follower", "follower", "leader"]

        await wait_until(all_voters, 20, "one leader and two voting followers")

        # status from one address: the leader names the other members, every row is there
        code, out, err = await run_raftlog(
            "status", "--addr", nodes[leader].rpc_addr, *_client_flags(root), cwd=tmp_path
        )
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split() == [
            "ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "LOWEST", "HIGHEST",
            "DISK",
        ]  # fmt: skip
        rows = {line.split()[0]: line.split() for line in lines[1:]}
        assert set(rows) == set(names)
        assert rows[leader][2] == "leader"
        assert all(rows[n][2] == "follower" for n in names if n != leader)
        assert all(int(r[9]) > 0 for r in rows.values())  # disk bytes of each data dir

        code, status = await _status_json(tmp_path, root, addrs)
        assert code == 0
        assert [s["role"] for s in status].count("leader") == 1
        assert {s["id"]: s["address"] for s in status} == {n: nodes[n].rpc_addr for n in names}
        assert all(s["lag"] is not None and s["lag"] >= 0 for s in status)

        # anyone but root is refused, in plain words
        code, out, err = await run_raftlog(
            "status", "--addr", ",".join(addrs), *_client_flags(nobody), cwd=tmp_path
        )
        assert code == 1 and out == ""
        assert "not permitted: subject 'nobody' lacks action admin" in err
        code, _, err = await run_raftlog(
            "admin", "transfer-leader", "--addr", addrs[0], *_client_flags(nobody), cwd=tmp_path
        )
        assert code == 1 and "not permitted: subject 'nobody' lacks action admin" in err

        # leadership moves where it is told
        target = next(n for n in names if n != leader)
        code, out, err = await run_raftlog(
            "admin", "transfer-leader", "--to", target, "--addr", nodes[leader].rpc_addr,
            *_client_flags(root), cwd=tmp_path,
        )  # fmt: skip
        assert code == 0, err
        assert out.strip() == f"leadership transferred to {target}"

        async def led_by_target() -> bool:
            _, status = await _status_json(tmp_path, root, addrs)
            return [s["id"] for s in status if s["role"] == "leader"] == [target]

        await wait_until(led_by_target, 15, f"{target} leading in raftlog status")

        code, _, err = await run_raftlog(
            "admin", "transfer-leader", "--to", "n9", "--addr", addrs[0],
            *_client_flags(root), cwd=tmp_path,
        )  # fmt: skip
        assert code == 1 and "node n9 is not a member" in err

        # every node snapshots what it applied, on request
        _, status = await _status_json(tmp_path, root, addrs)
        applied = {s["address"]: s["applied"] for s in status}
        code, out, err = await run_raftlog(
            "admin", "snapshot", "--addr", ",".join(addrs), *_client_flags(root), cwd=tmp_path
        )
        assert code == 0, err
        lines = out.splitlines()
        assert [line.split(":", 2)[:2] for line in lines] == [a.split(":") for a in addrs]
        for addr, line in zip(addrs, lines, strict=True):
            assert line.startswith(f"{addr}: snapshot at index ")
            assert int(line.rsplit(" ", 1)[1]) >= applied[addr]

        # removing a stranger is refused; a node dead for good is removed
        code, _, err = await run_raftlog(
            "admin", "remove", "n9", "--addr", addrs[0], *_client_flags(root), cwd=tmp_path
        )
        assert code == 1 and "node n9 is not a member" in err, err
        dead = next(n for n in names if n != target)
        cluster.signal(dead, signal.SIGKILL)
        cluster.wait_exit(dead, 10)
        code, status = await _status_json(tmp_path, root, addrs)
        assert code == 1
        gone = [s for s in status if s["address"] == nodes[dead].rpc_addr]
        assert gone[0]["role"] == "unreachable" and gone[0]["id"] == dead and gone[0]["error"]
        code, out, err = await run_raftlog(
            "admin", "remove", dead, "--addr", nodes[target].rpc_addr, *_client_flags(root),
            cwd=tmp_path,
        )  # fmt: skip
        assert code == 0, err
        assert out.startswith(f"removed {dead} (membership change committed at index ")
        live = [nodes[n].rpc_addr for n in names if n != dead]
        code, status = await _status_json(tmp_path, root, live)
        assert code == 0
        assert sorted(s["id"] for s in status) == sorted(n for n in names if n != dead)
    finally:
        cluster.stop_all()
    secrets = [PAYLOAD, PRODUCER]
    for cert in dev_certs.values():
        for path in (cert.cert_file, cert.key_file):
            pem = path.read_text().splitlines()
            secrets += [line for line in pem if line and not line.startswith("-----")]
    methods: set[str] = set()
    for name in names:
        text = cluster.log_text(name)
        assert "-----BEGIN" not in text
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{name} logged {leaked[:3]}"
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert len(lines) > 20  # DEBUG: calls, rounds, membership ...
        assert {line["node_id"] for line in lines} == {name}
        assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
        assert any(line["level"] == "debug" for line in lines)
        assert any("term" in line for line in lines)  # structured fields where they apply
        methods |= {line["method"] for line in lines if "method" in line}
    assert {"/log.v1.Log/Produce", "/raftlog.admin.v1.Admin/Status"} <= methods


#: What the test writes and then looks for in the logs (it must not be there).
PAYLOAD = "payload-7f3a9c-must-not-be-logged"
PRODUCER = "producer-5e1d-must-not-be-logged"


async def _write_and_read_secrets(cluster: Any, tls: TLSConfig, leader: str) -> None:
    follower = next(n for n in cluster.nodes if n != leader)
    async with cluster.channel(follower, tls) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        request = log_pb2.ProduceRequest(
            records=[log_pb2.Record(value=PAYLOAD.encode())], producer_id=PRODUCER, sequence=1
        )
        done = await stub.Produce(request, timeout=10)
        again = await stub.Produce(request, timeout=10)  # a retry: answered as a duplicate
        assert again.duplicate and again.offset == done.offset
    async with cluster.channel(leader, tls) as ch:
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        got = await stub.Consume(log_pb2.ConsumeRequest(offset=done.offset), timeout=10)
        assert got.record.value == PAYLOAD.encode()


async def test_cert_writes_a_policy_that_grants_admin_to_root_only(tmp_path: Path) -> None:
    code, _, err = await run_raftlog("cert", "--out-dir", str(tmp_path / "c"), cwd=tmp_path)
    assert code == 0, err
    lines = (tmp_path / "c" / "policy.csv").read_text().splitlines()
    assert [line for line in lines if line.endswith(", admin")] == ["p, root, *, admin"]
    # and a Serf gossip key: base64 of 32 bytes, private, kept on a second run
    key_file = tmp_path / "c" / "gossip.key"
    key = key_file.read_text().strip()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert key_file.stat().st_mode & 0o777 == 0o600
    code, _, err = await run_raftlog("cert", "--out-dir", str(tmp_path / "c"), cwd=tmp_path)
    assert code == 0, err
    assert key_file.read_text().strip() == key

"""The HTTP/JSON API over real mutual TLS on 127.0.0.1, with aiohttp's client and curl."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from raftlog.auth import AllowAll, CasbinAuthorizer, write_example_acl
from raftlog.log import Log, LogConfig, SyncPolicy
from raftlog.security import CertFiles, TLSConfig
from raftlog.security.tls import client_ssl_context
from raftlog.server import LocalLog, ServerConfig
from raftlog.server.http_api import (
    NDJSON,
    PRODUCER_ID_HEADER,
    ROUTES,
    SEQUENCE_HEADER,
    HttpApi,
)
from raftlog.telemetry import AuditLog
from support.wait import wait_until

OPENAPI = Path(__file__).resolve().parents[2] / "api" / "openapi.yaml"


@dataclass
class HttpNode:
    url: str
    api: HttpApi
    log: LocalLog
    certs: dict[str, CertFiles]

    def ssl(self, role: str = "root") -> ssl.SSLContext:
        files = self.certs[role]
        return client_ssl_context(TLSConfig(files.cert_file, files.key_file, files.ca_file))

    def session(self, role: str = "root") -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=self.ssl(role))
        return aiohttp.ClientSession(self.url, connector=connector)


@contextlib.asynccontextmanager
async def http_node(
    tmp_path: Path,
    certs: dict[str, CertFiles],
    config: ServerConfig | None = None,
    audit: AuditLog | None = None,
) -> AsyncIterator[HttpNode]:
    acl = tmp_path / "acl"
    write_example_acl(acl)
    local = LocalLog(Log.open(tmp_path / "data", LogConfig(sync=SyncPolicy.NEVER)), node_id="n0")
    local.rpc_addr = "127.0.0.1:1"
    files = certs["server"]
    api = HttpApi(
        local,
        local,
        CasbinAuthorizer(acl / "model.conf", acl / "policy.csv"),
        tls=TLSConfig(files.cert_file, files.key_file, files.ca_file),
        config=config,
        peer_http_addrs=lambda: {"n0": "127.0.0.1:9"},
        audit=audit,
    )
    port = await api.start("127.0.0.1", 0)
    try:
        yield HttpNode(f"https://127.0.0.1:{port}", api, local, certs)
    finally:
        await api.stop()
        await local.close()


@pytest.fixture
async def node(tmp_path: Path, dev_certs: dict[str, CertFiles]) -> AsyncIterator[HttpNode]:
    async with http_node(tmp_path, dev_certs) as n:
        yield n


def utf8(*values: str) -> dict[str, Any]:
    return {"records": [{"value": v, "encoding": "utf8"} for v in values]}


async def test_produce_batch_and_read_back_in_both_encodings(node: HttpNode) -> None:
    async with node.session() as s:
        r = await s.post("/v1/records", json={"record": {"value": "héllo", "encoding": "utf8"}})
        assert r.status == 200, await r.text()
        assert await r.json() == {"offset": 0, "last_offset": 0, "duplicate": False}
        binary = bytes(range(256))
        body = {
            "records": [
                {"value": base64.b64encode(binary).decode(), "encoding": "base64"},
                {"value": "two", "encoding": "utf8"},
            ]
        }
        r = await s.post("/v1/records", json=body)
        assert await r.json() == {"offset": 1, "last_offset": 2, "duplicate": False}
        r = await s.get("/v1/records", params={"offset": "0", "max_records": "2"})
        records = (await r.json())["records"]
        assert [x["offset"] for x in records] == [0, 1]
        assert base64.b64decode(records[0]["value"]) == "héllo".encode()
        assert base64.b64decode(records[1]["value"]) == binary
        r = await s.get("/v1/records", params={"offset": "0", "encoding": "utf8"})
        records = (await r.json())["records"]
        assert records[0] == {"offset": 0, "value": "héllo", "encoding": "utf8"}
        # bytes that are not UTF-8 come as base64 and say so
        assert records[1]["encoding"] == "base64"
        assert records[2] == {"offset": 2, "value": "two", "encoding": "utf8"}
        offsets = await (await s.get("/v1/offsets")).json()
        assert offsets == {
            "lowest_offset": 0,
            "highest_offset": 2,
            "next_offset": 3,
            "empty": False,
        }
        servers = await (await s.get("/v1/servers")).json()
        assert servers == {
            "servers": [
                {
                    "id": "n0",
                    "rpc_addr": "127.0.0.1:1",
                    "http_addr": "127.0.0.1:9",
                    "is_leader": True,
                    "is_learner": False,
                }
            ]
        }


async def test_follow_streams_new_records_and_ends_on_shutdown(node: HttpNode) -> None:
    async with node.session() as s:
        await s.post("/v1/records", json=utf8("a", "b"))
        r = await s.get("/v1/records", params={"offset": "1", "follow": "true", "encoding": "utf8"})
        assert r.status == 200
        assert r.headers["Content-Type"].startswith(NDJSON)
        first = json.loads(await asyncio.wait_for(r.content.readline(), 5))
        assert first == {"offset": 1, "value": "b", "encoding": "utf8"}
        read_next = asyncio.ensure_future(r.content.readline())
        await asyncio.sleep(0)  # the stream is caught up and waits: nothing to read yet
        assert not read_next.done()
        await s.post("/v1/records", json=utf8("c"))
        line = json.loads(await asyncio.wait_for(read_next, 5))
        assert line == {"offset": 2, "value": "c", "encoding": "utf8"}
        stopping = asyncio.ensure_future(node.api.stop())
        # the open stream ends (EOF) when the server shuts down, within the bound
        assert await asyncio.wait_for(r.content.read(), 5) == b""
        await asyncio.wait_for(stopping, 10)


async def test_refused_requests_are_audited_without_their_body(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    async with http_node(tmp_path, dev_certs, audit=audit) as n, n.session("nobody") as s:
        assert (await s.post("/v1/records", json=utf8("secret-body"))).status == 403
        assert (await s.get("/v1/servers")).status == 200  # allowed: not audited
    audit.close()
    text = (tmp_path / "audit.jsonl").read_text()
    assert "secret-body" not in text
    [entry] = [json.loads(line) for line in text.splitlines()]
    assert entry["event"] == "call" and entry["decision"] == "denied"
    assert entry["subject"] == "nobody" and entry["code"] == "PERMISSION_DENIED"
    assert entry["method"] == "HTTP POST /v1/records"
    assert entry["peer"].startswith("127.0.0.1:")


async def test_acl_and_client_certificate(node: HttpNode) -> None:
    async with node.session("nobody") as s:
        r = await s.post("/v1/records", json=utf8("x"))
        assert r.status == 403
        error = (await r.json())["error"]
        assert error["reason"] == "PERMISSION_DENIED"
        assert error["metadata"] == {"subject": "nobody", "action": "produce", "object": "*"}
        r = await s.get("/v1/records", params={"offset": "0"})
        assert r.status == 403
        assert (await s.get("/v1/offsets")).status == 403
        # the member list is open to any authenticated client, as GetServers is
        assert (await s.get("/v1/servers")).status == 200
    # no client certificate: the TLS handshake itself fails
    files = node.certs["root"]
    bare = ssl.create_default_context(cafile=str(files.ca_file))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=bare)) as s:
        with pytest.raises(aiohttp.ClientError):
            r = await s.get(node.url + "/v1/servers")
            await r.read()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not JSON"),
        (json.dumps({"records": []}).encode(), "non-empty"),
        (json.dumps({"records": [{"value": "x"}]}).encode(), "encoding"),
        (json.dumps({"record": {"value": "%%", "encoding": "base64"}}).encode(), "base64"),
        (json.dumps({"record": {"value": 1, "encoding": "utf8"}}).encode(), "string"),
        (json.dumps([1]).encode(), "JSON object"),
    ],
)
async def test_malformed_produce_is_400(node: HttpNode, body: bytes, fragment: str) -> None:
    async with node.session() as s:
        r = await s.post("/v1/records", data=body, headers={"Content-Type": "application/json"})
        assert r.status == 400
        error = (await r.json())["error"]
        assert error["reason"] == "INVALID_ARGUMENT"
        assert fragment in error["message"]


async def test_bad_queries_unknown_routes_and_out_of_range(node: HttpNode) -> None:
    async with node.session() as s:
        for params in ({"offset": "-1"}, {"offset": "0", "max_records": "0"}, {"follow": "x"}):
            r = await s.get("/v1/records", params=params)
            assert r.status == 400, params
            assert (await r.json())["error"]["reason"] == "INVALID_ARGUMENT"
        r = await s.get("/v1/nothing")
        assert r.status == 404
        assert (await r.json())["error"]["reason"] == "INVALID_ARGUMENT"
        r = await s.get("/v1/records", params={"offset": "0"})
        assert r.status == 404  # the log is empty
        error = (await r.json())["error"]
        assert error["reason"] == "OFFSET_OUT_OF_RANGE"
        assert error["metadata"] == {"offset": "0", "lowest": "0", "highest": "-1"}
        await s.post("/v1/records", json=utf8("a", "b", "c"))
        r = await s.get("/v1/records", params={"offset": "7"})
        assert r.status == 404
        assert (await r.json())["error"]["metadata"] == {
            "offset": "7",
            "lowest": "0",
            "highest": "2",
        }
        r = await s.get("/v1/records", params={"offset": "5", "follow": "true"})
        assert r.status == 404


async def test_too_large_is_413(tmp_path: Path, dev_certs: dict[str, CertFiles]) -> None:
    config = ServerConfig(max_message_bytes=1000)
    async with http_node(tmp_path, dev_certs, config) as node, node.session() as s:
        r = await s.post("/v1/records", json=utf8("x" * 1001))
        assert r.status == 413
        error = (await r.json())["error"]
        assert error["reason"] == "RECORD_TOO_LARGE"
        assert error["metadata"] == {"size": "1001", "limit": "1000"}
        r = await s.post("/v1/records", json=utf8("x" * 600, "y" * 600))
        assert r.status == 413
        # a body far beyond the limit is refused before it is parsed
        r = await s.post("/v1/records", json=utf8("z" * 3_000_000))
        assert r.status == 413
        assert (await r.json())["error"]["reason"] == "RECORD_TOO_LARGE"
        assert (await (await s.get("/v1/offsets")).json())["empty"] is True


async def test_idempotent_producer_through_headers(node: HttpNode) -> None:
    async with node.session() as s:
        headers = {PRODUCER_ID_HEADER: "p-1", SEQUENCE_HEADER: "1"}
        r = await s.post("/v1/records", json=utf8("a", "b"), headers=headers)
        assert await r.json() == {"offset": 0, "last_offset": 1, "duplicate": False}
        again = await s.post("/v1/records", json=utf8("a", "b"), headers=headers)
        assert await again.json() == {"offset": 0, "last_offset": 1, "duplicate": True}
        headers[SEQUENCE_HEADER] = "2"
        r = await s.post("/v1/records", json=utf8("c"), headers=headers)
        assert await r.json() == {"offset": 2, "last_offset": 2, "duplicate": False}
        r = await s.post("/v1/records", json=utf8("d"), headers={SEQUENCE_HEADER: "3"})
        assert r.status == 400
        r = await s.post(
            "/v1/records", json=utf8("d"), headers={PRODUCER_ID_HEADER: "p", SEQUENCE_HEADER: "x"}
        )
        assert r.status == 400
        assert node.log.highest_offset == 2


async def test_openapi_document_matches_the_live_routes(node: HttpNode) -> None:
    doc = yaml.safe_load(OPENAPI.read_text())
    assert doc["openapi"].startswith("3.")
    documented = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    served = {
        (route.method, route.resource.canonical)
        for route in node.api.app.router.routes()
        if route.resource is not None
    }
    assert served == documented == set(ROUTES)
    # every documented status of an error has the error schema
    for item in doc["paths"].values():
        for op in item.values():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    assert response == {"$ref": "#/components/responses/Error"}


async def _curl(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode or 0, (out + err).decode()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed on this machine")
async def test_curl_over_mutual_tls(node: HttpNode) -> None:
    root, nobody = node.certs["root"], node.certs["nobody"]
    tls = [
        "--cacert",
        str(root.ca_file),
        "--cert",
        str(root.cert_file),
        "--key",
        str(root.key_file),
    ]
    code, out = await _curl(
        *tls,
        "-H",
        "Content-Type: application/json",
        "-d",
        '{"records":[{"value":"from curl","encoding":"utf8"}]}',
        node.url + "/v1/records",
    )
    assert code == 0, out
    assert json.loads(out) == {"offset": 0, "last_offset": 0, "duplicate": False}
    code, out = await _curl(*tls, node.url + "/v1/records?offset=0&encoding=utf8")
    assert json.loads(out)["records"] == [{"offset": 0, "value": "from curl", "encoding": "utf8"}]
    # follow with curl: the stream stays open; it delivers a record appended later
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sSN",
        *tls,
        node.url + "/v1/records?offset=0&follow=true&encoding=utf8",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        assert json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))["offset"] == 0
        async with node.session() as s:
            await s.post("/v1/records", json=utf8("later"))
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        assert line == {"offset": 1, "value": "later", "encoding": "utf8"}
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    other = [
        "--cacert",
        str(nobody.ca_file),
        "--cert",
        str(nobody.cert_file),
        "--key",
        str(nobody.key_file),
    ]
    code, out = await _curl(*other, "-w", "\n%{http_code}", node.url + "/v1/offsets")
    body, status = out.rsplit("\n", 1)
    assert status == "403"
    assert json.loads(body)["error"]["reason"] == "PERMISSION_DENIED"
    # without a client certificate curl cannot even finish the handshake
    code, out = await _curl("--cacert", str(root.ca_file), node.url + "/v1/offsets")
    assert code != 0
    await wait_until(lambda: node.log.highest_offset == 1, timeout=5, what="both records")


async def test_insecure_mode_only_when_asked(tmp_path: Path) -> None:
    local = LocalLog(Log.open(tmp_path / "data", LogConfig(sync=SyncPolicy.NEVER)), node_id="n0")
    try:
        with pytest.raises(ValueError, match="insecure=True"):
            HttpApi(local, local, AllowAll(), tls=None)
        api = HttpApi(local, local, AllowAll(), tls=None, insecure=True)
        port = await api.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as s:
                r = await s.post("/v1/records", json=utf8("plain"))
                assert await r.json() == {"offset": 0, "last_offset": 0, "duplicate": False}
        finally:
            await api.stop()
    finally:
        await local.close()


async def test_a_corrupt_record_is_500_data_loss(node: HttpNode) -> None:
    async with node.session() as s:
        await s.post("/v1/records", json=utf8("alpha", "bravo"))
        seg = node.log._log.segments[-1]
        pos = seg.index.position(1) + 8
        with open(seg.store.path, "r+b") as f:
            f.seek(pos)
            f.write(b"X")
        r = await s.get("/v1/records", params={"offset": "1"})
        assert r.status == 500
        error = (await r.json())["error"]
        assert error["reason"] == "DATA_LOSS" and error["metadata"]["offset"] == "1"
        assert error["retriable"] is True and "offset 1" in error["message"]

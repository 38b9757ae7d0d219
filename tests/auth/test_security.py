"""Mutual TLS and the Casbin ACL, end to end over 127.0.0.1, plus what the server logs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from raftlog.api.admin.v1 import admin_pb2
from raftlog.api.contract import ADMIN_SERVICE, CLUSTER_SERVICE, Action
from raftlog.api.status import error_info_from_metadata
from raftlog.api.v1 import log_pb2, log_pb2_grpc
from raftlog.auth import (
    EXAMPLE_MODEL,
    EXAMPLE_POLICY,
    AuthConfigError,
    CasbinAuthorizer,
    write_example_acl,
)
from raftlog.security import CertFiles, write_dev_certs
from raftlog.server.interceptors import (
    DEFAULT_ACTIONS,
    OPEN_METHODS,
    AuthenticationInterceptor,
    AuthorizationInterceptor,
)
from support.api_node import Node, running_node

REPO = Path(__file__).resolve().parents[2]
Record = log_pb2.Record


@pytest.fixture
async def node(tmp_path: Path, dev_certs: dict[str, CertFiles]) -> AsyncIterator[Node]:
    async with running_node(tmp_path, dev_certs) as n:
        yield n


async def _produce(channel: grpc.aio.Channel) -> log_pb2.ProduceResponse:
    stub = log_pb2_grpc.LogStub(channel)  # type: ignore[no-untyped-call]
    return await stub.Produce(log_pb2.ProduceRequest(record=Record(value=b"v")), timeout=5)


async def test_client_without_certificate_is_refused(node: Node) -> None:
    ca = node.certs["root"].ca_file.read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    async with grpc.aio.secure_channel(node.addr, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _produce(ch)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert node.local_log.highest_offset == -1


async def test_certificate_from_another_ca_is_refused(node: Node, tmp_path: Path) -> None:
    other = write_dev_certs(tmp_path / "other-ca")["root"]
    # trusts the real CA (so the server passes) but presents a cert from another CA
    creds = grpc.ssl_channel_credentials(
        root_certificates=node.certs["root"].ca_file.read_bytes(),
        private_key=other.key_file.read_bytes(),
        certificate_chain=other.cert_file.read_bytes(),
    )
    async with grpc.aio.secure_channel(node.addr, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _produce(ch)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert node.local_log.highest_offset == -1


async def test_client_refuses_a_server_from_another_ca(node: Node, tmp_path: Path) -> None:
    other = write_dev_certs(tmp_path / "other-ca")["root"]
    creds = grpc.ssl_channel_credentials(
        root_certificates=other.ca_file.read_bytes(),
        private_key=node.certs["root"].key_file.read_bytes(),
        certificate_chain=node.certs["root"].cert_file.read_bytes(),
    )
    async with grpc.aio.secure_channel(node.addr, creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _produce(ch)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_nobody_is_denied_produce_and_consume_but_may_list_servers(node: Node) -> None:
    await node.local_log.append([b"secret"])
    async with node.channel("nobody") as ch:
        stub = node.stub(ch)
        calls = {
            "produce": lambda: stub.Produce(log_pb2.ProduceRequest(record=Record(value=b"x"))),
            "consume": lambda: stub.Consume(log_pb2.ConsumeRequest(offset=0)),
        }
        for action, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call()
            assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
            details = err.value.details() or ""
            assert "'nobody'" in details and action in details
            info = error_info_from_metadata(err.value.trailing_metadata())
            assert info is not None and info.metadata["subject"] == "nobody"
        # the streams too
        stream = stub.ConsumeStream(log_pb2.ConsumeRequest(offset=0))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stream:
                pass
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        pstream = stub.ProduceStream(iter([log_pb2.ProduceRequest(record=Record(value=b"x"))]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in pstream:
                pass
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        # authenticated: GetServers and health need no produce/consume permission
        servers = await stub.GetServers(log_pb2.GetServersRequest())
        assert len(servers.servers) == 1
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert node.local_log.highest_offset == 0, "nothing was written by nobody"


async def test_root_is_allowed(node: Node) -> None:
    async with node.channel("root") as ch:
        assert (await _produce(ch)).offset == 0
        got = await node.stub(ch).Consume(log_pb2.ConsumeRequest(offset=0))
        assert got.record.value == b"v"


async def test_server_logs_calls_but_never_key_material(
    tmp_path: Path, dev_certs: dict[str, CertFiles], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_node(tmp_path, dev_certs) as n:
        async with n.channel("root") as ch:
            await _produce(ch)
            with pytest.raises(grpc.aio.AioRpcError):
                await n.stub(ch).Consume(log_pb2.ConsumeRequest(offset=99))
        async with n.channel("nobody") as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await _produce(ch)
    text = caplog.text
    assert "method=/log.v1.Log/Produce subject=root" in text and "code=OK" in text
    assert "subject=nobody" in text and "code=PERMISSION_DENIED" in text
    assert "code=OUT_OF_RANGE" in text
    assert "PRIVATE KEY" not in text
    for files in dev_certs.values():
        key_body = files.key_file.read_text().splitlines()[1]
        assert key_body not in text
    counts = n.server.observability.counts
    assert counts["/log.v1.Log/Produce", "PERMISSION_DENIED"] == 1


async def test_interceptors_answer_unauthenticated_without_a_subject(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    """TLS without client auth (never our config): the interceptors still refuse."""
    write_example_acl(tmp_path)
    authz = CasbinAuthorizer(tmp_path / "model.conf", tmp_path / "policy.csv")
    for interceptor in (AuthenticationInterceptor(), AuthorizationInterceptor(authz)):

        class Log(log_pb2_grpc.LogServicer):
            async def Produce(self, request: object, context: object) -> log_pb2.ProduceResponse:
                return log_pb2.ProduceResponse(offset=42)

        f = dev_certs["server"]
        client = grpc.ssl_channel_credentials(root_certificates=f.ca_file.read_bytes())
        async with _serving(interceptor, Log(), f, require_client_auth=False, client=client) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _produce(ch)
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


@contextlib.asynccontextmanager
async def _serving(
    interceptor: grpc.aio.ServerInterceptor,
    servicer: log_pb2_grpc.LogServicer,
    server_files: CertFiles,
    *,
    require_client_auth: bool,
    client: grpc.ChannelCredentials,
) -> AsyncIterator[grpc.aio.Channel]:
    """A bare grpc.aio server (``interceptor``, ``servicer``, health) on 127.0.0.1 with the
    server certificate, and a channel to it with ``client`` credentials."""
    server = grpc.aio.server(interceptors=[interceptor])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    log_pb2_grpc.add_LogServicer_to_server(servicer, server)
    f = server_files
    creds = grpc.ssl_server_credentials(
        [(f.key_file.read_bytes(), f.cert_file.read_bytes())],
        root_certificates=f.ca_file.read_bytes(),
        require_client_auth=require_client_auth,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", client) as ch:
            yield ch
    finally:
        await server.stop(None)


def test_every_log_rpc_has_an_acl_decision() -> None:
    """A new rpc must be given an action (or be declared open) on purpose: every rpc of
    log.v1.Log, of the admin service (whose rpcs all need ``admin``) and of the nodes'
    cluster service (whose rpcs all need ``replicate``)."""
    service = log_pb2.DESCRIPTOR.services_by_name["Log"]
    methods = {f"/log.v1.Log/{m.name}" for m in service.methods}
    admin = admin_pb2.DESCRIPTOR.services_by_name["Admin"]
    admin_methods = {f"/{admin.full_name}/{m.name}" for m in admin.methods}
    cluster = admin_pb2.DESCRIPTOR.services_by_name["Cluster"]
    cluster_methods = {f"/{cluster.full_name}/{m.name}" for m in cluster.methods}
    assert admin.full_name == ADMIN_SERVICE
    assert cluster.full_name == CLUSTER_SERVICE
    assert methods | admin_methods | cluster_methods == set(DEFAULT_ACTIONS) | OPEN_METHODS
    assert {DEFAULT_ACTIONS[m] for m in admin_methods} == {Action.ADMIN}
    assert {DEFAULT_ACTIONS[m] for m in cluster_methods} == {Action.REPLICATE}
    assert not set(DEFAULT_ACTIONS) & OPEN_METHODS
    assert {"/log.v1.Log/GetServers", "/log.v1.Log/GetPartitions"} == OPEN_METHODS


async def test_a_log_rpc_without_a_declared_action_is_refused(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    """Fail closed: with Produce missing from the action map, root may not produce, while
    the open GetServers and other services (health) still answer."""
    write_example_acl(tmp_path)
    authz = CasbinAuthorizer(tmp_path / "model.conf", tmp_path / "policy.csv")
    actions = {m: a for m, a in DEFAULT_ACTIONS.items() if m != "/log.v1.Log/Produce"}
    produced: list[bytes] = []

    class Log(log_pb2_grpc.LogServicer):
        async def Produce(self, request: object, context: object) -> log_pb2.ProduceResponse:
            produced.append(b"called")
            return log_pb2.ProduceResponse(offset=42)

        async def GetServers(self, request: object, context: object) -> log_pb2.GetServersResponse:
            return log_pb2.GetServersResponse(servers=[log_pb2.Server(id="x")])

    root = dev_certs["root"]
    client = grpc.ssl_channel_credentials(
        root_certificates=root.ca_file.read_bytes(),
        private_key=root.key_file.read_bytes(),
        certificate_chain=root.cert_file.read_bytes(),
    )
    interceptor = AuthorizationInterceptor(authz, actions)
    async with _serving(
        interceptor, Log(), dev_certs["server"], require_client_auth=True, client=client
    ) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _produce(ch)
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "no declared action" in (err.value.details() or "")
        stub = log_pb2_grpc.LogStub(ch)  # type: ignore[no-untyped-call]
        listed = await stub.GetServers(log_pb2.GetServersRequest(), timeout=5)
        assert [s.id for s in listed.servers] == ["x"]
        checked = await health_pb2_grpc.HealthStub(ch).Check(  # type: ignore[no-untyped-call]
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
    assert produced == []


def test_casbin_policy_and_example_files(tmp_path: Path) -> None:
    assert (REPO / "certs" / "model.conf").read_text() == EXAMPLE_MODEL
    assert (REPO / "certs" / "policy.csv").read_text() == EXAMPLE_POLICY
    authz = CasbinAuthorizer(REPO / "certs" / "model.conf", REPO / "certs" / "policy.csv")
    assert authz.authorize("root", "*", "produce")
    assert authz.authorize("root", "*", "consume")
    assert not authz.authorize("root", "*", "replicate")
    assert authz.authorize("root", "*", "admin")
    assert authz.authorize("server", "*", "replicate")
    assert not authz.authorize("server", "*", "admin")
    assert not authz.authorize("nobody", "*", "admin")
    assert not authz.authorize("nobody", "*", "consume")
    assert not authz.authorize("nobody", "*", "produce")
    with pytest.raises(AuthConfigError, match="acl_policy_file: no such file"):
        CasbinAuthorizer(REPO / "certs" / "model.conf", tmp_path / "missing.csv")


async def test_insecure_mode_is_explicit_and_loud(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from raftlog.auth import AllowAll
    from raftlog.log import Log, LogConfig, SyncPolicy
    from raftlog.server import INSECURE_WARNING, LocalLog, LogServer

    local = LocalLog(Log.open(tmp_path, LogConfig(sync=SyncPolicy.NEVER)))
    with pytest.raises(ValueError, match="insecure=True"):
        LogServer(local, local, AllowAll(), tls=None)
    server = LogServer(local, local, AllowAll(), tls=None, insecure=True)
    port = server.bind("127.0.0.1", 0)
    caplog.set_level(logging.WARNING)
    await server.start()
    try:
        assert INSECURE_WARNING in caplog.text
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert (await _produce(ch)).offset == 0
    finally:
        await server.stop(1)
        await local.close()

"""The admin service on an in-process server: the ACL (admin for root only, fail closed),
the wire form of Status, and domain errors as status codes."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import grpc
import pytest

from raftlog.api.admin.v1 import admin_pb2, admin_pb2_grpc
from raftlog.api.contract import ADMIN_SERVICE, Key, Reason
from raftlog.api.status import error_info_from_metadata
from raftlog.auth import CasbinAuthorizer, write_example_acl
from raftlog.distributed.status import MemberStatus, NodeStatus
from raftlog.domain.errors import NotMemberError
from raftlog.log import Log, LogConfig, SyncPolicy
from raftlog.security import CertFiles, TLSConfig
from raftlog.security.grpc_tls import grpc_channel_credentials
from raftlog.server import LocalLog, LogServer
from raftlog.server.admin import AdminService
from raftlog.server.interceptors import DEFAULT_ACTIONS, UNDECLARED_ACTION

STATUS = NodeStatus(
    id="a1",
    rpc_addr="",
    role="leader",
    term=7,
    leader_id="a1",
    leader_addr="127.0.0.1:1",
    commit_index=40,
    applied_index=39,
    last_index=41,
    snapshot_index=32,
    lowest_offset=0,
    highest_offset=99,
    damaged_records=2,
    repaired_records=5,
    checkpoint_hash_mismatches=1,
    members=(
        MemberStatus("a1", "127.0.0.1:1", "voter", 41, 0, True),
        MemberStatus("a2", "127.0.0.1:2", "learner", 30, 11, False),
    ),
)


class FakeBackend:
    def __init__(self) -> None:
        self.removed: list[str] = []

    def node_status(self, rpc_addr: str = "") -> NodeStatus:
        return dataclasses.replace(STATUS, rpc_addr=rpc_addr)

    async def transfer_leadership(self, to: str = "", timeout_s: float | None = None) -> str:
        if to and to not in ("a1", "a2"):
            raise NotMemberError(to)
        return to or "a2"

    async def remove_member(self, node_id: str) -> int:
        if node_id != "a2":
            raise NotMemberError(node_id)
        self.removed.append(node_id)
        return 42

    async def take_snapshot(self, timeout_s: float | None = None) -> int:
        assert timeout_s is not None and 0 < timeout_s <= 5  # bounded by the call's deadline
        return 39


async def _disk() -> int:
    return 1234


@contextlib.asynccontextmanager
async def admin_server(
    tmp_path: Path, certs: dict[str, CertFiles], actions: Mapping[str, str] | None = None
) -> AsyncIterator[str]:
    write_example_acl(tmp_path / "acl")
    local = LocalLog(Log.open(tmp_path / "data", LogConfig(sync=SyncPolicy.NEVER)), node_id="a1")
    files = certs["server"]
    server = LogServer(
        local,
        local,
        CasbinAuthorizer(tmp_path / "acl" / "model.conf", tmp_path / "acl" / "policy.csv"),
        tls=TLSConfig(files.cert_file, files.key_file, files.ca_file),
        actions=actions,
        admin=AdminService(FakeBackend(), lambda: "127.0.0.1:1", _disk),
    )
    port = server.bind("127.0.0.1", 0)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(1.0)
        await local.close()


def _stub(addr: str, cert: CertFiles) -> tuple[grpc.aio.Channel, admin_pb2_grpc.AdminStub]:
    tls = TLSConfig(cert.cert_file, cert.key_file, cert.ca_file)
    channel = grpc.aio.secure_channel(addr, grpc_channel_credentials(tls))
    return channel, admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]


async def test_root_reads_status_and_acts(tmp_path: Path, dev_certs: dict[str, CertFiles]) -> None:
    async with admin_server(tmp_path, dev_certs) as addr:
        channel, stub = _stub(addr, dev_certs["root"])
        async with channel:
            got = await stub.Status(admin_pb2.StatusRequest(), timeout=5)
            assert (got.id, got.rpc_addr, got.role, got.term) == ("a1", "127.0.0.1:1", "leader", 7)
            assert (got.commit_index, got.applied_index, got.last_index) == (40, 39, 41)
            assert (got.lowest_offset, got.highest_offset, got.empty) == (0, 99, False)
            assert (got.disk_bytes, got.snapshot_index) == (1234, 32)
            assert (got.damaged_records, got.repaired_records) == (2, 5)
            assert got.checkpoint_hash_mismatches == 1
            assert [(m.id, m.suffrage, m.lag, m.is_leader) for m in got.members] == [
                ("a1", "voter", 0, True),
                ("a2", "learner", 11, False),
            ]
            moved = await stub.TransferLeadership(admin_pb2.TransferLeadershipRequest(), timeout=5)
            assert moved.leader_id == "a2"
            removed = await stub.RemoveServer(admin_pb2.RemoveServerRequest(id="a2"), timeout=5)
            assert removed.index == 42
            snapshot = await stub.Snapshot(admin_pb2.SnapshotRequest(), timeout=5)
            assert snapshot.index == 39
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RemoveServer(admin_pb2.RemoveServerRequest(id="n3"), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == "node n3 is not a member"
            info = error_info_from_metadata(err.value.trailing_metadata())
            assert info is not None and info.reason == Reason.NOT_MEMBER
            assert info.metadata[Key.NODE_ID] == "n3"


@pytest.mark.parametrize("role", ["nobody", "server"])
async def test_everyone_but_root_is_denied(
    tmp_path: Path, dev_certs: dict[str, CertFiles], role: str
) -> None:
    async with admin_server(tmp_path, dev_certs) as addr:
        channel, stub = _stub(addr, dev_certs[role])
        async with channel:
            for call in (
                stub.Status(admin_pb2.StatusRequest(), timeout=5),
                stub.RemoveServer(admin_pb2.RemoveServerRequest(id="a2"), timeout=5),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                info = error_info_from_metadata(err.value.trailing_metadata())
                assert info is not None
                assert (info.metadata[Key.SUBJECT], info.metadata[Key.ACTION]) == (role, "admin")


async def test_an_admin_rpc_without_a_declared_action_is_refused(
    tmp_path: Path, dev_certs: dict[str, CertFiles]
) -> None:
    undeclared = f"/{ADMIN_SERVICE}/Status"
    actions = {m: a for m, a in DEFAULT_ACTIONS.items() if m != undeclared}
    async with admin_server(tmp_path, dev_certs, actions) as addr:
        channel, stub = _stub(addr, dev_certs["root"])
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Status(admin_pb2.StatusRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            info = error_info_from_metadata(err.value.trailing_metadata())
            assert info is not None and info.metadata[Key.ACTION] == UNDECLARED_ACTION
            moved = await stub.TransferLeadership(admin_pb2.TransferLeadershipRequest(), timeout=5)
            assert moved.leader_id == "a2"  # the declared ones still work

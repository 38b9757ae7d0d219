"""An in-process single node (commit log + gRPC server, real mTLS on 127.0.0.1) for tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from raftlog.api.v1 import log_pb2_grpc
from raftlog.auth import CasbinAuthorizer, write_example_acl
from raftlog.log import Log, LogConfig, SyncPolicy
from raftlog.security import CertFiles, TLSConfig
from raftlog.security.grpc_tls import grpc_channel_credentials
from raftlog.server import LocalLog, LogServer, ServerConfig

#: Client-side message limit in tests: large enough to send oversized records on purpose.
CLIENT_LIMIT = 64 << 20


@dataclass
class Node:
    """A running node: where to dial it and its parts."""

    addr: str
    server: LogServer
    local_log: LocalLog
    certs: dict[str, CertFiles]

    def tls(self, role: str) -> TLSConfig:
        """The TLS files of client ``role`` (root, nobody, server)."""
        files = self.certs[role]
        return TLSConfig(files.cert_file, files.key_file, files.ca_file)

    def channel(self, role: str = "root") -> grpc.aio.Channel:
        """A mutual-TLS aio channel as ``role``."""
        return grpc.aio.secure_channel(
            self.addr,
            grpc_channel_credentials(self.tls(role)),
            options=[
                ("grpc.max_send_message_length", CLIENT_LIMIT),
                ("grpc.max_receive_message_length", CLIENT_LIMIT),
            ],
        )

    def stub(self, channel: grpc.aio.Channel) -> log_pb2_grpc.LogStub:
        """A ``log.v1.Log`` stub on ``channel``."""
        return log_pb2_grpc.LogStub(channel)  # type: ignore[no-untyped-call]


@contextlib.asynccontextmanager
async def running_node(
    tmp_path: Path,
    certs: dict[str, CertFiles],
    *,
    config: ServerConfig | None = None,
    sync: SyncPolicy = SyncPolicy.NEVER,
) -> AsyncIterator[Node]:
    """Start a node on a free port of 127.0.0.1; stop it and close its log on exit."""
    acl_dir = tmp_path / "acl"
    write_example_acl(acl_dir)
    log = Log.open(tmp_path / "data", LogConfig(sync=sync))
    local = LocalLog(log, node_id="test-node")
    files = certs["server"]
    server = LogServer(
        local,
        local,
        CasbinAuthorizer(acl_dir / "model.conf", acl_dir / "policy.csv"),
        tls=TLSConfig(files.cert_file, files.key_file, files.ca_file),
        config=config,
    )
    port = server.bind("127.0.0.1", 0)
    local.rpc_addr = f"127.0.0.1:{port}"
    await server.start()
    try:
        yield Node(local.rpc_addr, server, local, certs)
    finally:
        await server.stop(1.0)
        await local.close()

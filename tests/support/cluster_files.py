"""The files a test's DevCluster needs: the session's dev certificates and the example ACL."""

from __future__ import annotations

from pathlib import Path

from raftlog.agent.devcluster import ClusterFiles
from raftlog.auth import write_example_acl
from raftlog.security import CertFiles


def dev_cluster_files(root: Path, certs: dict[str, CertFiles]) -> ClusterFiles:
    """Write the example ACL under ``root/acl`` and pair it with the server/peer certificate."""
    write_example_acl(root / "acl")
    server = certs["server"]
    return ClusterFiles(
        server.cert_file,
        server.key_file,
        server.ca_file,
        root / "acl" / "model.conf",
        root / "acl" / "policy.csv",
    )


def agent_tls(server: CertFiles) -> dict[str, Path]:
    """The six TLS settings of an ``AgentConfig`` when one certificate serves both the gRPC
    side and the Raft peers (as the development certificate does): ``AgentConfig(...,
    **agent_tls(certs["server"]))``."""
    return {
        "server_tls_cert_file": server.cert_file,
        "server_tls_key_file": server.key_file,
        "server_tls_ca_file": server.ca_file,
        "peer_tls_cert_file": server.cert_file,
        "peer_tls_key_file": server.key_file,
        "peer_tls_ca_file": server.ca_file,
    }

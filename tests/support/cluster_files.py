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

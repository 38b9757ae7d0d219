"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest

from raftlog.security import CertFiles, write_dev_certs


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertFiles]:
    """Development certificates made once per session in a temp dir.

    The dict of :func:`raftlog.security.write_dev_certs`: role -> CertFiles, with roles
    ``"server"`` (CN "server", valid for localhost and 127.0.0.1; usable as a server and
    as a peer/client certificate), ``"root"`` and ``"nobody"`` (client certificates).
    """
    return write_dev_certs(tmp_path_factory.mktemp("dev-certs"))

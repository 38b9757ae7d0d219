"""The client needs no ``cryptography``: only ``raftlog.api``, ``grpc`` and the pure TLS
helpers of ``raftlog.security.tls`` (issue 11: a client-only install has no server code).

Each check runs in a fresh interpreter whose import system refuses ``cryptography`` (a
meta-path finder that raises ImportError for it), since this test process has imported it
long ago (the certificate fixtures make certificates with it).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from raftlog.security import CertFiles

#: Installed first in the child: any import of ``cryptography`` (or a submodule) fails.
BLOCKER = textwrap.dedent(
    """
    import sys

    class BlockCryptography:
        def find_spec(self, name, path=None, target=None):
            if name == "cryptography" or name.startswith("cryptography."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockCryptography())
    """
)


def run_blocked(body: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a new interpreter with ``cryptography`` blocked from importing."""
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(body), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_blocker_blocks_cryptography() -> None:
    """Control: without this, the next test would prove nothing."""
    done = run_blocked(
        """
        try:
            import cryptography.x509
        except ImportError as exc:
            print("blocked:", exc)
        else:
            raise SystemExit("cryptography imported despite the blocker")
        """
    )
    assert done.returncode == 0, done.stderr
    assert "blocked: cryptography" in done.stdout


def test_client_imports_and_configures_without_cryptography(
    dev_certs: dict[str, CertFiles],
) -> None:
    files = dev_certs["root"]
    done = run_blocked(
        """
        import sys
        from pathlib import Path

        import raftlog.client
        from raftlog.client import ClientConfig, LogClient, SyncLogClient
        from raftlog.security import TLSConfig

        cert, key, ca = map(Path, sys.argv[1:4])
        tls = TLSConfig(cert_file=cert, key_file=key, ca_file=ca)
        config = ClientConfig()
        config.validate()
        # Builds its channel credentials from the PEM files; connects only when started.
        LogClient(["127.0.0.1:1"], tls=tls, config=config)
        assert SyncLogClient.__module__ == "raftlog.client.sync"
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "cryptography")
        assert not loaded, loaded
        print("client ok")
        """,
        str(files.cert_file),
        str(files.key_file),
        str(files.ca_file),
    )
    assert done.returncode == 0, done.stderr
    assert "client ok" in done.stdout

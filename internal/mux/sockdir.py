"""A private directory for the gRPC server's unix socket.

The mux relays gRPC connections to the grpc.aio server over a unix socket, so that server
is never reachable from the network except through the mux. The socket lives in a fresh
directory of mode 0700: only our own user can connect to it, whatever the umask.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Final

__all__ = ["MAX_UNIX_PATH", "PrivateSocketDir"]

#: sun_path is 108 bytes on Linux and 104 on macOS; stay under the smaller one.
MAX_UNIX_PATH: Final = 103


class PrivateSocketDir:
    """A 0700 temporary directory holding one unix socket path.

    ``PrivateSocketDir(name="grpc.sock", prefix="raftlog-", base_dir=None)`` creates the
    directory at once (under ``base_dir``, default the system temp dir). ``path`` is the
    socket path, ``address`` the grpc form (``unix:/...``) to pass to
    ``server.add_secure_port``. ``cleanup()`` (or leaving the ``with`` block) removes the
    socket and the directory; it is idempotent.
    """

    def __init__(
        self,
        name: str = "grpc.sock",
        *,
        prefix: str = "raftlog-",
        base_dir: str | Path | None = None,
    ) -> None:
        if not name or "/" in name:
            raise ValueError(f"socket name must be a plain file name, got {name!r}")
        base = Path(base_dir if base_dir is not None else tempfile.gettempdir()).absolute()
        # mkdtemp appends 8 random characters to the prefix.
        planned = base / (prefix + "x" * 8) / name
        if len(os.fsencode(planned)) > MAX_UNIX_PATH:
            raise ValueError(
                f"unix socket path too long ({len(os.fsencode(planned))} > {MAX_UNIX_PATH} "
                f"bytes): {planned}; use a shorter base_dir"
            )
        self.directory = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        os.chmod(self.directory, stat.S_IRWXU)  # mkdtemp does 0700; say it explicitly
        self.path = self.directory / name

    @property
    def address(self) -> str:
        """The gRPC address of the socket: ``unix:<absolute path>``."""
        return f"unix:{self.path}"

    def cleanup(self) -> None:
        """Remove the socket file and the directory (idempotent)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivateSocketDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

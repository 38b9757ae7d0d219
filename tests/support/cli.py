"""Running the installed ``raftlog`` command the way a user does, from a test."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

#: The console script of the environment the tests run in.
RAFTLOG = str(Path(sys.executable).parent / "raftlog")


async def run_raftlog(
    *args: str, cwd: Path, stdin: bytes | None = None, timeout: float = 30
) -> tuple[int, str, str]:
    """``raftlog ARGS...`` in ``cwd``; (exit code, stdout, stderr), bounded by ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        RAFTLOG,
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()

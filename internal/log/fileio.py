"""Replacing a small file atomically and durably, for every checkpoint-like file.

A crash must leave either the old file or the new one, whole, and once a durable write
returns, a crash must not bring the old one back. So: write a temp file in the same
directory (a rename is atomic only within one file system), fsync it, rename it over the
target, then fsync the directory (POSIX makes a rename durable only with the directory's
fsync). The producer table of the single node, the state machine's checkpoint and Raft's
hard state are all written this way.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or create in ``directory`` durable (POSIX directory fsync)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: readers see the old content or the new, never a mix.

    With ``durable`` (the default) the new content survives a crash once this returns (the
    temp file and then the directory are fsynced); without it only atomicity is kept (for
    tests and benchmarks that measure without durability). The temp file is
    ``.<name>.tmp`` beside ``path``, created with ``mode`` (``0o600`` for secrets and for
    state nobody else should read). Raises OSError; the target is then unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)

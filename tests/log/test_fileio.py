"""atomic_write: the one writer of checkpoint-like files (producer table, FSM checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raftlog.log.fileio import atomic_write


def test_replaces_the_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "state"
    atomic_write(target, b"one")
    atomic_write(target, b"two" * 1000)
    assert target.read_bytes() == b"two" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_mode_applies_to_a_new_file(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    atomic_write(target, b"x", mode=0o600)
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_failed_rename_leaves_the_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state"
    atomic_write(target, b"old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"


def test_durable_writes_fsync_the_file_and_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    atomic_write(tmp_path / "a", b"x")
    assert len(synced) == 2  # the temp file, then the directory
    atomic_write(tmp_path / "b", b"x", durable=False)
    assert len(synced) == 2

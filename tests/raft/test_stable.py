"""Stable store: atomic, checksummed, never silently reset; async without blocking."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from raftlog.raft import stable as stable_mod
from raftlog.raft.stable import (
    CorruptStableStateError,
    StableState,
    StableStore,
    decode_state,
    encode_state,
)

pytestmark = pytest.mark.timeout(20)


def test_fresh_directory_loads_none_then_round_trips(tmp_path: Path) -> None:
    store = StableStore(tmp_path / "data")
    assert store.load_sync() is None
    assert not store.exists()
    state = StableState(term=5, voted_for="n2", extra={"commit": 12, "note": "x", "ok": True})
    store.save_sync(state)
    assert store.exists()
    again = StableStore(tmp_path / "data").load_sync()
    assert again == state
    assert again is not None and again.extra["commit"] == 12
    store.save_sync(StableState(term=6))
    assert store.load_sync() == StableState(term=6, voted_for=None)


def test_extra_is_read_only_and_values_are_validated(tmp_path: Path) -> None:
    state = StableState(term=1, extra={"commit": 3})
    with pytest.raises(TypeError):
        state.extra["commit"] = 4  # type: ignore[index]
    store = StableStore(tmp_path)
    for bad, field in (
        (StableState(term=-1), "term"),
        (StableState(term=1, voted_for=""), "voted_for"),
        (StableState(term=1, extra={"x": 1.5}), "extra"),  # type: ignore[dict-item]
    ):
        with pytest.raises(ValueError, match=field):
            store.save_sync(bad)
    assert store.load_sync() is None, "a refused save must not leave a file behind"


@pytest.mark.parametrize(
    "damage",
    ["flip_body_byte", "truncate", "empty", "bad_header", "other_version", "valid_sum_bad_json"],
)
def test_corruption_is_detected_never_reset(tmp_path: Path, damage: str) -> None:
    store = StableStore(tmp_path)
    store.save_sync(StableState(term=9, voted_for="n1", extra={"commit": 4}))
    data = store.path.read_bytes()
    if damage == "flip_body_byte":
        data = data[:-3] + bytes([data[-3] ^ 0x01]) + data[-2:]
    elif damage == "truncate":
        data = data[: len(data) - 5]
    elif damage == "empty":
        data = b""
    elif damage == "bad_header":
        data = b"something else\n" + data.split(b"\n", 1)[1]
    elif damage == "other_version":
        data = data.replace(b"raftlog-stable 1 ", b"raftlog-stable 2 ", 1)
    else:
        import hashlib

        body = b'{"term":"nine","voted_for":null,"extra":{}}'
        data = b"raftlog-stable 1 " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
    store.path.write_bytes(data)
    with pytest.raises(CorruptStableStateError):
        store.load_sync()


def test_encode_is_canonical() -> None:
    a = encode_state(StableState(3, "n1", {"b": 1, "a": 2}))
    b = encode_state(StableState(3, "n1", {"a": 2, "b": 1}))
    assert a == b
    assert decode_state(a) == StableState(3, "n1", {"a": 2, "b": 1})


def test_save_is_atomic_temp_fsync_rename_fsync_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StableStore(tmp_path)
    store.save_sync(StableState(term=1, voted_for="a"))
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # A crash right here must leave the old state readable.
        assert StableStore(tmp_path).load_sync() == StableState(term=1, voted_for="a")
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.save_sync(StableState(term=2, voted_for="b"))
    assert events == ["fsync-file", "rename", "fsync-dir"]
    assert store.load_sync() == StableState(term=2, voted_for="b")


def test_crash_before_rename_keeps_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StableStore(tmp_path)
    store.save_sync(StableState(term=3, voted_for="a"))

    def crash(src: object, dst: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(stable_mod.StableStoreError, match="power cut"):
        store.save_sync(StableState(term=4, voted_for="b"))
    monkeypatch.undo()
    # A leftover temp file from the crash does not confuse the next start.
    assert StableStore(tmp_path).load_sync() == StableState(term=3, voted_for="a")
    store.save_sync(StableState(term=5))
    assert store.load_sync() == StableState(term=5)


async def test_async_save_runs_off_the_loop_and_in_call_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StableStore(tmp_path)
    loop_thread = threading.get_ident()
    threads: list[int] = []
    real = store.save_sync

    def spy(state: StableState) -> None:
        threads.append(threading.get_ident())
        real(state)

    monkeypatch.setattr(store, "save_sync", spy)
    await asyncio.gather(*(store.save(StableState(term=t, voted_for="n1")) for t in range(1, 21)))
    assert threads and all(t != loop_thread for t in threads)
    assert await store.load() == StableState(term=20, voted_for="n1")


def test_unreadable_path_is_a_named_error(tmp_path: Path) -> None:
    store = StableStore(tmp_path)
    store.path.mkdir()  # a directory where the file should be
    with pytest.raises(stable_mod.StableStoreError):
        store.load_sync()
    with pytest.raises(ValueError):
        StableStore(tmp_path, filename="../escape")

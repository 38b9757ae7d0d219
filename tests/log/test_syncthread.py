"""The dedicated fsync thread of a store (raftlog.log.syncthread)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from raftlog.log.syncthread import SyncThread


async def test_calls_run_in_order_in_one_named_thread_and_errors_reach_the_caller() -> None:
    st = SyncThread("test-fsync")
    seen: list[tuple[int, str]] = []

    def call(i: int) -> None:
        seen.append((i, threading.current_thread().name))

    await asyncio.gather(*(st.run(lambda i=i: call(i)) for i in range(50)))
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"test-fsync"}

    def boom() -> None:
        raise OSError(5, "EIO")

    with pytest.raises(OSError, match="EIO"):
        await st.run(boom)
    await st.run(lambda: call(50))  # the thread survived the error
    assert seen[-1][0] == 50
    st.stop()
    assert not any(t.name == "test-fsync" for t in threading.enumerate())


async def test_a_cancelled_caller_leaves_the_call_to_finish() -> None:
    st = SyncThread("test-fsync-cancel")
    gate = threading.Event()
    started = threading.Event()
    ran = threading.Event()

    def slow() -> None:
        started.set()
        gate.wait(5)
        ran.set()

    task = asyncio.create_task(st.run(slow))
    assert await asyncio.to_thread(started.wait, 5)  # the call is running in the thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    await st.run(lambda: None)  # queued behind it: returns once slow() is done
    assert ran.is_set()
    st.stop()

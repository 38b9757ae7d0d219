"""The one way tests wait: poll a condition until it holds or a deadline passes.

Tests never sleep and then assert; they wait here for the state they expect, with a deadline
that turns a hang into a clear failure naming what was awaited.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

#: How often a condition is re-checked, in seconds. Small enough not to slow a test down,
#: large enough not to starve the code under test on a 2-core machine.
POLL_INTERVAL_S = 0.02


async def wait_until(
    condition: Callable[[], bool] | Callable[[], Awaitable[bool]],
    timeout: float = 10.0,
    what: str = "the condition",
    *,
    interval: float = POLL_INTERVAL_S,
) -> None:
    """Return as soon as ``condition()`` is true (it may be a coroutine function); raise
    ``AssertionError("timed out after T s waiting for WHAT")`` once ``timeout`` seconds
    (monotonic) have passed without it."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until_sync(
    condition: Callable[[], bool],
    timeout: float = 10.0,
    what: str = "the condition",
    *,
    interval: float = POLL_INTERVAL_S,
) -> None:
    """:func:`wait_until` for code outside an event loop (fixtures, subprocess drivers)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)

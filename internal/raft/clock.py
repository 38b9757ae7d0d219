"""The clock of a :class:`~raftlog.raft.node.RaftNode`: when ticks fall and deadlines pass.

The core reads no clock (time reaches it only as ticks); the runtime reads this one for
its ticker, its proposal deadlines and the delay before retrying a failed snapshot.

- :class:`MonotonicClock` (the default) is the running event loop's clock: monotonic time
  in production, and virtual time when the loop is virtual (as in the deterministic
  runtime simulation, :mod:`raftlog.raft.simloop`).
- :class:`ManualClock` moves only when a test calls :meth:`ManualClock.advance`, which runs
  exactly the ticks and deadlines that fall in the interval, like trio's MockClock.

Other bounds of the runtime (snapshot chunk acknowledgements, ``wait_for``, read
barriers, close) are ``asyncio`` timeouts and follow the event loop's clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Protocol


class Clock(Protocol):
    """Time for the runtime, in seconds."""

    def now(self) -> float:
        """Current time (monotonic; its origin is arbitrary)."""

    async def sleep(self, seconds: float) -> None:
        """Return once :meth:`now` has advanced by ``seconds`` (0 or less: yield once)."""


class MonotonicClock:
    """The running event loop's clock (``loop.time()`` and ``asyncio.sleep``)."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that only moves when told to (tests).

    ``sleep`` parks the caller until :meth:`advance` moves the time to or past its wake-up
    time; ``advance`` wakes sleepers in time order and lets each run before the next one
    wakes, so a ticker sleeping one tick at a time sees every tick of the interval.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds``, waking every sleeper due meanwhile (each
        at its own wake-up time, in order) and letting the woken tasks run."""
        if seconds < 0:
            raise ValueError(f"cannot move time backwards ({seconds} s)")
        end = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= end:
            when, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, when)
            if not fut.done():
                fut.set_result(None)
            # Let the woken task run (and perhaps sleep again) before the next wake-up.
            for _ in range(8):
                await asyncio.sleep(0)
        self._now = end


__all__ = ["Clock", "ManualClock", "MonotonicClock"]

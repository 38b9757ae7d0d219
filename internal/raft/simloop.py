"""A virtual-time asyncio event loop, for deterministic runs of real :class:`RaftNode` s.

Its ``time()`` is a number that only moves when nothing is ready to run: the loop then
jumps straight to its next timer instead of sleeping (as trio's ``MockClock`` with
``autojump_threshold=0``). Thirty simulated seconds of a five-node cluster take as long as
their callbacks take, and, since the order of callbacks is a function of the program alone,
a run with in-memory stores (:mod:`raftlog.raft.inmem`) on the in-memory network
(:mod:`raftlog.raft.transport_inmem`, seeded) replays exactly from its seeds.

What breaks the replay: threads (``asyncio.to_thread``: the disk stores use them), real
I/O, wall clocks, and randomness not drawn from a seeded generator (``NodeConfig.seed``
None). :func:`run` refuses to wait on real file descriptors: with nothing scheduled and
nothing ready it raises instead of hanging.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


class _JumpingSelector(selectors.DefaultSelector):
    """Polls the loop's own file descriptors without waiting; where the loop would wait
    ``timeout`` seconds for them, moves its virtual time by ``timeout`` instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise RuntimeError(
                "virtual-time loop: nothing is ready and no timer is scheduled (deadlock)"
            )
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock is virtual (seconds from 0) and jumps to the next timer."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward (the selector does it when the loop is idle)."""
        if seconds > 0:
            self._virtual_now += seconds


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run ``main`` to completion on a new :class:`VirtualTimeLoop`; then cancel what it
    left running and close the loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what ``main`` left running (after a failure) and let it unwind, as
    ``asyncio.run`` does, so no task is destroyed while pending."""
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


__all__ = ["VirtualTimeLoop", "run"]

"""The interactive pool's calls start by priority, not by arrival: an urgent file's tier 1 before tier-2 work.

The interactive lane has a pool of its own (see :class:`agents.lanes.LanePools`), but both of its tiers share
it: the tier-1 work that makes an uploaded file browsable, and the tier-2 work that makes an earlier upload
searchable (its metadata: a few ms for a PNG's text chunks, tens of ms for a large JPEG's XMP). pebble's queue is
first come, first served, so an upload arriving while earlier uploads' tier-2 calls wait there waited for all of
them. :class:`PriorityPool` holds the calls a busy pool cannot start yet and lets one in whenever a call ends:
the lowest ``(level, tier)`` first, in arrival order within one. A call never waits for more than the calls
already running.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, TypeVar

from agents.pool import WorkPool

T = TypeVar("T")


class PriorityPool:
    """``await pool.run(fn, *args, level=, tier=, **kwargs)`` like :meth:`WorkPool.run`, started by priority."""

    def __init__(self, pool: WorkPool) -> None:
        self.pool = pool
        self._running = 0
        #: Calls waiting for a process: (priority, arrival, the future that lets it in).
        self._waiting: list[tuple[tuple[int, int], int, asyncio.Future]] = []
        self._arrivals = itertools.count()

    async def run(self, fn: Callable[..., T], *args: Any, reads: str | None = None, read_bytes: int = 0,
                  level: int = 0, tier: int = 0, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a pool process once one is free and no more urgent call waits; ``reads``,
        ``read_bytes``, ``level`` (the lane governor's) and ``tier`` are this pool's keywords, not passed on to
        ``fn``."""
        await self._enter((level, tier))
        try:
            return await self.pool.run(fn, *args, **kwargs)
        finally:
            self._leave()

    @property
    def waiting(self) -> int:
        return sum(1 for *_, let_in in self._waiting if not let_in.done())

    async def _enter(self, priority: tuple[int, int]) -> None:
        if self._running < self.pool.size and not self.waiting:
            self._running += 1
            return
        let_in = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), let_in))
        try:
            await let_in  # counted as running by whoever let it in
        except asyncio.CancelledError:
            if let_in.done() and not let_in.cancelled():  # let in just as it was cancelled: the next one goes
                self._leave()
            raise  # (cancelled while waiting: its entry is passed over)

    def _leave(self) -> None:
        self._running -= 1
        while self._waiting and self._running < self.pool.size:
            *_, let_in = heapq.heappop(self._waiting)
            if not let_in.done():
                self._running += 1
                let_in.set_result(None)

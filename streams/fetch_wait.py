"""How long the worker's fetches wait for data: short while work flows, long once the worker is quiet.

The embedded broker answers a fetch only after a fraction of its wait, so the worker asks with a short one
(``Settings.fetch_max_wait_ms``) and pays for it in polls: at 50 ms an idle ``damflow up`` spent about 80 ms of
CPU a second, about 55 with this (figures in the settings). Nothing needs that speed while nothing happens:
uploads reach their worker by express, and the first file of an import may take a tenth of a second more. So
after ``idle_after_s`` without a fetched record, while no partition is held back (by the lane governor, or
behind a full stream buffer) and nothing fetched waits to be taken, the next fetches wait
``idle_fetch_max_wait_ms``; the first record back, or anything held back, makes the next fetch short again.
The fetch already on its way keeps its wait, and the broker answers the worker's other requests on that
connection after it: keep the idle wait to a fraction of a second.
"""

from __future__ import annotations

import time
from typing import Any

from streams.logs import get

log = get(__name__)


class QuietFetchWait:
    """Sets an aiokafka fetcher's wait before each fetch it builds, from what the faust consumer holds."""

    def __init__(self, fetcher: Any, consumer: Any, *, busy_ms: int, idle_ms: int, idle_after_s: float) -> None:
        self.fetcher, self.consumer = fetcher, consumer
        self.busy_ms, self.idle_ms, self.idle_after_s = busy_ms, idle_ms, idle_after_s
        self.last_busy = time.monotonic()
        self.wait_ms = busy_ms

    def install(self) -> QuietFetchWait:
        """Choose the wait each time the fetcher plans its requests (aiokafka 0.11-0.14:
        ``_get_actions_per_node``, called after every fetch that came back, before the next is built). With an
        aiokafka that lacks these, the wait stays ``busy_ms``."""
        fetcher = self.fetcher
        if not all(hasattr(fetcher, a) for a in ("_get_actions_per_node", "_records", "_fetch_max_wait_ms")):
            log.warning("fetch_wait_fixed", reason="this aiokafka's fetcher has no known planning step")
            return self
        plan = fetcher._get_actions_per_node

        def plan_with_wait(assignment: Any) -> Any:
            fetcher._fetch_max_wait_ms = self.choose()
            return plan(assignment)

        fetcher._get_actions_per_node = plan_with_wait
        return self

    def busy(self) -> bool:
        """Something is held back or waits to be taken (records a fetch just brought are there until faust takes
        them): the next fetch must come soon."""
        consumer = self.consumer
        return bool(consumer._paused_partitions or consumer._buffered_partitions or self.fetcher._records)

    def choose(self) -> int:
        now = time.monotonic()
        if self.busy():
            self.last_busy = now
        wait = self.busy_ms if now - self.last_busy < self.idle_after_s else self.idle_ms
        if wait != self.wait_ms:
            log.debug("fetch_wait", ms=wait)
            self.wait_ms = wait
        return wait

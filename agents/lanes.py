"""Priority between lanes inside one worker: interactive > batch > background.

Three mechanisms, each covering a place where an urgent event could otherwise queue behind batch work:

1. **Fetching** — while any interactive event is in flight in this worker, the batch and background partitions
   are paused, so the consumer fetches and delivers nothing but interactive work (faust's own per-partition
   flow control keeps what was already fetched for the batch lane small: see ``streams.app``).
2. **Work slots** — each lane has its own CPU pool (see :class:`LanePools`): the interactive pool is reserved
   and runs at normal priority, the batch pool's processes are niced, so an urgent file never waits behind
   queued batch files and gets the CPU as soon as it needs it.
3. **Background** — tier-3 partitions are consumed only once tiers 1 and 2 have had nothing in flight and no
   lag in this worker for ``background_idle_s``; they are paused otherwise.

Pauses are re-applied after every rebalance (faust forgets them on assignment).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import faust
from faust.types import TP

from agents.handling import EventHandler, Work
from agents.pool import WorkPool
from streams.logs import get
from streams.settings import Settings
from streams.topics import Topics

log = get(__name__)


class LanePools:
    """One CPU pool per lane: reserved slots for interactive work, niced processes for batch work."""

    def __init__(self, settings: Settings, preload: tuple[str, ...]) -> None:
        common = dict(timeout_s=settings.decode_timeout_s, memory_mb=settings.decode_memory_mb, preload=preload)
        self.interactive = WorkPool(settings.interactive_pool_size, **common)
        self.batch = WorkPool(settings.pool_size, nice=settings.batch_nice, **common)
        self.background = self.batch

    def for_lane(self, lane: str) -> WorkPool:
        return {"interactive": self.interactive, "batch": self.batch}.get(lane, self.background)

    def warm(self) -> None:
        self.interactive.warm()
        self.batch.warm()

    def shutdown(self) -> None:
        self.interactive.shutdown()
        self.batch.shutdown()


class LaneGovernor:
    """Counts in-flight work per lane and pauses lower lanes' partitions accordingly."""

    def __init__(self, app: faust.App, topics: Topics, *, background_idle_s: float = 0.25) -> None:
        self.app = app
        self.background_idle_s = background_idle_s
        self._last_busy = time.monotonic()
        self.in_flight = {"interactive": 0, "batch": 0, "background": 0}
        self._batch_topics = {topics.t1_batch, topics.t2_batch}
        self._urgent_topics = {topics.t1_interactive, topics.t2_interactive}
        self._background_topics = {topics.t3_background}
        self.batch_paused = False
        self.background_paused = False
        #: How often the batch lane was paused for interactive work (for tests and metrics).
        self.preemptions = 0
        app.on_partitions_assigned.connect(self._on_assigned)

    @contextlib.contextmanager
    def working(self, lane: str) -> Iterator[None]:
        self.in_flight[lane] += 1
        self._update()
        try:
            yield
        finally:
            self.in_flight[lane] -= 1
            self._update()

    def _tps(self, topics: set[str]) -> set[TP]:
        return {tp for tp in self.app.consumer.assignment() if tp.topic in topics}

    def _lagging(self, topics: set[str]) -> bool:
        consumer = self.app.consumer
        for tp in self._tps(topics):
            high, read = consumer.highwater(tp), consumer._read_offset.get(tp)  # noqa: SLF001
            if high is not None and high > (read + 1 if read is not None else 0):
                return True
        return False

    def _update(self) -> None:
        want_batch_paused = self.in_flight["interactive"] > 0
        if want_batch_paused != self.batch_paused:
            self.batch_paused = want_batch_paused
            tps = self._tps(self._batch_topics)
            if want_batch_paused:
                self.preemptions += 1
                self.app.consumer.pause_partitions(tps)
            else:
                self.app.consumer.resume_partitions(tps)
        now = time.monotonic()
        busy = self.in_flight["interactive"] + self.in_flight["batch"] > 0 or self._lagging(
            self._batch_topics | self._urgent_topics
        )
        if busy:
            self._last_busy = now
        # background resumes only after the upper lanes were idle a moment: a gap between two files of an
        # import must not let tier-3 work in ahead of the rest
        want_background_paused = busy or now - self._last_busy < self.background_idle_s
        if want_background_paused != self.background_paused:
            self.background_paused = want_background_paused
            tps = self._tps(self._background_topics)
            if want_background_paused:
                self.app.consumer.pause_partitions(tps)
            else:
                self.app.consumer.resume_partitions(tps)

    def tick(self) -> None:
        """Re-evaluate (lag changes without any work starting or ending)."""
        self._update()

    async def _on_assigned(self, sender: object, assigned: set[TP], **_: object) -> None:
        # faust resets its paused set on assignment: apply ours again
        if self.batch_paused:
            self.app.consumer.pause_partitions(self._tps(self._batch_topics))
        if self.background_paused:
            self.app.consumer.pause_partitions(self._tps(self._background_topics))
        self.background_paused = False  # re-derived below, with the new assignment's lag
        self._update()


def lane_agent(
    handler: EventHandler, governor: LaneGovernor, lane: str, work: Work
) -> Callable[[faust.StreamT], object]:
    """The body of every tier's agent: a thin loop handing each event to the shared wrapper, counted per lane."""

    async def agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            with governor.working(lane):
                await handler.process(event, work)

    return agent

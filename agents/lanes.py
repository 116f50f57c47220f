"""Priority inside one worker: interactive > tier-1 batch > tier-2 batch > background (tier 3).

Each place where an urgent event could otherwise queue behind less urgent work has its own mechanism:

1. **Fetching** — the partitions of a lower level are paused while a higher level has work in flight (or
   lag): interactive work pauses every batch and background topic; tier-1 batch work pauses tier-2 batch work
   (browsable within seconds first, searchable within minutes after); tiers 1-2 pause tier 3. A lower level
   resumes only after the levels above it have been idle for ``idle_s``, so the gap between two files of an
   import does not let lower-level work in ahead of the rest. faust's own per-partition flow control keeps what
   was already fetched for the batch lane bounded (``Settings.batch_buffer``, see ``streams.app``).
2. **Work slots** — each lane has its own CPU pool (:class:`LanePools`): the interactive pool is reserved,
   runs at the caller's priority and starts tier-1 calls before waiting tier-2 ones (:mod:`agents.priority_pool`),
   the batch pool's processes in the idle scheduling class (see :mod:`streams.niceness`), so an urgent file never
   waits behind queued batch files; optionally (``Settings.preempt_batch``) the batch processes are frozen while
   an urgent file is being made browsable (tier-1 interactive work), so it has the cores, caches and memory
   bandwidth to itself.
3. **Getting there** — an upload reaches its worker by express (:mod:`streams.express`), not at the worker's
   next fetch.

Pauses are re-applied after every rebalance (faust forgets them on assignment).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

import faust
from faust.types import TP

from agents.chunking import ChunkedPool
from agents.handling import EventHandler, Work
from agents.pool import WorkPool
from agents.priority_pool import PriorityPool
from streams.express import OnceLedger, record_key
from streams.kafka import passes
from streams.logs import get
from streams.settings import Settings
from streams.topics import Topics

log = get(__name__)

#: Pause before working again on an event whose handling raised, doubling from the first to the last.
_AGAIN_S = (0.5, 30.0)
#: (tier, lane) -> priority level; lower is more urgent. Level 0 is never paused.
LEVELS = {(1, "interactive"): 0, (2, "interactive"): 0, (1, "batch"): 1, (2, "batch"): 2, (3, "background"): 3}


def level_of(tier: int, lane: str) -> int:
    """The priority level of a tier's work in a lane: the governor counts it there, the batch pool orders by it;
    any other pairing (a record naming an odd lane) is background work."""
    return LEVELS.get((tier, lane), 3)


class LanePools:
    """One CPU pool per lane: reserved slots for interactive work, niced processes for batch work.

    Batch work goes to its pool in chunks of several files (:mod:`agents.chunking`); interactive work one file
    per task, so an urgent file never waits for another.
    """

    def __init__(self, settings: Settings, preload: tuple[str, ...]) -> None:
        common = dict(timeout_s=settings.decode_timeout_s, memory_mb=settings.decode_memory_mb, preload=preload)
        self.interactive = WorkPool(settings.interactive_pool_size, **common)
        self.batch = WorkPool(settings.pool_size, nice=settings.batch_nice, idle_class=settings.batch_idle_class,
                              freezable=settings.preempt_batch, **common)
        self.batch_chunks = ChunkedPool(self.batch, max_chunk=settings.batch_chunk, read_ahead=settings.read_ahead,
                                        idle_only_from=LEVELS[(3, "background")],
                                        drop_after_bytes=settings.drop_read_pages_after_bytes)
        #: Tier 3 (and odd lanes) share the batch pool's chunks, at their own level: after the batch lane's calls,
        #: and only on a process with nothing else to do.
        self.background = self.batch_chunks
        #: The interactive lane's two tiers share its pool: tier 1 (browsable) first (see agents.priority_pool).
        self.interactive_by_priority = PriorityPool(self.interactive)

    def for_lane(self, lane: str) -> PriorityPool | ChunkedPool:
        return {"interactive": self.interactive_by_priority, "batch": self.batch_chunks}.get(lane, self.background)

    def warm(self) -> None:
        self.interactive.warm()
        self.batch.warm()

    def preempt_batch(self, urgent: bool) -> None:
        """Freeze the batch pool's processes while urgent work runs (SIGSTOP), thaw them after (SIGCONT).

        Niceness alone leaves the batch processes a share of the cores; on a small machine that share is what
        an urgent file waits for. A frozen batch file simply resumes where it was, and the time it was frozen does
        not count towards its time limit (the batch pool is ``freezable`` when ``Settings.preempt_batch`` is on).
        """
        self.batch.freeze(urgent)

    def shutdown(self) -> None:
        self.batch.freeze(False)  # never leave a frozen process behind
        self.interactive.shutdown()
        self.batch.shutdown()


class LaneGovernor:
    """Counts in-flight work per priority level and pauses the partitions of lower levels accordingly."""

    def __init__(
        self, app: faust.App, topics: Topics, *, idle_s: float = 0.25,
        on_urgent: Callable[[bool], None] | None = None,
    ) -> None:
        self.app = app
        self.on_urgent = on_urgent
        self._urgent = False
        self._browsing = 0  # tier-1 interactive work in flight
        self.idle_s = idle_s
        self.in_flight = dict.fromkeys(range(4), 0)
        self._topics = {
            0: {topics.t1_interactive, topics.t2_interactive},
            1: {topics.t1_batch},
            2: {topics.t2_batch},
            3: {topics.t3_background},
        }
        self._last_busy = dict.fromkeys(range(4), time.monotonic())
        #: Per partition, the highest offset an agent has started on (see :meth:`waiting`).
        self._started: dict[TP, int] = {}
        self.paused = dict.fromkeys(range(1, 4), False)
        #: How often each level was paused (for tests and metrics).
        self.pauses = dict.fromkeys(range(1, 4), 0)
        app.on_partitions_assigned.connect(self._on_assigned)

    @contextlib.contextmanager
    def working(self, tier: int, lane: str, position: tuple[TP, int] | None = None) -> Iterator[None]:
        """Counts one event's work as in flight at its level; ``position`` is its partition and offset."""
        level = level_of(tier, lane)
        if position is not None:
            tp, offset = position
            self._started[tp] = max(offset, self._started.get(tp, -1))
        browsing = (tier, lane) == (1, "interactive")  # what makes an urgent file browsable: worth a freeze
        self.in_flight[level] += 1
        self._browsing += browsing
        try:
            self._update()
            yield
        finally:
            self.in_flight[level] -= 1
            self._browsing -= browsing
            self._update()

    def _tps(self, level: int, assigned: set[TP] | None = None) -> set[TP]:
        topics = self._topics[level]
        return {tp for tp in (self.app.consumer.assignment() if assigned is None else assigned) if tp.topic in topics}

    def _highwater(self, tp: TP) -> int | None:
        try:
            return self.app.consumer.highwater(tp)
        except AssertionError:  # aiokafka's "not assigned": the consumer thread took it away just now
            return None

    def _lagging(self, level: int, assigned: set[TP] | None = None) -> bool:
        consumer = self.app.consumer
        fetched = consumer._first_fetched  # noqa: SLF001  # partitions delivered from since the assignment
        for tp in self._tps(level, assigned):
            high, read = self._highwater(tp), consumer._read_offset.get(tp)  # noqa: SLF001
            # faust's read offset is the last offset read, but the next one to read after the assignment's seek
            # (until the first records come): read as the former, one waiting record went unseen meanwhile
            unread_from = 0 if read is None else read + 1 if tp in fetched else read
            if high is not None and high > unread_from:
                return True
        return False

    def waiting(self, level: int) -> int | None:
        """Events of ``level``'s partitions here that no agent has started on yet: not fetched (as of the last
        fetch's high water) or fetched and buffered. For a partition nothing started on since it was assigned,
        everything from its committed offset on; ``None`` while that is unknown too (never committed)."""
        committed = getattr(self.app.consumer, "_committed_offset", {})  # faust's: the next offset to read
        total = 0
        for tp in self._tps(level):
            high, started = self._highwater(tp), self._started.get(tp)
            if not high:
                continue
            if started is None:
                start = committed.get(tp)
                if start is None:  # a partition with events, none of them started here, and no commit
                    return None
                total += max(high - start, 0)
                continue
            total += max(high - started - 1, 0)
        return total

    def _update(self) -> None:
        now = time.monotonic()
        urgent = self._browsing > 0
        if urgent != self._urgent:
            self._urgent = urgent
            if self.on_urgent is not None:
                self.on_urgent(urgent)
        assigned = self.app.consumer.assignment()  # once: each call copies it
        busy = {level: self.in_flight[level] > 0 or (level > 0 and self._lagging(level, assigned))
                for level in range(3)}
        for level, is_busy in busy.items():
            if is_busy:
                self._last_busy[level] = now
        for level in (1, 2, 3):
            # interactive work pauses every other level at once; below that, a level waits for a quiet moment
            # of all the (non-interactive) levels above it
            want = busy[0] or any(busy[above] or now - self._last_busy[above] < self.idle_s
                                  for above in range(1, level))
            if want != self.paused[level]:
                self.paused[level] = want
                tps = self._tps(level, assigned)
                if want:
                    self.pauses[level] += 1
                    self.app.consumer.hold_partitions(tps)
                else:
                    self.app.consumer.release_partitions(tps)

    def tick(self) -> None:
        """Re-evaluate (lag changes without any work starting or ending)."""
        self._update()

    async def _on_assigned(self, sender: object, assigned: set[TP], **_: object) -> None:
        # a partition may now be read again from its last commit, or be new here: started offsets start over
        self._started.clear()
        # faust resets its paused set on assignment: apply ours again, to exactly the partitions of the levels
        # paused (holds taken since the revoke named the old assignment)
        self.app.consumer.hold_exactly(
            {tp for level, paused in self.paused.items() if paused for tp in self._tps(level)})
        self._update()


def lane_agent(
    handler: EventHandler, governor: LaneGovernor, lane: str, work: Work, *, once: OnceLedger | None = None,
) -> Callable[[faust.StreamT], object]:
    """The body of every tier's agent: a thin loop handing each event to the shared wrapper, counted per lane.

    With ``once``, a record that also came by express (see :mod:`streams.express`) is worked on once: this
    copy waits for the other's outcome, and its offset commits after that.
    """

    async def handle(event: faust.EventT) -> None:
        msg = event.message
        with governor.working(handler.tier, lane, (TP(msg.topic, msg.partition), msg.offset)):
            if once is None:
                await handler.process(event, work)
            else:
                await once.run(record_key(msg.topic, msg.partition, msg.offset, msg.value),
                               lambda: handler.process(event, work))

    async def agent(stream: faust.StreamT) -> None:
        # Acks by hand, once the work (or its recorded failure) is done. faust acks an event whenever the agent
        # leaves it, also when a stopping worker cancels the agent mid-work or the agent raises; its offset is
        # then committed and the event never read again: lost.
        async for event in stream.noack().events():
            pause = _AGAIN_S[0]
            while True:
                try:
                    await handle(event)
                    break
                except Exception as exc:
                    msg = event.message
                    if not passes(exc):  # a fault no retry cures: recorded in the log, and the lane goes on
                        log.error("event_abandoned", topic=msg.topic, partition=msg.partition, offset=msg.offset,
                                  error=repr(exc), exc_info=True)
                        break
                    # neither its results nor even its failure could be recorded, the broker being away: again (the
                    # work is idempotent), until it is back
                    log.error("event_unfinished", topic=msg.topic, partition=msg.partition, offset=msg.offset,
                              error=repr(exc), again_in_s=pause)
                    await asyncio.sleep(pause)  # a pause before trying again, so a lasting fault does not spin
                    pause = min(pause * 2, _AGAIN_S[1])
            event.ack()

    return agent

"""Progress for people: follow a batch's ``ProgressEvent``s on ``progress`` and render a live bar.

The numbers come only from the events (which the catalog publishes after it has written the assets), never from
local counters — so the bar says what the catalog really holds, whoever did the work.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from schemas import ProgressEvent, decode
from streams.errors import BrokerError, SchemaError
from streams.kafka import set_fetch_pace

#: How long a follower goes on without any answer from the broker before it gives up (the broker stopped, or
#: is unreachable): aiokafka itself tries again for ever, and ``ingest --wait`` with no timeout hung for good.
BROKER_GONE_S = 20.0
#: While nothing comes, how often the follower asks the broker whether it is there at all.
PROBE_S = 2.0


def finished(p: ProgressEvent) -> bool:
    """The batch's tier is done: the scan is over and every file found has an outcome (or was lost with a broker:
    ``ProgressEvent.lost``)."""
    return p.total_final and p.done + p.failed + p.dead_lettered + p.lost >= p.known_total


def ending(p: ProgressEvent, within_s: float) -> bool:
    """The batch's tier is about to be done: the scan is over and the files left are expected within ``within_s``
    at the batch's rate so far."""
    return p.total_final and not finished(p) and p.eta_s is not None and p.eta_s <= within_s


def _fmt_eta(eta: float | None) -> str:
    if eta is None:
        return "--"
    eta = int(eta)
    return f"{eta // 60}m{eta % 60:02d}s" if eta >= 60 else f"{eta}s"


def render(p: ProgressEvent, width: int = 30) -> str:
    total = max(p.known_total, 1)
    ended = p.done + p.failed + p.dead_lettered + p.lost
    filled = int(width * min(ended, total) / total)
    bar = "#" * filled + "." * (width - filled)
    total_txt = f"{p.known_total}" if p.total_final else f"{p.known_total}+"
    parts = [f"tier {p.tier} [{bar}] {p.done}/{total_txt} done"]
    if p.failed or p.dead_lettered:
        parts.append(f"{p.failed + p.dead_lettered} failed")
    if p.retrying:
        parts.append(f"{p.retrying} retrying")
    parts.append(f"{p.rate:.1f} files/s")
    parts.append(f"ETA {_fmt_eta(p.eta_s) if not finished(p) else '0s'}")
    return " · ".join(parts)


class ProgressBar:
    """Redraws one line on a terminal; elsewhere prints a line at most every ``interval`` seconds."""

    def __init__(self, out: TextIO | None = None, interval: float = 2.0) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.interval = interval
        self._last = 0.0

    def update(self, p: ProgressEvent) -> None:
        line = render(p)
        if self.tty:
            self.out.write("\r\x1b[2K" + line)
            self.out.flush()
        elif finished(p) or time.monotonic() - self._last >= self.interval:
            self.out.write(line + "\n")
            self.out.flush()
            self._last = time.monotonic()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


class FollowPace:
    """How a follower's fetches wait: ``normal_ms``, or ``prompt_ms`` while its batch is expected to finish within
    ``within_s`` and for twice that after the last event that said so, as the catalog sink does (its
    ``FetchPace``), so the last event is read without a long wait (on the embedded broker, which answers a
    fraction of the wait late, a 250 ms wait cost the end about 50 ms). An event that says the end is further
    off (a file gone to a retry's backoff) sets it back at once: a follower of a batch that stalls near its end
    does not poll the broker every few milliseconds for as long as it waits."""

    def __init__(self, normal_ms: int, prompt_ms: int, within_s: float) -> None:
        self.normal_ms, self.prompt_ms, self.within_s = normal_ms, prompt_ms, within_s
        self.prompt_until = float("-inf")
        self._set: int | None = None

    def seen(self, event: ProgressEvent, now: float) -> None:
        self.prompt_until = now + 2 * self.within_s if ending(event, self.within_s) else float("-inf")

    def apply(self, consumer: AIOKafkaConsumer, now: float) -> None:
        wait = self.prompt_ms if now < self.prompt_until else self.normal_ms
        if wait != self._set and set_fetch_pace(consumer, wait):
            self._set = wait


async def follow(
    consumer: AIOKafkaConsumer, batch_id: str, *, tier: int = 1, bar: ProgressBar | None = None,
    timeout: float | None = None, pace: FollowPace | None = None,
) -> ProgressEvent:
    """Read ``progress`` until ``batch_id`` is finished in ``tier``; return its last ``ProgressEvent``.

    ``consumer`` must already be positioned (see :func:`streams.kafka.tail`) before the batch was published.
    ``pace``: the consumer's fetches go prompt while the batch is about to finish (see :class:`FollowPace`).
    Raises :class:`BrokerError` once the broker has not answered for ``BROKER_GONE_S`` (the batch goes on where
    it is, if the broker comes back).
    """
    clock = asyncio.get_running_loop().time

    async def loop() -> ProgressEvent:
        answered = probed = clock()
        while True:
            if pace is not None:
                pace.apply(consumer, clock())
            batches = await consumer.getmany(timeout_ms=500)
            if batches:
                answered = clock()
            elif clock() - probed >= PROBE_S:  # nothing came: is anybody there?
                probed = clock()
                try:
                    await asyncio.wait_for(consumer.topics(), PROBE_S)
                    answered = clock()
                except (KafkaError, OSError, TimeoutError) as exc:
                    if clock() - answered >= BROKER_GONE_S:
                        raise BrokerError(f"the broker has not answered for {BROKER_GONE_S:g} s ({exc!r}); batch "
                                          f"{batch_id} goes on where it is if it comes back: see `damflow status`"
                                          ) from exc
            for records in batches.values():
                for rec in records:
                    if rec.key != batch_id.encode():
                        continue
                    try:
                        event = decode(rec.value)
                    except SchemaError:
                        continue
                    if not isinstance(event, ProgressEvent) or event.tier != tier:
                        continue
                    if bar:
                        bar.update(event)
                    if finished(event):
                        return event
                    if pace is not None:
                        pace.seen(event, clock())

    try:
        return await asyncio.wait_for(loop(), timeout)
    finally:
        if bar:
            bar.close()

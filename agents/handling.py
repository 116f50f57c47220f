"""The per-event wrapper every agent uses: decode, bind log context, run the work, classify and route failures.

An agent stays a thin loop (``agents.lanes.lane_agent``: ``await handler.process(event, work)`` per event, acked
once that returns); this module is the one place that knows what happens when work fails:

- undecodable message (poison pill) -> dead letter at once, raw bytes kept (+ ``AssetFailed(dead_lettered)``
  when it still names its file, so its batch can finish);
- permanent error, or transient error on the last attempt -> dead letter + ``AssetFailed(dead_lettered)``;
- transient error with attempts left -> ``t<tier>.retry.<n>`` with a due time + ``AssetFailed(retrying)``;
- the broker refusing the work's results for now (:meth:`EventHandler.emit`) -> raised on, not recorded: the work
  succeeded, and the agent works the event again once the broker is back (``agents.lanes.lane_agent``).

Decoding is done here, not by faust's serializer: a malformed message must become a dead letter, not an exception
inside the stream that kills the worker. Results and failures are awaited until the broker acks them, so the
offset commits only after the effects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import structlog

from schemas import AssetFailed, Event, FileDiscovered, decode, encode, now
from streams.dead_letters import FRAMING, Received, Record, classify, failure, failure_of_unreadable, letter
from streams.errors import DamflowError
from streams.express import told_early
from streams.kafka import passes
from streams.logs import get
from streams.retries import FailureHistory, backoff_s
from streams.settings import Settings
from streams.topics import Topics

log = get(__name__)

#: The work an agent runs per event: the decoded record and the number of this attempt (1 = first).
Work = Callable[[Any, int], Awaitable[Any]]
#: Set (true) on the error of a send of results the broker refused for now (see :meth:`EventHandler.emit`).
RESULTS_REFUSED = "damflow_results_refused"


class EventHandler:
    """Runs one tier's work for each event of its topics and turns every failure into recorded events."""

    def __init__(
        self, app: faust.App, topics: Topics, settings: Settings, *, tier: int,
        expected: type[Record] = FileDiscovered,
    ) -> None:
        self.tier = tier
        self.expected = expected
        self.settings = settings
        self.topics = topics
        self.group = settings.group_id
        self.assets = app.topic(topics.assets)
        self._dlq = app.topic(topics.dlq(tier))
        self._retry = {n: app.topic(topics.retry(tier, n)) for n in range(1, settings.max_attempts)}
        #: The most a dead letter may weigh: what the producer sends in one request, less the framing.
        self._letter_budget = app.conf.producer_max_request_size - FRAMING

    async def process(self, event: faust.EventT, work: Work) -> Any:
        """Run ``work`` for one event; returns what the work returned (tier 1: the ``AssetBrowsable`` it
        published), the ``AssetFailed`` published for a failure, or ``None`` for a poison pill."""
        history = FailureHistory.from_headers(event.message.headers)
        try:
            record = decode(event.value, self.expected)
        except DamflowError as exc:
            log.error("poison_pill", tier=self.tier, topic=event.message.topic, error=str(exc))
            history = history.failed_again(event.message.topic, now())  # this attempt's count and the chain's start
            await self._dead_letter(event, exc, None, history)
            return await self._account_unreadable(event, exc, history)
        with structlog.contextvars.bound_contextvars(
            batch_id=record.batch_id, tier=self.tier, lane=record.lane, path=record.path
        ):
            try:
                return await work(record, history.attempts + 1)
            except Exception as exc:  # every failure is recorded, never lost, never fatal to the worker
                if told_early():  # its express caller has its outcome: the fetched copy finishes the work
                    log.warning("work_failed_after_answer", error_class=type(exc).__name__, reason=str(exc))
                    raise
                if getattr(exc, RESULTS_REFUSED, False):
                    # the work succeeded, only its results did not reach the broker (away for now): not the file's
                    # failure to retry or dead-letter; the agent works the event again (idempotent) once it is back
                    raise
                return await self._fail(event, record, exc, history)

    async def emit(self, result: Event, key: str, *also: faust.TopicT) -> None:
        """Publish a result on ``assets`` (and on ``also``, e.g. the next tier's topic), all in flight together,
        and wait until the broker has acked every one: the offset may commit only after the effects.

        A refusal that may pass by itself (:func:`streams.kafka.passes`: the broker away or busy) raises as it is,
        marked ``RESULTS_REFUSED``: :meth:`process` then knows it from the same error raised by the work itself,
        which is the file's failure to classify."""
        value, raw_key = encode(result), key.encode()
        try:
            sends = [await topic.send(key=raw_key, value=value) for topic in (self.assets, *also)]
            await asyncio.gather(*sends)
        except Exception as exc:
            if passes(exc):
                setattr(exc, RESULTS_REFUSED, True)
            raise

    async def _fail(
        self, event: faust.EventT, record: Record, exc: BaseException, history: FailureHistory
    ) -> AssetFailed:
        code, retriable = classify(exc)
        at = now()
        history = history.failed_again(event.message.topic, at)
        asset_id = getattr(exc, "asset_id", None) or getattr(record, "asset_id", None)
        attempts = history.attempts
        retry = retriable and attempts < self.settings.max_attempts
        log.warning("work_failed", error_class=type(exc).__name__, code=code, reason=str(exc), asset_id=asset_id,
                    attempts=attempts, outcome="retrying" if retry else "dead_lettered")
        if retry:
            due = at + backoff_s(attempts, self.settings)
            history = FailureHistory(attempts, history.first_failure_at, history.source_topic, due)
            msg = event.message
            await (await self._retry[attempts].send(
                key=msg.key, value=event.value,
                headers=history.headers(error_class=type(exc).__name__, error_message=str(exc)),
            ))
        else:
            await self._dead_letter(event, exc, record, history, asset_id=asset_id, size=getattr(exc, "size", None))
        failed = failure(record, exc, history, tier=self.tier, outcome="retrying" if retry else "dead_lettered",
                         asset_id=asset_id, at=at)
        await self.emit(failed, asset_id or record.path)
        return failed

    async def _account_unreadable(self, event: faust.EventT, exc: DamflowError,
                                  history: FailureHistory) -> AssetFailed | None:
        """The ``AssetFailed`` of a dead-lettered record that cannot be read but still names its file (see
        :func:`streams.dead_letters.failure_of_unreadable`), published."""
        raw = event.value if isinstance(event.value, bytes | bytearray) else None
        failed = failure_of_unreadable(raw, exc, history, tier=self.tier)
        if failed is not None:
            await self.emit(failed, failed.asset_id or failed.path)
        return failed

    async def _dead_letter(
        self, event: faust.EventT, exc: BaseException, record: Record | None, history: FailureHistory,
        *, asset_id: str | None = None, size: int | None = None,
    ) -> None:
        msg = event.message
        received = Received(
            topic=msg.topic, partition=msg.partition, offset=msg.offset,
            timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
            key=msg.key if isinstance(msg.key, bytes) else None,
            value=bytes(event.value) if isinstance(event.value, bytes | bytearray) else b"",
        )
        key, value, headers = letter(received, exc, history, tier=self.tier, group=self.group,
                                     budget=self._letter_budget, record=record, asset_id=asset_id, size=size)
        await (await self._dlq.send(key=key, value=value, headers=headers))

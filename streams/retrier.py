"""The retrier: holds failed events on ``t<tier>.retry.<n>`` until their due time, then sends them back.

It never sleeps in the stream: a partition whose head is not due yet is paused and its position set back to
that message, and a timer resumes it at the due time — other partitions and topics keep flowing meanwhile.
One retry topic per attempt level means the messages of a partition carry (nearly) increasing due times, so
waiting on the head holds nothing up that is due earlier. Pauses are re-derived after a rebalance: a newly
assigned partition is read, found not due, and paused again.

A retry the broker refuses for good (too large for it, say) is given up as a tier gives up its work: a dead
letter on ``t<tier>.dlq`` and an ``AssetFailed`` for its file, then passed. It stopped the retrier before, which
restarted, read it again and stopped again, for good: no retry behind it went on, and those before it in the
same fetch went again at every restart. A refusal that may pass (the broker away) stops the retrier as before,
after what went is committed.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from schemas import decode, encode, now
from streams import dead_letters
from streams.errors import RetryRefused, SchemaError
from streams.kafka import group_consumer, passes, producer
from streams.logs import get
from streams.retries import DUE_AT, FailureHistory, header_dict, wait_before_forwarding_s
from streams.settings import Settings
from streams.topics import Topics

log = get(__name__)

#: The most a dead letter of the retrier may weigh: aiokafka's default request size (``streams.kafka.producer``
#: keeps it), less the framing.
_LETTER_BUDGET = 1024 * 1024 - dead_letters.FRAMING


def _may_pass(sent: asyncio.Future | BaseException) -> bool:
    """Whether a send was refused before it was queued for a reason that may pass (the broker away)."""
    return isinstance(sent, BaseException) and passes(sent)


class Retrier:
    def __init__(self, settings: Settings, topics: Topics, bootstrap: str) -> None:
        self.settings = settings
        self.topics = topics
        self.bootstrap = bootstrap
        self.ready = asyncio.Event()
        self.forwarded = 0

    async def run(self) -> None:
        names = self.topics.retries()
        if not names:  # max_attempts == 1: nothing is ever retried
            self.ready.set()
            await asyncio.Event().wait()
        consumer = group_consumer(self.settings, self.bootstrap, f"{self.settings.group_id}-retrier", *names,
                                  rare=True)
        timers: dict[TopicPartition, asyncio.TimerHandle] = {}
        #: (partition, offset) -> when the retry there was first held back (monotonic s), until it is forwarded
        held_since: dict[tuple[TopicPartition, int], float] = {}
        loop = asyncio.get_running_loop()

        def resume(tp: TopicPartition) -> None:
            timers.pop(tp, None)
            if tp in consumer.assignment():
                consumer.resume(tp)

        try:
            await consumer.start()
            async with producer(self.bootstrap, compression=self.settings.compression_type) as prod:
                self.ready.set()
                while True:
                    batches = await consumer.getmany(timeout_ms=500, max_records=500)
                    sends: list[tuple[TopicPartition, ConsumerRecord, asyncio.Future | BaseException]] = []
                    for tp, records in batches.items():
                        if sends and _may_pass(sends[-1][2]):
                            break  # the broker is away: what went is settled, and the retrier starts again
                        for rec in records:
                            history = FailureHistory.from_headers(rec.headers)
                            first = held_since.setdefault((tp, rec.offset), time.monotonic())
                            wait = wait_before_forwarding_s(history.due_at, now(), self.settings,
                                                            held_for_s=time.monotonic() - first)
                            if wait > 0:
                                consumer.seek(tp, rec.offset)
                                consumer.pause(tp)
                                if tp in timers:
                                    timers[tp].cancel()
                                timers[tp] = loop.call_later(wait, resume, tp)
                                break
                            held_since.pop((tp, rec.offset), None)
                            target = self.target(history.source_topic, rec.topic)
                            headers = [(k, v) for k, v in header_dict(rec.headers).items() if k != DUE_AT]
                            try:
                                sent: asyncio.Future | BaseException = await prod.send(
                                    target, rec.value, key=rec.key, headers=headers)
                            except Exception as exc:  # refused before it was even queued: too large, say
                                sent = exc
                            sends.append((tp, rec, sent))
                            if _may_pass(sent):  # each next send would wait out its own timeout first
                                break
                    await self._settle(consumer, prod, sends)
        finally:
            self.ready.clear()
            for handle in timers.values():
                handle.cancel()
            await consumer.stop()

    async def _settle(self, consumer: AIOKafkaConsumer, prod: AIOKafkaProducer,
                      sends: list[tuple[TopicPartition, ConsumerRecord, asyncio.Future | BaseException]]) -> None:
        """Commit what the broker took, in each partition up to its first retry that may still go (the broker away:
        raised once the rest is committed, the retrier restarting); a retry it refuses for good is given up."""
        if not sends:
            return
        futures = [s for _, _, s in sends if isinstance(s, asyncio.Future)]
        if futures:  # (none when the broker refused every one before queueing it)
            await asyncio.wait(futures)
        commits: dict[TopicPartition, OffsetAndMetadata] = {}
        held: set[TopicPartition] = set()
        error: BaseException | None = None
        try:
            for tp, rec, sent in sends:
                if tp in held:
                    continue
                failed = sent if isinstance(sent, BaseException) else (
                    asyncio.CancelledError() if sent.cancelled() else sent.exception())
                if failed is not None and (isinstance(failed, asyncio.CancelledError) or passes(failed)):
                    held.add(tp)
                    error = error or failed
                    continue
                if failed is not None:
                    await self._give_up(prod, rec, failed)
                else:
                    self.forwarded += 1
                commits[tp] = OffsetAndMetadata(rec.offset + 1, "")
        finally:
            if commits:
                await consumer.commit(commits)
        if error is not None:
            raise error

    async def _give_up(self, prod: AIOKafkaProducer, rec: ConsumerRecord, refusal: BaseException) -> None:
        """A retry the broker refused for good: its dead letter, and its file told dead-lettered."""
        tier = self.topics.tier_of(rec.topic) or 1  # (a retry topic's: of a tier)
        history = FailureHistory.from_headers(rec.headers)
        error = RetryRefused(f"the broker would not take this retry back to its tier's topic: {refusal!r}")
        error.__cause__ = refusal  # the letter's traceback is the refusal's
        value = rec.value or b""
        try:
            record = decode(value)
        except SchemaError:
            record = None
        if not isinstance(record, dead_letters.Record):
            record = None
        received = dead_letters.Received(rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key, value)
        key, letter, headers = dead_letters.letter(
            received, error, history, tier=tier, group=f"{self.settings.group_id}-retrier", budget=_LETTER_BUDGET,
            record=record, asset_id=getattr(record, "asset_id", None))
        failed = (dead_letters.failure(record, error, history, tier=tier, outcome="dead_lettered",
                                       asset_id=getattr(record, "asset_id", None), at=now())
                  if record is not None else dead_letters.failure_of_unreadable(value, error, history, tier=tier))
        log.error("retry_refused", topic=rec.topic, offset=rec.offset, error=repr(refusal),
                  path=failed.path if failed else None)
        sends = [await prod.send(self.topics.dlq(tier), letter, key=key, headers=list(headers.items()))]
        if failed is not None:
            sends.append(await prod.send(self.topics.assets, encode(failed),
                                         key=(failed.asset_id or failed.path).encode()))
        await asyncio.gather(*sends)

    def target(self, source_topic: str | None, retry_topic: str) -> str:
        """Where a retried event goes back to: the topic its header names when that is one of its tier's work
        topics; else (header lost or garbled) its tier's batch lane rather than nowhere, or a topic that does
        not exist (a send there would fail again at every restart)."""
        t = self.topics
        tier = t.tier_of(retry_topic)
        lanes = t.work(tier) if tier is not None else (t.t1_batch,)
        if source_topic in lanes:
            return source_topic
        log.warning("retry_without_source", topic=retry_topic, header=source_topic)
        return lanes[-1]

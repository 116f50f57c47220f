"""The retrier: holds failed events on ``t<tier>.retry.<n>`` until their due time, then sends them back.

It never sleeps in the stream: a partition whose head is not due yet is paused and its position set back to
that message, and a timer resumes it at the due time — other partitions and topics keep flowing meanwhile.
One retry topic per attempt level means the messages of a partition carry (nearly) increasing due times, so
waiting on the head holds nothing up that is due earlier. Pauses are re-derived after a rebalance: a newly
assigned partition is read, found not due, and paused again.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from schemas import now
from streams.kafka import group_consumer, producer
from streams.logs import get
from streams.retries import DUE_AT, FailureHistory, header_dict, wait_before_forwarding_s
from streams.settings import Settings
from streams.topics import TIERS, Topics

log = get(__name__)


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
                    commits: dict[TopicPartition, OffsetAndMetadata] = {}
                    sends = []
                    for tp, records in batches.items():
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
                            sends.append(await prod.send(target, rec.value, key=rec.key, headers=headers))
                            commits[tp] = OffsetAndMetadata(rec.offset + 1, "")
                    if sends:
                        await asyncio.gather(*sends)
                        self.forwarded += len(sends)
                    if commits:
                        await consumer.commit(commits)
        finally:
            self.ready.clear()
            for handle in timers.values():
                handle.cancel()
            await consumer.stop()

    def target(self, source_topic: str | None, retry_topic: str) -> str:
        """Where a retried event goes back to: the topic its header names when that is one of its tier's work
        topics; else (header lost or garbled) its tier's batch lane rather than nowhere, or a topic that does
        not exist (a send there would fail again at every restart)."""
        t = self.topics
        tier = retry_topic.removeprefix(t.prefix).split(".")[0]
        lanes = {f"t{n}": t.work(n) for n in TIERS}.get(tier, (t.t1_batch,))
        if source_topic in lanes:
            return source_topic
        log.warning("retry_without_source", topic=retry_topic, header=source_topic)
        return lanes[-1]

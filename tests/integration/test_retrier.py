"""The retrier on the real embedded broker: what it does with a retry the broker will not take back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from schemas import AssetFailed, DeadLetter, FileDiscovered, decode, encode, new_id, now
from streams.kafka import ensure_topics, tail
from streams.retrier import Retrier
from streams.retries import FailureHistory
from streams.settings import Settings
from streams.topics import topics_for


async def test_a_retry_the_broker_refuses_for_good_is_dead_lettered_and_the_retries_behind_it_go_on(
        broker: str, make_settings: Callable[..., Settings]) -> None:
    # a record on a retry topic too large for the retrier's producer stopped the retrier at every restart, for
    # good: no retry behind it went back to its tier, and those before it went again at every restart
    settings = make_settings(partitions=1)
    topics = topics_for(settings)
    await ensure_topics(broker, topics.all(), settings.partitions)

    def discovered(name: str, display_name: str | None = None) -> FileDiscovered:
        return FileDiscovered(event_id=new_id(), batch_id="b1", lane="batch", source="scan", path=f"/in/{name}",
                              size=1, mtime_ns=1, discovered_at=now(), display_name=display_name)

    before, huge, after = discovered("a.png"), discovered("b.png", "b" * 2_000_000), discovered("c.png")
    history = FailureHistory(1, now() - 5, topics.t1_batch, now() - 1)  # attempt 1 failed, due already
    foreign = AIOKafkaProducer(bootstrap_servers=broker, max_request_size=8_000_000)  # not damflow's: past 1 MB
    await foreign.start()
    try:
        for event in (before, huge, after):
            await foreign.send_and_wait(topics.retry(1, 1), encode(event), key=event.path.encode(),
                                        headers=list(history.headers().items()))
    finally:
        await foreign.stop()

    async def read(topic: str, n: int) -> list:
        async with tail(broker, topic, settings, from_beginning=True) as consumer:
            got: list = []
            while len(got) < n:
                batches = await consumer.getmany(timeout_ms=500)
                got += [decode(r.value) for records in batches.values() for r in records]
            return got

    retrier = Retrier(settings, topics, broker)
    running = asyncio.create_task(retrier.run())
    try:
        async with asyncio.timeout(60):
            forwarded = await read(topics.t1_batch, 2)
            (letter,) = await read(topics.dlq(1), 1)
            (failed,) = await read(topics.assets, 1)
        assert not running.done()  # it goes on
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert [e.path for e in forwarded] == ["/in/a.png", "/in/c.png"] and retrier.forwarded == 2
    assert isinstance(letter, DeadLetter) and letter.error_class == "RetryRefused"
    assert (letter.received_topic, letter.original_topic, letter.file_path) == (
        topics.retry(1, 1), topics.t1_batch, "/in/b.png")
    assert "MessageSizeTooLargeError" in letter.cause and letter.payload_truncated
    assert isinstance(failed, AssetFailed) and (failed.path, failed.outcome, failed.error_code) == (
        "/in/b.png", "dead_lettered", "retry_refused")
    assert failed.event_id == huge.event_id and len(failed.display_name) == 4000

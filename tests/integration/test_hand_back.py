"""``streams.app.hand_back`` on a real aiokafka consumer and the embedded broker: records a fetch handed out but
the worker will not deliver (they came back across a rebalance) are fetched again, unless the partition was moved
since (the rebalance's seek to the group's commit came after them, and stands)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import new_id
from streams.app import hand_back
from streams.kafka import ensure_topics


async def _fetch(consumer: AIOKafkaConsumer, tp: TopicPartition, at_least: int = 1) -> list:
    got: list = []
    while len(got) < at_least:
        got += (await consumer.getmany(tp, timeout_ms=1000, max_records=at_least - len(got))).get(tp, [])
    return got


async def test_records_handed_out_and_not_delivered_are_fetched_again(broker: str) -> None:
    topic = f"test.handback.{new_id()[:8]}"
    await ensure_topics(broker, [topic], 1)
    tp, elsewhere = TopicPartition(topic, 0), TopicPartition(topic, 7)
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, str(i).encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        first = await _fetch(consumer, tp, 4)
        assert await consumer.position(tp) == first[-1].offset + 1  # handed out: the position moved past them
        # handed back: the same records come again
        assert hand_back(consumer, {tp: first, elsewhere: first}) == [tp]  # (a partition not assigned is left)
        assert await consumer.position(tp) == first[0].offset
        again = await _fetch(consumer, tp, len(first))
        assert [r.offset for r in again] == [r.offset for r in first]
        # moved since they were handed out (the rebalance's seek to the commit): the move stands
        later = await _fetch(consumer, tp, 2)
        consumer.seek(tp, 1)
        assert hand_back(consumer, {tp: later}) == []
        assert await consumer.position(tp) == 1
    finally:
        await consumer.stop()

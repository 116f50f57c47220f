"""Finding a topic's partitions from a plain consumer (no broker needed)."""

from __future__ import annotations

from aiokafka import TopicPartition

from streams.kafka import partitions_of


class _Client:
    def __init__(self, consumer: _Consumer, on_broker: dict[str, set[int]]) -> None:
        self.consumer, self.on_broker = consumer, on_broker

    async def force_metadata_update(self) -> None:
        self.consumer.known = dict(self.on_broker)


class _Consumer:
    """An unsubscribed consumer just started against Apache Kafka: it knows no topic until it asks."""

    def __init__(self, on_broker: dict[str, set[int]]) -> None:
        self.known: dict[str, set[int]] = {}
        self._client = _Client(self, on_broker)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.known.get(topic)


async def test_a_topic_the_consumer_does_not_know_yet_is_asked_for() -> None:
    consumer = _Consumer({"t1.batch": {1, 0}})
    assert await partitions_of(consumer, "t1.batch") == [TopicPartition("t1.batch", 0),  # type: ignore[arg-type]
                                                         TopicPartition("t1.batch", 1)]
    assert await partitions_of(consumer, "nowhere") == []  # type: ignore[arg-type]

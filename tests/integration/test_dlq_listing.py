"""Listing the dead letters reads every one, also where the embedded broker's end offsets read short."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from consumers.dlq import read_letters
from streams.kafka import ensure_topics
from streams.topics import topics_for

pytestmark = pytest.mark.integration


async def test_letters_sent_together_as_the_last_batch_are_all_listed(make_settings) -> None:
    # The embedded broker answers a partition's end offset with its last record batch's first offset + 1, and a
    # worker's producer puts the letters of files failing together in one batch: a listing that stopped at the
    # end offset it was told would miss all but the first of them (`damflow dlq list`, replay).
    settings = make_settings(partitions=1)
    topics = topics_for(settings)
    await ensure_topics(settings.broker_url, topics.all(), settings.partitions)
    async with AIOKafkaProducer(bootstrap_servers=settings.broker_url, linger_ms=0) as prod:
        await prod.send_and_wait(topics.dlq(1), b"alone", partition=0)
        together = prod.create_batch()
        for n in range(5):
            assert together.append(key=None, value=f"together-{n}".encode(), timestamp=None) is not None
        await (await prod.send_batch(together, topics.dlq(1), partition=0))

    letters = await read_letters(settings.broker_url, topics, tiers=(1,))
    assert [x.offset for x in letters] == list(range(6))
    assert all(x.envelope is None for x in letters)  # not letters at all: listed, with why they cannot be read

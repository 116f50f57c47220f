"""The scanner against the real embedded broker: what it publishes is what the broker took."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.errors import KafkaTimeoutError

from streams.errors import BrokerError
from streams.kafka import ensure_topics, producer
from streams.scanner import scan
from streams.topics import topics_for
from tests.images import make_png

pytestmark = pytest.mark.integration


async def test_a_file_the_broker_did_not_take_fails_the_scan(broker: str, make_settings, tmp_path: Path) -> None:
    settings = make_settings()
    topics = topics_for(settings)
    await ensure_topics(broker, topics.all(), settings.partitions)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        make_png(folder / f"{i}.png", size=(16, 16), seed=i)

    async with producer(broker) as real:

        class Refusing:
            """The real producer, but the second file's delivery fails (as aiokafka reports it: in the
            future that ``send`` returns; ``flush`` itself never raises)."""

            files = 0

            async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future:
                if topic == topics.t1_batch:
                    self.files += 1
                    if self.files == 2:
                        failed = asyncio.get_running_loop().create_future()
                        failed.set_exception(KafkaTimeoutError())
                        return failed
                return await real.send(topic, value, key=key)

            async def flush(self) -> None:
                await real.flush()

        with pytest.raises(BrokerError, match="did not take"):
            await scan(settings, topics, broker, Refusing(), folder)  # type: ignore[arg-type]

"""The catalog sink on the real broker: what the catalog held back is tried again when the sink starts."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiokafka import AIOKafkaConsumer

from consumers.catalog import Catalog
from consumers.catalog_sink import CatalogSink
from schemas import ProgressEvent, decode, encode
from streams.kafka import ensure_topics, producer, tail
from streams.topics import topics_for
from tests.consumers.test_catalog import browsable, scanned

pytestmark = pytest.mark.integration


async def test_a_starting_sink_puts_in_what_the_catalog_held_back_and_reports_its_batch(make_settings) -> None:
    settings = make_settings()
    topics = topics_for(settings)
    await ensure_topics(settings.broker_url, topics.all(), settings.partitions)
    with Catalog(settings.catalog_path) as catalog:  # held back by an earlier sink, the cause since mended
        catalog.apply([scanned(1, complete=True, batch="held")])
        catalog.hold(browsable("e1", "/r/a.png", batch="held"), TypeError("a bug since fixed"))

    sink = CatalogSink(settings, topics, settings.broker_url)
    async with tail(settings.broker_url, topics.progress, settings, from_beginning=True) as progress:

        async def reported() -> int:
            """The held batch's tier-1 done count, once the sink reports it."""
            while True:
                for records in (await progress.getmany(timeout_ms=1000)).values():
                    for event in map(decode, (r.value for r in records)):
                        if isinstance(event, ProgressEvent) and event.tier == 1 and event.batch_id == "held":
                            return event.done

        running = asyncio.create_task(sink.run())
        try:
            done = await asyncio.wait_for(reported(), 30)
            assert sink.ready.is_set()
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    assert not sink.ready.is_set()  # a sink that stopped (or failed, until it is back) does not count as ready
    assert done == 1
    with Catalog(settings.catalog_path, readonly=True) as catalog:
        assert catalog.location("/r/a.png") is not None and catalog.held() == []


async def test_the_sinks_own_progress_events_read_back_need_no_write_and_are_committed_when_quiet(
    make_settings,
) -> None:
    # the sink reads ``progress`` (for the scanner's BatchScanned), where its own progress events come back one
    # fetch after each write: a write and a commit for each of those fetches were half the sink's commits
    settings = make_settings()
    topics = topics_for(settings)
    await ensure_topics(settings.broker_url, topics.all(), settings.partitions)
    sink = CatalogSink(settings, topics, settings.broker_url)
    writes: list[int] = []  # events handed to each write
    write = sink.write

    def counted(catalog, events, unreadable=()):
        writes.append(len(events) + len(unreadable))
        return write(catalog, events, unreadable)

    sink.write = counted
    group = AIOKafkaConsumer(bootstrap_servers=settings.broker_url, group_id=f"{settings.group_id}-catalog",
                             enable_auto_commit=False)
    await group.start()
    running = asyncio.create_task(sink.run())
    try:
        async with producer(settings.broker_url, compression=None) as prod, \
                tail(settings.broker_url, topics.progress, settings, from_beginning=True) as progress:
            await prod.send_and_wait(topics.progress, encode(scanned(1, complete=True, batch="own")), key=b"own")
            await prod.send_and_wait(topics.assets, encode(browsable("e1", "/r/a.png", batch="own")), key=b"a")

            async def reported() -> None:
                while True:
                    for records in (await progress.getmany(timeout_ms=1000)).values():
                        for event in map(decode, (r.value for r in records)):
                            if isinstance(event, ProgressEvent) and event.batch_id == "own" and event.done == 1:
                                return

            await asyncio.wait_for(reported(), 30)

            async def committed_to_the_end() -> None:
                """The sink's group has committed ``progress`` up to its end: it read its own events back."""
                # (the ends as the fetches tell them: the embedded broker's offset lookup answers the start of a
                # partition's last record batch, plus one)
                ends = {tp: progress.highwater(tp) for tp in progress.assignment()}
                while True:
                    if all([await group.committed(tp) >= end for tp, end in ends.items() if end]):
                        return
                    await asyncio.sleep(0.1)  # polling the group's commits: the broker tells no one of them

            await asyncio.wait_for(committed_to_the_end(), 30)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await group.stop()
    assert writes and 0 not in writes  # every write had something to write

"""The catalog sink on the real broker: what the catalog held back is tried again when the sink starts."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from consumers.catalog import Catalog
from consumers.catalog_sink import CatalogSink
from schemas import ProgressEvent, decode
from streams.kafka import ensure_topics, tail
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

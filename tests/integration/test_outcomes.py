"""The shared reader of upload outcomes: idle (paused) while nobody waits, and nothing missed on waking."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaTimeoutError

from schemas import encode
from streams.express import ExpressClient, ExpressRequest, ExpressServer
from streams.ingest import OutcomeWatcher
from streams.kafka import ensure_topics, producer, tail
from streams.settings import Settings
from streams.topics import Topics, topics_for
from tests.consumers.test_catalog import browsable, failed
from tests.integration.conftest import wait_until


@contextlib.asynccontextmanager
async def watching(settings: Settings, **kw) -> AsyncIterator[tuple[OutcomeWatcher, AIOKafkaConsumer,
                                                                     AIOKafkaProducer, Topics]]:
    """A running outcome reader on ``assets`` (``kw`` for the watcher), its consumer, and a producer."""
    topics = topics_for(settings)
    await ensure_topics(settings.broker_url, [topics.assets], settings.partitions)
    async with tail(settings.broker_url, topics.assets, settings) as consumer, \
            producer(settings.broker_url, compression=None) as prod:
        watcher = OutcomeWatcher(consumer, **kw)
        reader = asyncio.create_task(watcher.run())
        try:
            yield watcher, consumer, prod, topics
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


@contextlib.asynccontextmanager
async def stuck_worker(settings: Settings, partition: int = 0) -> AsyncIterator[ExpressServer]:
    """A worker owning ``partition`` of ``t1.interactive`` that takes express records and never answers."""

    async def busy(_request: ExpressRequest) -> bytes:
        await asyncio.sleep(60)
        return b""

    server = ExpressServer(settings, topics_for(settings).t1_interactive, busy)
    await server.start()
    server.publish({partition})
    try:
        yield server
    finally:
        await server.stop()


async def test_reader_sleeps_while_nobody_waits_and_misses_nothing_on_waking(make_settings) -> None:
    # every wake after a spell skips what came while it slept
    async with watching(make_settings(), reseek_after_s=0.0) as (watcher, _consumer, prod, topics):
        assert watcher.paused  # nobody waits: no polling
        # published while it sleeps: read past (not decoded) on waking, as none can answer a later upload
        for i in range(20):
            await prod.send_and_wait(topics.assets, encode(browsable(f"old-{i}", f"/old/{i}")), key=b"k")

        outcome = await watcher.expect("urgent")
        assert not watcher.paused
        # a tombstone and a broken record naming it: skipped, the reader goes on
        await prod.send_and_wait(topics.assets, None, key=b"u")
        await prod.send_and_wait(topics.assets, b'{"event_id": "urgent", broken', key=b"u")
        await prod.send_and_wait(topics.assets, encode(failed("urgent", "/u", outcome="retrying")), key=b"u")
        await prod.send_and_wait(topics.assets, encode(browsable("urgent", "/u")), key=b"u")
        event, _read_at, via = await asyncio.wait_for(outcome, 10)
        assert event.event_id == "urgent" and event.path == "/u"  # the final outcome, not the retry
        assert via == "assets"
        await wait_until(lambda: watcher.paused, 10, "the reader to pause again")

        # a second quiet spell and a second waiter: woken again, answered again
        again = await watcher.expect("second")
        await prod.send_and_wait(topics.assets, encode(browsable("second", "/s")), key=b"s")
        assert (await asyncio.wait_for(again, 10))[0].event_id == "second"
        await wait_until(lambda: watcher.paused, 10, "the reader to pause again")

        # a short spell: it resumes where it stopped and reads what came meanwhile, outcome included
        watcher.reseek_after_s = 3600.0
        await prod.send_and_wait(topics.assets, encode(browsable("early", "/e")), key=b"e")
        early = await watcher.expect("early")  # its outcome was published while the reader slept
        assert (await asyncio.wait_for(early, 10))[0].event_id == "early"


async def test_an_upload_whose_express_answer_is_late_is_answered_from_assets(make_settings) -> None:
    # a request of several files waits longer than each express ask: an outcome after the ask's timeout counts
    settings = make_settings()
    async with stuck_worker(settings), watching(settings) as (watcher, _consumer, prod, topics):
        event, via = await _missed_by_express(settings, watcher, prod, "slow", "/s", ask_timeout=0.2)
        assert (event.event_id, via) == ("slow", "assets")


async def test_a_worker_that_took_the_record_and_went_silent_does_not_hold_the_answer_to_the_timeout(
    make_settings,
) -> None:
    # a worker frozen (stopped, its loop blocked) or whose partition went to another worker keeps the express
    # connection open and never answers: the other worker's outcome on assets was read only once the upload's
    # whole timeout had passed, and the upload was answered "pending" although it was browsable
    settings = make_settings()
    async with stuck_worker(settings), \
            watching(settings, express_patience_s=0.2) as (watcher, _consumer, prod, topics):
        started = time.monotonic()
        event, via = await _missed_by_express(settings, watcher, prod, "frozen", "/f", ask_timeout=60)
        assert (event.event_id, via) == ("frozen", "assets")
        assert time.monotonic() - started < 30


async def test_an_express_answer_for_another_record_is_not_taken_for_this_one(make_settings) -> None:
    # a worker whose ledger still held an outcome for the same place (a broker restarted with memory storage)
    settings = make_settings()

    async def wrong(_request: ExpressRequest) -> bytes:
        return encode(browsable("someone-else", "/old"))

    server = ExpressServer(settings, topics_for(settings).t1_interactive, wrong)
    await server.start()
    server.publish({0})
    try:
        async with watching(settings) as (watcher, _consumer, prod, topics):
            event, via = await _missed_by_express(settings, watcher, prod, "mine", "/mine", ask_timeout=60)
            assert (event.event_id, event.path, via) == ("mine", "/mine", "assets")
    finally:
        await server.stop()


async def test_after_a_long_spell_an_unanswered_upload_is_looked_for_from_its_registration_on(make_settings) -> None:
    settings = make_settings()
    async with watching(settings, reseek_after_s=0.0, clock_skew_s=0.0) as (watcher, _consumer, prod, topics):
        # the backlog of a long spell, all from before the upload: one record even names it, so reading the
        # backlog would answer with it
        for i in range(10):
            await prod.send_and_wait(topics.assets, encode(browsable(f"old-{i}", f"/old/{i}")), key=b"k")
        await prod.send_and_wait(topics.assets, encode(browsable("urgent", "/stale")), key=b"k")
        await _next_millisecond()  # (timestamps count milliseconds)

        # nobody to ring by express (no worker registered): the reader wakes after the publish
        event, via = await _missed_by_express(settings, watcher, prod, "urgent", "/u", ask_timeout=5)
        assert (event.path, via) == ("/u", "assets")


async def test_a_wake_for_one_upload_skips_nothing_another_still_waits_for(make_settings) -> None:
    settings = make_settings()
    # the first upload's express copy is stuck; its fetched copy did the work
    async with stuck_worker(settings, partition=0), \
            watching(settings, reseek_after_s=0.0, clock_skew_s=0.0) as (watcher, _consumer, prod, topics):
        first = await watcher.expect("first", wake=False)
        watcher.ask_express(ExpressClient(settings), _published(topics.t1_interactive, 0), "first", 60)
        await prod.send_and_wait(topics.assets, encode(browsable("first", "/1")), key=b"1")
        await _next_millisecond()
        # a later upload, on a partition nobody owns: its ask fails at once and wakes the reader
        second = await watcher.expect("second", wake=False)
        watcher.ask_express(ExpressClient(settings), _published(topics.t1_interactive, 1), "second", 60)
        assert (await asyncio.wait_for(first, 10))[0].path == "/1"  # published before the second registered
        await prod.send_and_wait(topics.assets, encode(browsable("second", "/2")), key=b"2")
        assert (await asyncio.wait_for(second, 10))[0].path == "/2"


async def test_a_broker_error_while_skipping_leaves_the_reader_reading_from_where_it_stopped(
    make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    async with watching(settings, reseek_after_s=0.0) as (watcher, consumer, prod, topics):

        async def timing_out(*_args, **_kw):
            raise KafkaTimeoutError()

        monkeypatch.setattr(consumer, "end_offsets", timing_out)
        outcome = await watcher.expect("urgent", wake=False)
        # its outcome comes while the reader sleeps; the express ask fails (nobody to ring) and wakes it
        await prod.send_and_wait(topics.assets, encode(browsable("urgent", "/u")), key=b"u")
        watcher.ask_express(ExpressClient(settings), _published(topics.t1_interactive), "urgent", 5)
        assert (await asyncio.wait_for(outcome, 10))[0].path == "/u"


async def test_a_broker_that_does_not_answer_the_skip_holds_no_upload_and_a_cancelled_one_leaves_no_waiter(
    make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with watching(make_settings(), reseek_after_s=0.0, skip_timeout_s=0.3) as (watcher, consumer, prod,
                                                                                     topics):
        async def no_answer(*_args, **_kw):
            await asyncio.sleep(3600)

        for name in ("end_offsets", "offsets_for_times", "seek_to_end"):
            monkeypatch.setattr(consumer, name, no_answer)
        # the wake gives the skip up and reads on from where the reader stopped
        outcome = await asyncio.wait_for(watcher.expect("urgent"), 10)
        await prod.send_and_wait(topics.assets, encode(browsable("urgent", "/u")), key=b"u")
        assert (await asyncio.wait_for(outcome, 10))[0].path == "/u"
        await wait_until(lambda: watcher.paused, 10, "the reader to pause again")

        # a caller gone while its wake waits on the broker: it leaves no waiter behind, and the reader sleeps
        watcher.skip_timeout_s = 3600.0
        gone = asyncio.create_task(watcher.expect("gone"))
        await wait_until(lambda: watcher._waking.locked(), 10, "the wake to start")
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        await wait_until(lambda: watcher.paused, 10, "the reader to pause again")


async def _missed_by_express(settings: Settings, watcher: OutcomeWatcher, prod: AIOKafkaProducer, event_id: str,
                             path: str, *, ask_timeout: float) -> tuple[object, str]:
    """Register ``event_id`` and ask for its outcome by express, which gives none (within ``ask_timeout``); once
    the reader woke, publish the outcome on ``assets``. The outcome as the waiter got it, and how."""
    topics = topics_for(settings)
    outcome = await watcher.expect(event_id, wake=False)
    watcher.ask_express(ExpressClient(settings), _published(topics.t1_interactive), event_id, ask_timeout)
    await wait_until(lambda: not watcher.paused, 10, "the reader to wake")
    await prod.send_and_wait(topics.assets, encode(browsable(event_id, path)), key=event_id.encode())
    event, _read_at, via = await asyncio.wait_for(outcome, 10)
    return event, via


def _published(topic: str, partition: int = 0) -> ExpressRequest:
    """An upload's record as its publish returned it, stamped now."""
    return ExpressRequest(topic, partition, 0, b"{}", b"key", int(time.time() * 1000))


async def _next_millisecond() -> None:
    start = int(time.time() * 1000)
    while int(time.time() * 1000) <= start:
        await asyncio.sleep(0.001)

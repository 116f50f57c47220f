"""Fetch waits set at run time on a real aiokafka fetcher and the embedded broker, read from the requests the
fetcher really sends: the worker's (``streams.fetch_wait``: short while records come or anything is held back,
long once quiet), the catalog sink's (``FetchPace``: prompt while a batch is about to finish) and a batch
follower's (``ingest --wait``: prompt once its batch is about to finish)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.catalog_sink import FetchPace
from consumers.progress import FollowPace, follow
from schemas import ProgressEvent, encode, new_id
from streams.fetch_wait import QuietFetchWait
from streams.kafka import ensure_topics, tail
from streams.settings import Settings

BUSY_MS, IDLE_MS = 20, 300


class SentWaits:
    """Records the wait of every fetch request the fetcher sends, and which ones brought records back; lets a
    test await the first request matching a wait."""

    def __init__(self, fetcher) -> None:
        self.waits: list[int] = []
        self.brought: list[int] = []  # indexes of the requests that came back with records
        self._looking: list[tuple[int, int, asyncio.Future]] = []
        send = fetcher._proc_fetch_request

        async def recorded(assignment, node_id, request):
            index = len(self.waits)
            self.waits.append(request._max_wait_ms)
            for entry in list(self._looking):
                since, wait, fut = entry
                if index >= since and wait in (None, request._max_wait_ms) and not fut.done():
                    fut.set_result(index)
                    self._looking.remove(entry)
            got = await send(assignment, node_id, request)
            if got:
                self.brought.append(index)
            return got

        fetcher._proc_fetch_request = recorded

    def next_request(self) -> asyncio.Future:
        """Settled once the fetcher sends its next request, whatever its wait."""
        fut = asyncio.get_running_loop().create_future()
        self._looking.append((len(self.waits), None, fut))
        return fut

    def next_with(self, wait: int, since: int | None = None) -> asyncio.Future:
        """The index of the first request from now (or from index ``since``) on sent with ``wait``."""
        fut = asyncio.get_running_loop().create_future()
        start = len(self.waits) if since is None else since
        if wait in self.waits[start:]:
            fut.set_result(self.waits.index(wait, start))
        else:
            self._looking.append((start, wait, fut))
        return fut


async def test_fetches_wait_long_once_quiet_and_short_again_for_records_or_held_partitions(broker: str) -> None:
    topic = f"test.fetchwait.{new_id()[:8]}"
    await ensure_topics(broker, [topic], partitions=1)
    tp = TopicPartition(topic, 0)
    held = SimpleNamespace(_paused_partitions=set(), _buffered_partitions=set())  # what faust's consumer holds
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, fetch_max_wait_ms=BUSY_MS)
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await consumer.start()
    await producer.start()
    taking = asyncio.create_task(asyncio.sleep(0))
    try:
        quiet = QuietFetchWait(consumer._fetcher, held, busy_ms=BUSY_MS, idle_ms=IDLE_MS, idle_after_s=0.3).install()
        sent = SentWaits(consumer._fetcher)  # outside the wait's wrapper: sees what it chose
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)

        # nothing to fetch: after the quiet spell the requests wait long
        await asyncio.wait_for(sent.next_with(IDLE_MS), 10)

        # a record comes back: the very next request is short again (taking the record, as faust's loop does
        # all the time: aiokafka drops a drained buffer, and fetches again, only when asked for more)
        await producer.send_and_wait(topic, b"x", partition=0)
        records = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=10_000), 10)
        assert [r.value for r in records[tp]] == [b"x"]
        taking = asyncio.create_task(consumer.getmany(tp, timeout_ms=10_000))
        last_long = sent.brought[-1]
        assert sent.waits[last_long] == IDLE_MS  # it came back on a long wait ...
        index = await asyncio.wait_for(sent.next_with(BUSY_MS, since=last_long + 1), 10)
        assert index == last_long + 1, f"requests after the record: {sent.waits[last_long:]}"  # ... the next is short

        # quiet again, then a partition held back (the lane governor, a full buffer): short at once and for as
        # long as it stays held, well past the quiet spell (a bounded look for a long wait that must not come)
        await asyncio.wait_for(sent.next_with(IDLE_MS), 10)
        held._paused_partitions.add(tp)
        index = await asyncio.wait_for(sent.next_with(BUSY_MS), 10)
        mark = len(sent.waits)
        await asyncio.sleep(1.0)
        assert IDLE_MS not in sent.waits[mark:] and len(sent.waits) - mark >= 5
        assert quiet.wait_ms == BUSY_MS
    finally:
        taking.cancel()
        await producer.stop()
        await consumer.stop()


async def test_the_catalog_sinks_pace_sets_the_requests_it_sends(broker: str, tmp_path) -> None:
    topic = f"test.sinkpace.{new_id()[:8]}"
    await ensure_topics(broker, [topic], partitions=1)
    tp = TopicPartition(topic, 0)
    settings = Settings(data_dir=tmp_path, sink_fetch_max_wait_ms=IDLE_MS, sink_prompt_fetch_max_wait_ms=BUSY_MS)
    pace = FetchPace(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, fetch_max_wait_ms=IDLE_MS)
    await consumer.start()
    try:
        sent = SentWaits(consumer._fetcher)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        await asyncio.wait_for(sent.next_with(IDLE_MS), 10)  # gathering
        pace.prompt_until = float("inf")
        pace.apply(consumer, now=0.0)
        sent_before = len(sent.waits)  # the gathering request on its way is not changed ...
        index = await asyncio.wait_for(sent.next_with(BUSY_MS), 10)
        assert index == sent_before  # ... the next one is prompt
        assert consumer._fetcher._fetch_min_bytes == 1
    finally:
        await consumer.stop()


async def test_a_follower_fetches_promptly_only_while_its_batch_is_about_to_finish(broker: str, tmp_path) -> None:
    topic = f"test.followpace.{new_id()[:8]}"
    await ensure_topics(broker, [topic], partitions=1)
    settings = Settings(data_dir=tmp_path, fetch_max_wait_ms=IDLE_MS)
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    following = None
    try:
        async with tail(broker, topic, settings) as consumer:
            sent = SentWaits(consumer._fetcher)
            following = asyncio.create_task(follow(consumer, "b", pace=FollowPace(IDLE_MS, BUSY_MS, 1.0)))
            # one fetch at a time: once one is sent through the recorder, none sent before it is still out
            await asyncio.wait_for(sent.next_request(), 10)

            async def publish(done: int, eta_s: float) -> int:
                """The index of the request that brought the event back."""
                brought = len(sent.brought)
                event = ProgressEvent(batch_id="b", tier=1, known_total=10, total_final=True, done=done,
                                      eta_s=eta_s, at=1.0)
                await producer.send_and_wait(topic, encode(event), key=b"b")
                while len(sent.brought) == brought:  # each request sent meanwhile, until one brought it back
                    await asyncio.wait_for(sent.next_request(), 10)
                return sent.brought[brought]

            # far from the end: the next requests still wait long
            index = await publish(done=2, eta_s=30.0)
            assert await asyncio.wait_for(sent.next_with(IDLE_MS, since=index + 1), 10) == index + 1
            assert BUSY_MS not in sent.waits
            # about to finish: the next request is prompt
            index = await publish(done=9, eta_s=0.2)
            assert await asyncio.wait_for(sent.next_with(BUSY_MS, since=index + 1), 10) == index + 1
            # the last file gone to a retry's backoff: long again at once, not prompt for as long as it waits
            index = await publish(done=9, eta_s=60.0)
            assert await asyncio.wait_for(sent.next_with(IDLE_MS, since=index + 1), 10) == index + 1
            # and the last event ends the follow
            await producer.send_and_wait(topic, encode(ProgressEvent(batch_id="b", tier=1, known_total=10,
                                                                     total_final=True, done=10, at=2.0)), key=b"b")
            last = await asyncio.wait_for(following, 10)
            assert last.done == 10
    finally:
        if following is not None:
            following.cancel()
        await producer.stop()

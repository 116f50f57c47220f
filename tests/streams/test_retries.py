"""Retry policy and the failure history carried in headers."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import ConsumerRecord

import streams.retrier as retrier
from streams.retries import FailureHistory, backoff_s, header_dict, wait_before_forwarding_s
from streams.settings import Settings
from streams.topics import topics_for


def test_history_round_trips_through_headers_in_any_shape() -> None:
    h = FailureHistory(attempts=2, first_failure_at=1700000000.25, source_topic="damflow.t1.batch", due_at=17.5)
    headers = h.headers(error_class="SourceUnreadable", error_message="busy")
    assert FailureHistory.from_headers(headers) == h
    assert FailureHistory.from_headers(list(headers.items())) == h  # aiokafka gives a list of pairs
    assert header_dict(headers)["damflow-error-class"] == b"SourceUnreadable"


def test_missing_or_garbled_headers_mean_a_first_attempt() -> None:
    assert FailureHistory.from_headers(None) == FailureHistory()
    garbled = FailureHistory.from_headers([("damflow-attempts", b"\xff"), ("damflow-due-at", b"soon")])
    assert garbled.attempts == 0 and garbled.due_at is None


def test_header_numbers_json_cannot_carry_are_dropped() -> None:
    # "nan" as a first-failure time went into the dead letter as null: a letter no reader accepts, never replayed
    h = FailureHistory.from_headers([("damflow-first-failure-at", b"nan"), ("damflow-due-at", b"inf"),
                                     ("damflow-attempts", b"2")])
    assert h == FailureHistory(attempts=2)
    huge = FailureHistory.from_headers([("damflow-attempts", b"1" + b"0" * 400)])  # before: OverflowError
    assert huge.attempts == 0  # garbled: a first attempt


def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    s = Settings(retry_backoff_s=1.0, retry_backoff_max_s=10.0, retry_jitter=0.25)
    rng = random.Random(1)
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0), (5, 10.0), (9, 10.0)):
        values = [backoff_s(attempt, s, rng) for _ in range(200)]
        assert all(base * 0.75 <= v <= base * 1.25 for v in values)
        assert max(values) - min(values) > base * 0.2  # jitter really spreads retries out
    assert backoff_s(3, Settings(retry_backoff_s=1.0, retry_jitter=0.0)) == 4.0


def test_a_retry_goes_back_to_its_source_topic_or_its_tiers_batch_lane_when_the_header_is_lost_or_garbled() -> None:
    from streams.retrier import Retrier
    from streams.settings import Settings
    from streams.topics import topics_for

    settings = Settings()
    t = topics_for(settings)
    retrier = Retrier(settings, t, "unused:9092")
    assert retrier.target(t.t1_interactive, t.retry(1, 1)) == t.t1_interactive
    assert retrier.target(t.t2_interactive, t.retry(2, 2)) == t.t2_interactive
    assert retrier.target(None, t.retry(1, 1)) == t.t1_batch
    assert retrier.target("no-such-topic", t.retry(2, 1)) == t.t2_batch
    assert retrier.target(t.t1_batch, t.retry(3, 1)) == t.t3_background  # another tier's topic: not this event's
    assert retrier.target(None, t.retry(3, 1)) == t.t3_background


def test_a_retry_is_held_until_it_is_due_but_never_past_the_longest_backoff() -> None:
    s = Settings(retry_backoff_max_s=300.0, retry_jitter=0.25)
    assert wait_before_forwarding_s(1000.0 + 12.5, 1000.0, s) == 12.5
    assert wait_before_forwarding_s(999.0, 1000.0, s) == 0.0 and wait_before_forwarding_s(None, 1000.0, s) == 0.0
    assert wait_before_forwarding_s(1e300, 1000.0, s) == 375.0  # not for good:
    assert wait_before_forwarding_s(1e300, 1375.0, s, held_for_s=375.0) == 0.0  # once held that long, it goes
    assert wait_before_forwarding_s(1e300, 1100.0, s, held_for_s=100.0) == 275.0


def test_the_retrier_stops_sending_at_the_first_refusal_that_may_pass(monkeypatch) -> None:
    # the broker away: each of a fetch's 500 retries waited out its own send timeout (40 s) before the retrier
    # restarted; one is enough to know (a unit test of the loop: the broker's part is in tests/integration)
    settings = Settings(topic_prefix="t.")
    topics = topics_for(settings)
    tp = TopicPartition(topics.retry(1, 1), 0)
    headers = list(FailureHistory(1, 1.0, topics.t1_batch, 2.0).headers().items())  # due long ago
    records = [ConsumerRecord(tp.topic, 0, i, 0, 0, b"k", b"v", None, 1, 1, headers) for i in range(20)]
    attempts, commits = [], []

    class Consumer:
        async def start(self) -> None: ...
        async def stop(self) -> None: ...
        async def getmany(self, **_kw): return {tp: records}
        async def commit(self, offsets) -> None: commits.append(offsets)
        def assignment(self): return {tp}

    class Producer:
        async def send(self, *_a, **_kw):
            attempts.append(1)
            raise KafkaTimeoutError()

    @contextlib.asynccontextmanager
    async def producer(*_a, **_kw):
        yield Producer()

    monkeypatch.setattr(retrier, "group_consumer", lambda *_a, **_kw: Consumer())
    monkeypatch.setattr(retrier, "producer", producer)
    with pytest.raises(KafkaTimeoutError):
        asyncio.run(retrier.Retrier(settings, topics, "unused:9092").run())
    assert (len(attempts), commits) == (1, [])  # nothing went: nothing committed

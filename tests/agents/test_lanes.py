"""The lane governor's pause/resume decisions, on a stand-in for faust's consumer (no broker needed)."""

from __future__ import annotations

import pytest
from faust.types import TP

from agents.lanes import LaneGovernor
from streams.topics import Topics

T = Topics("p.")
ALL = (T.t1_batch, T.t1_interactive, T.t2_batch, T.t2_interactive, T.t3_background)


class FakeConsumer:
    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = assigned
        self.paused: set[TP] = set()
        self.high: dict[TP, int] = {}
        self._read_offset: dict[TP, int] = {}
        self._first_fetched: dict[TP, int] = {}

    def assignment(self) -> set[TP]:
        return self.assigned

    def pause_partitions(self, tps) -> None:
        self.paused |= set(tps)

    def resume_partitions(self, tps) -> None:
        self.paused -= set(tps)

    hold_partitions, release_partitions = pause_partitions, resume_partitions  # streams.app's governor holds

    def hold_exactly(self, tps) -> None:
        self.paused = set(tps)

    def highwater(self, tp: TP):
        return self.high.get(tp)


class FakeApp:
    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer
        self.handlers = []
        self.on_partitions_assigned = self

    def connect(self, fn):
        self.handlers.append(fn)
        return fn


def governor(idle: float = 0.0) -> tuple[LaneGovernor, FakeConsumer, FakeApp]:
    consumer = FakeConsumer({TP(t, p) for t in ALL for p in (0, 1)})
    app = FakeApp(consumer)
    gov = LaneGovernor(app, T, idle_s=idle)
    gov.tick()
    return gov, consumer, app


def paused(consumer: FakeConsumer) -> set[str]:
    return {tp.topic for tp in consumer.paused}


def test_interactive_work_pauses_every_other_lane_and_resumes_them_after() -> None:
    gov, consumer, _ = governor()
    assert paused(consumer) == set()
    with gov.working(1, "interactive"):
        assert paused(consumer) == {T.t1_batch, T.t2_batch, T.t3_background}
        with gov.working(2, "interactive"):  # a second urgent event keeps the pause
            pass
        assert T.t1_batch in paused(consumer)
    assert paused(consumer) == set()
    assert gov.pauses[1] == 1


def test_tier1_batch_work_holds_back_tier2_batch_and_tier3_but_not_itself() -> None:
    gov, consumer, _ = governor()
    with gov.working(1, "batch"):
        assert paused(consumer) == {T.t2_batch, T.t3_background}
    assert paused(consumer) == set()
    with gov.working(2, "batch"):
        assert paused(consumer) == {T.t3_background}


def test_lag_on_an_upper_level_holds_lower_levels_without_anything_in_flight() -> None:
    gov, consumer, _ = governor()
    tp = TP(T.t1_batch, 0)
    consumer.high[tp], consumer._read_offset[tp] = 10, 3
    consumer._first_fetched[tp] = 0  # records came since the assignment
    gov.tick()
    assert paused(consumer) == {T.t2_batch, T.t3_background}
    consumer._read_offset[tp] = 9  # caught up: the read offset is the last offset read
    gov.tick()
    assert paused(consumer) == set()


def test_one_record_waiting_right_after_an_assignment_is_lag() -> None:
    # after the assignment's seek, faust's read offset is the next offset to read (the commit), not the last
    # one read: one record waiting there was not seen as lag until the first fetch
    gov, consumer, _ = governor()
    tp = TP(T.t1_batch, 0)
    consumer.high[tp], consumer._read_offset[tp] = 11, 10  # offsets 0-9 done and committed, 10 waiting
    gov.tick()
    assert paused(consumer) == {T.t2_batch, T.t3_background}
    consumer._first_fetched[tp] = 10  # 10 came, and is now the last offset read: nothing waits
    gov.tick()
    assert paused(consumer) == set()


def test_lower_levels_wait_for_the_idle_grace_period() -> None:
    gov, consumer, _ = governor(idle=3600)
    with gov.working(1, "batch"):
        pass
    gov.tick()
    assert paused(consumer) == {T.t2_batch, T.t3_background}


async def test_pauses_are_reapplied_after_a_rebalance() -> None:
    gov, consumer, app = governor()
    with gov.working(1, "interactive"):
        consumer.paused.clear()  # faust forgets its paused partitions on assignment
        for handler in app.handlers:
            await handler(None, consumer.assigned)
        assert paused(consumer) == {T.t1_batch, T.t2_batch, T.t3_background}


def test_only_an_urgent_file_being_made_browsable_freezes_the_batch_pool() -> None:
    consumer = FakeConsumer({TP(t, p) for t in ALL for p in (0, 1)})
    calls: list[bool] = []
    gov = LaneGovernor(FakeApp(consumer), T, idle_s=0.0, on_urgent=calls.append)
    with gov.working(1, "batch"), gov.working(2, "interactive"):
        assert calls == []  # metadata of an urgent file is not worth freezing the import for
    with gov.working(1, "interactive"):
        assert calls == [True]
        with gov.working(1, "interactive"):
            pass
        assert calls == [True]  # frozen until the last urgent file is done
    assert calls == [True, False]


async def test_waiting_counts_the_events_no_agent_has_started_on() -> None:
    gov, consumer, app = governor()
    tp0, tp1 = TP(T.t1_batch, 0), TP(T.t1_batch, 1)
    consumer.high[tp0], consumer.high[tp1] = 10, 4
    assert gov.waiting(1) is None  # nothing started yet: unknown
    with gov.working(1, "batch", (tp0, 5)), gov.working(1, "batch", (tp1, 3)):
        pass
    assert gov.waiting(1) == 4  # offsets 6-9 of partition 0; partition 1 all started
    with gov.working(1, "batch", (tp0, 2)):  # a record started late (concurrent agents) moves nothing back
        pass
    assert gov.waiting(1) == 4
    for handler in app.handlers:  # after a rebalance a partition may be read again from its last commit
        await handler(None, consumer.assigned)
    assert gov.waiting(1) is None
    consumer._committed_offset = {tp0: 7}  # where it is read again from: the group's commit
    assert gov.waiting(1) is None  # partition 1 never committed: still unknown
    consumer._committed_offset[tp1] = 4
    assert gov.waiting(1) == 3  # offsets 7-9 of partition 0; partition 1 all done


def test_a_partition_taken_away_mid_check_counts_as_unknown(monkeypatch) -> None:
    gov, consumer, _ = governor()
    tp = TP(T.t1_batch, 0)

    def taken_away(tp):  # aiokafka asserts the partition is assigned; the consumer thread just revoked it
        raise AssertionError("Partition is not assigned")

    monkeypatch.setattr(consumer, "highwater", taken_away)
    with gov.working(1, "batch", (tp, 3)):  # neither the count nor the pauses fail
        assert paused(consumer) == {T.t2_batch, T.t3_background}
    assert gov.in_flight[1] == 0 and gov.waiting(1) == 0


class _Message:
    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = T.t1_batch, 0, offset


class _Event:
    def __init__(self, offset: int) -> None:
        self.message = _Message(offset)
        self.acked = False

    def ack(self) -> bool:
        self.acked = True
        return True


class _Stream:
    """faust's stream as the agent uses it: manual acks, events in order."""

    def __init__(self, events: list[_Event]) -> None:
        self._events = events
        self.acks_enabled = True

    def noack(self) -> _Stream:
        self.acks_enabled = False
        return self

    async def events(self):
        for event in self._events:
            yield event


def _faust_send_error(cause: Exception) -> Exception:
    """What faust's producer raises for a send it could not queue (aiokafka's error wrapped, as its driver does)."""
    from faust.exceptions import ProducerSendError

    try:
        raise cause
    except Exception as exc:
        try:
            raise ProducerSendError(f"Error while sending: {exc!r}") from exc
        except ProducerSendError as wrapped:
            return wrapped


def _away() -> list[Exception]:
    from aiokafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError

    return [ConnectionError("broker away"), KafkaTimeoutError(), _faust_send_error(UnknownTopicOrPartitionError()),
            _faust_send_error(KafkaTimeoutError())]


@pytest.mark.parametrize("away", range(4), ids=["connection", "aiokafka-timeout", "faust-wrapped-unknown-topic",
                                                 "faust-wrapped-timeout"])
async def test_an_event_is_acked_only_once_its_handling_is_done_and_tried_again_if_it_raised(
    monkeypatch, away: int
) -> None:
    # faust's wrapped errors were taken for lasting faults: a failure whose record the broker could not take
    # (a dead-letter topic's metadata that did not come while the broker was away) was acked, never recorded
    from agents import lanes

    monkeypatch.setattr(lanes, "_AGAIN_S", (0.001, 0.002))
    gov, _, _ = governor()
    events = [_Event(0), _Event(1)]
    seen: list[tuple[int, bool]] = []

    class Handler:
        tier = 1

        async def process(self, event, work) -> None:
            seen.append((event.message.offset, event.acked))
            if len(seen) == 2:  # the second event's first try: its failure could not be recorded
                raise _away()[away]

    stream = _Stream(events)
    await lanes.lane_agent(Handler(), gov, "batch", work=None)(stream)
    assert not stream.acks_enabled  # faust would ack an event the agent leaves, done or not
    assert seen == [(0, False), (1, False), (1, False)]  # tried again, and never acked before it was done
    assert all(e.acked for e in events) and gov.in_flight[1] == 0


async def test_an_event_whose_handling_fails_for_good_is_left_and_the_lane_goes_on(monkeypatch) -> None:
    from aiokafka.errors import MessageSizeTooLargeError

    from agents import lanes

    monkeypatch.setattr(lanes, "_AGAIN_S", (0.001, 0.002))
    gov, _, _ = governor()
    events = [_Event(0), _Event(1)]
    seen: list[int] = []

    class Handler:
        tier = 1

        async def process(self, event, work) -> None:
            seen.append(event.message.offset)
            if event.message.offset == 0:
                raise KeyError(0)  # a bug, or a message too large to dead-letter: no retry would cure it
            if event.message.offset == 1:  # the same, as faust raises it
                raise _faust_send_error(MessageSizeTooLargeError())

    events.append(_Event(2))
    await lanes.lane_agent(Handler(), gov, "batch", work=None)(_Stream(events))
    assert seen == [0, 1, 2]  # tried once, logged, and the next one's turn came
    assert all(e.acked for e in events)

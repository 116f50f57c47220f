"""The lane governor's pause/resume decisions, on a stand-in for faust's consumer (no broker needed)."""

from __future__ import annotations

from faust.types import TP

from agents.lanes import LaneGovernor
from streams.topics import Topics

T = Topics("p.")


class FakeConsumer:
    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = assigned
        self.paused: set[TP] = set()
        self.calls: list[tuple[str, frozenset]] = []
        self.high: dict[TP, int] = {}
        self._read_offset: dict[TP, int] = {}

    def assignment(self) -> set[TP]:
        return self.assigned

    def pause_partitions(self, tps) -> None:
        self.paused |= set(tps)
        self.calls.append(("pause", frozenset(tp.topic for tp in tps)))

    def resume_partitions(self, tps) -> None:
        self.paused -= set(tps)
        self.calls.append(("resume", frozenset(tp.topic for tp in tps)))

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
    tps = {TP(t, p) for t in (T.t1_batch, T.t1_interactive, T.t2_batch, T.t2_interactive, T.t3_background)
           for p in (0, 1)}
    consumer = FakeConsumer(tps)
    app = FakeApp(consumer)
    return LaneGovernor(app, T, background_idle_s=idle), consumer, app


def topics_of(tps) -> set[str]:
    return {tp.topic for tp in tps}


def test_batch_is_paused_while_interactive_work_is_in_flight_and_resumed_after() -> None:
    gov, consumer, _ = governor()
    with gov.working("batch"):
        assert not topics_of(consumer.paused) & {T.t1_batch, T.t2_batch}
        with gov.working("interactive"):
            assert {T.t1_batch, T.t2_batch} <= topics_of(consumer.paused)
            assert T.t1_interactive not in topics_of(consumer.paused)
            with gov.working("interactive"):  # a second urgent file keeps the pause
                pass
            assert {T.t1_batch, T.t2_batch} <= topics_of(consumer.paused)
        assert not topics_of(consumer.paused) & {T.t1_batch, T.t2_batch}
    assert gov.preemptions == 1


def test_background_runs_only_when_upper_tiers_are_idle_and_caught_up() -> None:
    gov, consumer, _ = governor()
    gov.tick()
    assert T.t3_background not in topics_of(consumer.paused)
    with gov.working("batch"):
        assert T.t3_background in topics_of(consumer.paused)
    gov.tick()
    assert T.t3_background not in topics_of(consumer.paused)
    # lag on tier 1 without anything in flight yet: still paused
    tp = TP(T.t1_batch, 0)
    consumer.high[tp] = 10
    consumer._read_offset[tp] = 3
    gov.tick()
    assert T.t3_background in topics_of(consumer.paused)
    consumer._read_offset[tp] = 9  # caught up (read offset is the last one read)
    gov.tick()
    assert T.t3_background not in topics_of(consumer.paused)


def test_background_waits_for_the_idle_grace_period() -> None:
    gov, consumer, _ = governor(idle=3600)
    with gov.working("batch"):
        pass
    gov.tick()
    assert T.t3_background in topics_of(consumer.paused)


async def test_pauses_are_reapplied_after_a_rebalance() -> None:
    gov, consumer, app = governor()
    with gov.working("interactive"):
        consumer.paused.clear()  # faust forgets its paused partitions on assignment
        for handler in app.handlers:
            await handler(None, consumer.assigned)
        assert {T.t1_batch, T.t2_batch, T.t3_background} <= topics_of(consumer.paused)

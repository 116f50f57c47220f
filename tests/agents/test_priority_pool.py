"""The interactive pool starts waiting calls by priority: an urgent file's tier 1 before tier-2 calls queued
ahead of it; a call never waits for more than those already running, and a cancelled one takes no process."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from agents.pool import WorkPool
from agents.priority_pool import PriorityPool
from tests.agents import pool_jobs


@pytest.fixture
def one_process():
    p = WorkPool(1, timeout_s=5, memory_mb=1024, preload=("tests.agents.pool_jobs",))
    yield p
    p.shutdown()


async def test_an_urgent_files_tier_1_starts_before_the_tier_2_calls_queued_ahead_of_it(one_process) -> None:
    pool = PriorityPool(one_process)
    finished: list[str] = []

    def run(label: str, tier: int, *args) -> asyncio.Future:
        future = asyncio.ensure_future(pool.run(*args, level=0, tier=tier))
        future.add_done_callback(lambda _: finished.append(label))
        return future

    busy = run("busy", 2, pool_jobs.double_later, 1, 0.3)  # an earlier upload's metadata, being worked on
    await asyncio.sleep(0)
    searchable = [run(f"tier2-{i}", 2, pool_jobs.double, i) for i in range(2)]  # more of it, waiting
    await asyncio.sleep(0)
    browsable = run("tier1", 1, pool_jobs.double, 5)  # an urgent upload comes
    assert await asyncio.gather(busy, *searchable, browsable) == [2, 0, 2, 10]
    assert finished == ["busy", "tier1", "tier2-0", "tier2-1"]  # (pebble's own queue: in arrival order)
    assert pool.waiting == 0 and pool._running == 0


async def test_a_call_starts_at_once_while_a_process_is_free(one_process) -> None:
    pool = PriorityPool(one_process)
    assert await pool.run(pool_jobs.double, 4, tier=2) == 8
    assert await asyncio.wait_for(pool.run(pool_jobs.double, 5, tier=1), 5) == 10


class _Held:
    """A stand-in pool whose calls run until let go, one size slot."""

    def __init__(self) -> None:
        self.size = 1
        self.started: list[str] = []
        self.go: dict[str, asyncio.Event] = {}

    async def run(self, label: str) -> str:
        self.started.append(label)
        await self.go.setdefault(label, asyncio.Event()).wait()
        return label


async def test_a_caller_cancelled_while_waiting_takes_no_process() -> None:
    held = _Held()
    pool = PriorityPool(SimpleNamespace(size=1, run=held.run))
    first = asyncio.ensure_future(pool.run("first"))
    gone = asyncio.ensure_future(pool.run("gone", tier=1))
    later = asyncio.ensure_future(pool.run("later", tier=2))
    await asyncio.sleep(0)
    gone.cancel()
    held.go.setdefault("first", asyncio.Event()).set()
    held.go.setdefault("later", asyncio.Event()).set()
    assert await first == "first" and await later == "later"
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert held.started == ["first", "later"] and pool._running == 0


async def test_a_caller_cancelled_just_as_it_was_let_in_lets_the_next_one_in() -> None:
    held = _Held()
    pool = PriorityPool(SimpleNamespace(size=1, run=held.run))
    pool._running = 1  # a call running
    let_in = asyncio.ensure_future(pool.run("let in", tier=1))
    next_one = asyncio.ensure_future(pool.run("next", tier=2))
    await asyncio.sleep(0)
    pool._leave()  # the running call ends: the first waiting is let in ...
    let_in.cancel()  # ... and cancelled before it could start
    held.go.setdefault("next", asyncio.Event()).set()
    assert await asyncio.wait_for(next_one, 5) == "next"
    with pytest.raises(asyncio.CancelledError):
        await let_in
    assert held.started == ["next"] and pool._running == 0

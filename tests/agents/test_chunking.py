"""Batch calls go to the pool in chunks, and each caller still gets its own result or its own typed error."""

from __future__ import annotations

import asyncio

import pytest

from agents.chunking import ChunkedPool, run_calls
from agents.pool import WorkPool
from streams.errors import CorruptImage, DecoderCrashed, DecoderOutOfMemory, DecoderTimeout, UnportableOutcome
from tests.agents import pool_jobs


@pytest.fixture
def one_process():
    p = WorkPool(1, timeout_s=0.5, memory_mb=1024, preload=("tests.agents.pool_jobs",))
    yield p
    p.shutdown()


def test_run_calls_keeps_each_outcome_apart() -> None:
    out = run_calls([(pool_jobs.double, (2,), {}), (pool_jobs.corrupt, ("x.png",), {}), (pool_jobs.double, (3,), {})])
    assert out[0] == (True, 4) and out[2] == (True, 6)
    assert out[1][0] is False and isinstance(out[1][1], CorruptImage)


async def test_calls_waiting_for_a_slot_go_together(one_process: WorkPool) -> None:
    chunked = ChunkedPool(one_process, max_chunk=4)
    assert chunked.slots == 2  # one process, one chunk waiting
    results = await asyncio.gather(*(chunked.run(pool_jobs.double, i) for i in range(10)))
    assert results == [2 * i for i in range(10)]
    # the first started alone at once; the others gathered into full chunks queued behind it, and the last
    # one went when the process was free again
    assert chunked.chunk_sizes == {1: 2, 4: 2}


async def test_a_partial_chunk_waits_only_while_every_process_is_busy(one_process: WorkPool) -> None:
    chunked = ChunkedPool(one_process, max_chunk=8)
    first = asyncio.ensure_future(chunked.run(pool_jobs.double, 0))
    rest = [asyncio.ensure_future(chunked.run(pool_jobs.double, i)) for i in range(1, 4)]
    await asyncio.sleep(0)
    assert chunked.chunk_sizes == {1: 1}  # three calls wait: not a full chunk, and the process is busy
    assert await first == 0
    assert await asyncio.gather(*rest) == [2, 4, 6]
    assert chunked.chunk_sizes == {1: 1, 3: 1}  # they went together once the process was free


@pytest.mark.parametrize("backlog", [False, True], ids=["unknown", "known"])
async def test_the_last_calls_of_a_backlog_are_split_across_the_processes(backlog: bool) -> None:
    two = WorkPool(2, timeout_s=5, memory_mb=1024, preload=("tests.agents.pool_jobs",))
    to_come = [12]
    # the calls are tier 2's (level 2), sized by their own level's backlog: tier 1's says nothing (plenty)
    chunked = ChunkedPool(two, max_chunk=8, backlog=(lambda level: to_come[0] if level == 2 else None)
                          if backlog else None)

    async def call(i: int) -> int:
        to_come[0] -= 1  # one more call made: one less to come
        return await chunked.run(pool_jobs.double, i, level=2)

    try:
        assert await asyncio.gather(*(call(i) for i in range(12))) == [2 * i for i in range(12)]
    finally:
        two.shutdown()
    if backlog:
        # one each at once; then at most what was left split in two: 5 of 10, 3 of 5, then the last ones alone
        assert chunked.chunk_sizes == {1: 4, 5: 1, 3: 1}
    else:
        # one each at once, a full chunk, and the last two: one process works through 8 while the other has 2
        assert chunked.chunk_sizes == {1: 2, 8: 1, 2: 1}


async def test_a_lone_call_starts_at_once_alone(one_process: WorkPool) -> None:
    chunked = ChunkedPool(one_process, max_chunk=8)
    assert await chunked.run(pool_jobs.double, 21) == 42
    assert chunked.chunk_sizes == {1: 1}


async def test_a_failure_in_a_chunk_is_its_callers_alone(one_process: WorkPool) -> None:
    chunked = ChunkedPool(one_process, max_chunk=4)
    calls = [chunked.run(pool_jobs.double, 0),  # alone: the process was free
             chunked.run(pool_jobs.double, 1), chunked.run(pool_jobs.double, 2),  # a full chunk with the bad ones
             chunked.run(pool_jobs.corrupt, "bad.png"), chunked.run(pool_jobs.hog),
             chunked.run(pool_jobs.double, 3)]  # alone, when the process is free again
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert chunked.chunk_sizes == {1: 2, 4: 1}
    assert results[:3] == [0, 2, 4] and results[5] == 6
    assert isinstance(results[3], CorruptImage)
    assert isinstance(results[4], DecoderOutOfMemory)


@pytest.mark.parametrize("bad", [pool_jobs.crash, pool_jobs.hang], ids=["crash", "hang"])
async def test_a_chunk_that_loses_its_process_is_run_again_call_by_call(one_process: WorkPool, bad) -> None:
    chunked = ChunkedPool(one_process, max_chunk=3)
    calls = [chunked.run(pool_jobs.double, 0), chunked.run(pool_jobs.double, 1),
             chunked.run(pool_jobs.double, 2), chunked.run(bad), chunked.run(pool_jobs.double, 3)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert chunked.chunk_sizes == {1: 2 + 3, 3: 1}  # the chunk of three run again, one call at a time
    assert results[:3] == [0, 2, 4] and results[4] == 6  # the others of the chunk still succeed
    assert isinstance(results[3], DecoderCrashed if bad is pool_jobs.crash else DecoderTimeout)


async def test_a_chunk_run_again_call_by_call_holds_no_more_processes_than_its_slot(one_process: WorkPool) -> None:
    # its calls sent all at once would have the pool work on a chunk's worth of tasks while counted as one, queued
    # in the pool ahead of whatever is sent after them
    chunked = ChunkedPool(one_process, max_chunk=3)
    sent, most = 0, 0
    call = one_process.call

    async def counted(*args, **kwargs):
        nonlocal sent, most
        sent += 1
        most = max(most, sent)
        try:
            return await call(*args, **kwargs)
        finally:
            sent -= 1

    one_process.call = counted
    calls = [chunked.run(pool_jobs.double, 0), chunked.run(pool_jobs.double, 1), chunked.run(pool_jobs.crash),
             chunked.run(pool_jobs.double, 2), chunked.run(pool_jobs.double, 3), chunked.run(pool_jobs.double, 4),
             chunked.run(pool_jobs.double, 5)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[:2] == [0, 2] and isinstance(results[2], DecoderCrashed) and results[3:] == [4, 6, 8, 10]
    assert most <= chunked.slots


async def test_a_cancelled_caller_is_left_out(one_process: WorkPool) -> None:
    chunked = ChunkedPool(one_process, max_chunk=8)
    first = [asyncio.ensure_future(chunked.run(pool_jobs.double, i)) for i in range(2)]
    waiting = [asyncio.ensure_future(chunked.run(pool_jobs.double, i)) for i in range(2, 5)]
    await asyncio.sleep(0)  # every call is in: the first runs, the others wait for the process
    waiting[1].cancel()
    assert await asyncio.gather(*first) == [0, 2]
    assert await asyncio.gather(waiting[0], waiting[2]) == [4, 8]
    assert chunked.chunk_sizes == {1: 1, 3: 1}


async def test_chunks_of_one_keep_the_levels_order(one_process: WorkPool) -> None:
    # DAMFLOW_BATCH_CHUNK=1 sent every call straight to the pool's own queue, in the order they came: tier-2 and
    # tier-3 files in flight ahead of an import's tier-1 files (and no file of a big import left the page cache)
    chunked = ChunkedPool(one_process, max_chunk=1)
    finished: list[str] = []

    def run(label: str, level: int, *args) -> asyncio.Future:
        future = asyncio.ensure_future(chunked.run(*args, level=level))
        future.add_done_callback(lambda _: finished.append(label))
        return future

    busy = run("busy", 1, pool_jobs.double_later, 0, 0.3)
    await asyncio.sleep(0)
    later = [run(f"tier2-{i}", 2, pool_jobs.double, i) for i in range(3)]
    sooner = [run(f"tier1-{i}", 1, pool_jobs.double, i) for i in range(2)]
    assert await asyncio.gather(busy, *later, *sooner) == [0, 0, 2, 4, 0, 2]
    # the first tier-2 call took the queued slot while it was the only one waiting
    assert finished == ["busy", "tier2-0", "tier1-0", "tier1-1", "tier2-1", "tier2-2"]
    assert chunked.chunk_sizes == {1: 6}


async def test_a_chunk_run_again_alone_counts_its_bytes_into_the_streak_once(one_process: WorkPool) -> None:
    chunked = ChunkedPool(one_process, max_chunk=3, drop_after_bytes=1 << 40)
    calls = [chunked.run(pool_jobs.double, 0, read_bytes=100),  # alone: the process was free
             chunked.run(pool_jobs.double, 1, read_bytes=10), chunked.run(pool_jobs.crash, read_bytes=20),
             chunked.run(pool_jobs.double, 2, read_bytes=30)]  # a chunk of three, run again one call at a time
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[:2] == [0, 2] and isinstance(results[2], DecoderCrashed) and results[3] == 4
    assert chunked.chunk_sizes == {1: 1 + 3, 3: 1}
    assert chunked._streak_bytes == 160  # not 220: the chunk's 60 counted again with its calls sent alone


async def test_an_outcome_that_cannot_come_back_fails_its_own_call_only(one_process: WorkPool) -> None:
    chunked = ChunkedPool(one_process, max_chunk=5)
    calls = [chunked.run(pool_jobs.double, 0),  # alone: the process was free; the others make one chunk
             chunked.run(pool_jobs.double, 1), chunked.run(pool_jobs.raise_needs_two),
             chunked.run(pool_jobs.raise_holding_a_lock), chunked.run(pool_jobs.return_a_lock),
             chunked.run(pool_jobs.double, 2)]
    out = await asyncio.gather(*calls, return_exceptions=True)
    assert out[0] == 0 and out[1] == 2 and out[5] == 4  # before: the whole chunk failed, or the pool broke
    assert [type(e) for e in out[2:5]] == [UnportableOutcome] * 3
    assert "NeedsTwo: one and two" in str(out[2]) and "RuntimeError: holds a lock" in str(out[3])
    assert "return_a_lock" in str(out[4])
    assert chunked.chunk_sizes == {1: 1, 5: 1} and one_process.replacements == 0
    with pytest.raises(UnportableOutcome, match="NeedsTwo"):  # a lone call too, without breaking the pool
        await one_process.run(pool_jobs.raise_needs_two)
    assert one_process.replacements == 0 and await one_process.run(pool_jobs.double, 5) == 10


async def test_a_chunk_is_given_two_calls_worth_of_time_not_one_per_call(one_process: WorkPool, monkeypatch) -> None:
    # a file that hangs held the files beside it for the whole chunk's worth of limits (8 x 60 s at the
    # defaults) before they were run alone; now for two limits at most
    limits: list[float | None] = []
    real = one_process.call

    async def call(fn, args, kwargs, *, timeout_s=None):
        limits.append(timeout_s)
        return await real(fn, args, kwargs, timeout_s=timeout_s)

    monkeypatch.setattr(one_process, "call", call)
    chunked = ChunkedPool(one_process, max_chunk=5)
    calls = [chunked.run(pool_jobs.double, 0)] + [chunked.run(pool_jobs.double, i) for i in range(1, 5)] + \
        [chunked.run(pool_jobs.hang)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert chunked.chunk_sizes == {1: 1 + 5, 5: 1}  # (the chunk of five run again one call at a time)
    assert limits[1] == 2 * one_process.timeout_s  # the chunk of five
    assert results[:5] == [0, 2, 4, 6, 8] and isinstance(results[5], DecoderTimeout)


async def test_the_lowest_level_waiting_goes_first_whatever_came_first(one_process: WorkPool) -> None:
    # tier-2 files in flight when an import starts must not run ahead of its tier-1 files (one FIFO queue did)
    chunked = ChunkedPool(one_process, max_chunk=4)
    finished: list[str] = []

    def run(label: str, level: int, *args) -> asyncio.Future:
        future = asyncio.ensure_future(chunked.run(*args, level=level))
        future.add_done_callback(lambda _: finished.append(label))
        return future

    busy = run("busy", 1, pool_jobs.double_later, 0, 0.3)  # the process works; the others wait for it
    await asyncio.sleep(0)
    later = [run(f"tier2-{i}", 2, pool_jobs.double, i) for i in range(3)]
    sooner = [run(f"tier1-{i}", 1, pool_jobs.double, i) for i in range(2)]
    await asyncio.sleep(0)
    assert chunked.chunk_sizes == {1: 1}  # partial chunks wait while the process is busy
    assert await asyncio.gather(busy, *later, *sooner) == [0, 0, 2, 4, 0, 2]
    assert finished == ["busy", "tier1-0", "tier1-1", "tier2-0", "tier2-1", "tier2-2"]
    assert chunked.chunk_sizes == {1: 1, 2: 1, 3: 1}  # a chunk holds one level's calls


async def test_a_full_chunk_of_a_higher_level_does_not_take_the_queued_slot_while_lower_calls_wait(
    one_process: WorkPool,
) -> None:
    chunked = ChunkedPool(one_process, max_chunk=4)
    busy = asyncio.ensure_future(chunked.run(pool_jobs.double_later, 0, 0.3, level=1))
    await asyncio.sleep(0)
    sooner = asyncio.ensure_future(chunked.run(pool_jobs.double, 1, level=1))  # a partial chunk: it waits
    later = [asyncio.ensure_future(chunked.run(pool_jobs.double, i, level=2)) for i in range(4)]  # a full one
    await asyncio.sleep(0)
    assert chunked.chunk_sizes == {1: 1}  # the queued slot is kept for the level-1 call
    await busy
    assert await sooner == 2 and await asyncio.gather(*later) == [0, 2, 4, 6]
    assert chunked.chunk_sizes == {1: 2, 4: 1}


async def test_a_background_chunk_never_takes_the_queued_slot(one_process: WorkPool) -> None:
    # a chunk queued in the pool runs before whatever is sent after it: a background chunk there would hold the
    # first files of an import that starts meanwhile behind a whole chunk of tier-3 work
    chunked = ChunkedPool(one_process, max_chunk=4, idle_only_from=3)
    finished: list[str] = []

    def run(label: str, level: int, *args) -> asyncio.Future:
        future = asyncio.ensure_future(chunked.run(*args, level=level))
        future.add_done_callback(lambda _: finished.append(label))
        return future

    busy = run("busy", 3, pool_jobs.double_later, 0, 0.3)  # the process works on background work
    await asyncio.sleep(0)
    background = [run(f"tier3-{i}", 3, pool_jobs.double, i) for i in range(4)]  # a full chunk: it does not queue
    await asyncio.sleep(0)
    assert chunked.chunk_sizes == {1: 1}
    import_file = run("tier1", 1, pool_jobs.double, 5)  # an import starts meanwhile
    assert await asyncio.gather(busy, import_file, *background) == [0, 10, 0, 2, 4, 6]
    assert finished == ["busy", "tier1", "tier3-0", "tier3-1", "tier3-2", "tier3-3"]

"""The isolated CPU pool: a crash, a hang or a memory blow-up costs one job, and the pool heals itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from agents.pool import WorkPool
from streams.errors import DecoderCrashed, DecoderOutOfMemory, DecoderTimeout
from tests.agents import pool_jobs


@pytest.fixture
def pool():
    p = WorkPool(2, timeout_s=1.5, memory_mb=1024, preload=("tests.agents.pool_jobs",))
    yield p
    p.shutdown()


async def test_bad_jobs_fail_alone_with_typed_errors(pool: WorkPool) -> None:
    results = await asyncio.gather(
        pool.run(pool_jobs.crash), pool.run(pool_jobs.hang), pool.run(pool_jobs.double, 2),
        pool.run(pool_jobs.hog), pool.run(pool_jobs.double, 5), return_exceptions=True,
    )
    crash, hang, four, hog, ten = results
    assert isinstance(crash, DecoderCrashed) and crash.retriable
    assert isinstance(hang, DecoderTimeout) and hang.retriable
    assert isinstance(hog, DecoderOutOfMemory) and not hog.retriable
    assert (four, ten) == (4, 10)


async def test_a_pool_pebble_gives_up_on_is_replaced_and_the_jobs_it_dropped_run_again(pool: WorkPool) -> None:
    # pebble gives a whole pool up when a process dies before pebble recorded which job it took (a crashing
    # decoder on a busy machine): every job in flight fails with BrokenProcessPool, every later one with
    # RuntimeError. Breaking it here the way pebble does makes that race happen on demand.
    assert await pool.run(pool_jobs.double, 1) == 2
    broken = pool._pool
    in_flight = asyncio.ensure_future(pool.run(pool_jobs.double_later, 3, 0.5))
    while not broken._pool_manager.task_manager.tasks:
        await asyncio.sleep(0.01)  # pebble's own threads take the job: nothing to await on this side
    broken._pool_manager.handle_broken_pool(BrokenProcessPool("All workers expired"))
    assert await in_flight == 6  # run again on a fresh pool
    assert await pool.run(pool_jobs.double, 4) == 8
    assert pool.replacements == 1 and pool._pool is not broken


async def test_a_job_that_breaks_a_fresh_pool_too_is_a_crash(pool: WorkPool, monkeypatch) -> None:
    pools = []
    new_pool = pool._new_pool

    def breaking_pool():  # every pool pebble makes gives up at the first job
        fresh = new_pool()
        fresh.schedule = lambda *a, **k: (_ for _ in ()).throw(BrokenProcessPool("All workers expired"))
        pools.append(fresh)
        return fresh

    monkeypatch.setattr(pool, "_new_pool", breaking_pool)
    pool._pool = breaking_pool()
    with pytest.raises(DecoderCrashed, match="broke while running it"):
        await pool.run(pool_jobs.double, 1)
    assert pool.replacements == 2


async def test_pool_keeps_its_size_after_losing_processes(pool: WorkPool) -> None:
    before = await asyncio.gather(*(pool.run(pool_jobs.pid) for _ in range(4)))
    with pytest.raises(DecoderCrashed):
        await pool.run(pool_jobs.crash)
    after = await asyncio.gather(*(pool.run(pool_jobs.double, i) for i in range(6)))
    assert after == [0, 2, 4, 6, 8, 10]
    assert len(set(before)) <= 2


_FREEZE = """
import json, signal, sys, time
from agents.pool import WorkPool
pool = WorkPool(2, preload=({preload!r},))
{start}
pids = sorted(pool.pids())
pool.signal_all(signal.SIGSTOP)  # as the lane governor does while urgent work runs
print(json.dumps(pids), flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("preload, start", [
    ("tests.agents.pool_jobs", "pool.warm()"),  # frozen at work
    # frozen the moment pebble started them, before their initializer has run (each is held there)
    ("tests.agents.pool_slow_start",
     "job = pool._pool.schedule(len, ([],))\nwhile len(pool.pids()) < 2:\n    time.sleep(0.01)"),
], ids=["ready", "before-their-initializer"])
def test_frozen_pool_processes_die_with_their_worker(preload: str, start: str) -> None:
    worker = subprocess.Popen([sys.executable, "-c", _FREEZE.format(preload=preload, start=start)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        pids = json.loads(worker.stdout.readline())
        assert len(pids) == 2 and _await_states(pids, "T")  # stopped
    finally:
        worker.kill()  # SIGKILL: no shutdown code runs
        worker.wait()
    deadline = time.monotonic() + 10
    while any(_state(pid) not in (None, "Z") for pid in pids):
        if time.monotonic() > deadline:
            for pid in pids:  # not left behind by the test either
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"frozen pool processes outlived their worker: {pids}")
        time.sleep(0.05)  # polling other processes' /proc entries: there is no event to await


def _state(pid: int) -> str | None:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def test_preempting_freezes_the_batch_pool_and_thaws_it(tmp_path) -> None:
    from agents.lanes import LanePools
    from streams.settings import Settings

    pools = LanePools(Settings(data_dir=tmp_path, pool_size=2), preload=("tests.agents.pool_jobs",))
    try:
        pools.warm()
        batch, interactive = pools.batch.pids(), pools.interactive.pids()
        assert batch and interactive
        pools.preempt_batch(True)
        assert _await_states(batch, "T") and not any(_state(p) == "T" for p in interactive)
        pools.preempt_batch(False)
        assert _await_states(batch, "RS")  # running or sleeping again
        assert asyncio.run(pools.batch.run(pool_jobs.double, 21)) == 42
    finally:
        pools.shutdown()


async def test_a_batch_file_frozen_while_urgent_work_runs_is_not_timed_out_for_the_time_it_was_frozen(
    tmp_path, monkeypatch,
) -> None:
    # pebble's time limit counts wall time: a file frozen past it (Settings.preempt_batch) was killed as hung
    from agents.lanes import LanePools
    from streams.settings import Settings

    monkeypatch.setattr("agents.pool.POOL_CHECK_S", 0.05)
    pools = LanePools(Settings(data_dir=tmp_path, pool_size=1, decode_timeout_s=1.0, preempt_batch=True),
                      preload=("tests.agents.pool_jobs",))
    started = tmp_path / "started"
    try:
        pools.batch.warm()
        job = asyncio.ensure_future(pools.batch.run(pool_jobs.double_later_told, 21, 0.3, str(started)))
        while not started.exists():  # another process's progress: nothing to await
            await asyncio.sleep(0.01)
        pools.preempt_batch(True)  # an urgent file is being made browsable, for longer than the batch limit
        await asyncio.sleep(1.5)
        pools.preempt_batch(False)
        assert await asyncio.wait_for(job, 10) == 42  # 0.3 s of work, well within its 1 s
        assert pools.batch.frozen_s() >= 1.5
    finally:
        pools.shutdown()


async def test_a_pool_that_may_be_frozen_still_kills_a_job_that_hangs(monkeypatch) -> None:
    monkeypatch.setattr("agents.pool.POOL_CHECK_S", 0.05)
    pool = WorkPool(1, timeout_s=0.5, memory_mb=1024, preload=("tests.agents.pool_jobs",), freezable=True)
    try:
        with pytest.raises(DecoderTimeout):
            await asyncio.wait_for(pool.run(pool_jobs.hang), 10)
        assert await asyncio.wait_for(pool.run(pool_jobs.double, 21), 30) == 42  # its process was replaced
    finally:
        pool.shutdown()


def _await_states(pids: list[int], states: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not all((_state(p) or "?") in states for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # a signal's effect on another process: nothing to await
    return True


async def test_a_job_taken_just_as_the_pool_breaks_runs_on_a_fresh_one(pool: WorkPool, monkeypatch) -> None:
    monkeypatch.setattr("agents.pool.POOL_CHECK_S", 0.05, raising=False)
    assert await pool.run(pool_jobs.double, 1) == 2
    broken = pool._pool
    check = broken._check_pool_status

    def check_then_break() -> None:  # the pool breaks just after schedule() found it running: pebble then
        check()  # dispatches the job with nothing left to settle its future or enforce its time limit
        broken._pool_manager.handle_broken_pool(BrokenProcessPool("All workers expired"))

    broken._check_pool_status = check_then_break
    assert await asyncio.wait_for(pool.run(pool_jobs.double, 2), 30) == 4
    assert pool.replacements == 1

"""A failed service is started again (no broker needed)."""

from __future__ import annotations

import asyncio

import pytest

from streams import supervisor


async def test_a_service_that_fails_is_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "_RESTART_PAUSES_S", (0.01, 0.02))
    runs = 0
    running = asyncio.Event()

    async def service() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise OSError("disk I/O error")  # e.g. the catalog's SQLite file
        if runs == 3:
            return  # returning is not what a service does either
        running.set()
        await asyncio.Event().wait()  # runs until cancelled

    task = asyncio.create_task(supervisor.keep_running("sink", service))
    await asyncio.wait_for(running.wait(), 5)
    assert runs == 4
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

"""ingest_folder without a broker: how the scan and the wait for its batch end each other."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import streams.ingest as ingest
from streams.errors import BrokerError, WaitTimedOut
from streams.scanner import ScanResult
from streams.settings import Settings
from streams.topics import topics_for


class _QuietProgress:
    """A ``progress`` consumer on which nothing comes: each fetch waits its time out, as a broker's long poll."""

    async def getmany(self, timeout_ms: int = 0) -> dict:
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def topics(self) -> set[str]:
        return set()


@pytest.fixture
def no_broker(monkeypatch) -> None:
    @contextlib.asynccontextmanager
    async def tail(*a, **k):
        yield _QuietProgress()

    @contextlib.asynccontextmanager
    async def producer(*a, **k):
        yield None

    monkeypatch.setattr(ingest, "tail", tail)
    monkeypatch.setattr(ingest, "producer", producer)


def _ingest(tmp_path: Path, *, timeout: float | None) -> None:
    settings = Settings(data_dir=tmp_path / "data")

    async def main() -> None:
        async with asyncio.timeout(10):  # a guard only: each case is over well within it
            await ingest.ingest_folder(settings, topics_for(settings), "unused:9092", tmp_path, wait=True,
                                       timeout=timeout, batch_id="b1")

    asyncio.run(main())


def test_a_wait_that_times_out_while_backpressure_holds_the_scan_stops_the_scan(
    tmp_path: Path, no_broker, monkeypatch,
) -> None:
    stopped = []

    async def scan(*a, **k):  # held at the high-water mark: no worker takes the lane's backlog
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.append(True)
            raise

    monkeypatch.setattr(ingest, "scan", scan)
    with pytest.raises(WaitTimedOut) as info:  # not the guard's TimeoutError: that one is no WaitTimedOut
        _ingest(tmp_path, timeout=0.5)
    assert info.value.scan_stopped and stopped == [True]
    assert "batch b1" in str(info.value) and "the scan stopped" in str(info.value)


def test_a_wait_that_times_out_after_the_scan_ended_says_the_batch_goes_on(
    tmp_path: Path, no_broker, monkeypatch,
) -> None:
    async def scan(*a, **k):
        return ScanResult("b1", str(tmp_path), 3, 0, 0)

    monkeypatch.setattr(ingest, "scan", scan)
    with pytest.raises(WaitTimedOut) as info:
        _ingest(tmp_path, timeout=0.5)
    assert not info.value.scan_stopped and "goes on" in str(info.value)


def test_a_scan_that_fails_ends_a_wait_without_a_timeout_with_its_error(
    tmp_path: Path, no_broker, monkeypatch,
) -> None:
    async def scan(*a, **k):
        raise BrokerError("the broker did not take a message")

    monkeypatch.setattr(ingest, "scan", scan)
    with pytest.raises(BrokerError, match="did not take"):
        _ingest(tmp_path, timeout=None)

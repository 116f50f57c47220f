"""ingest_folder without a broker: how the scan and the wait for its batch end each other."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaConnectionError

import streams.ingest as ingest
from schemas import BatchScanned, decode
from streams.errors import BrokerError, WaitTimedOut
from streams.scanner import ScanResult
from streams.settings import Settings
from streams.topics import topics_for
from tests.images import make_png


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


# -- upload_files ------------------------------------------------------------------------------------------------


class _BrokerGoneAfterOne:
    """A producer whose broker takes the first upload, then fails every send; the batch's close too, if asked."""

    def __init__(self, *, close_fails: bool) -> None:
        self.taken: list[object] = []
        self.closed: list[object] = []
        self.close_fails = close_fails

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> SimpleNamespace:
        if self.taken:
            raise KafkaConnectionError("Unable to bootstrap from broker")
        self.taken.append(decode(value))
        return SimpleNamespace(topic=topic, partition=0, offset=0, timestamp=-1)

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        if self.close_fails:
            done.set_exception(KafkaConnectionError("Unable to bootstrap from broker"))
        else:
            self.closed.append(decode(value))
            done.set_result(None)
        return done


@pytest.mark.parametrize("close_fails", [False, True])
def test_a_broker_that_fails_part_way_through_uploads_leaves_a_row_for_every_file(
    tmp_path: Path, monkeypatch, close_fails: bool,
) -> None:
    prod = _BrokerGoneAfterOne(close_fails=close_fails)

    @contextlib.asynccontextmanager
    async def producer(*a, **k):
        yield prod

    monkeypatch.setattr(ingest, "producer", producer)
    settings = Settings(data_dir=tmp_path / "data", express=False, upload_fsync=False)
    files = [make_png(tmp_path / f"{i}.png", size=(16, 16), seed=i) for i in range(3)]
    rows = asyncio.run(ingest.upload_files(settings, topics_for(settings), "unused:9092", files))
    # before: the broker's error ended the command with none of this said, the first file's publish included
    assert [(r.file, r.state) for r in rows] == [(str(files[0]), "published"), (str(files[1]), "not_published"),
                                                 (str(files[2]), "not_published")]
    assert rows[0].event_id == prod.taken[0].event_id and not rows[1].event_id and not rows[2].event_id
    assert "did not take it" in rows[1].reason and "KafkaConnectionError" in rows[1].reason
    assert rows[2].reason.startswith("not tried: the broker failed on an earlier file")
    if not close_fails:  # the batch closed with the one file published, so its progress can finish
        [closing] = prod.closed
        assert isinstance(closing, BatchScanned) and closing.complete and closing.found == 1

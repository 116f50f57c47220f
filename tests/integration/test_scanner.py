"""The scanner against the real embedded broker: what it publishes is what the broker took."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from aiokafka.errors import KafkaTimeoutError

from schemas import BatchScanned, decode
from streams.errors import BrokerError, WaitTimedOut
from streams.ingest import ingest_folder
from streams.kafka import ensure_topics, producer, tail
from streams.scanner import scan
from streams.settings import settings_env
from streams.topics import topics_for
from tests.images import make_png_folder

pytestmark = pytest.mark.integration


def _folder(tmp_path: Path, files: int) -> Path:
    return make_png_folder(tmp_path / "in", files)


async def test_a_file_the_broker_did_not_take_fails_the_scan(broker: str, make_settings, tmp_path: Path) -> None:
    settings = make_settings()
    topics = topics_for(settings)
    await ensure_topics(broker, topics.all(), settings.partitions)
    folder = _folder(tmp_path, 3)

    async with producer(broker, compression=None) as real:

        class Refusing:
            """The real producer, but the second file's delivery fails (as aiokafka reports it: in the
            future that ``send`` returns; ``flush`` itself never raises)."""

            files = 0

            async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future:
                if topic == topics.t1_batch:
                    self.files += 1
                    if self.files == 2:
                        failed = asyncio.get_running_loop().create_future()
                        failed.set_exception(KafkaTimeoutError())
                        return failed
                return await real.send(topic, value, key=key)

            async def flush(self) -> None:
                await real.flush()

        with pytest.raises(BrokerError, match="did not take"):
            await scan(settings, topics, broker, Refusing(), folder)  # type: ignore[arg-type]


def _probe_failing(monkeypatch, fails) -> list[int]:
    """Make the scanner's lag probe raise ``fails(n)`` (when not None) at its n-th check; returns the check count."""
    from streams import kafka

    real, calls = kafka.LagProbe.lag, [0]

    async def lag(self, published=None):
        calls[0] += 1
        error = fails(calls[0])
        if error is not None:
            raise error
        return await real(self, published)

    monkeypatch.setattr(kafka.LagProbe, "lag", lag)
    return calls


async def _scan_of(broker: str, make_settings, tmp_path: Path, files: int):
    settings = make_settings(scan_lag_every=5)
    topics = topics_for(settings)
    await ensure_topics(broker, topics.all(), settings.partitions)
    folder = _folder(tmp_path, files)
    async with producer(broker, compression=None) as prod:
        return await scan(settings, topics, broker, prod, folder)


async def test_a_broker_error_that_passes_while_reading_the_lag_is_waited_out(
    broker: str, make_settings, tmp_path: Path, monkeypatch,
) -> None:
    # one "coordinator not available" (a coordinator moving, a broker restarting) ended the whole scan half-way
    from aiokafka.errors import CoordinatorNotAvailableError

    calls = _probe_failing(monkeypatch, lambda n: CoordinatorNotAvailableError("moving") if n in (2, 3) else None)
    result = await _scan_of(broker, make_settings, tmp_path, 12)
    assert result.found == 12
    assert calls[0] >= 4  # the failed checks were made again


async def test_a_lag_the_broker_cannot_tell_fails_the_scan_with_a_reason(
    broker: str, make_settings, tmp_path: Path, monkeypatch,
) -> None:
    from aiokafka.errors import CoordinatorNotAvailableError

    from streams import scanner

    _probe_failing(monkeypatch, lambda n: ValueError("a bug") if n == 2 else None)  # no retry cures it
    with pytest.raises(BrokerError, match="how far the workers are behind"):
        await _scan_of(broker, make_settings, tmp_path / "a", 12)
    monkeypatch.setattr(scanner, "LAG_PATIENCE_S", 0.3)  # a broker that stays away
    _probe_failing(monkeypatch, lambda n: CoordinatorNotAvailableError("gone") if n >= 2 else None)
    with pytest.raises(BrokerError, match="CoordinatorNotAvailable"):
        await _scan_of(broker, make_settings, tmp_path / "b", 12)


async def test_the_lag_probe_finds_a_topic_made_after_it_started(broker: str, make_settings) -> None:
    # `damflow ingest` may start before any worker made the lane's topic: the probe read no partitions then, and
    # the whole folder went out with no backpressure
    from streams.kafka import LagProbe

    settings = make_settings()
    topic = topics_for(settings).t1_batch
    async with LagProbe(broker, settings.group_id, topic) as probe:
        assert await probe.lag() == 0
        await ensure_topics(broker, [topic], settings.partitions)
        async with producer(broker, compression=None) as prod:
            for i in range(3):
                await prod.send_and_wait(topic, b"{}", key=str(i).encode())
        assert await probe.lag() >= 2  # the embedded broker's end offsets may read one batch short


async def _everything_on(broker: str, topic: str, settings) -> list:
    """Every record on ``topic`` up to its end now, decoded."""
    async with tail(broker, topic, settings, from_beginning=True) as consumer:
        ends = await consumer.end_offsets(list(consumer.assignment()))
        out = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batches = await consumer.getmany(timeout_ms=1000)
            out += [decode(r.value) for rs in batches.values() for r in rs]
        return out


async def test_a_wait_that_times_out_while_backpressure_holds_the_scan_stops_it_and_closes_its_batch(
    broker: str, make_settings, tmp_path: Path,
) -> None:
    # no worker takes the lane's backlog: the walk stops at 5 files and `ingest --wait --timeout 2` never returned
    settings = make_settings(scan_high_water=5, scan_low_water=2, scan_lag_every=1)
    topics = topics_for(settings)
    await ensure_topics(broker, topics.all(), settings.partitions)
    folder = _folder(tmp_path, 20)
    t0 = time.monotonic()
    with pytest.raises(WaitTimedOut) as info:
        async with asyncio.timeout(30):  # a guard only: its TimeoutError is no WaitTimedOut
            await ingest_folder(settings, topics, broker, folder, wait=True, timeout=2.0)
    assert time.monotonic() - t0 < 10 and info.value.scan_stopped
    discovered = await _everything_on(broker, topics.t1_batch, settings)
    scanned = [e for e in await _everything_on(broker, topics.progress, settings) if isinstance(e, BatchScanned)]
    assert 5 <= len(discovered) < 20  # the walk stopped where backpressure held it
    # closed with what was published, so its progress can finish
    assert scanned[-1].complete and scanned[-1].found == len(discovered)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_an_ingest_and_its_batch_is_closed_and_named(
        broker: str, make_settings, tmp_path: Path, sig: signal.Signals) -> None:
    # SIGTERM (`kill`, `timeout`, systemd, a container's stop) ended the process at once: its batch was never
    # closed, so its progress never finished and `ingest --wait` followers waited for good. Ctrl-C closed it, but
    # did not say which batch it was.
    settings = make_settings(scan_high_water=3, scan_low_water=1, scan_lag_every=1)
    topics = topics_for(settings)
    await ensure_topics(broker, topics.all(), settings.partitions)
    folder = _folder(tmp_path, 10)
    env = dict(os.environ) | settings_env(settings) | {"DAMFLOW_LOG_LEVEL": "warn"}
    async with tail(broker, topics.progress, settings, from_beginning=True) as progress:

        async def scanned(wanted) -> BatchScanned:
            while True:
                for records in (await progress.getmany(timeout_ms=1000)).values():
                    for event in (decode(r.value) for r in records):
                        if isinstance(event, BatchScanned) and wanted(event):
                            return event

        # no worker takes the lane's backlog: backpressure holds the walk at 3 files
        ingest = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streams.cli", "ingest", str(folder), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(60):
                paused = await scanned(lambda e: e.paused)
                ingest.send_signal(sig)
                _, err = await ingest.communicate()
                closed = await scanned(lambda e: e.complete)
        finally:
            if ingest.returncode is None:
                ingest.kill()
                await ingest.wait()
    assert ingest.returncode == 128 + sig and f"stopped (batch {paused.batch_id})" in err.decode()
    assert (closed.batch_id, closed.found) == (paused.batch_id, 3)

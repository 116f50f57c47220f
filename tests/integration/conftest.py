"""Integration fixtures: the real embedded broker (one per test session), and per test a fresh topic prefix,
consumer group and data directory, with the real pipeline (worker subprocesses + catalog sink) on top."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from consumers.catalog import Catalog
from schemas import new_id
from streams.broker import EmbeddedBroker
from streams.settings import Settings
from streams.supervisor import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b.bootstrap


@pytest.fixture
def make_settings(broker: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings isolated to this test: own topics, own group, own data dir, on the shared broker."""

    def make(**overrides) -> Settings:
        tag = new_id()[:8]
        base = dict(
            broker_url=broker, http_port=0, topic_prefix=f"test.{tag}.", group_id=f"damflow-test-{tag}",
            data_dir=tmp_path / "data", partitions=2, pool_size=2, log_format="json",
            session_timeout_s=3.0, rebalance_timeout_s=2.0, heartbeat_interval_s=0.3,
        )
        return Settings(**(base | overrides))

    return make


@pytest.fixture
async def stack(make_settings: Callable[..., Settings]) -> AsyncIterator[Stack]:
    async with Stack(make_settings()) as s:
        yield s


async def wait_until(predicate: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> object:
    """Await a condition that another process makes true (a catalog row, a file); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def catalog_of(settings: Settings) -> Catalog:
    return Catalog(settings.catalog_path, readonly=True)

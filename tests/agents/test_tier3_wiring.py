"""Tier 3 as `agents.tier3.register` wires it, on tier 1's stand-in app (topics keep what is sent to them): its
work goes to the batch pool's chunks at the background level, with more files in flight than the pool has
processes (the order of the chunks is tests/agents/test_chunking.py's, the broker's part the integration tests')."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path

from agents import tier3
from agents.lanes import LanePools, level_of
from agents.quality import quality_scores
from schemas import AssetEnriched, AssetIndexed, decode, encode
from streams.express import ExpressRequest
from streams.settings import Settings
from streams.topics import topics_for
from tests.agents.test_tier1_express import _App, _Fetched, _Governor


class _CountingApp(_App):
    def __init__(self) -> None:
        super().__init__()
        self.concurrency: dict[str, int] = {}

    def agent(self, topic, *, name: str, concurrency: int):
        self.concurrency[name] = concurrency
        return super().agent(topic, name=name, concurrency=concurrency)


class _Background:
    """The batch pool's chunks, as tier 3 calls them."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, dict]] = []

    async def run(self, fn, *args, **kwargs) -> dict[str, float]:
        self.calls.append((fn, kwargs))
        return {"sharpness": 0.5}


def test_tier3_shares_the_batch_pools_chunks(tmp_path: Path) -> None:
    pools = LanePools(Settings(data_dir=tmp_path, pool_size=1), preload=())  # processes start on first use only
    try:
        assert pools.background is pools.batch_chunks
        # its chunks start only on an idle process: a new import's first files never queue behind one
        assert pools.batch_chunks.idle_only_from == level_of(3, "background")
    finally:
        pools.shutdown()


async def test_tier3_work_goes_to_the_pool_at_the_background_level_with_more_in_flight_than_processes(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, pool_size=2)
    topics = topics_for(settings)
    app, background = _CountingApp(), _Background()
    tier3.register(app, settings, topics, types.SimpleNamespace(background=background), _Governor())  # type: ignore
    # more files in flight than the pool has processes (it was the pool's size): the pool does not idle while
    # results wait for their acks, and the chunker has calls to gather
    assert app.concurrency["tier3-background"] == settings.tier3_batch_concurrency == settings.batch_concurrency
    assert settings.tier3_batch_concurrency > settings.pool_size
    assert Settings(data_dir=tmp_path, tier3_concurrency=3).tier3_batch_concurrency == 3

    record = AssetIndexed(event_id="e1", batch_id="b1", lane="batch", source="scan", asset_id="a1" * 32,
                          path=str(tmp_path / "x.png"), parser_version=1, metadata_path="meta/a1.json",
                          indexed_at=1.0)
    fetched = _Fetched(ExpressRequest(topics.t3_background, 0, 3, encode(record), b"k"))  # as fetched from the broker
    await asyncio.wait_for(app.agents["tier3-background"](fetched), 10)

    assert fetched.acked.is_set()
    [(fn, kwargs)] = background.calls
    assert fn is quality_scores
    assert kwargs["level"] == level_of(3, "background") > level_of(2, "batch")  # after tier 1's and tier 2's calls
    [(topic, value)] = app.sent
    enriched = decode(value)
    assert topic == topics.assets and isinstance(enriched, AssetEnriched)
    assert enriched.quality == {"sharpness": 0.5}

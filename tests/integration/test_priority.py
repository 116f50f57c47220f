"""Priority lanes and backpressure, end to end on the real broker (behaviour, not timing)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agents.browse import browse_file
from agents.quality import remember_scores
from schemas import AssetBrowsable, AssetEnriched, AssetIndexed, BatchScanned, decode
from streams.ingest import ingest_folder, upload_files
from streams.kafka import tail
from streams.supervisor import Stack
from tests.agents.test_browse import keeps_notes
from tests.images import make_png
from tests.integration.conftest import catalog_of

pytestmark = pytest.mark.integration


def folder_of(tmp_path: Path, n: int, size: tuple[int, int] = (1024, 1024), name: str = "import") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for i in range(n):
        make_png(folder / f"img{i:03d}.png", size=size, seed=i)
    return folder


async def collect(consumer, until, timeout: float = 120) -> list:
    """Decode records from ``consumer`` until ``until(events)`` holds."""
    events: list = []

    async def loop() -> list:
        while not until(events):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                events.extend(decode(r.value) for r in records)
        return events

    return await asyncio.wait_for(loop(), timeout)


async def test_an_interactive_upload_overtakes_a_deep_batch_backlog(make_settings, tmp_path: Path) -> None:
    folder = folder_of(tmp_path, 30)
    urgent = make_png(tmp_path / "urgent.png", size=(1024, 1024), seed=999)
    async with Stack(make_settings(pool_size=1)) as stack:
        s = stack.settings
        async with tail(stack.bootstrap, stack.topics.assets, s) as assets:
            ingest = asyncio.create_task(ingest_folder(s, stack.topics, stack.bootstrap, folder))
            # the backlog is being worked on: the first batch file is browsable
            await collect(assets, lambda ev: any(isinstance(e, AssetBrowsable) for e in ev))
            [row] = await upload_files(s, stack.topics, stack.bootstrap, [urgent], wait=True, timeout=60)
            assert row.state == "browsable"
            await ingest
            events = await collect(assets, lambda ev: sum(isinstance(e, AssetBrowsable) and e.lane == "batch"
                                                          for e in ev) >= 29)
    browsable = [e for e in events if isinstance(e, AssetBrowsable)]
    position = next(i for i, e in enumerate(browsable) if e.lane == "interactive")
    batch_after = sum(1 for e in browsable[position + 1:] if e.lane == "batch")
    # FIFO would put the urgent file behind all 30; with lanes it passes (nearly) the whole backlog
    assert batch_after >= 20, f"only {batch_after} batch files were still waiting when the urgent one finished"


async def test_scanner_stops_at_the_high_water_mark_and_resumes_when_workers_drain(
    make_settings, tmp_path: Path
) -> None:
    folder = folder_of(tmp_path, 60, size=(64, 64))
    settings = make_settings(scan_high_water=20, scan_low_water=5, scan_lag_every=5, scan_lag_poll_s=0.05)
    async with Stack(settings, workers=0) as stack:  # nobody consumes yet
        async with tail(stack.bootstrap, stack.topics.progress, settings) as progress:
            ingest = asyncio.create_task(ingest_folder(settings, stack.topics, stack.bootstrap, folder, wait=False))
            events = await collect(progress, lambda ev: any(isinstance(e, BatchScanned) and e.paused for e in ev))
            paused = next(e for e in events if isinstance(e, BatchScanned) and e.paused)
            # the lag is checked every `scan_lag_every` files (here every 5, so at the mark itself); the scanner
            # counts its own deliveries, so the embedded broker's end offsets (a record batch short) do not make
            # the stop come a check late
            assert paused.found == settings.scan_high_water
            assert not ingest.done()
            async with tail(stack.bootstrap, stack.topics.t1_batch, settings, from_beginning=True) as t1:
                published = await collect(t1, lambda ev: len(ev) >= paused.found)
                assert len(published) == paused.found
                # and no more arrive while the workers are away (a bounded look for something that must not come)
                assert not await t1.getmany(timeout_ms=1000)
            await stack.add_worker()  # workers drain the lag: the scan goes on and finishes
            result = await asyncio.wait_for(ingest, 120)
    assert result.found == 60


async def test_tier3_waits_while_tiers_1_and_2_have_work(make_settings, tmp_path: Path) -> None:
    folder = folder_of(tmp_path, 16, size=(512, 512))
    async with Stack(make_settings(pool_size=1)) as stack:
        s = stack.settings
        async with tail(stack.bootstrap, stack.topics.assets, s) as assets:
            await ingest_folder(s, stack.topics, stack.bootstrap, folder)
            events = await collect(assets, lambda ev: sum(isinstance(e, AssetEnriched) for e in ev) >= 16)
    kinds = [type(e).__name__ for e in events if isinstance(e, AssetBrowsable | AssetIndexed | AssetEnriched)]
    first_enriched = kinds.index("AssetEnriched")
    assert kinds[:first_enriched].count("AssetBrowsable") == 16
    assert kinds[:first_enriched].count("AssetIndexed") == 16
    enriched = [e for e in events if isinstance(e, AssetEnriched)]
    assert all(0.0 <= e.quality["score"] <= 1.0 for e in enriched)


async def test_tier3_finishes_for_a_batch_with_files_the_cost_gate_keeps_out(stack: Stack, tmp_path: Path) -> None:
    folder = folder_of(tmp_path, 2, size=(256, 256))
    make_png(folder / "icon.png", size=(16, 16), seed=99)  # below tier3_min_pixels: no tier-3 work
    s = stack.settings
    async with tail(stack.bootstrap, stack.topics.assets, s) as assets:
        result = await ingest_folder(s, stack.topics, stack.bootstrap, folder, wait=True, tier=3, timeout=90)
        events = await collect(assets, lambda ev: sum(isinstance(e, AssetEnriched) for e in ev) >= 3)
    p = result.progress
    assert p.tier == 3 and p.done == 3 and p.in_flight == 0 and p.total_final
    enriched = {e.path.rsplit("/", 1)[-1]: e for e in events if isinstance(e, AssetEnriched)}
    assert enriched["icon.png"].skipped == "small" and not enriched["icon.png"].quality
    assert all(e.skipped is None and e.quality for name, e in enriched.items() if name != "icon.png")


async def test_content_whose_tier_3_was_lost_is_scored_by_its_next_copy(stack: Stack, tmp_path: Path) -> None:
    # the broker lost the events of a file after tier 1 made its thumbnails (`damflow up` killed): ingested
    # again, the file found its thumbnails made by another event and was a duplicate, so tier 3 skipped it and no
    # copy of the content was ever scored. A content scored before whose scores the catalog lost goes with them.
    s = stack.settings
    if not keeps_notes(tmp_path):
        pytest.skip("this file system keeps no extended attributes: every copy is scored anyway")
    folder = folder_of(tmp_path, 2, size=(256, 256))
    lost, scored = sorted(folder.iterdir())
    browse_file(str(lost), str(s.data_path), event_id="lost-with-the-broker")  # its tier 1, and nothing after it
    kept = browse_file(str(scored), str(s.data_path), event_id="also-lost")
    remember_scores(str(s.thumbs_dir), kept.asset_id, {"score": 0.25})  # its tier 3 too, its result lost
    async with tail(stack.bootstrap, stack.topics.assets, s) as assets:
        result = await ingest_folder(s, stack.topics, stack.bootstrap, folder, wait=True, tier=3, timeout=90)
        events = await collect(assets, lambda ev: sum(isinstance(e, AssetEnriched) for e in ev) >= 2)
    assert result.progress.done == 2
    enriched = {e.path: e for e in events if isinstance(e, AssetEnriched)}
    assert enriched[str(lost)].skipped is None and 0.0 <= enriched[str(lost)].quality["score"] <= 1.0
    assert (enriched[str(scored)].skipped, enriched[str(scored)].quality) == ("duplicate", {"score": 0.25})
    with catalog_of(s) as catalog:
        assert catalog.asset(kept.asset_id)["quality"] == {"score": 0.25}
        assert catalog.asset(str(lost))["quality"]["score"] == enriched[str(lost)].quality["score"]

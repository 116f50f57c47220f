"""Work lost with the embedded broker is sent on again as `damflow up` starts: every batch finishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from blake3 import blake3

from consumers.catalog import Catalog
from schemas import AssetBrowsable, AssetFailed, AssetIndexed, BatchScanned
from streams.settings import Settings
from streams.supervisor import Stack
from streams.upload import store_original
from tests.images import make_png
from tests.integration.conftest import catalog_of, wait_until
from tests.integration.test_tier2_search import A1111

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def lost_work(settings: Settings, folder: Path) -> tuple[str, Path, Path]:
    """A catalog as a stack stopped mid-import leaves it: ``fox.png`` browsable, its tier 2 and 3 lost with the
    broker; ``later.png`` failed once in tier 1, its retry lost; ``indexed.png`` indexed, its tier 3 lost. Returns the
    batch and the first two paths (the third is ``folder / "indexed.png"``)."""
    fox = make_png(folder / "fox.png", size=(320, 240), text={"parameters": A1111}, seed=3)
    later = make_png(folder / "later.png", size=(300, 200), seed=4)
    indexed = make_png(folder / "indexed.png", size=(256, 256), seed=5)
    asset, done2 = blake3(fox.read_bytes()).hexdigest(), blake3(indexed.read_bytes()).hexdigest()
    batch = "b-interrupted"
    with Catalog(settings.catalog_path) as catalog:
        catalog.apply([
            BatchScanned(batch_id=batch, lane="batch", root=str(folder), found=3, complete=True, started_at=T0,
                         scanned_at=T0),
            # tier 2 done, its tier 3 lost (as `damflow run` leaves every file: it stops once searchable)
            AssetBrowsable(event_id="e-indexed", batch_id=batch, lane="batch", source="scan", asset_id=done2,
                           path=str(indexed), size=indexed.stat().st_size, mtime_ns=indexed.stat().st_mtime_ns,
                           format="PNG", width=256, height=256, thumbnails={}, discovered_at=T0, browsable_at=T0 + 1),
            AssetIndexed(event_id="e-indexed", batch_id=batch, lane="batch", source="scan", asset_id=done2,
                         path=str(indexed), parser_version=2, metadata_path=f"metadata/{done2[:2]}/{done2}.v2.json",
                         indexed_at=T0 + 2),
            AssetBrowsable(event_id="e-fox", batch_id=batch, lane="batch", source="scan", asset_id=asset,
                           path=str(fox), size=fox.stat().st_size, mtime_ns=fox.stat().st_mtime_ns, format="PNG",
                           width=320, height=240, thumbnails={}, discovered_at=T0, browsable_at=T0 + 1),
            AssetFailed(event_id="e-later", batch_id=batch, lane="batch", source="scan", tier=1, path=str(later),
                        error_class="BrokerTimeout", error_code="timeout", reason="the broker went away",
                        retriable=True, outcome="retrying", first_failure_at=T0, failed_at=T0),
        ])
    return batch, fox, later


async def test_up_on_the_embedded_broker_finishes_what_the_last_one_lost(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(broker_url=None)  # its own embedded broker: new and empty, as after a restart
    folder = tmp_path / "shoot"
    folder.mkdir()
    batch, fox, later = lost_work(settings, folder)
    with catalog_of(settings) as catalog:
        assert catalog.progress(batch, 3) is None or catalog.progress(batch, 3).done == 0

    async with Stack(settings, serve_http=False) as stack:
        assert stack.reconciled is not None
        assert [stack.reconciled[k] for k in ("resumed", "tier1", "tier2", "tier3")] == [3, 1, 1, 1]

        def finished() -> bool:
            with catalog_of(settings) as catalog:
                done = catalog.progress(batch, 3)
                return done is not None and done.done == 3
        await wait_until(finished, timeout=90, what="the interrupted batch enriched")

    with catalog_of(settings) as catalog:
        assert [r["path"] for r in catalog.search("fox snow")] == [str(fox)]  # its lost tier 2, done
        resumed = catalog.asset(str(later))  # its lost retry, done
        assert (resumed["tier1_state"], resumed["tier3_state"]) == ("browsable", "enriched")
        assert [f["outcome"] for f in resumed["failures"]] == ["recovered"]
        for tier in (1, 2, 3):
            p = catalog.progress(batch, tier)
            assert (p.done, p.in_flight, p.failed + p.dead_lettered) == (3, 0, 0), (tier, p)
        assert catalog.unfinished() == []
        assert catalog.asset(str(folder / "indexed.png"))["tier3_state"] == "enriched"  # by tier 3 alone


def test_reconcile_dry_run_says_what_would_go_and_sends_nothing(make_settings: Callable[..., Settings],
                                                                tmp_path: Path) -> None:
    settings = make_settings()
    folder = tmp_path / "shoot"
    folder.mkdir()
    lost_work(settings, folder)
    env = dict(os.environ, DAMFLOW_DATA_DIR=str(settings.data_path), DAMFLOW_BROKER_URL="127.0.0.1:1",
               DAMFLOW_TOPIC_PREFIX=settings.topic_prefix)  # no broker there: a dry run must not need one
    done = subprocess.run([sys.executable, "-m", "streams.cli", "reconcile", "--dry-run", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["resumed"], result["tier1"], result["tier2"], result["tier3"], result["batches"]) == (3, 1, 1, 1, 1)
    human = subprocess.run([sys.executable, "-m", "streams.cli", "reconcile", "--dry-run"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert human.returncode == 0 and "would resume 3 files of 1 batches" in human.stdout
    assert "reconciled" not in human.stderr  # a dry run's summary is its output, not also a log line


async def test_the_next_up_makes_a_lost_upload_browsable_and_closes_a_scan_cut_short(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    # answered (its original stored, its event acked), then `damflow up` was killed before a worker took it: the
    # next `up` left its batch in flight for good, and said only "their uploaders must send them again"
    settings = make_settings(broker_url=None)
    started = time.time()
    stored = store_original(settings, make_png(tmp_path / "urgent.png", size=(320, 240), seed=11))
    with Catalog(settings.catalog_path) as catalog:  # its batch's close reached the catalog; its file did not
        catalog.apply([BatchScanned(batch_id="upload-lost", lane="interactive", root="", found=1, complete=True,
                                    started_at=started, scanned_at=time.time()),
                       # and a scan cut short with the broker: "scanning" for good
                       BatchScanned(batch_id="b-cut", lane="batch", root=str(tmp_path), found=0,
                                    started_at=started, scanned_at=started)])

    async with Stack(settings, serve_http=False) as stack:
        assert stack.reconciled is not None and stack.reconciled["uploads"] == 1
        assert stack.reconciled["unheard"] == []
        assert stack.reconciled["cut_short"] == [{"batch_id": "b-cut", "root": str(tmp_path), "scanned_total": 0}]

        def finished() -> bool:
            with catalog_of(settings) as catalog:
                done = catalog.progress("upload-lost", 1)
                return done is not None and done.done == 1 and done.in_flight == 0
        await wait_until(finished, timeout=90, what="the lost upload browsable")
    with catalog_of(settings) as catalog:
        assert catalog.asset(stored.asset_id)["tier1_state"] == "browsable"
        assert catalog.open_scans() == []  # closed with what it had found

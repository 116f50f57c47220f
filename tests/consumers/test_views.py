"""Text views: rendered from the very dicts the catalog returns, so text and ``--json`` agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumers.catalog import Catalog
from consumers.views import render_asset, render_status
from tests.consumers.test_catalog import A1, A2, ROOT, T0, browsable, failed, scanned


@pytest.fixture
def catalog(tmp_path: Path):
    with Catalog(tmp_path / "catalog.sqlite") as cat:
        yield cat


def _row(text: str, batch_prefix: str, tier: str) -> list[str]:
    """The cells of the table row of one batch and tier."""
    for line in text.splitlines():
        cells = line.split()
        if cells[:1] == [batch_prefix] and cells[2] == tier:
            return cells
    raise AssertionError(f"no row for {batch_prefix} tier {tier} in:\n{text}")


def test_empty_status_says_so(catalog: Catalog) -> None:
    text = render_status(catalog.status())
    assert text.splitlines()[0] == "assets: 0 (0 locations)"
    assert "no batches yet" in text
    assert "BATCH" not in text


def test_status_table_shows_each_batch_and_tier(catalog: Catalog) -> None:
    catalog.apply([
        scanned(1200, batch="batch-one-1234"),
        browsable("e1", f"{ROOT}/a.png", batch="batch-one-1234"),
        failed("e2", f"{ROOT}/b.png", outcome="retrying", batch="batch-one-1234"),
        failed("e1", f"{ROOT}/a.png", tier=2, asset_id=A1, batch="batch-one-1234"),
        scanned(1, complete=True, batch="batch-two-5678", started=T0 + 99, at=T0 + 100),
    ])
    text = render_status(catalog.status(now=T0 + 10))
    lines = text.splitlines()
    assert lines[0] == "assets: 1 (1 locations)"
    assert lines[1] == "  tier 1: 1 browsable · 0 pending"
    assert lines[2] == "  tier 2: 1 dead-lettered · 0 pending"
    assert lines[3] == "  tier 3: 1 failed in an earlier tier · 0 pending"  # tier 2's failure keeps it out
    assert "batches (2 of 2, newest first):" in text
    header = next(line for line in lines if "BATCH" in line).split()
    assert header[:5] == ["BATCH", "LANE", "TIER", "DONE", "TOTAL"]

    one = _row(text, "batch-on", "1")
    assert one[1:11] == ["batch", "1", "1", "1,200+", "0", "0", "0", "1", "1,199", "0.1"]  # total not final yet
    assert one[12] == "scanning"
    assert _row(text, "batch-on", "2")[3:7] == ["0", "1+", "0", "1"]  # tier 1 may still hand it more
    two = _row(text, "batch-tw", "1")
    assert two[4] == "1" and two[12] == "complete"
    assert lines.index(next(line for line in lines if "batch-tw" in line)) < lines.index(
        next(line for line in lines if "batch-on" in line))  # newest first


def test_status_says_how_much_memory_the_embedded_broker_holds_and_past_a_point_what_to_do(catalog: Catalog) -> None:
    status = catalog.status()
    assert "embedded broker" not in render_status(status)  # none runs, or an external broker: nothing to say
    small = render_status({**status, "embedded_broker_rss_bytes": 24 * 2**20})
    assert "  embedded broker: 24 MB in memory (it keeps every event since `damflow up` started)" \
        in small.splitlines()
    assert "Kafka" not in small
    big = render_status({**status, "embedded_broker_rss_bytes": 3 * 2**30})
    assert "embedded broker: 3,072 MB in memory" in big and "a restart of `damflow up` frees it" in big \
        and "Kafka or Redpanda" in big


def test_status_eta_is_shown_as_a_duration(catalog: Catalog) -> None:
    catalog.apply([scanned(10)] + [browsable(f"e{i}", f"{ROOT}/{i}.png", f"{i:02d}" * 32) for i in range(5)])
    text = render_status(catalog.status(now=T0 + 100))  # 5 done in 100 s, 5 to go: ~100 s
    assert _row(text, "b1", "1")[11] == "1m40s"


def test_asset_view_shows_what_a_person_needs(catalog: Catalog) -> None:
    catalog.apply([
        failed("e1", f"{ROOT}/a.png", outcome="retrying", at=T0 + 5, reason="file busy"),
        browsable("e1", f"{ROOT}/a.png", at=T0 + 8),
        browsable("e2", "/up/original", at=T0 + 9, display_name="sunset.png"),
        failed("e1", f"{ROOT}/a.png", tier=2, asset_id=A1, reason="exif unreadable", outcome="failed"),
    ])
    text = render_asset(catalog.asset(A1))
    assert text.splitlines()[0] == f"asset       {A1}"
    assert "PNG 1024×768, 1.5 KB" in text
    assert "tiers       1 browsable · 2 failed · 3 not reached" in text
    assert f"thumbs/a1/{A1}.256.webp" in text
    assert "locations (2)" in text
    assert f"  {ROOT}/a.png  (scan, batch b1" in text
    assert "/up/original as 'sunset.png'" in text
    assert "failures (2)" in text
    assert "tier 1 recovered after 1 attempt(s)" in text and "file busy" in text  # retried, then browsable
    assert "tier 2 failed" in text and "CorruptImage [corrupt_image] exif unreadable" in text


def test_asset_known_only_from_a_failure_renders_without_image_facts(catalog: Catalog) -> None:
    catalog.apply([failed("e1", f"{ROOT}/x.png", asset_id=A2, reason="bad crc")])
    text = render_asset(catalog.asset(A2))
    assert not any(line.startswith("image") for line in text.splitlines())
    # `show` of the demo's broken/truncated.png said tiers 2 and 3 were pending: nothing will come to them
    assert "tiers       1 dead-lettered · 2 not reached · 3 not reached" in text
    assert "locations (0)" in text
    assert "bad crc" in text


def test_batch_ids_are_told_apart_in_tables() -> None:
    # every upload batch showed as "upload-d..."-like prefixes: 8 characters of "upload-<hex>"
    from consumers.views import short_batch

    assert short_batch("upload-0123456789abcdef") == "upload-01234567"
    assert short_batch("reprocess-fedcba9876543210") == "reprocess-fedcba98"
    assert short_batch("449a3e16c0af4b6b8a163020be07f991") == "449a3e16"

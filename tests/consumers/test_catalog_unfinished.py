"""What the catalog shows as started but not finished: what `damflow reconcile` sends on again."""

from __future__ import annotations

from consumers.catalog import Catalog
from consumers.progress import finished
from schemas.events import AssetEnriched
from tests.consumers.test_catalog import A1, A2, ROOT, T0, browsable, failed, scanned
from tests.consumers.test_catalog_search import indexed

A3, A4, A5 = "c3" * 32, "d4" * 32, "e5" * 32


def enriched(asset_id: str, *, event_id: str, batch: str = "b1", skipped: str | None = None) -> AssetEnriched:
    return AssetEnriched(event_id=event_id, batch_id=batch, lane="batch", source="scan", asset_id=asset_id,
                         path=f"{ROOT}/{event_id}.png", quality={"score": 0.5}, enriched_at=T0 + 40, skipped=skipped)


def by_event(rows: list[dict]) -> dict[str, dict]:
    return {r["event_id"]: r for r in rows}


def test_each_file_resumes_at_the_tier_it_stopped_in_and_finished_or_failed_files_are_left(catalog: Catalog) -> None:
    catalog.apply([
        scanned(8, complete=True),
        browsable("e1", f"{ROOT}/e1.png", A1),  # tier 1 only: tier 2 lost
        browsable("e2", f"{ROOT}/e2.png", A2), indexed(A2, event_id="e2"),  # tier 3 lost
        browsable("e3", f"{ROOT}/e3.png", A3), indexed(A3, event_id="e3"), enriched(A3, event_id="e3"),  # done
        failed("e4", f"{ROOT}/e4.png", outcome="retrying"),  # its retry lost
        browsable("e5", f"{ROOT}/e5.png", A4), failed("e5", f"{ROOT}/e5.png", tier=2, asset_id=A4),  # dead in 2
        browsable("e6", f"{ROOT}/e6.png", A5),
        failed("e6", f"{ROOT}/e6.png", tier=2, asset_id=A5, outcome="retrying"),  # tier-2 retry lost
        browsable("e7", f"{ROOT}/e7.png", A1, at=T0 + 12), indexed(A1, event_id="e7"),
        enriched(A1, event_id="e7", skipped="duplicate"),  # done: the gate settled its tier 3
    ])
    rows = by_event(catalog.unfinished())
    assert {e: r["tier"] for e, r in rows.items()} == {"e1": 2, "e2": 3, "e4": 1, "e6": 2}
    assert (rows["e2"]["parser_version"], rows["e2"]["metadata_path"]) == (1, f"metadata/{A2[:2]}/{A2}.v1.json")
    assert rows["e4"]["path"] == f"{ROOT}/e4.png" and rows["e4"]["asset_id"] is None
    one = rows["e1"]
    assert (one["batch_id"], one["lane"], one["root"], one["asset_id"]) == ("b1", "batch", ROOT, A1)
    assert (one["location"], one["size"], one["format"], one["width"], one["height"], one["mtime_ns"]) == (
        f"{ROOT}/e1.png", 1500, "PNG", 1024, 768, 7)


def test_a_file_resumes_from_where_its_bytes_are_now(catalog: Catalog) -> None:
    catalog.apply([
        browsable("e1", f"{ROOT}/old.png", A1, at=T0 + 10),
        browsable("e2", f"{ROOT}/copy.png", A1, at=T0 + 11, batch="b2"),  # same bytes at another path
        browsable("e3", f"{ROOT}/old.png", A2, at=T0 + 20, batch="b3"),  # old.png now holds other bytes
        browsable("e4", f"{ROOT}/gone.png", A3, at=T0 + 10), browsable("e5", f"{ROOT}/gone.png", A4, at=T0 + 30),
    ])
    rows = by_event(catalog.unfinished())
    assert rows["e1"]["location"] == f"{ROOT}/copy.png"  # not old.png: tier 2 would read A2's bytes as A1's
    assert rows["e3"]["location"] == f"{ROOT}/old.png"
    assert rows["e4"]["location"] is None  # A3 is nowhere any more: nothing to read


def test_batches_with_files_the_catalog_never_heard_of(catalog: Catalog) -> None:
    catalog.apply([scanned(5, complete=True), browsable("e1", f"{ROOT}/e1.png"),
                   failed("e2", f"{ROOT}/e2.png"),
                   scanned(2, complete=True, batch="b2"), browsable("e3", f"{ROOT}/e3.png", A2, batch="b2"),
                   failed("e4", f"{ROOT}/e4.png", batch="b2")])
    assert [{k: b[k] for k in ("batch_id", "lane", "root", "first_tier", "files")} for b in catalog.unheard()] == [
        {"batch_id": "b1", "lane": "batch", "root": ROOT, "first_tier": 1, "files": 3}]
    from schemas.events import BatchScanned

    # given up as lost (at a `damflow up`, whose new broker has none of them): not unheard any more
    catalog.apply([BatchScanned(batch_id="b1", lane="batch", root=ROOT, found=5, complete=True, started_at=T0,
                                scanned_at=T0 + 50, lost=3)])
    assert catalog.unheard() == []
    p = catalog.progress("b1", 1, now=T0 + 60)
    assert (p.known_total, p.done, p.dead_lettered, p.lost, p.in_flight, p.eta_s) == (5, 1, 1, 3, 0, 0.0)
    assert finished(p)  # for `ingest --wait` and the dashboard too: they waited for the lost files for ever
    # one of them turns up after all (its event held back by the catalog, applied at the sink's next start)
    catalog.apply([failed("e5", f"{ROOT}/e5.png", outcome="retrying", at=T0 + 70)])
    p = catalog.progress("b1", 1, now=T0 + 80)
    assert (p.lost, p.retrying, p.in_flight, finished(p)) == (2, 1, 1, False)  # counted once, in flight again


def test_a_reprocess_whose_files_the_catalog_never_heard_of_is_reported_too(catalog: Catalog) -> None:
    """A reprocess batch whose tier-2 events were all lost with the broker stayed in flight for ever, and neither
    `damflow reconcile` nor its --dry-run (which `damflow status` points to) said a word about it."""
    from schemas.events import BatchScanned

    catalog.apply([BatchScanned(batch_id="reprocess-1", lane="batch", root="", found=3, complete=True,
                                started_at=T0, scanned_at=T0 + 1, first_tier=2),
                   failed("e1", f"{ROOT}/e1.png", tier=2, asset_id=A1, batch="reprocess-1")])
    assert catalog.unheard() == [{"batch_id": "reprocess-1", "lane": "batch", "root": "", "first_tier": 2,
                                  "started_at": T0, "updated_at": T0 + 20, "files": 2}]


def test_a_finished_catalog_has_nothing_unfinished(catalog: Catalog) -> None:
    catalog.apply([scanned(1, complete=True), browsable("e1", f"{ROOT}/e1.png"), indexed(A1, event_id="e1"),
                   enriched(A1, event_id="e1")])
    assert catalog.unfinished() == [] and catalog.unheard() == []

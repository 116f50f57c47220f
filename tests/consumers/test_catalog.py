"""The catalog projection: idempotent, order-independent, and honest about progress."""

from __future__ import annotations

import itertools
import json
import os
import random
import sqlite3
import stat
from pathlib import Path

import pytest

from consumers.catalog import (
    CATALOG_VERSION,
    MTIME_NS_MAX,
    MTIME_NS_MIN,
    AmbiguousId,
    Catalog,
    CatalogError,
    CatalogUnavailable,
)
from schemas.events import AssetBrowsable, AssetFailed, BatchScanned, FileDiscovered, ProgressEvent
from streams.errors import PermanentError

ROOT = "/data/shoot"
T0 = 1_700_000_000.0
A1 = "a1" * 32
A2 = "b2" * 32


def browsable(event_id: str, path: str, asset_id: str = A1, *, batch: str = "b1", at: float = T0 + 10,
              size: int = 1500, mtime_ns: int = 7, format: str = "PNG", **kw) -> AssetBrowsable:
    return AssetBrowsable(
        event_id=event_id, batch_id=batch, lane="batch", source="scan", asset_id=asset_id, path=path, size=size,
        mtime_ns=mtime_ns, format=format, width=1024, height=768,
        thumbnails={"256": f"thumbs/{asset_id[:2]}/{asset_id}.256.webp"}, discovered_at=at - 1, browsable_at=at,
        **kw,
    )


def failed(event_id: str, path: str, *, outcome: str = "dead_lettered", at: float = T0 + 20, batch: str = "b1",
           tier: int = 1, asset_id: str | None = None, attempts: int = 1, reason: str = "truncated",
           replays: int = 0, first: float | None = None, chain_known: bool = True,
           display_name: str | None = None) -> AssetFailed:
    """A failure; its retry chain began at ``first`` (default: ``at``, a first attempt), unless not known (sent
    by a worker from before the chain's start was carried)."""
    first = (at if first is None else first) if chain_known else None
    return AssetFailed(
        event_id=event_id, batch_id=batch, lane="batch", source="scan", tier=tier, path=path, asset_id=asset_id,
        error_class="CorruptImage", error_code="corrupt_image", reason=reason, retriable=outcome == "retrying",
        outcome=outcome, attempts=attempts, replay_count=replays, first_failure_at=first, failed_at=at,
        display_name=display_name,
    )


def scanned(found: int, *, complete: bool = False, batch: str = "b1", at: float = T0 + 1,
            skipped: int = 0, started: float = T0) -> BatchScanned:
    return BatchScanned(batch_id=batch, lane="batch", root=ROOT, found=found, skipped_unchanged=skipped,
                        complete=complete, started_at=started, scanned_at=at)


def dump(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table, sorted: two equal dumps mean two equal catalogs."""
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        db.close()


def mixed_history() -> list:
    """One batch through everything the catalog projects, in delivery order."""
    return [
        scanned(2),
        browsable("e1", f"{ROOT}/a.png"),
        failed("e2", f"{ROOT}/b.png", outcome="retrying", at=T0 + 11),
        browsable("e3", f"{ROOT}/copy-of-a.png", at=T0 + 12),
        scanned(4, complete=True, at=T0 + 13),
        failed("e4", f"{ROOT}/c.png", outcome="dead_lettered", asset_id=A2, at=T0 + 14),
        browsable("e2", f"{ROOT}/b.png", asset_id="c3" * 32, at=T0 + 15),
        failed("e1", f"{ROOT}/a.png", tier=2, asset_id=A1, at=T0 + 16, outcome="failed"),
    ]


# -- opening ---------------------------------------------------------------------------------------


def test_creates_parents_wal_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "catalog.sqlite"
    with Catalog(path):
        pass
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == CATALOG_VERSION
    db.close()
    with Catalog(path) as again:  # reopening an existing catalog is a no-op, not an error
        assert again.counts()["assets"] == 0


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    Catalog(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {CATALOG_VERSION + 1}")
    db.close()
    with pytest.raises(CatalogError, match="newer"):
        Catalog(path)


def test_readonly_without_catalog_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogUnavailable):
        Catalog(tmp_path / "missing.sqlite", readonly=True)
    assert not (tmp_path / "missing.sqlite").exists()


def test_readonly_handle_sees_writer_commits_and_cannot_write(make_catalog) -> None:
    writer = make_catalog()
    reader = make_catalog(readonly=True)
    assert reader.location(f"{ROOT}/a.png") is None
    writer.apply([browsable("e1", f"{ROOT}/a.png")])
    assert reader.location(f"{ROOT}/a.png") == (1500, 7, A1)
    assert reader.asset_count() == 1
    with pytest.raises(CatalogError, match="read-only"):
        reader.apply([browsable("e2", f"{ROOT}/b.png", A2)])
    writer.close()
    assert reader.asset_count() == 1  # still readable once the writer has gone


def test_readonly_opens_after_writer_closed(make_catalog) -> None:
    with make_catalog() as writer:
        writer.apply([browsable("e1", f"{ROOT}/a.png")])
    reader = make_catalog(readonly=True)
    assert reader.location(f"{ROOT}/a.png") == (1500, 7, A1)


# -- idempotence -----------------------------------------------------------------------------------


def test_apply_twice_changes_nothing(catalog: Catalog) -> None:
    events = mixed_history()
    assert catalog.apply(events) == {"b1"}
    once = dump(catalog.path)
    assert catalog.apply(events) == {"b1"}
    assert dump(catalog.path) == once
    assert catalog.progress("b1", 1, now=T0 + 100) == catalog.progress("b1", 1, now=T0 + 100)


def test_any_delivery_order_gives_the_same_catalog(make_catalog) -> None:
    events = mixed_history()
    in_order, reversed_, one_by_one = make_catalog("a.sqlite"), make_catalog("b.sqlite"), make_catalog("c.sqlite")
    in_order.apply(events)
    reversed_.apply(reversed(events))
    for event in events[3:] + events[:3] + events[::2]:  # rotated, then partly redelivered
        one_by_one.apply([event])
    assert dump(reversed_.path) == dump(in_order.path)
    assert dump(one_by_one.path) == dump(in_order.path)


def test_batch_tallies_match_a_count_of_the_batch_in_any_delivery_order(make_catalog) -> None:
    """The counts kept by trigger are exactly what a scan of ``batch_files`` gives, whatever the order."""
    rng = random.Random(7)
    events = []
    for i in range(60):
        batch, path = f"b{i % 3}", f"{ROOT}/f{i}.png"
        for attempt in range(rng.randrange(3)):  # a few failures first, some of them final
            outcome = rng.choice(["retrying", "retrying", "failed", "dead_lettered"])
            events.append(failed(f"e{i}", path, batch=batch, outcome=outcome, at=T0 + i + attempt,
                                 tier=rng.choice([1, 2])))
        if rng.random() < 0.8:
            events.append(browsable(f"e{i}", path, f"{i:064x}", batch=batch, at=T0 + 10 + i))
    scans = [scanned(20, complete=True, batch=f"b{b}") for b in range(3)]
    catalogs = []
    for n in range(3):
        shuffled = events + rng.sample(events, 20)  # redeliveries
        rng.shuffle(shuffled)
        catalog = make_catalog(f"c{n}.sqlite")
        for start in range(0, len(shuffled), 7):
            catalog.apply(scans + shuffled[start:start + 7])
        catalogs.append(catalog)
    for catalog in catalogs:
        db = sqlite3.connect(catalog.path)
        counted = sorted(db.execute("SELECT batch_id, tier, state, COUNT(*) FROM batch_files "
                                    "GROUP BY batch_id, tier, state").fetchall())
        seen = sorted(db.execute("SELECT batch_id, 0, 'seen', COUNT(DISTINCT event_id) FROM batch_files "
                                 "GROUP BY batch_id").fetchall())
        assert sorted(db.execute("SELECT * FROM batch_tallies").fetchall()) == sorted(counted + seen)
        db.close()
        assert [catalog.progress(f"b{b}", t, now=T0 + 500) for b in range(3) for t in (1, 2)] == [
            catalogs[0].progress(f"b{b}", t, now=T0 + 500) for b in range(3) for t in (1, 2)]


def test_failed_apply_rolls_back_the_whole_batch(catalog: Catalog) -> None:
    def events():
        yield browsable("e1", f"{ROOT}/a.png")
        raise RuntimeError("decoder blew up mid-batch")

    with pytest.raises(RuntimeError):
        catalog.apply(events())
    assert catalog.counts() == {k: 0 for k in catalog.counts()}
    catalog.apply([browsable("e1", f"{ROOT}/a.png")])  # the connection is usable afterwards
    assert catalog.asset_count() == 1


def _synchronous_at_commits(catalog: Catalog) -> list[int]:
    """The ``synchronous`` setting (1 NORMAL, 2 FULL) each COMMIT the catalog issues from now on runs under,
    followed through the SQL it sends."""
    seen: list[int] = []
    current = [catalog._db.execute("PRAGMA synchronous").fetchone()[0]]

    def trace(sql: str) -> None:
        if sql.startswith("PRAGMA synchronous ="):
            current[0] = {"NORMAL": 1, "FULL": 2}[sql.partition("=")[2].strip()]
        elif sql.strip() == "COMMIT":
            seen.append(current[0])

    catalog._db.set_trace_callback(trace)
    return seen


def test_a_commit_waits_for_the_disk_unless_told_the_events_come_again(catalog: Catalog) -> None:
    commits = _synchronous_at_commits(catalog)
    catalog.apply([browsable("e1", f"{ROOT}/a.png")])
    catalog.apply([browsable("e2", f"{ROOT}/b.png")], durable=False)  # the sink applies them again, synced
    catalog.apply([browsable("e3", f"{ROOT}/c.png")])
    assert commits == [2, 1, 2]  # FULL, NORMAL, FULL: one transaction's setting does not stay behind

    def events():
        yield browsable("e4", f"{ROOT}/d.png")
        raise RuntimeError("decoder blew up mid-batch")

    with pytest.raises(RuntimeError):
        catalog.apply(events(), durable=False)
    assert catalog._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again after a rollback too
    assert catalog.location(f"{ROOT}/b.png") is not None and catalog.location(f"{ROOT}/d.png") is None


def test_rows_committed_unsynced_are_synced_by_the_next_synced_apply_even_one_that_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the catalog reached through a link: SQLite keeps the log beside the file the link leads to
    (tmp_path / "real").mkdir()
    (tmp_path / "catalog.sqlite").symlink_to(tmp_path / "real" / "catalog.sqlite")
    catalog = Catalog(tmp_path / "catalog.sqlite")
    wal = tmp_path / "real" / "catalog.sqlite-wal"
    synced: list[str] = []
    fsync = os.fsync

    def recorded(fd: int) -> None:
        st = os.fstat(fd)
        synced.append("wal" if (st.st_dev, st.st_ino) == (wal.stat().st_dev, wal.stat().st_ino) else
                      "dir" if stat.S_ISDIR(st.st_mode) else "other")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recorded)  # SQLite's own syncs do not come through here
    try:
        event = browsable("e1", f"{ROOT}/a.png")
        catalog.apply([event])
        assert synced == ["wal", "dir"]  # after opening: what a handle before this one left unsynced, if anything
        catalog.apply([event])
        assert synced == ["wal", "dir"]  # a synced commit syncs itself
        catalog.apply([event], durable=False)
        catalog.apply([event])  # the same event again (the sink's reading): its commit may write no page at all
        catalog.apply([browsable("e2", f"{ROOT}/b.png")])
        assert synced == ["wal", "dir"] * 2  # the log synced once after the unsynced commit; not again
    finally:
        catalog.close()


def test_other_event_types_are_ignored(catalog: Catalog) -> None:
    discovered = FileDiscovered(event_id="e1", batch_id="b1", lane="batch", source="scan", path="/x.png",
                                size=1, mtime_ns=1, discovered_at=T0)
    progress = ProgressEvent(batch_id="b1", tier=1, known_total=1, total_final=True, done=1, at=T0)
    assert catalog.apply([discovered, progress]) == set()
    assert catalog.counts()["batches"] == 0
    assert catalog.progress("b1", 1) is None


# -- assets and locations --------------------------------------------------------------------------


def test_identical_bytes_at_two_paths_are_one_asset_with_two_locations(catalog: Catalog) -> None:
    catalog.apply([browsable("e1", f"{ROOT}/a.png", at=T0 + 5),
                   browsable("e2", f"{ROOT}/sub/a-copy.png", at=T0 + 3, deduplicated=True)])
    assert catalog.asset_count() == 1
    assert catalog.location_count() == 2
    asset = catalog.asset(A1)
    assert [loc["path"] for loc in asset["locations"]] == [f"{ROOT}/sub/a-copy.png", f"{ROOT}/a.png"]
    assert asset["first_seen_at"] == T0 + 2  # earliest sighting, whatever the delivery order
    assert asset["browsable_at"] == T0 + 3


def test_new_content_at_a_path_replaces_the_old_and_replays_do_not_revert(catalog: Catalog) -> None:
    old = browsable("e1", f"{ROOT}/a.png", A1, at=T0 + 5, size=100, mtime_ns=1)
    new = browsable("e2", f"{ROOT}/a.png", A2, at=T0 + 50, size=200, mtime_ns=2, batch="b2")
    catalog.apply([old, new, old])
    assert catalog.location(f"{ROOT}/a.png") == (200, 2, A2)
    assert catalog.asset_count() == 2  # the old content stays an asset; it just has no location now
    assert catalog.asset(A1)["locations"] == []


def test_a_location_is_looked_up_by_its_exact_path_and_failed_paths_are_none(catalog: Catalog) -> None:
    catalog.apply([
        browsable("e1", f"{ROOT}/a.png"),
        browsable("e3", f"{ROOT}2/sibling.png", A2, size=9, mtime_ns=3),  # shares the root's spelling
        failed("e5", f"{ROOT}/broken.png"),  # failures are retried by a rescan, so not a location
    ])
    assert catalog.location(f"{ROOT}/a.png") == (1500, 7, A1)
    assert catalog.location(f"{ROOT}2/sibling.png") == (9, 3, A2)
    assert catalog.location(f"{ROOT}/broken.png") is None and catalog.location(ROOT) is None


def test_failure_with_asset_id_makes_a_stub_and_without_records_the_path(catalog: Catalog) -> None:
    catalog.apply([failed("e1", f"{ROOT}/x.png", asset_id=A2, reason="bad crc"),
                   failed("e2", f"{ROOT}/y.png", reason="unreadable")])
    assert catalog.counts()["failures"] == 2
    assert catalog.counts()["browsable"] == 0
    stub = catalog.asset(A2)
    assert stub["size"] is None and stub["tier1_state"] == "dead_lettered"
    assert [f["reason"] for f in stub["failures"]] == ["bad crc"]
    assert catalog.asset(f"{ROOT}/y.png") is None  # no asset behind a path that never hashed


def test_a_file_that_failed_once_hashed_is_shown_by_its_path(catalog: Catalog) -> None:
    # `damflow show broken/truncated.png` said "no asset" for a dead-lettered file the catalog holds by id
    catalog.apply([failed("e1", f"{ROOT}/x.png", asset_id=A2, reason="bad crc", at=T0 + 20),
                   browsable("e2", f"{ROOT}/a.png", at=T0 + 30),
                   failed("e3", f"{ROOT}/a.png", asset_id=A2, at=T0 + 10, batch="b0")])  # since a location
    assert catalog.asset(f"{ROOT}/x.png")["asset_id"] == A2
    assert [f["reason"] for f in catalog.asset(f"{ROOT}/x.png")["failures"]][-1] == "bad crc"
    assert catalog.asset(f"{ROOT}/a.png")["asset_id"] == A1  # what the path holds now comes first


def test_retry_that_succeeds_is_done_and_a_late_failure_does_not_undo_it(catalog: Catalog) -> None:
    path = f"{ROOT}/a.png"
    catalog.apply([failed("e1", path, outcome="retrying", at=T0 + 5, asset_id=A1)])
    assert catalog.progress("b1", 1, now=T0 + 6).retrying == 1
    assert catalog.asset(A1)["tier1_state"] == "retrying"

    catalog.apply([browsable("e1", path, at=T0 + 8)])
    catalog.apply([failed("e1", path, outcome="dead_lettered", at=T0 + 9, asset_id=A1)])  # stale, reordered
    p = catalog.progress("b1", 1, now=T0 + 10)
    assert (p.done, p.retrying, p.dead_lettered, p.failed) == (1, 0, 0, 0)
    asset = catalog.asset(A1)
    assert asset["tier1_state"] == "browsable"
    assert [(f["outcome"], f["reason"]) for f in asset["failures"]] == [("recovered", "truncated")]  # its history


def test_a_dead_letter_replayed_and_then_done_shows_as_recovered(catalog: Catalog) -> None:
    # `show` printed "tier 1 dead-lettered after 3 attempt(s)" beside "browsable" after `dlq replay` succeeded
    path = f"{ROOT}/a.png"
    catalog.apply([failed("e1", path, asset_id=A1, attempts=3, at=T0 + 5)])
    assert [f["outcome"] for f in catalog.asset(A1)["failures"]] == ["dead_lettered"]
    catalog.apply([browsable("e1", path, at=T0 + 50, replay_count=1)])
    assert [(f["outcome"], f["attempts"]) for f in catalog.asset(A1)["failures"]] == [("recovered", 3)]


def test_a_failure_retried_and_then_done_shows_as_recovered_and_attempts_count_per_event(catalog: Catalog) -> None:
    # `show` printed "tier 1 retrying" next to "browsable" for a file that succeeded on its retry; and a path
    # failing once in a new batch showed the attempts of an older batch's chain
    path = f"{ROOT}/a.png"
    catalog.apply([failed("e1", path, outcome="retrying", at=T0 + 5, asset_id=A1), browsable("e1", path)])
    assert [f["outcome"] for f in catalog.asset(A1)["failures"]] == ["recovered"]
    other = f"{ROOT}/b.png"
    catalog.apply([failed("e2", other, asset_id=A2, attempts=3, at=T0 + 20)])
    catalog.apply([failed("e3", other, asset_id=A2, attempts=1, outcome="retrying", at=T0 + 40, batch="b2")])
    [row] = catalog.asset(A2)["failures"]
    assert (row["batch_id"], row["outcome"], row["attempts"]) == ("b2", "retrying", 1)


def test_a_failure_names_the_content_of_the_latest_failure_whatever_the_order(make_catalog) -> None:
    # a path whose content changed between two failures: the row took the asset of whichever came last
    path = f"{ROOT}/changed.png"
    events = [failed("e1", path, asset_id=A1, at=T0 + 20, reason="old bytes"),
              failed("e2", path, asset_id=A2, at=T0 + 30, reason="new bytes", batch="b2")]
    for name, order in (("in-order.sqlite", events), ("reversed.sqlite", events[::-1])):
        cat = make_catalog(name)
        for event in order:
            cat.apply([event])
        assert [f["reason"] for f in cat.asset(A2)["failures"]] == ["new bytes"], name
        assert cat.asset(A1)["failures"] == [], name


def test_tier1_failure_before_hashing_shows_on_the_asset_it_became(catalog: Catalog) -> None:
    path = f"{ROOT}/a.png"
    catalog.apply([failed("e1", path, outcome="retrying", at=T0 + 5), browsable("e1", path, at=T0 + 8)])
    assert [f["path"] for f in catalog.asset(A1)["failures"]] == [path]


def test_latest_failure_outcome_wins_whatever_the_order(catalog: Catalog) -> None:
    path = f"{ROOT}/a.png"
    first = failed("e1", path, outcome="retrying", at=T0 + 5, attempts=1)
    last = failed("e1", path, outcome="dead_lettered", at=T0 + 9, attempts=3)
    catalog.apply([last, first])
    p = catalog.progress("b1", 1, now=T0 + 10)
    assert (p.retrying, p.dead_lettered) == (0, 1)


def test_the_later_step_of_a_retry_chain_wins_whatever_the_workers_clocks_say(make_catalog) -> None:
    # attempt 3 ran on a worker whose clock is 4 s behind the one that ran attempt 1 (more than the backoff):
    # ordered by time, attempt 1's "retrying" outranked the dead letter and the batch stayed in flight for ever
    path = f"{ROOT}/a.png"
    first = failed("e1", path, outcome="retrying", at=T0 + 9, attempts=1, asset_id=A1, reason="timed out")
    last = failed("e1", path, outcome="dead_lettered", at=T0 + 5, attempts=3, asset_id=A1, reason="corrupt",
                  first=T0 + 9)  # the chain's start travels with its retries
    for name, order in (("in-order.sqlite", [first, last]), ("reversed.sqlite", [last, first])):
        cat = make_catalog(name)
        for event in (scanned(1, complete=True), *order):
            cat.apply([event])
        p = cat.progress("b1", 1, now=T0 + 10)
        assert (p.retrying, p.dead_lettered, p.in_flight, p.total_final) == (0, 1, 0, True), name
        asset = cat.asset(A1)
        assert asset["tier1_state"] == "dead_lettered", name
        assert [(f["outcome"], f["attempts"], f["reason"]) for f in asset["failures"]] == [
            ("dead_lettered", 3, "corrupt")], name


def test_a_replay_starts_a_new_chain_that_outranks_the_dead_letter_whatever_the_clocks(make_catalog) -> None:
    # a replayed event keeps its id and batch: its first attempt (replay 1) comes after the dead letter of the
    # chain before it (replay 0, attempt 3), even stamped earlier by a worker whose clock is behind
    path = f"{ROOT}/a.png"
    dead = failed("e1", path, at=T0 + 20, attempts=3, asset_id=A1, first=T0 + 10)
    again = failed("e1", path, outcome="retrying", at=T0 + 15, attempts=1, replays=1, asset_id=A1)
    for name, order in (("in-order.sqlite", [dead, again]), ("reversed.sqlite", [again, dead])):
        cat = make_catalog(name)
        for event in (scanned(1, complete=True), *order):
            cat.apply([event])
        p = cat.progress("b1", 1, now=T0 + 30)
        assert (p.retrying, p.dead_lettered, p.in_flight) == (1, 0, 1), name  # being tried again
        assert cat.asset(A1)["tier1_state"] == "retrying", name
        [row] = cat.asset(A1)["failures"]
        assert (row["outcome"], row["attempts"]) == ("retrying", 1), name
        cat.apply([browsable("e1", path, at=T0 + 16)])
        assert cat.progress("b1", 1, now=T0 + 30).done == 1, name


def test_failures_of_two_events_and_a_skewed_chain_agree_in_every_delivery_order(make_catalog) -> None:
    # one chain's steps ordered by step and two events' failures by time made no order at all (A3 beats A1,
    # B beats A3, A1 beats B), so the rows of a path and an asset depended on the order events came in
    path = f"{ROOT}/a.png"
    events = [failed("eA", path, outcome="retrying", at=T0 + 110, attempts=1, asset_id=A1),  # chain A: 110
              failed("eA", path, outcome="retrying", at=T0 + 101, attempts=2, asset_id=A1, first=T0 + 110),
              failed("eA", path, at=T0 + 102, attempts=3, asset_id=A1, first=T0 + 110, reason="chain A",
                     display_name="A.png"),
              # (the same bytes uploaded again under another name: an upload's path is its content's)
              failed("eB", path, at=T0 + 105, asset_id=A1, batch="b2", reason="event B", display_name="B.png")]
    dumps = []
    for n, order in enumerate(itertools.permutations(events)):
        cat = make_catalog(f"order-{n}.sqlite")
        for event in (*order, order[0]):  # and a redelivery
            cat.apply([event])
        dumps.append(dump(cat.path))
        assert [(f["reason"], f["attempts"]) for f in cat.asset(A1)["failures"]] == [("chain A", 3)]
        assert [r[0] for r in cat._db.execute("SELECT display_name FROM failures")] == ["A.png"]  # the winner's
    assert all(d == dumps[0] for d in dumps)


# -- progress --------------------------------------------------------------------------------------


def test_progress_counts_every_file_in_exactly_one_bucket(catalog: Catalog) -> None:
    catalog.apply([
        scanned(6, complete=True),
        browsable("e1", f"{ROOT}/1.png"), browsable("e2", f"{ROOT}/2.png", A2),
        failed("e3", f"{ROOT}/3.png", outcome="failed"),
        failed("e4", f"{ROOT}/4.png", outcome="dead_lettered"),
        failed("e5", f"{ROOT}/5.png", outcome="retrying"),
    ])
    p = catalog.progress("b1", 1, now=T0 + 40)
    assert isinstance(p, ProgressEvent)
    assert (p.known_total, p.total_final) == (6, True)
    assert (p.done, p.failed, p.dead_lettered, p.retrying) == (2, 1, 1, 1)
    assert p.in_flight == 2  # the retrying file and the one not heard of yet
    assert p.done + p.failed + p.dead_lettered + p.in_flight == p.known_total


def test_out_of_order_scan_reports_keep_the_largest_total_and_completion(catalog: Catalog) -> None:
    catalog.apply([scanned(10, complete=True, at=T0 + 9, skipped=3)])
    catalog.apply([scanned(4, at=T0 + 2, skipped=1)])  # an earlier running total, delivered late
    p = catalog.progress("b1", 1, now=T0 + 10)
    assert (p.known_total, p.total_final) == (10, True)
    assert catalog.status()["batches"][0]["skipped_unchanged"] == 3


def test_batch_seen_before_any_scan_report_grows_with_files_seen(catalog: Catalog) -> None:
    catalog.apply([browsable("e1", f"{ROOT}/1.png"), failed("e2", f"{ROOT}/2.png", outcome="retrying")])
    p = catalog.progress("b1", 1, now=T0 + 30)
    assert (p.known_total, p.total_final, p.in_flight) == (2, False, 1)
    catalog.apply([scanned(1, at=T0 + 31)])  # the scanner's count lags the files already seen
    catalog.apply([browsable("e3", f"{ROOT}/3.png", A2)])
    assert catalog.progress("b1", 1, now=T0 + 40).known_total == 3


def test_rate_and_eta_while_running_then_frozen_once_finished(catalog: Catalog) -> None:
    catalog.apply([scanned(10)] + [browsable(f"e{i}", f"{ROOT}/{i}.png", f"{i:02d}" * 32, at=T0 + i)
                                   for i in range(1, 5)])
    running = catalog.progress("b1", 1, now=T0 + 10)
    assert running.rate == pytest.approx(0.4)  # 4 done in the 10 s since the scan started
    assert running.eta_s == pytest.approx(6 / 0.4)
    assert running.at == T0 + 10

    catalog.apply([scanned(11, complete=True, at=T0 + 11)])
    catalog.apply([browsable(f"e{i}", f"{ROOT}/{i}.png", f"{i:02d}" * 32, at=T0 + 5) for i in range(5, 11)])
    catalog.apply([failed("e11", f"{ROOT}/11.png", at=T0 + 30)])
    done = catalog.progress("b1", 1, now=T0 + 1000)
    assert (done.known_total, done.done, done.dead_lettered, done.in_flight, done.eta_s) == (11, 10, 1, 0, 0.0)
    assert done.rate == pytest.approx(10 / 5)  # up to the last done, not to "now"


def test_no_rate_means_no_eta(catalog: Catalog) -> None:
    catalog.apply([scanned(3)])
    p = catalog.progress("b1", 1, now=T0 + 5)
    assert (p.done, p.rate, p.eta_s, p.in_flight) == (0, 0.0, None, 3)


def test_later_tier_expects_what_the_tier_before_finished(catalog: Catalog) -> None:
    catalog.apply([
        scanned(3, complete=True),
        browsable("e1", f"{ROOT}/1.png"), browsable("e2", f"{ROOT}/2.png", A2),
        failed("e3", f"{ROOT}/3.png", outcome="dead_lettered"),
        failed("e1", f"{ROOT}/1.png", tier=2, asset_id=A1, outcome="dead_lettered"),
    ])
    p2 = catalog.progress("b1", 2, now=T0 + 30)
    assert (p2.known_total, p2.total_final, p2.dead_lettered, p2.in_flight) == (2, True, 1, 1)
    assert catalog.progress("b1", 1, now=T0 + 30).dead_lettered == 1  # tier 2's failure is not tier 1's
    assert catalog.asset(A1)["tier1_state"] == "browsable"
    assert catalog.asset(A1)["tier2_state"] == "dead_lettered"


def test_a_batch_of_uploads_finishes_once_it_says_it_is_complete(catalog: Catalog) -> None:
    # uploads sent no closing count, as the scanner does: their batches were never final, "scanning" for ever
    up = dict(batch="upload-1")
    catalog.apply([browsable("e1", "/data/originals/a1/x.png", **up)])
    assert not catalog.progress("upload-1", 1, now=T0 + 20).total_final
    catalog.apply([BatchScanned(batch_id="upload-1", lane="interactive", root="", found=2, complete=True,
                                started_at=T0, scanned_at=T0 + 11)])
    p = catalog.progress("upload-1", 1, now=T0 + 20)
    assert (p.known_total, p.total_final, p.in_flight) == (2, True, 1)
    catalog.apply([browsable("e2", "/data/originals/b2/y.png", A2, **up)])
    p = catalog.progress("upload-1", 1, now=T0 + 20)
    assert (p.done, p.total_final, p.in_flight) == (2, True, 0)


def test_a_batch_that_enters_at_tier_2_has_nothing_in_tier_1_and_finishes_in_tier_2(catalog: Catalog) -> None:
    # `damflow reprocess`: its files never pass tier 1, which showed them in flight there for ever
    from tests.consumers.test_catalog_search import indexed

    catalog.apply([
        BatchScanned(batch_id="re-1", lane="batch", root="", found=2, complete=True, started_at=T0,
                     scanned_at=T0 + 1, first_tier=2),
        indexed(A1, event_id="r1", batch="re-1"),
    ])
    p1 = catalog.progress("re-1", 1, now=T0 + 40)
    assert (p1.known_total, p1.total_final, p1.done, p1.in_flight) == (0, True, 0, 0)
    p2 = catalog.progress("re-1", 2, now=T0 + 40)
    assert (p2.known_total, p2.total_final, p2.done, p2.in_flight) == (2, True, 1, 1)
    catalog.apply([failed("r2", f"{ROOT}/2.png", tier=2, asset_id=A2, batch="re-1")])
    p2 = catalog.progress("re-1", 2, now=T0 + 40)
    assert (p2.done, p2.dead_lettered, p2.in_flight) == (1, 1, 0)
    assert catalog.progress("re-1", 3, now=T0 + 40).known_total == 1  # what tier 2 finished as done


def test_unknown_batch_has_no_progress(catalog: Catalog) -> None:
    assert catalog.progress("nope", 1) is None


# -- lookups ---------------------------------------------------------------------------------------


def test_asset_by_full_id_prefix_and_path(catalog: Catalog) -> None:
    catalog.apply([browsable("e1", f"{ROOT}/a.png"), browsable("e2", f"{ROOT}/b.png", A2)])
    assert catalog.asset(A1)["asset_id"] == A1
    assert catalog.asset(A1[:6].upper())["asset_id"] == A1
    assert catalog.asset(f"  {ROOT}/b.png ")["asset_id"] == A2
    assert catalog.asset("ffffff") is None
    assert catalog.asset("/not/there.png") is None
    assert catalog.asset(f"{ROOT}/caf\udce9.png") is None  # a path that is not UTF-8 (a shell's argument)


def test_ambiguous_or_short_prefix_is_a_clear_permanent_error(catalog: Catalog) -> None:
    twin = A1[:10] + "f" * 54
    catalog.apply([browsable("e1", f"{ROOT}/a.png"), browsable("e2", f"{ROOT}/b.png", twin)])
    with pytest.raises(AmbiguousId, match="several") as info:
        catalog.asset(A1[:8])
    assert isinstance(info.value, PermanentError) and not info.value.retriable
    assert catalog.asset(A1[:11])["asset_id"] == A1  # one more character tells them apart
    with pytest.raises(AmbiguousId, match="too short"):
        catalog.asset(A1[:5])


def test_asset_is_json_able_with_locations_failures_and_thumbnails(catalog: Catalog) -> None:
    catalog.apply(mixed_history())
    asset = catalog.asset(A1)
    assert json.loads(json.dumps(asset)) == asset
    assert asset["thumbnails"] == {"256": f"thumbs/a1/{A1}.256.webp"}
    assert (asset["format"], asset["width"], asset["height"], asset["size"]) == ("PNG", 1024, 768, 1500)
    assert len(asset["locations"]) == 2
    assert (asset["tier1_state"], asset["tier2_state"], asset["tier3_state"]) == ("browsable", "failed", None)
    assert [(f["tier"], f["error_code"]) for f in asset["failures"]] == [(2, "corrupt_image")]


# -- status ----------------------------------------------------------------------------------------


def test_status_shape_counts_and_newest_batch_first(catalog: Catalog) -> None:
    catalog.apply(mixed_history())
    catalog.apply([BatchScanned(batch_id="b2", lane="interactive", root="/up", found=1, complete=True,
                                started_at=T0 + 500, scanned_at=T0 + 500)])
    status = catalog.status(now=T0 + 600)
    assert json.loads(json.dumps(status)) == status
    assert (status["assets"], status["locations"], status["batch_count"]) == (3, 3, 2)
    assert status["asset_states"]["tier1"] == {"browsable": 2, "dead_lettered": 1, "pending": 0}
    # the asset dead-lettered in tier 1 is not pending in tier 2 (`damflow status` after `make demo` said so),
    # nor the one failed in tier 2 in tier 3
    assert status["asset_states"]["tier2"] == {"failed": 1, "failed_earlier": 1, "pending": 1}
    assert status["asset_states"]["tier3"] == {"failed_earlier": 2, "pending": 1}
    assert [b["batch_id"] for b in status["batches"]] == ["b2", "b1"]
    b1 = status["batches"][1]
    assert b1["scan_complete"] is True and b1["root"] == ROOT and b1["started_at"] == T0
    assert set(b1["tiers"]) == {"tier1", "tier2"}
    tier1 = b1["tiers"]["tier1"]
    assert {k: tier1[k] for k in ("known_total", "done", "failed", "dead_lettered", "retrying", "in_flight")} == {
        "known_total": 4, "done": 3, "failed": 0, "dead_lettered": 1, "retrying": 0, "in_flight": 0}
    assert catalog.status(limit=1)["batches"][0]["batch_id"] == "b2"
    assert status["batches"][0]["tiers"]["tier1"]["in_flight"] == 1


def test_the_writer_syncs_every_commit_to_disk(tmp_path: Path) -> None:
    # the sink commits the events' offsets after the catalog's commit: that commit must survive a power loss
    with Catalog(tmp_path / "c.sqlite") as catalog:
        assert catalog._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert catalog._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("mtime_ns", [
    -1_000_000_000, (1 << 63) - 1, 1 << 63, 10413792000000000000, MTIME_NS_MIN, MTIME_NS_MAX,
], ids=["1969", "sqlites-last-integer-2262", "a-nanosecond-later", "2300", "first-kept-1901", "last-kept-2486"])
def test_a_files_time_reads_back_as_stored_so_a_rescan_finds_it_unchanged(catalog: Catalog, mtime_ns: int) -> None:
    # past 2262 a time is kept two's-complement (it overflowed SQLite's integer): it must read back as it came
    path = f"{ROOT}/a.png"
    catalog.apply([browsable("e1", path, mtime_ns=mtime_ns)])
    assert catalog.location(path) == (1500, mtime_ns, A1)  # what the scanner compares with stat
    assert catalog.asset(A1)["locations"][0]["mtime_ns"] == mtime_ns


def test_a_file_dated_2300_is_skipped_unchanged_on_a_rescan(catalog: Catalog, tmp_path: Path) -> None:
    image = tmp_path / "shoot" / "a.png"
    image.parent.mkdir()
    image.write_bytes(b"\x89PNG")
    os.utime(image, ns=(10413792000000000000, 10413792000000000000))  # touch -d 2300-01-01
    st = image.stat()
    catalog.apply([browsable("e1", str(image), size=st.st_size, mtime_ns=st.st_mtime_ns)])
    known = catalog.location(str(image))
    assert known is not None and known[:2] == (st.st_size, st.st_mtime_ns)  # streams/scanner.py's unchanged check


def test_a_file_time_past_what_is_kept_is_clamped_and_the_file_still_browsable(catalog: Catalog) -> None:
    # only a time msgspec carries can arrive: [-2**63, 2**64)
    catalog.apply([browsable("e1", f"{ROOT}/late.png", mtime_ns=(1 << 64) - 1),
                   browsable("e2", f"{ROOT}/early.png", mtime_ns=-(1 << 63))])
    assert catalog.location(f"{ROOT}/late.png") == (1500, MTIME_NS_MAX, A1)
    assert catalog.location(f"{ROOT}/early.png") == (1500, MTIME_NS_MIN, A1)


@pytest.mark.parametrize("reverse", [False, True], ids=["in order", "success first"])
def test_a_file_whose_content_changed_between_attempts_keeps_the_asset_it_became(make_catalog, reverse: bool) -> None:
    # attempt 1 hashed the file mid-copy (A1) and timed out, attempt 2 made it browsable as A2: on different
    # partitions, so either may be applied first. Success first, the file's row kept A1, and a reconcile resumed
    # its tier 2 from an asset with no location: "gone", never sent again
    steps = [failed("e1", f"{ROOT}/x.png", outcome="retrying", asset_id=A1, at=T0 + 5),
             browsable("e1", f"{ROOT}/x.png", A2)]
    cat = make_catalog()
    cat.apply([scanned(1, complete=True)])
    for event in reversed(steps) if reverse else steps:
        cat.apply([event])
    assert [tuple(r) for r in cat._db.execute("SELECT asset_id, state FROM batch_files")] == [(A2, "done")]
    assert [(u["tier"], u["asset_id"], u["location"]) for u in cat.unfinished()] == [(2, A2, f"{ROOT}/x.png")]


@pytest.mark.parametrize("reverse", [False, True], ids=["in order", "last step first"])
def test_an_asset_takes_its_files_last_step_also_when_that_step_could_not_name_it(make_catalog, reverse: bool) -> None:
    # the retry found the file gone (no bytes, no asset id) and dead-lettered it: the asset that attempt 1
    # hashed stayed "retrying" for good (in `status`, in `show`, pending in tiers 2 and 3)
    steps = [failed("e1", f"{ROOT}/x.png", outcome="retrying", asset_id=A1, at=T0 + 5, attempts=1, first=T0 + 5),
             failed("e1", f"{ROOT}/x.png", outcome="dead_lettered", at=T0 + 40, attempts=2, first=T0 + 5)]
    cat = make_catalog()
    cat.apply([scanned(1, complete=True)])
    for event in reversed(steps) if reverse else steps:
        cat.apply([event])
    assert cat.asset(A1)["tier1_state"] == "dead_lettered"
    assert cat.status(now=T0 + 100)["asset_states"]["tier1"] == {"dead_lettered": 1, "pending": 0}


@pytest.mark.parametrize("reverse", [False, True], ids=["in order", "last step first"])
@pytest.mark.parametrize("first_outcome", ["dead_lettered", "retrying"], ids=["fixed and replayed", "changed"])
def test_an_asset_whose_file_is_done_since_under_other_content_is_superseded(
        make_catalog, reverse: bool, first_outcome: str) -> None:
    # a corrupt file dead-lettered (content A1), fixed on disk and its letter replayed (content A2); or a file that
    # changed before its retry: A1's failure stayed in `status` ("1 dead-lettered", with no letter left to
    # replay) and in `show`, for good; a retrying A1 counted as pending in every tier
    steps = [failed("e1", f"{ROOT}/x.png", outcome=first_outcome, asset_id=A1, at=T0 + 5),
             browsable("e1", f"{ROOT}/x.png", A2, at=T0 + 40, replay_count=1 if first_outcome != "retrying" else 0)]
    cat = make_catalog()
    cat.apply([scanned(1, complete=True)])
    for event in reversed(steps) if reverse else steps:
        cat.apply([event])
    states = cat.status(now=T0 + 100)["asset_states"]
    assert states["tier1"] == {"browsable": 1, "superseded": 1, "pending": 0}
    assert states["tier2"] == {"superseded": 1, "pending": 1}  # A2's tier 2 is on its way; A1's never is
    shown = cat.asset(A1)
    assert shown["tier1_state"] == "superseded" and [f["outcome"] for f in shown["failures"]] == ["recovered"]
    assert cat.asset(A2)["tier1_state"] == "browsable"


def test_an_asset_a_file_still_fails_with_is_not_superseded(make_catalog) -> None:
    # the same content failed at two paths; one of them was fixed since: the other one's letter still waits
    steps = [failed("e1", f"{ROOT}/x.png", asset_id=A1, at=T0 + 5), failed("e2", f"{ROOT}/y.png", asset_id=A1),
             browsable("e1", f"{ROOT}/x.png", A2, at=T0 + 40, replay_count=1)]
    cat = make_catalog()
    cat.apply([scanned(2, complete=True), *steps])
    assert cat.status(now=T0 + 100)["asset_states"]["tier1"] == {"browsable": 1, "dead_lettered": 1, "pending": 0}
    assert cat.asset(A1)["tier1_state"] == "dead_lettered"


def test_attempts_that_hashed_different_contents_leave_the_same_states_in_either_order(make_catalog) -> None:
    # the file changed between attempts: each failure names another asset; the asset states a catalog ends with
    # must not depend on which failure it read first
    steps = [failed("e1", f"{ROOT}/x.png", outcome="retrying", asset_id=A1, at=T0 + 5, attempts=1, first=T0 + 5),
             failed("e1", f"{ROOT}/x.png", outcome="dead_lettered", asset_id=A2, at=T0 + 40, attempts=2,
                    first=T0 + 5)]
    tables = []
    for n, order in enumerate((steps, steps[::-1])):
        cat = make_catalog(f"{n}.sqlite")
        cat.apply([scanned(1, complete=True)])
        for event in order:
            cat.apply([event])
        tables.append({t: rows for t, rows in dump(cat.path).items() if t in ("asset_tiers", "batch_files")})
        assert cat.asset(A2)["tier1_state"] == "dead_lettered"
    assert tables[0] == tables[1]

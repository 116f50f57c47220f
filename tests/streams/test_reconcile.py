"""The reconcile plan: what goes where, built from the catalog alone (no broker)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka.errors import RequestTimedOutError

from agents.atomic_write import set_note
from consumers.catalog import Catalog
from schemas import decode, encode
from schemas.events import AssetBrowsable, BatchScanned, FileDiscovered
from streams.errors import BrokerError
from streams.reconcile import plan
from streams.settings import Settings
from streams.topics import topics_for
from streams.upload import BATCH_NOTE
from tests.agents.test_browse import keeps_notes
from tests.consumers.test_catalog import A1, A2, ROOT, browsable, failed, scanned


def test_the_plan_resumes_each_file_under_its_own_ids_and_says_what_it_cannot(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", topic_prefix="t.")
    topics = topics_for(settings)
    root = tmp_path / "shoot"
    root.mkdir()
    retried = root / "retried.png"
    retried.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 100)
    upload = tmp_path / "originals" / "ab" / "ab.png"
    with Catalog(settings.catalog_path) as catalog:
        catalog.apply([
            scanned(5, complete=True),
            browsable("e1", str(root / "a.png"), A1),  # its tier 2 lost
            failed("e2", str(retried), outcome="retrying"),  # its tier-1 retry lost
            failed("e3", str(root / "vanished.png"), outcome="retrying"),
            browsable("e4", str(root / "b.png"), A2), browsable("e5", str(root / "b.png"), A1, at=2e9),  # A2 gone
            # an upload's tier-1 retry lost: sent again under its client-side name
            msgspec.structs.replace(failed("e6", str(upload), outcome="retrying", batch="up-1"),
                                    display_name="Neon Fox.png"),
        ])
    work = plan(settings, topics)

    sent = {event.event_id: (topic, key, event) for topic, key, event in work.events}
    assert set(sent) == {"e1", "e2", "e3", "e5", "e6"}
    topic, key, event = sent["e1"]
    assert (topic, key) == (topics.t2_batch, A1.encode())
    assert isinstance(event, AssetBrowsable) and decode(encode(event)) == event  # a valid record
    assert (event.batch_id, event.source, event.path, event.size, event.format) == ("b1", "reconcile",
                                                                                    str(root / "a.png"), 1500, "PNG")
    assert not event.deduplicated  # the cost gate must not keep its lost tier 3 from it as a duplicate
    topic, key, event = sent["e2"]
    assert (topic, key) == (topics.t1_batch, str(retried).encode())
    assert isinstance(event, FileDiscovered)
    assert (event.batch_id, event.path, event.size, event.root) == ("b1", str(retried), 108, "/data/shoot")
    assert sent["e3"][2].size == 0  # gone: tier 1 finds that out and records it
    assert sent["e2"][2].display_name is None and sent["e6"][2].display_name == "Neon Fox.png"
    assert [r["event_id"] for r in work.lost] == ["e4"]
    summary = work.summary()
    assert (summary["resumed"], summary["tier1"], summary["tier2"], summary["batches"]) == (5, 3, 2, 2)
    assert summary["unheard"] == []  # the scan's five files are all known


def test_no_catalog_no_work(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "nothing")
    work = plan(settings, topics_for(settings))
    assert work.events == [] and work.lost == [] and work.unheard == []
    assert not settings.catalog_path.exists()  # a plan opens nothing into being


def test_what_the_cost_gate_kept_from_tier_3_as_a_duplicate_is_resent_as_one(tmp_path: Path) -> None:
    """A resent file was never a duplicate for tier 2's cost gate: tier 3 ran again on every file of an
    interrupted reprocess (which sends its files as duplicates, to leave their tier 3 be) and on every copy of an
    asset already enriched (a re-import of a copied folder)."""
    from schemas.events import AssetEnriched, BatchScanned
    from tests.consumers.test_catalog import ROOT, T0
    from tests.consumers.test_catalog_search import indexed

    settings = Settings(data_dir=tmp_path / "data", topic_prefix="t.")
    a3 = "c3" * 32
    with Catalog(settings.catalog_path) as catalog:
        catalog.apply([
            browsable("e0", f"{ROOT}/a.png", A1, batch="b0"), indexed(A1, event_id="e0", batch="b0"),
            AssetEnriched(event_id="e0", batch_id="b0", lane="batch", source="scan", asset_id=A1,
                          path=f"{ROOT}/a.png", quality={"score": 0.5}, enriched_at=T0 + 40),  # A1's tier 3 done
            browsable("e1", f"{ROOT}/copy-of-a.png", A1, at=T0 + 50),  # a copy: its tier 2 lost
            browsable("e2", f"{ROOT}/b.png", A2, at=T0 + 50),  # not a copy: its tier 2 lost
            BatchScanned(batch_id="reprocess-1", lane="batch", root="", found=1, complete=True, started_at=T0 + 60,
                         scanned_at=T0 + 60, first_tier=2),
            browsable("e3", f"{ROOT}/c.png", a3, at=T0 + 55),
            failed("e4", f"{ROOT}/c.png", tier=2, asset_id=a3, outcome="retrying", batch="reprocess-1", at=T0 + 61),
        ])
    sent = {event.event_id: event for _, _, event in plan(settings, topics_for(settings)).events}
    assert {e: sent[e].deduplicated for e in ("e1", "e2", "e3", "e4")} == {
        "e1": True, "e2": False, "e3": False, "e4": True}


def test_a_file_whose_tier_2_is_done_goes_on_at_tier_3_through_the_cost_gate(tmp_path: Path) -> None:
    """Sent to tier 2 again, every file a stopped `damflow run` left short of tier 3 queued ahead of the next
    run's own tier 2; tier 3 alone (background) waits behind it instead."""
    from schemas.events import AssetEnriched, AssetIndexed
    from tests.consumers.test_catalog import ROOT, T0
    from tests.consumers.test_catalog_search import indexed

    settings = Settings(data_dir=tmp_path / "data", topic_prefix="t.")
    topics = topics_for(settings)
    small = "c3" * 32
    with Catalog(settings.catalog_path) as catalog:
        catalog.apply([
            browsable("e1", f"{ROOT}/a.png", A1), indexed(A1, event_id="e1", path=f"{ROOT}/a.png", parser=2),
            browsable("e2", f"{ROOT}/icon.png", small, at=T0 + 20),
            indexed(small, event_id="e2", path=f"{ROOT}/icon.png"),
            failed("e3", f"{ROOT}/b.png", tier=3, asset_id=A2, outcome="retrying", at=T0 + 50),  # its retry lost
        ])
        catalog.apply([browsable("e3", f"{ROOT}/b.png", A2, at=T0 + 30), indexed(A2, event_id="e3", at=T0 + 40)])
        catalog._db.execute("UPDATE assets SET width = 16, height = 16 WHERE asset_id = ?", (small,))
        catalog._db.commit()
    work = plan(settings, topics)
    sent = {event.event_id: (topic, key, event) for topic, key, event in work.events}
    topic, key, event = sent["e1"]
    assert (topic, key) == (topics.t3_background, A1.encode()) and isinstance(event, AssetIndexed)
    assert (event.batch_id, event.path, event.parser_version, event.metadata_path) == (
        "b1", f"{ROOT}/a.png", 2, f"metadata/{A1[:2]}/{A1}.v2.json")
    assert decode(encode(event)) == event
    topic, _, event = sent["e2"]  # too small for tier 3: settled as tier 2 would have, with no work
    assert topic == topics.assets and isinstance(event, AssetEnriched) and event.skipped == "small"
    assert sent["e3"][0] == topics.t3_background  # a lost tier-3 retry: tier 3 again
    assert work.summary()["tier3"] == 3


class _Refusing:
    """A producer whose broker refuses the records keyed ``refused`` (all, with None): its sends' deliveries fail,
    and its flush, like aiokafka's, says nothing of it."""

    def __init__(self, refused: bytes | None) -> None:
        self.refused = refused

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        if self.refused is None or key == self.refused:
            done.set_exception(RequestTimedOutError())
        else:
            done.set_result(None)
        return done

    async def flush(self) -> None:
        return None

    def as_producer(self) -> Callable[..., Any]:
        @contextlib.asynccontextmanager
        async def producer(bootstrap: str, *, compression: str | None, linger_ms: int = 0,
                           ) -> AsyncIterator[_Refusing]:
            yield self
        return producer


async def test_events_the_broker_did_not_take_fail_the_reconcile(tmp_path: Path, monkeypatch) -> None:
    """`flush()` raises nothing for a refused record: each send's delivery says. A reconcile whose events were all
    refused (the broker frozen) was logged as done and printed "resumed N files"."""
    from streams import reconcile as module

    settings = Settings(data_dir=tmp_path / "data", topic_prefix="t.")
    with Catalog(settings.catalog_path) as catalog:
        catalog.apply([browsable("e1", "/data/shoot/a.png", A1), browsable("e2", "/data/shoot/b.png", A2)])
    monkeypatch.setattr(module, "producer", _Refusing(A2.encode()).as_producer())
    with pytest.raises(BrokerError, match="did not take 1 of the 2"):
        await module.reconcile(settings, topics_for(settings), "127.0.0.1:9")


async def test_a_reprocess_whose_assets_the_broker_did_not_take_fails(tmp_path: Path, monkeypatch) -> None:
    from streams import reprocess as module

    monkeypatch.setattr(module, "producer", _Refusing(None).as_producer())
    settings = Settings(data_dir=tmp_path / "data", topic_prefix="t.")
    rows = [{"asset_id": A1, "path": "/data/a.png"}]
    with pytest.raises(BrokerError, match="did not take 1 of the 1"):  # it said "1 assets sent to tier 2"
        await module.reprocess_tier2(settings, topics_for(settings), "127.0.0.1:9", rows)


def test_uploads_the_catalog_never_heard_of_go_on_from_their_stored_originals(tmp_path: Path) -> None:
    # answered (their originals stored, their events published), then the broker was lost before a worker took
    # them: `reconcile` said only "their uploaders must send them again", naming no file, and their batches
    # stayed in flight for good
    settings = Settings(data_dir=tmp_path / "data", topic_prefix="t.")
    topics = topics_for(settings)
    T = 1_700_000_000.0

    def original(name: str, at: float) -> Path:
        path = settings.originals_dir / name[:2] / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + name.encode())
        os.utime(path, (at, at))
        return path

    lost = original("aa" * 32, T + 0.05)  # stored during the first upload batch
    early = original("dd" * 32, T - 30)  # its batch's first file, stored as the rest of the request came
    set_note(early, BATCH_NOTE, b"upload-1")
    heard = original(A1, T + 0.05)  # became browsable: known
    unexplained = original("bb" * 32, T + 500)  # its batch's close was lost too
    (settings.originals_dir / "cc").mkdir()
    (settings.originals_dir / "cc" / ".cc.png.123.tmp").write_bytes(b"half")  # a write in progress
    with Catalog(settings.catalog_path) as catalog:
        catalog.apply([
            BatchScanned(batch_id="upload-1", lane="interactive", root="", found=2, complete=True, started_at=T,
                         scanned_at=T + 0.1),
            BatchScanned(batch_id="upload-2", lane="interactive", root="", found=1, complete=True,
                         started_at=T + 200, scanned_at=T + 200.1),  # its file heard of: not unheard
            browsable("u2", str(heard), A1, batch="upload-2", at=T + 200.2),
        ])
    # by hand, on a broker that may still hold their events: they would go twice
    assert plan(settings, topics).uploads == 0
    work = plan(settings, topics, broker_new=True)
    sent = [(topic, event) for topic, _, event in work.events]
    files = {e.path: e for _, e in sent if isinstance(e, FileDiscovered)}
    assert set(files) == {str(lost), str(early), str(unexplained)} and work.uploads == 3
    if keeps_notes(tmp_path):  # the batch noted on it; else the time it falls in, which `early`'s does not
        assert files[str(lost)].batch_id == files[str(early)].batch_id == "upload-1" and work.unheard == []
    closes = [(t, e) for t, e in sent if isinstance(e, BatchScanned)]
    alone = [e for _, e in closes if e.batch_id == files[str(unexplained)].batch_id]
    assert len(alone) == 1 and (alone[0].found, alone[0].complete) == (1 + (not keeps_notes(tmp_path)), True)
    assert {t for t, _ in closes} == {topics.progress}
    assert {t for t, e in sent if isinstance(e, FileDiscovered)} == {topics.tier1("interactive")}
    assert (work.summary()["resumed"], work.summary()["uploads"]) == (4, 3)  # and the heard one's tier 2


def test_a_scan_cut_short_with_the_broker_is_closed_with_what_it_found_when_no_scan_can_go_on(
        tmp_path: Path) -> None:
    # `damflow up` killed mid-scan: the next `up` showed the batch "scanning" for good, and said nothing of the
    # rest of its folder, never walked
    settings = Settings(data_dir=tmp_path / "data", topic_prefix="t.")
    topics = topics_for(settings)
    with Catalog(settings.catalog_path) as catalog:
        catalog.apply([scanned(140, skipped=3), browsable("e1", "/shoot/a.png", A1),  # a running total only
                       scanned(1, complete=True, batch="b2"),
                       browsable("u9", "/up/x.png", A2, batch="upload-9")])  # an upload whose close was lost
    by_hand = plan(settings, topics)  # a reconcile by hand: a scan may still be going on, and files on their way
    assert by_hand.cut_short == [] and not [e for _, _, e in by_hand.events if isinstance(e, BatchScanned)]
    work = plan(settings, topics, broker_new=True)
    closes = {k: (t, e) for t, k, e in work.events if isinstance(e, BatchScanned)}
    assert set(closes) == {b"b1", b"b2", b"upload-9"} and {t for t, _ in closes.values()} == {topics.progress}
    assert (closes[b"upload-9"][1].found, closes[b"upload-9"][1].root) == (0, "")  # closed, but no scan to name
    close, other = closes[b"b1"][1], closes[b"b2"][1]
    assert (close.batch_id, close.found, close.skipped_unchanged, close.complete, close.lost) == (
        "b1", 140, 3, True, 139)  # what it had found, of which 139 never reached the catalog: lost
    assert (other.found, other.complete, other.lost) == (1, True, 1)  # closed, its one file lost with the broker
    assert work.summary()["cut_short"] == [{"batch_id": "b1", "root": ROOT, "scanned_total": 140}]
    with Catalog(settings.catalog_path) as catalog:
        catalog.apply([close, other, closes[b"upload-9"][1]])
        assert catalog.open_scans() == [] and catalog.unheard() == []
        assert catalog.progress("upload-9", 1, now=2e9).total_final
        progress = catalog.progress("b1", 1, now=2e9)
        assert (progress.total_final, progress.in_flight, progress.lost, progress.done) == (True, 0, 139, 1)

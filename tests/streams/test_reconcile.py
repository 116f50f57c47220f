"""The reconcile plan: what goes where, built from the catalog alone (no broker)."""

from __future__ import annotations

from pathlib import Path

from consumers.catalog import Catalog
from schemas import decode, encode
from schemas.events import AssetBrowsable, FileDiscovered
from streams.reconcile import plan
from streams.settings import Settings
from streams.topics import topics_for
from tests.consumers.test_catalog import A1, A2, browsable, failed, scanned


def test_the_plan_resumes_each_file_under_its_own_ids_and_says_what_it_cannot(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", topic_prefix="t.")
    topics = topics_for(settings)
    root = tmp_path / "shoot"
    root.mkdir()
    retried = root / "retried.png"
    retried.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 100)
    with Catalog(settings.catalog_path) as catalog:
        catalog.apply([
            scanned(5, complete=True),
            browsable("e1", str(root / "a.png"), A1),  # its tier 2 lost
            failed("e2", str(retried), outcome="retrying"),  # its tier-1 retry lost
            failed("e3", str(root / "vanished.png"), outcome="retrying"),
            browsable("e4", str(root / "b.png"), A2), browsable("e5", str(root / "b.png"), A1, at=2e9),  # A2 gone
        ])
    work = plan(settings, topics)

    sent = {event.event_id: (topic, key, event) for topic, key, event in work.events}
    assert set(sent) == {"e1", "e2", "e3", "e5"}
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
    assert [r["event_id"] for r in work.lost] == ["e4"]
    summary = work.summary()
    assert (summary["resumed"], summary["tier1"], summary["tier2"], summary["batches"]) == (4, 2, 2, 1)
    assert summary["unheard"] == []  # the scan's five files are all known


def test_no_catalog_no_work(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "nothing")
    work = plan(settings, topics_for(settings))
    assert work.events == [] and work.lost == [] and work.unheard == []
    assert not settings.catalog_path.exists()  # a plan opens nothing into being

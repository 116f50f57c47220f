"""The catalog sink's writes, without a broker: one event the catalog cannot hold never stops the others."""

from __future__ import annotations

from consumers.catalog import Catalog
from consumers.catalog_sink import CatalogSink
from schemas import decode
from streams.settings import Settings
from streams.topics import topics_for
from tests.consumers.test_catalog import browsable, scanned


def test_an_event_the_catalog_cannot_hold_is_left_out_and_the_rest_goes_in(catalog: Catalog, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    sink = CatalogSink(settings, topics_for(settings), "unused:9092")
    # it decodes (a valid event), but no SQLite integer holds its count
    too_big = decode(b'{"type":"BatchScanned","batch_id":"b2","lane":"batch","root":"/r","found":%d,'
                     b'"started_at":1.0,"scanned_at":2.0}' % 2**64)
    events = [scanned(1, complete=True), too_big, browsable("e1", "/r/a.png")]

    progress = sink.write(catalog, events)

    assert {(p.batch_id, p.tier) for p in progress} == {("b1", 1), ("b1", 2), ("b1", 3)}
    [tier1] = [p for p in progress if p.tier == 1]
    assert tier1.done == 1 and tier1.total_final
    assert catalog.location("/r/a.png") is not None
    assert catalog.progress("b2", 1) is None

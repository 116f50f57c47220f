"""The catalog sink's writes, without a broker: one event the catalog cannot hold never stops the others, and
it is held back whole, never lost, until the catalog can take it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from consumers.catalog import Catalog
from consumers.catalog_sink import CatalogSink, FetchPace
from consumers.views import render_status
from schemas import AssetBrowsable, AssetIndexed, ProgressEvent, decode, encode
from streams.settings import Settings
from streams.topics import topics_for
from tests.consumers.test_catalog import A1, _synchronous_at_commits, browsable, scanned

A2 = "b" * 64


def sink_for(tmp_path) -> CatalogSink:
    settings = Settings(data_dir=tmp_path)
    return CatalogSink(settings, topics_for(settings), "unused:9092")


def test_an_event_the_catalog_cannot_hold_is_held_back_and_the_rest_goes_in(catalog: Catalog, tmp_path) -> None:
    sink = sink_for(tmp_path)
    # it decodes (a valid event), but no SQLite integer holds its count
    too_big = decode(b'{"type":"BatchScanned","batch_id":"b2","lane":"batch","root":"/r","found":%d,'
                     b'"started_at":1.0,"scanned_at":2.0}' % 2**64)
    events = [scanned(1, complete=True), too_big, browsable("e1", "/r/a.png")]

    progress = sink.write(catalog, events)
    sink.write(catalog, [too_big])  # delivered again (the sink restarted before its commit): held once

    assert {(p.batch_id, p.tier) for p in progress} == {("b1", 1), ("b1", 2), ("b1", 3)}
    [tier1] = [p for p in progress if p.tier == 1]
    assert tier1.done == 1 and tier1.total_final
    assert catalog.location("/r/a.png") is not None
    assert catalog.progress("b2", 1) is None
    [(_key, value)] = catalog.held()
    assert decode(value) == too_big  # whole, to be tried again
    assert catalog.status()["held_events"] == 1
    assert "1 events held back" in render_status(catalog.status())


def test_events_held_back_by_a_fault_of_the_catalog_go_in_once_it_is_mended(
    catalog: Catalog, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = sink_for(tmp_path)
    broken = Catalog._browsable

    def fault(self, e: AssetBrowsable) -> None:
        if e.asset_id == A2:
            raise TypeError("a bug met by some events only")
        broken(self, e)

    monkeypatch.setattr(Catalog, "_browsable", fault)
    sink.write(catalog, [scanned(2, complete=True), browsable("e1", "/r/a.png"),
                         browsable("e2", "/r/b.png", asset_id=A2)])
    assert catalog.location("/r/b.png") is None and len(catalog.held()) == 1
    assert sink.release_held(catalog) == [] and len(catalog.held()) == 1  # still broken: still held

    monkeypatch.setattr(Catalog, "_browsable", broken)  # the fix
    progress = sink.release_held(catalog)

    assert catalog.location("/r/b.png") is not None and catalog.held() == []
    [tier1] = [p for p in progress if p.tier == 1]  # its batch's progress, to be sent
    assert (tier1.batch_id, tier1.done, tier1.known_total) == ("b1", 2, 2)


def test_a_held_event_that_fails_otherwise_on_retry_stays_held_and_the_sink_goes_on(
    catalog: Catalog, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = sink_for(tmp_path)
    catalog.hold(browsable("e1", "/r/a.png"), TypeError("held earlier"))

    def changed(self, e: AssetBrowsable) -> None:
        raise KeyError("an error the sink does not expect of the catalog")

    monkeypatch.setattr(Catalog, "_browsable", changed)
    assert sink.release_held(catalog) == []  # no crash at every start of the sink
    assert len(catalog.held()) == 1


def _progress(tier: int = 1, *, final: bool = True, known: int = 100, done: int = 90, rate: float = 20.0):
    in_flight = known - done
    return ProgressEvent(batch_id="b1", tier=tier, known_total=known, total_final=final, done=done,
                         in_flight=in_flight, rate=rate, eta_s=in_flight / rate if rate else None, at=1.0)


def test_the_sink_fetches_promptly_only_while_a_batch_is_about_to_finish(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, sink_fetch_max_wait_ms=250, sink_fetch_min_bytes=65536,
                        sink_prompt_fetch_max_wait_ms=25, sink_prompt_eta_s=1.0)
    pace = FetchPace(settings)
    gathering, prompt = (250, 65536), (25, 1)
    assert pace.wait_and_min_bytes(0.0) == gathering

    # far from the end (5 s left), still scanning, or already finished: keep gathering
    pace.after_write([_progress(done=0, rate=20.0, known=100)], now=0.0)
    pace.after_write([_progress(final=False, done=95)], now=0.0)
    pace.after_write([_progress(done=100)], now=0.0)
    pace.after_write([_progress(rate=0.0)], now=0.0)  # no rate yet: no estimate
    assert pace.wait_and_min_bytes(0.0) == gathering

    # half a second left in some tier: prompt, for twice the threshold after that write
    pace.after_write([_progress(tier=3, done=0, rate=0.0), _progress(tier=1, done=90)], now=10.0)
    assert pace.wait_and_min_bytes(10.1) == prompt and pace.wait_and_min_bytes(11.9) == prompt
    assert pace.wait_and_min_bytes(12.1) == gathering  # nothing written since (a straggler retrying): back


async def test_apply_now_writes_what_it_can_and_never_holds_the_answer_past_its_timeout(catalog: Catalog,
                                                                                        tmp_path) -> None:
    sink = sink_for(tmp_path)
    event = browsable("e1", "/r/a.png")
    assert not await sink.apply_now([event], timeout=1.0)  # the sink is not running: nothing written here
    assert catalog.location("/r/a.png") is None

    sink._catalog = catalog  # as while run() has it open
    commits = _synchronous_at_commits(catalog)
    too_big = decode(b'{"type":"BatchScanned","batch_id":"b2","lane":"batch","root":"/r","found":%d,'
                     b'"started_at":1.0,"scanned_at":2.0}' % 2**64)
    assert not await sink.apply_now([too_big, event], timeout=1.0)  # one refused: the other goes in
    assert catalog.location("/r/a.png") is not None and not catalog.held()  # holding is the sink's own reading's
    assert commits == [1]  # not synced: the sink's own reading applies it again, synced, before its commit

    # the sink's thread held up (a long write, a stuck disk): the answer goes out at the timeout ...
    release = threading.Event()
    sink._thread.submit(release.wait, 30)
    other = browsable("e2", "/r/b.png", asset_id=A2)
    started = time.monotonic()
    assert not await sink.apply_now([other], timeout=0.2)
    assert time.monotonic() - started < 5
    # ... and the write still happens once the thread is free
    release.set()
    await asyncio.get_running_loop().run_in_executor(sink._thread, lambda: None)
    assert catalog.location("/r/b.png") is not None


def test_a_record_no_event_can_be_read_from_is_held_not_dropped(catalog: Catalog, tmp_path) -> None:
    from types import SimpleNamespace

    sink = sink_for(tmp_path)
    good = browsable("e1", "/r/a.png")
    indexed = AssetIndexed(event_id="e1", batch_id="b1", lane="batch", source="scan", asset_id=A1,
                           path="/r/a.png", parser_version=1, metadata_path="m.json", indexed_at=2.0, gps=(0.5, 1.0))
    # what tier 2 once published for a GPS text of "nan": JSON has no NaN, so it went out as null
    unreadable = encode(indexed).replace(b"[0.5,1.0]", b"[null,1.0]")
    assert unreadable != encode(indexed)
    newer_tick = b'{"type":"ProgressEvent","schema":99,"batch_id":"b1"}'  # a newer version's: never applied
    records = [SimpleNamespace(topic="assets", offset=i, value=v) for i, v in enumerate([encode(good), unreadable,
                                                                                         b"", b"\xff garbage",
                                                                                         newer_tick])]
    events, bad = sink.read_records(records)
    assert events == [good] and [value for value, _ in bad] == [unreadable, b"\xff garbage"]  # nothing in empty
    sink.write(catalog, events, bad)
    sink.write(catalog, [], bad)  # delivered again: held once
    assert catalog.location("/r/a.png") is not None
    assert sorted(value for _key, value in catalog.held()) == sorted([unreadable, b"\xff garbage"])
    kinds = {row[0]: row[1:] for row in catalog._db.execute("SELECT event_type, batch_id, event_id FROM held_events")}
    assert kinds == {"unreadable AssetIndexed": (good.batch_id, "e1"), "unreadable record": (None, None)}
    assert sink.release_held(catalog) == [] and len(catalog.held()) == 2  # still unreadable: still held


def test_a_file_dated_after_2262_becomes_browsable_and_its_batch_finishes(catalog: Catalog, tmp_path) -> None:
    # its st_mtime_ns is past SQLite's signed 64 bits: the write overflowed, so the event was held back for ever,
    # the batch never finished and every rescan sent the file again
    sink = sink_for(tmp_path)
    future = 10413792000000000000  # os.stat(...).st_mtime_ns of a file touched -d 2300-01-01 on ext4
    progress = sink.write(catalog, [scanned(1, complete=True), browsable("e1", "/r/a.png", mtime_ns=future)])

    assert catalog.held() == []
    assert catalog.location("/r/a.png") == (1500, future, A1)
    [tier1] = [p for p in progress if p.tier == 1]
    assert (tier1.done, tier1.in_flight, tier1.total_final) == (1, 0, True)


async def test_a_refused_commit_of_records_that_needed_no_write_does_not_stop_the_sink() -> None:
    # the commit at a quiet moment may meet a rebalance: it stopped the sink, which had nothing to lose
    from aiokafka.errors import CommitFailedError

    from consumers.catalog_sink import commit_passed_over

    class Refusing:
        commits = 0

        async def commit(self) -> None:
            self.commits += 1
            raise CommitFailedError("the group rebalanced")

    consumer = Refusing()
    await commit_passed_over(consumer)  # type: ignore[arg-type]
    assert consumer.commits == 1

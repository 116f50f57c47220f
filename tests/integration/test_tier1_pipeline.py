"""Tier 1 end to end on the real embedded broker: scanner -> t1 topics -> worker process -> assets -> catalog."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from schemas import FileDiscovered, decode, encode, new_id, now
from streams.ingest import ingest_folder, upload_files
from streams.kafka import producer, tail
from streams.supervisor import Stack
from tests.images import make_jpeg, make_png
from tests.integration.conftest import catalog_of, wait_until

pytestmark = pytest.mark.integration

GOOD_KINDS = {"camera", "comfyui", "a1111", "invokeai", "other-ai"}
UNDECODABLE = {"HEIF"}  # Pillow 13 without a HEIF plugin: a recorded failure, by design


def corpus_sample(corpus: Path, n: int = 30) -> list[dict]:
    manifest = json.loads((corpus / "manifest.json").read_text())
    good = [e for e in manifest if e["kind"] in GOOD_KINDS and e["format"] not in UNDECODABLE]
    # a spread across kinds, deterministic
    good.sort(key=lambda e: (e["kind"], e["file"]))
    step = max(1, len(good) // n)
    return good[::step][:n]


async def test_corpus_folder_becomes_browsable_with_matching_catalog_rows(stack: Stack, corpus: Path,
                                                                         tmp_path: Path) -> None:
    entries = corpus_sample(corpus)
    folder = tmp_path / "import"
    for e in entries:
        dest = folder / e["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / e["file"], dest)
    s = stack.settings

    result = await ingest_folder(s, stack.topics, stack.bootstrap, folder, wait=True, timeout=120)

    assert result.found == len(entries) >= 25
    p = result.progress
    assert p is not None and p.total_final and p.known_total == len(entries)
    assert p.done == len(entries), f"failed: {p.failed + p.dead_lettered}"
    with catalog_of(s) as catalog:
        for e in entries:
            asset = catalog.asset(os.path.realpath(folder / e["file"]))
            assert asset is not None, e["file"]
            assert asset["tier1_state"] == "browsable"
            assert asset["format"] in {e["format"], "MPO", "JPEG"}
            thumb = s.data_path / asset["thumbnails"]["256"]
            with Image.open(thumb) as im:
                assert im.format == "WEBP" and max(im.size) == min(256, max(e["width"], e["height"]))


async def test_reingest_same_folder_creates_no_duplicates(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "shoot"
    folder.mkdir()
    for i in range(6):
        make_png(folder / f"img{i}.png", size=(300, 200), seed=i)
    s = stack.settings
    first = await ingest_folder(s, stack.topics, stack.bootstrap, folder, wait=True, timeout=60)
    assert first.found == 6 and first.progress.done == 6
    with catalog_of(s) as catalog:
        before = catalog.counts()

    second = await ingest_folder(s, stack.topics, stack.bootstrap, folder, wait=True, timeout=60)

    assert second.found == 0 and second.skipped_unchanged == 6
    assert second.progress.known_total == 0 and second.progress.total_final
    with catalog_of(s) as catalog:
        after = catalog.counts()
    assert after["assets"] == before["assets"] == 6
    assert after["locations"] == before["locations"] == 6
    # a changed file is picked up again
    make_png(folder / "img0.png", size=(300, 200), seed=99)
    third = await ingest_folder(s, stack.topics, stack.bootstrap, folder, wait=True, timeout=60)
    assert third.found == 1 and third.progress.done == 1


async def test_identical_bytes_at_two_paths_are_one_asset_with_two_locations(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "dupes"
    (folder / "a").mkdir(parents=True)
    original = make_jpeg(folder / "a" / "photo.jpg", size=(640, 480), seed=3)
    (folder / "b").mkdir()
    shutil.copyfile(original, folder / "b" / "photo-copy.jpg")
    s = stack.settings

    result = await ingest_folder(s, stack.topics, stack.bootstrap, folder, wait=True, timeout=60)

    assert result.progress.done == 2
    with catalog_of(s) as catalog:
        assert catalog.asset_count() == 1
        asset = catalog.asset(os.path.realpath(original))
        paths = sorted(loc["path"] for loc in asset["locations"])
    assert paths == sorted(os.path.realpath(p) for p in (original, folder / "b" / "photo-copy.jpg"))
    thumbs = list((s.thumbs_dir / asset["asset_id"][:2]).glob(f"{asset['asset_id']}.*"))
    assert [t.name for t in thumbs] == [f"{asset['asset_id']}.256.webp"]


async def test_bad_files_end_as_recorded_failures_while_the_rest_completes(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = make_png(folder / "good.png", size=(200, 200), seed=1)
    truncated = folder / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:300])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "garbage.webp").write_bytes(os.urandom(2048))
    (folder / "readme.txt").write_text("not an image")
    s = stack.settings

    result = await ingest_folder(s, stack.topics, stack.bootstrap, folder, wait=True, timeout=60)

    assert result.skipped_other == 1 and result.found == 4
    p = result.progress
    assert p.done == 1 and p.failed + p.dead_lettered == 3
    with catalog_of(s) as catalog:
        for name in ("truncated.png", "empty.jpg", "garbage.webp"):
            path = os.path.realpath(folder / name)
            assert catalog.location(path) is None
        status = catalog.status()
    assert status["asset_states"]["tier1"].get("browsable") == 1
    # every failure is also a dead letter with its diagnostics, replayable from the DLQ topic
    async with tail(stack.bootstrap, stack.topics.dlq(1), s, from_beginning=True) as dlq:
        letters = []
        while len(letters) < 3:
            batches = await dlq.getmany(timeout_ms=2000)
            assert batches, "dead letters missing"
            letters += [decode(r.value) for rs in batches.values() for r in rs]
    by_path = {os.path.basename(letter.file_path): letter for letter in letters}
    assert set(by_path) == {"truncated.png", "empty.jpg", "garbage.webp"}
    assert by_path["truncated.png"].error_code == "corrupt_image"
    assert all(letter.original_topic == stack.topics.t1_batch and letter.traceback for letter in letters)


async def test_files_the_walk_cannot_read_or_name_end_as_recorded_failures(stack: Stack, tmp_path: Path,
                                                                          monkeypatch) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "locked").mkdir()
    make_png(folder / "locked" / "hidden.png", size=(64, 64), seed=3)
    real_scandir = os.scandir

    def scandir(path):  # as for a directory without read permission (tests run as root, who may read all)
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    real_stat = os.stat

    def stat(path, *a, **k):  # as for entries of a directory that can be listed but not entered
        if os.path.basename(path).startswith("blocked"):
            raise PermissionError(13, "Permission denied", path)
        return real_stat(path, *a, **k)

    monkeypatch.setattr("streams.scanner.os.scandir", scandir)
    monkeypatch.setattr("streams.scanner.os.stat", stat)
    make_png(folder / "blocked.png", size=(64, 64), seed=4)  # named like an image: a recorded failure
    (folder / "blocked.txt").write_text("notes")  # not named like one: skipped, as any other non-image
    make_png(folder / "good.png", size=(64, 64), seed=1)
    with open(os.fsencode(folder) + b"/caf\xe9.png", "wb") as f:  # a name that is not UTF-8
        f.write(make_png(tmp_path / "src.png", size=(64, 64), seed=2).read_bytes())
    (folder / "gone.png").symlink_to(folder / "deleted.png")  # a link whose target is gone
    os.mkfifo(folder / "pipe.png")  # named like an image but a FIFO (opening it would wait): a recorded failure
    os.mkfifo(folder / "pipe")  # not named like one: skipped, as any other non-image
    s = stack.settings

    result = await ingest_folder(s, stack.topics, stack.bootstrap, folder, wait=True, timeout=60)

    assert result.found == 6 and result.skipped_other == 2
    p = result.progress
    assert p.done == 1 and p.failed + p.dead_lettered == 5 and p.in_flight == 0
    with sqlite3.connect(s.catalog_path) as db:
        codes = dict(db.execute("SELECT path, error_code FROM failures WHERE tier = 1"))
    real = os.path.realpath(folder)
    assert codes == {f"{real}/caf\\xe9.png": "unrepresentable_path", f"{real}/gone.png": "source_missing",
                     f"{real}/locked": "source_unreadable", f"{real}/blocked.png": "source_unreadable",
                     f"{real}/pipe.png": "unsupported_format"}


async def test_upload_lands_in_catalog_and_is_stored_content_addressed(stack: Stack, tmp_path: Path) -> None:
    src = make_jpeg(tmp_path / "weird name.jpg", size=(2000, 1500), seed=5, orientation=6)
    s = stack.settings

    [row] = await upload_files(s, stack.topics, stack.bootstrap, [src], wait=True, timeout=60)

    assert row.state == "browsable" and row.ms_to_browsable > 0
    assert row.via == "express"  # the outcome came straight from the worker (streams.express)
    stored = list(s.originals_dir.rglob(f"{row.asset_id}.*"))
    assert len(stored) == 1 and stored[0].read_bytes() == src.read_bytes()
    assert "weird" not in str(stored[0])

    asset = await wait_until(lambda: _sync_asset(s, row.asset_id), what="upload in catalog")
    assert asset["tier1_state"] == "browsable"
    assert asset["width"] == 1500 and asset["height"] == 2000  # EXIF orientation 6 applied
    assert asset["locations"][0]["display_name"] == "weird name.jpg"
    assert asset["locations"][0]["source"] == "upload"
    assert set(asset["thumbnails"]) == {"256", "1440"}


def _sync_asset(settings, asset_id):
    if not settings.catalog_path.exists():
        return None
    with catalog_of(settings) as catalog:
        return catalog.asset(asset_id)


async def test_a_file_changed_since_its_scan_is_recorded_as_it_was_read(stack: Stack, tmp_path: Path) -> None:
    # a file fixed on disk after its scan (then replayed from the dead letters) kept the scan's mtime in the
    # catalog, so every later ingest of its folder sent it again as changed
    folder = tmp_path / "fixed"
    folder.mkdir()
    path = make_png(folder / "a.png", size=(64, 64), seed=3)
    st = path.stat()
    event = FileDiscovered(event_id=new_id(), batch_id=new_id(), lane="batch", source="scan", path=str(path),
                           size=st.st_size, mtime_ns=st.st_mtime_ns - 10**9, discovered_at=now(), root=str(folder))
    async with producer(stack.bootstrap, compression=None) as prod:
        await prod.send_and_wait(stack.topics.t1_batch, encode(event), key=event.path.encode())

    def located():
        with catalog_of(stack.settings) as catalog:
            return catalog.location(str(path))

    assert (await wait_until(located, what="the file browsable"))[:2] == (st.st_size, st.st_mtime_ns)
    again = await ingest_folder(stack.settings, stack.topics, stack.bootstrap, folder, wait=True, timeout=60)
    assert (again.found, again.skipped_unchanged) == (0, 1)


async def test_a_file_still_being_copied_is_read_again_once_whole(stack: Stack, tmp_path: Path) -> None:
    # a copy that pauses between writes held still while tier 1 read it: the part written so far was
    # dead-lettered at once as a corrupt image (a truncated PNG), though the file was only being written
    folder = tmp_path / "copying"
    folder.mkdir()
    whole = make_png(tmp_path / "whole.png", size=(300, 200), seed=8).read_bytes()
    path = folder / "a.png"
    path.write_bytes(whole[: len(whole) // 3])
    found = path.stat()  # as the scan found it
    path.write_bytes(whole[: len(whole) // 2])  # the copy went on since, and pauses now
    event = FileDiscovered(event_id=new_id(), batch_id=new_id(), lane="batch", source="scan", path=str(path),
                           size=found.st_size, mtime_ns=found.st_mtime_ns, discovered_at=now(), root=str(folder))
    async with producer(stack.bootstrap, compression=None) as prod:
        await prod.send_and_wait(stack.topics.t1_batch, encode(event), key=event.path.encode())

    def state(wanted: str):
        with catalog_of(stack.settings) as catalog:
            rows = catalog._db.execute("SELECT state, f.error_code FROM batch_files b LEFT JOIN failures f "
                                       "ON f.path = b.path AND f.tier = 1 WHERE b.event_id = ? AND b.tier = 1",
                                       (event.event_id,)).fetchall()
            return rows and rows[0][0] == wanted and tuple(rows[0])

    assert await wait_until(lambda: state("retrying"), what="a retry") == ("retrying", "source_in_flux")
    path.write_bytes(whole)  # the copy is done before the retry
    await wait_until(lambda: state("done"), what="the file browsable")

"""The scanner's walk and image recognition, without a broker."""

from __future__ import annotations

import asyncio
import errno
import os
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest

from consumers.catalog import Catalog
from schemas import AssetBrowsable
from streams import scanner
from streams.errors import UnrepresentablePath
from streams.scanner import Unreadable, looks_like_image, scan, walk
from streams.settings import Settings
from streams.topics import topics_for
from tests.images import make_jpeg, make_png


def _mk(*dirs: Path) -> None:
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)


def _paths(root: Path) -> set[str]:
    return {os.path.relpath(p, os.path.realpath(root)) for p, _ in walk(root)}


def test_walk_is_recursive(tmp_path: Path) -> None:
    _mk(tmp_path / "sub" / "deeper")
    make_png(tmp_path / "b.png", size=(8, 8))
    make_png(tmp_path / "sub" / "deeper" / "c.png", size=(8, 8))
    (tmp_path / "a.txt").write_text("x")
    assert _paths(tmp_path) == {"a.txt", "b.png", os.path.join("sub", "deeper", "c.png")}


def test_links_out_of_the_root_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _mk(outside, tmp_path / "root")
    make_png(outside / "secret.png", size=(8, 8))
    root = tmp_path / "root"
    make_png(root / "in.png", size=(8, 8))
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "filelink.png").symlink_to(outside / "secret.png")
    (root / "uplink").symlink_to(tmp_path, target_is_directory=True)
    assert _paths(root) == {"in.png"}


def test_links_inside_the_root_and_loops_are_walked_once(tmp_path: Path) -> None:
    _mk(tmp_path / "a")
    make_png(tmp_path / "a" / "x.png", size=(8, 8))
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "alias.png").symlink_to(tmp_path / "a" / "x.png")
    found = [p for p, _ in walk(tmp_path)]
    # the file once, under its own name (the alias made it twice in one batch), and never an endless loop
    assert found == [os.path.realpath(tmp_path / "a" / "x.png")]


def test_the_data_directory_under_the_root_is_not_walked(tmp_path: Path, monkeypatch) -> None:
    # `damflow up` started in the folder keeps its thumbnails there: each ingest of the folder made them new
    # assets (a thumbnail re-encoded is new bytes), with thumbnails of their own
    make_png(tmp_path / "a.png", size=(8, 8))
    settings = Settings(data_dir=tmp_path / "damflow-data")
    _mk(settings.thumbs_dir / "ab")
    make_png(settings.thumbs_dir / "ab" / "x.256.webp", size=(8, 8))
    assert _paths(tmp_path) == {"a.png", os.path.join("damflow-data", "thumbs", "ab", "x.256.webp")}
    assert {os.path.basename(p) for p, _ in walk(tmp_path, skip=(settings.data_path,))} == {"a.png"}
    monkeypatch.setattr(scanner, "LagProbe", _NoLag)
    result = asyncio.run(scan(settings, topics_for(settings), "unused:9092", _Delivered(),  # type: ignore[arg-type]
                              tmp_path))
    assert (result.found, result.skipped_other) == (1, 0)


def test_a_long_run_of_skipped_files_reports_and_can_be_stopped(tmp_path: Path, monkeypatch) -> None:
    # nothing was awaited while files were skipped (not images, unchanged): a Ctrl-C or a timeout waited for the
    # walk's end, and the running total stood still
    for i in range(50):
        (tmp_path / f"{i}.txt").write_text("notes")
    settings = Settings(data_dir=tmp_path / "data")
    monkeypatch.setattr(scanner, "LagProbe", _NoLag)
    monkeypatch.setattr(scanner, "_REPORT_INTERVAL_S", 0.0)  # a report at every chance
    prod = _Delivered()

    async def stop_at_the_fifth_report() -> None:
        task = asyncio.create_task(scan(settings, topics_for(settings), "unused:9092", prod,  # type: ignore[arg-type]
                                        tmp_path))
        async with asyncio.timeout(10):  # without a chance to stop it, the walk ends first: no fifth report
            while prod.sent.count(topics_for(settings).progress) < 5 and not task.done():
                await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stop_at_the_fifth_report())
    assert 5 <= prod.sent.count(topics_for(settings).progress) < 50  # stopped part-way, its batch closed


def test_images_are_recognised_by_content_not_extension(tmp_path: Path) -> None:
    disguised = make_jpeg(tmp_path / "photo.dat", size=(8, 8))
    assert looks_like_image(str(disguised))
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert not looks_like_image(str(notes))


def test_files_named_like_images_are_kept_even_if_unreadable_content(tmp_path: Path) -> None:
    # an empty or garbage ".png" must reach tier 1 and end as a recorded failure, not vanish
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(os.urandom(64))
    assert looks_like_image(str(empty)) and looks_like_image(str(garbage))


def test_a_file_gone_before_it_is_sniffed_is_kept_when_named_like_an_image(tmp_path: Path) -> None:
    # tier 1 then records that it is gone, rather than the scan failing or skipping it unseen
    assert looks_like_image(str(tmp_path / "vanished.png"))
    assert not looks_like_image(str(tmp_path / "vanished.txt"))


def test_a_link_whose_target_is_gone_is_walked(tmp_path: Path) -> None:
    (tmp_path / "gone.png").symlink_to(tmp_path / "deleted.png")
    assert _paths(tmp_path) == {"gone.png"}


def test_a_directory_that_cannot_be_read_is_yielded_with_its_error_and_one_that_vanished_is_not(
        tmp_path: Path, monkeypatch) -> None:
    _mk(tmp_path / "locked", tmp_path / "gone", tmp_path / "open")
    make_png(tmp_path / "open" / "a.png", size=(8, 8))
    make_png(tmp_path / "locked" / "b.png", size=(8, 8))
    real_scandir = os.scandir

    def scandir(path):  # as for a directory without read permission (tests run as root, who may read all)
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        if os.path.basename(path) == "gone":
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_scandir(path)

    monkeypatch.setattr("streams.scanner.os.scandir", scandir)
    found = {os.path.relpath(p, os.path.realpath(tmp_path)): st for p, st in walk(tmp_path)}
    assert set(found) == {"open/a.png", "locked"}
    assert found["locked"] == Unreadable(found["locked"].error, "directory")
    assert isinstance(found["locked"].error, PermissionError) and isinstance(found["open/a.png"], os.stat_result)


def test_a_fifo_is_yielded_as_a_special_file_and_never_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")  # opening it to read would wait for a writer, for good
    [(path, st)] = list(walk(tmp_path))
    assert os.path.basename(path) == "pipe.png"
    assert isinstance(st, Unreadable) and st.kind == "special"


def test_a_folder_whose_path_is_not_utf8_is_refused_with_a_reason(tmp_path: Path) -> None:
    folder = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9")))
    folder.mkdir()
    settings = Settings(data_dir=tmp_path / "data")
    with pytest.raises(UnrepresentablePath, match="not valid UTF-8"):  # before: UnicodeEncodeError, a traceback
        asyncio.run(scan(settings, topics_for(settings), "unused:9092", None, folder))  # type: ignore[arg-type]


# -- memory: flat however big the folder ---------------------------------------------------------------------

_MANY = 20_000  # a ComfyUI output folder, everything in one directory (fewer files than real ones, same shape)


def _many_files(folder: Path) -> list[Path]:
    folder.mkdir()
    files = [folder / f"ComfyUI_{i:07d}_.png" for i in range(_MANY)]
    for f in files:
        f.touch()  # empty, named like an image: still an image to the scanner
    return files


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_walk_reads_a_huge_flat_folder_without_holding_its_listing(tmp_path: Path) -> None:
    _many_files(tmp_path / "flat")
    # sorting the listing held 6 MB here (25 MB for 100k files) before the first file came out; now 3 kB
    assert _peak_bytes(lambda: next(walk(tmp_path / "flat"))) < 500_000


def test_a_listing_that_breaks_off_part_way_yields_its_directory_as_unreadable(tmp_path: Path, monkeypatch) -> None:
    make_png(tmp_path / "a.png", size=(8, 8))
    make_png(tmp_path / "b.png", size=(8, 8))
    real = os.scandir

    class Broken:
        """The listing gives its first entry, then fails (an I/O error on the directory's next block)."""

        def __init__(self, path: str) -> None:
            self._it = real(path)
            self._given = False

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self._it.close()

        def __iter__(self):
            return self

        def __next__(self):
            if self._given:
                raise OSError(errno.EIO, "Input/output error")
            self._given = True
            return next(self._it)

    monkeypatch.setattr(scanner.os, "scandir", Broken)
    [(first, st1), (directory, st2)] = list(walk(tmp_path))
    assert isinstance(st1, os.stat_result) and os.path.basename(first) in ("a.png", "b.png")
    # the rest of its files are unknown: recorded against the directory, never silently left out
    assert directory == os.path.realpath(tmp_path) and isinstance(st2, Unreadable) and st2.kind == "directory"


class _Delivered:
    """A producer whose sends the broker took at once (where they went does not matter here)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future:
        self.sent.append(topic)
        done = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(topic=topic, topic_partition=None, offset=0))
        return done

    async def flush(self) -> None:
        pass


class _NoLag:
    def __init__(self, *a) -> None:
        pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        pass

    async def lag(self, published=None) -> int:
        return 0


def test_a_rescan_asks_the_catalog_file_by_file_so_its_memory_stays_flat(tmp_path: Path, monkeypatch) -> None:
    files = _many_files(tmp_path / "flat")
    settings = Settings(data_dir=tmp_path / "data")
    with Catalog(settings.catalog_path) as catalog:  # every file already browsable, unchanged since
        events = [AssetBrowsable(event_id=f"e{i}", batch_id="b0", lane="batch", source="scan", asset_id=f"{i:064x}",
                                 path=str(f.resolve()), size=0, mtime_ns=f.stat().st_mtime_ns, format="PNG", width=1,
                                 height=1, thumbnails={}, discovered_at=1.0, browsable_at=2.0)
                  for i, f in enumerate(files)]
        catalog.apply(events, durable=False)
    del events
    monkeypatch.setattr(scanner, "LagProbe", _NoLag)
    prod = _Delivered()
    results = []

    def rescan() -> None:
        results.append(asyncio.run(scan(settings, topics_for(settings), "unused:9092", prod,  # type: ignore[arg-type]
                                        tmp_path / "flat")))

    # loading every known path under the root and sorting the listing held 11 MB here; now 34 kB
    assert _peak_bytes(rescan) < 2_000_000
    [result] = results
    assert (result.found, result.skipped_unchanged) == (0, _MANY)
    assert set(prod.sent) == {topics_for(settings).progress}  # nothing published again

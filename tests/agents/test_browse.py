"""browse_file: tier 1's pool work — hash first, then thumbnails; failures carry the hash; all of it picklable."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from agents.browse import Browsed, browse_file
from agents.hashing import hash_bytes
from agents.quality import remember_scores, remembered_scores
from agents.thumbnails import made_for
from streams.errors import (
    CorruptImage, DamflowError, PermanentError, SourceInFlux, SourceMissing, UnsupportedFormat,
)
from tests.conftest import CORPUS
from tests.images import comfy_like_png, make_jpeg, make_png, write_garbage, write_truncated


def test_browse_hashes_and_thumbnails(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "photo.jpg", size=(1600, 1200), orientation=8)
    data = tmp_path / "data"
    result = browse_file(str(path), str(data))
    asset_id = hash_bytes(path.read_bytes())
    assert (result.asset_id, result.size, result.format) == (asset_id, path.stat().st_size, "JPEG")
    assert (result.width, result.height) == (1200, 1600)
    assert result.thumbnails == {size: f"thumbs/{asset_id[:2]}/{asset_id}.{size}.webp" for size in ("256", "1440")}
    assert all((data / rel).is_file() for rel in result.thumbnails.values())
    assert result.deduplicated is False
    assert 0 < result.work_ms < 10_000


def test_same_content_under_another_name_is_a_duplicate_once_tier_3_scored_it(tmp_path: Path) -> None:
    # a copy found the thumbnails made and was a duplicate, so tier 3 skipped it: also when the first file's tier 3
    # never ran (its events lost with the broker), and then no copy of the content ever got scores
    if not keeps_notes(tmp_path):
        pytest.skip("this file system (or platform) keeps no extended attributes: no copy is a duplicate")
    first = make_png(tmp_path / "a.png", size=(300, 200), seed=4)
    copy = make_png(tmp_path / "copy of a.png", size=(300, 200), seed=4)
    other = make_png(tmp_path / "b.png", size=(300, 200), seed=5)
    data = str(tmp_path / "data")
    a, unscored = browse_file(str(first), data), browse_file(str(copy), data)
    remember_scores(str(tmp_path / "data" / "thumbs"), a.asset_id, {"score": 0.5})  # as tier 3 does
    b, c = browse_file(str(copy), data), browse_file(str(other), data)
    assert a.asset_id == unscored.asset_id == b.asset_id != c.asset_id
    assert (a.deduplicated, unscored.deduplicated, b.deduplicated, c.deduplicated) == (False, False, True, False)
    assert a.thumbnails == b.thumbnails
    assert remembered_scores(tmp_path / "data" / "thumbs", a.asset_id) == {"score": 0.5}


def keeps_notes(directory: Path) -> bool:
    """Whether files under ``directory`` keep extended attributes (Linux, and a file system that has them)."""
    probe = directory / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.damflow.probe", b"1")
    except (AttributeError, OSError):
        return False
    return True


def test_the_same_event_worked_on_again_finds_its_thumbnails_made_for_itself(tmp_path: Path) -> None:
    # a worker that died after making the thumbnails, before its results reached the broker: the record is worked
    # on again, a first attempt, and finding them made called it a duplicate, so tier 3 skipped it
    if not keeps_notes(tmp_path):
        pytest.skip("this file system (or platform) keeps no extended attributes: a redo counts as a duplicate")
    path = make_png(tmp_path / "a.png", size=(300, 200), seed=4)
    copy = make_png(tmp_path / "copy of a.png", size=(300, 200), seed=4)
    data = str(tmp_path / "data")
    first = browse_file(str(path), data, event_id="e1")
    remember_scores(str(tmp_path / "data" / "thumbs"), first.asset_id, {"score": 0.5})  # its tier 3 done
    again = browse_file(str(path), data, event_id="e1")
    other = browse_file(str(copy), data, event_id="e2")
    unnamed = browse_file(str(copy), data)
    assert (first.deduplicated, again.deduplicated, other.deduplicated, unnamed.deduplicated) == (
        False, False, True, True)
    assert made_for(tmp_path / "data" / first.thumbnails["256"]) == "e1"  # the maker, not a later finder


def test_thumbnails_made_for_no_event_name_none_and_count_as_found(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = browse_file(str(make_png(tmp_path / "whole.png", size=(300, 200), seed=6)), str(data))
    assert made_for(data / made.thumbnails["256"]) is None  # no event named: nothing to tell
    remember_scores(str(data / "thumbs"), made.asset_id, {"score": 0.5})
    assert browse_file(str(tmp_path / "whole.png"), str(data), event_id="e2").deduplicated == keeps_notes(
        tmp_path)  # an unknown maker, once its content is scored (known only where notes are kept)
    written = sorted(p.name for p in (data / "thumbs").rglob("*") if p.is_file())
    assert written == [f"{made.asset_id}.256.webp"]  # no file beside the thumbnail


def test_settings_are_passed_through(tmp_path: Path) -> None:
    path = make_png(tmp_path / "a.png", size=(300, 200))
    result = browse_file(str(path), str(tmp_path / "data"), sizes=(64, 128), quality=50, max_pixels=60_000)
    assert set(result.thumbnails) == {"64", "128"}
    with pytest.raises(DamflowError) as caught:
        browse_file(str(path), str(tmp_path / "data"), max_pixels=59_999)
    assert caught.value.code == "decompression_bomb"


def test_decode_failure_carries_the_hash_and_size(tmp_path: Path) -> None:
    broken = write_truncated(tmp_path / "cut.png", make_png(tmp_path / "a.png", size=(300, 300)))
    with pytest.raises(CorruptImage) as caught:
        browse_file(str(broken), str(tmp_path / "data"))
    assert caught.value.asset_id == hash_bytes(broken.read_bytes())  # type: ignore[attr-defined]
    assert caught.value.size == broken.stat().st_size  # type: ignore[attr-defined]


def test_failures_before_hashing_carry_no_hash(tmp_path: Path) -> None:
    with pytest.raises(SourceMissing) as missing:
        browse_file(str(tmp_path / "gone.png"), str(tmp_path / "data"))
    assert getattr(missing.value, "asset_id", None) is None
    path = write_garbage(tmp_path / "big.png", 2000)
    with pytest.raises(PermanentError, match="too large") as too_large:
        browse_file(str(path), str(tmp_path / "data"), max_file_bytes=1000)
    assert getattr(too_large.value, "asset_id", None) is None


def test_result_and_errors_survive_pickling(tmp_path: Path) -> None:
    result = browse_file(str(make_png(tmp_path / "a.png")), str(tmp_path / "data"))
    assert pickle.loads(pickle.dumps(result)) == result
    garbage = write_garbage(tmp_path / "g.png", 100)
    with pytest.raises(UnsupportedFormat) as caught:
        browse_file(str(garbage), str(tmp_path / "data"))
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is UnsupportedFormat
    assert (again.message, again.path, again.asset_id, again.size) == (
        caught.value.message, str(garbage), hash_bytes(garbage.read_bytes()), 100,
    )


def test_concurrent_writers_in_a_process_pool(tmp_path: Path) -> None:
    """Pool processes browsing the same content at once all succeed and leave one complete file per size."""
    sources = [comfy_like_png(tmp_path / f"copy{i}.png", seed=9) for i in range(1)]
    for i in range(1, 6):
        shutil.copy(sources[0], tmp_path / f"copy{i}.png")
    broken = write_truncated(tmp_path / "cut.png", sources[0])
    data = tmp_path / "data"
    with ProcessPoolExecutor(max_workers=3, mp_context=multiprocessing.get_context("forkserver")) as pool:
        futures = [pool.submit(browse_file, str(tmp_path / f"copy{i}.png"), str(data)) for i in range(6)]
        failing = pool.submit(browse_file, str(broken), str(data))
        results: list[Browsed] = [f.result(timeout=60) for f in futures]
        with pytest.raises(CorruptImage) as caught:
            failing.result(timeout=60)
    assert caught.value.asset_id == hash_bytes(broken.read_bytes())  # type: ignore[attr-defined]
    assert len({r.asset_id for r in results}) == 1
    assert len({(r.width, r.height, tuple(r.thumbnails.items())) for r in results}) == 1
    written = sorted(p for p in (data / "thumbs").rglob("*") if p.is_file())
    assert [p.name for p in written] == [f"{results[0].asset_id}.256.webp"]  # no temp files left
    with Image.open(written[0]) as thumb:
        thumb.load()
        assert thumb.size == (256, 256)


MANIFEST = json.loads((CORPUS / "manifest.json").read_text()) if (CORPUS / "manifest.json").is_file() else []


@pytest.mark.corpus
@pytest.mark.parametrize(
    "entry", [pytest.param(e, id=e["file"]) for e in MANIFEST if e["kind"] == "broken" or e["format"] == "HEIF"]
)
def test_corpus_failures_are_typed_and_named_by_hash(corpus: Path, tmp_path: Path, entry: dict) -> None:
    source = corpus / entry["file"]
    content = source.read_bytes()
    try:
        result = browse_file(str(source), str(tmp_path / "data"))
    except DamflowError as exc:
        assert type(exc) in (CorruptImage, UnsupportedFormat) or exc.code == "decompression_bomb"
        assert exc.asset_id == hash_bytes(content)  # type: ignore[attr-defined]
        assert exc.size == len(content)  # type: ignore[attr-defined]
    else:
        assert (result.asset_id, result.size) == (hash_bytes(content), len(content))


@pytest.mark.parametrize("decodes", [True, False], ids=["read whole", "read part"])
def test_a_file_written_while_it_is_read_is_read_again_later(tmp_path: Path, monkeypatch, decodes: bool) -> None:
    # a render saved under its final name as it is made: hashed in one read, thumbnailed in another, its asset
    # was two contents; caught part-way it did not decode and was dead-lettered for good (CorruptImage)
    import agents.browse as browse

    path = make_png(tmp_path / "render.png", size=(64, 64), seed=3)
    real = browse.make_thumbnails

    def written_meanwhile(*args, **kwargs):
        with open(path, "ab") as f:
            f.write(b"more of it")
        if not decodes:
            raise CorruptImage("image file is truncated", path=str(path))
        return real(*args, **kwargs)

    monkeypatch.setattr(browse, "make_thumbnails", written_meanwhile)
    with pytest.raises(SourceInFlux) as info:
        browse_file(str(path), str(tmp_path / "data"))
    assert info.value.retriable
    monkeypatch.setattr(browse, "make_thumbnails", real)  # it holds still now
    assert browse_file(str(path), str(tmp_path / "data")).asset_id == hash_bytes(path.read_bytes())


def test_a_file_that_holds_still_keeps_its_own_failure(tmp_path: Path) -> None:
    path = write_truncated(tmp_path / "cut.png", make_png(tmp_path / "a.png", size=(300, 200)), keep=0.5)
    with pytest.raises(CorruptImage):
        browse_file(str(path), str(tmp_path / "data"))

"""Tier-3 quality scores from a thumbnail (pure functions, no broker)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from agents.browse import browse_file
from agents.quality import quality_scores
from agents.thumbnails import made_for, thumbnail_path
from streams.errors import SourceChanged, StorageUnavailable
from tests.agents.test_browse import keeps_notes

ASSET = "ab" * 32


def _subject(size: int = 256) -> Image.Image:
    rng = random.Random(5)
    im = Image.new("RGB", (size, size))
    im.putdata([(rng.randrange(60, 200), rng.randrange(40, 180), rng.randrange(80, 220)) for _ in range(size * size)])
    return im


def _thumb(tmp_path: Path, im: Image.Image) -> str:
    path = thumbnail_path(tmp_path, ASSET, 256)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "WEBP", lossless=True, exact=True)  # exact: what lies under transparency is kept as it is
    return str(tmp_path)


def test_scores_are_in_range_and_tell_a_black_frame_from_a_picture(tmp_path: Path) -> None:
    picture = quality_scores(_thumb(tmp_path / "a", _subject()), ASSET)
    black = quality_scores(_thumb(tmp_path / "b", Image.new("RGB", (256, 256))), ASSET)
    assert all(0.0 <= v <= 1.0 for v in picture.values())
    assert black["brightness"] == 0 and black["sharpness"] == 0 and picture["score"] > black["score"] + 0.2


@pytest.mark.parametrize(("shade", "size"), [(128, (256, 256)), (255, (256, 256)), (255, (256, 40)), (90, (2, 2))])
def test_a_flat_frame_has_no_sharpness_whatever_its_shade_and_shape(tmp_path: Path, shade: int, size: tuple) -> None:
    # the edge filter keeps the outermost pixels as they are: a flat white frame scored sharpness 0.49, a flat
    # 256x40 banner 0.73, so a blank render got credit for edges it does not have
    flat = quality_scores(_thumb(tmp_path, Image.new("RGB", size, (shade,) * 3)), ASSET)
    assert flat["sharpness"] == 0 and flat["contrast"] == 0


def test_a_transparent_region_is_not_part_of_the_picture_whatever_lies_under_it(tmp_path: Path) -> None:
    shown = []
    for i, under in enumerate([(0, 0, 0, 0), (255, 255, 255, 0), (255, 0, 0, 0)]):
        im = Image.new("RGBA", (256, 256), under)  # the left half transparent, over black, white or red
        im.paste(_subject(128).crop((0, 0, 128, 128)).resize((128, 256)), (128, 0))
        shown.append(quality_scores(_thumb(tmp_path / str(i), im), ASSET))
    assert shown[0] == shown[1] == shown[2]
    alone = quality_scores(_thumb(tmp_path / "alone", _subject(128).crop((0, 0, 128, 128)).resize((128, 256))),
                           ASSET)
    assert abs(shown[0]["brightness"] - alone["brightness"]) < 0.01
    assert abs(shown[0]["saturation"] - alone["saturation"]) < 0.01


def test_a_fully_transparent_thumbnail_scores_nothing(tmp_path: Path) -> None:
    scores = quality_scores(_thumb(tmp_path, Image.new("RGBA", (256, 256), (200, 200, 200, 0))), ASSET)
    assert scores["score"] == 0.0


def _browsed(tmp_path: Path) -> tuple[str, str, Path]:
    """A source image browsed by tier 1: its path, asset id and 256-px thumbnail."""
    src = tmp_path / "src.png"
    _subject(600).save(src)
    result = browse_file(str(src), str(tmp_path))
    return str(src), result.asset_id, thumbnail_path(tmp_path / "thumbs", result.asset_id, 256)


def test_a_lost_or_damaged_thumbnail_is_made_again_from_the_source_and_scored(tmp_path: Path) -> None:
    src, asset, thumb = _browsed(tmp_path)
    expected = quality_scores(str(tmp_path / "thumbs"), asset)
    for damage in (lambda: thumb.write_bytes(b""), lambda: thumb.write_bytes(thumb.read_bytes()[:100]),
                   thumb.unlink):
        damage()  # left empty or cut by a crash, or lost: before, a permanent dead letter, never replayable
        assert quality_scores(str(tmp_path / "thumbs"), asset, source=src) == expected
        assert thumb.stat().st_size > 100


def test_a_thumbnail_made_again_names_the_event_that_made_it(tmp_path: Path) -> None:
    # or a redo of that event (a worker died before publishing it) would be taken for a duplicate (agents.browse)
    if not keeps_notes(tmp_path):
        pytest.skip("this file system (or platform) keeps no extended attributes")
    src = tmp_path / "src.png"
    _subject(600).save(src)
    made = browse_file(str(src), str(tmp_path), event_id="e1")
    thumb = thumbnail_path(tmp_path / "thumbs", made.asset_id, 256)
    thumb.write_bytes(thumb.read_bytes()[:100])  # cut by a crash
    quality_scores(str(tmp_path / "thumbs"), made.asset_id, source=str(src))
    assert thumb.stat().st_size > 100 and made_for(thumb) == "e1"
    assert not browse_file(str(src), str(tmp_path), event_id="e1").deduplicated


def test_a_thumbnail_that_cannot_be_made_again_says_why(tmp_path: Path) -> None:
    src, asset, thumb = _browsed(tmp_path)
    thumb.write_bytes(b"")
    with pytest.raises(StorageUnavailable):  # no source to make it from: damflow's storage, retried
        quality_scores(str(tmp_path / "thumbs"), asset)
    _subject(300).save(src)  # the file at the path is another picture now
    with pytest.raises(SourceChanged):
        quality_scores(str(tmp_path / "thumbs"), asset, source=src)


def test_tier1_makes_an_empty_thumbnail_again(tmp_path: Path) -> None:
    src, asset, thumb = _browsed(tmp_path)
    thumb.write_bytes(b"")
    again = browse_file(src, str(tmp_path))  # before: the empty file counted as made, for good
    assert again.asset_id == asset and not again.deduplicated and thumb.stat().st_size > 100

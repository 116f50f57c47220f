"""Tier-3 quality scores from a thumbnail (pure functions, no broker)."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from agents.quality import quality_scores
from agents.thumbnails import thumbnail_path

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

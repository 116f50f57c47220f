"""Tier-3 image-quality scores, computed from the 256-px thumbnail tier 1 made (cheap: ~1 ms a file).

Scores are in 0..1 so they can be compared and filtered on: ``brightness`` (mean luminance), ``contrast``
(luminance spread), ``sharpness`` (edge energy), ``saturation`` (mean HSV saturation) and ``score``, a plain
combination that flags the obviously bad (black frames, blurred or washed-out renders), not an aesthetic model.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageFilter, ImageStat

from agents.thumbnails import thumbnail_path
from streams.errors import SourceMissing


def quality_scores(thumbs_dir: str, asset_id: str) -> dict[str, float]:
    path = thumbnail_path(Path(thumbs_dir), asset_id, 256)
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except FileNotFoundError as exc:
        raise SourceMissing(f"no thumbnail for {asset_id}", path=str(path)) from exc
    gray = rgb.convert("L")
    brightness = ImageStat.Stat(gray).mean[0] / 255
    contrast = min(ImageStat.Stat(gray).stddev[0] / 128, 1.0)
    edges = gray.filter(ImageFilter.FIND_EDGES)
    sharpness = min(ImageStat.Stat(edges).stddev[0] / 64, 1.0)
    saturation = ImageStat.Stat(rgb.convert("HSV")).mean[1] / 255
    exposure = 1 - abs(brightness - 0.5) * 2
    score = round(0.35 * sharpness + 0.3 * contrast + 0.2 * exposure + 0.15 * saturation, 4)
    return {"brightness": round(brightness, 4), "contrast": round(contrast, 4), "sharpness": round(sharpness, 4),
            "saturation": round(saturation, 4), "score": score}

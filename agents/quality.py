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
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                rgb, opaque = rgba.convert("RGB"), rgba.getchannel("A").point(lambda a: 255 if a >= 128 else 0)
            else:
                rgb, opaque = im.convert("RGB"), None
    except FileNotFoundError as exc:
        raise SourceMissing(f"no thumbnail for {asset_id}", path=str(path)) from exc
    return scores(rgb, opaque)


def scores(rgb: Image.Image, opaque: Image.Image | None = None) -> dict[str, float]:
    """The scores of an RGB image; with ``opaque`` (an L mask), of its opaque pixels only: what lies under a
    transparent pixel is not part of the picture, nor is the edge where the picture meets the transparency."""
    inner = None
    if opaque is not None:
        if opaque.getbbox() is None:  # nothing to see
            return dict.fromkeys(("brightness", "contrast", "sharpness", "saturation", "score"), 0.0)
        inner = opaque.filter(ImageFilter.MinFilter(3))  # one pixel in from the picture's border
    gray = rgb.convert("L")
    lum = ImageStat.Stat(gray, opaque)
    brightness = lum.mean[0] / 255
    contrast = min(lum.stddev[0] / 128, 1.0)
    edges = gray.filter(ImageFilter.FIND_EDGES)
    sharpness = 0.0 if inner is not None and inner.getbbox() is None else \
        min(ImageStat.Stat(edges, inner).stddev[0] / 64, 1.0)
    saturation = ImageStat.Stat(rgb.convert("HSV"), opaque).mean[1] / 255
    exposure = 1 - abs(brightness - 0.5) * 2
    score = round(0.35 * sharpness + 0.3 * contrast + 0.2 * exposure + 0.15 * saturation, 4)
    return {"brightness": round(brightness, 4), "contrast": round(contrast, 4), "sharpness": round(sharpness, 4),
            "saturation": round(saturation, 4), "score": score}

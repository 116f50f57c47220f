"""Tier-3 image-quality scores, computed from the 256-px thumbnail tier 1 made (cheap: ~1 ms a file).

Scores are in 0..1 so they can be compared and filtered on: ``brightness`` (mean luminance), ``contrast``
(luminance spread), ``sharpness`` (edge energy), ``saturation`` (mean HSV saturation) and ``score``, a plain
combination that flags the obviously bad (black frames, blurred or washed-out renders), not an aesthetic model.
"""

from __future__ import annotations

import contextlib
import errno
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageFilter, ImageStat

from agents.atomic_write import read_note, set_note
from agents.hashing import hash_file
from agents.thumbnails import made_for, make_thumbnails, thumbnail_path
from streams.errors import SourceChanged, StorageUnavailable


#: The extended attribute of a 256-px thumbnail holding tier 3's scores of its content (see
#: :func:`remember_scores`).
SCORES_NOTE = "user.damflow.quality"


def remember_scores(thumbs_dir: str, asset_id: str, scores: dict[str, float]) -> None:
    """Keep tier 3's ``scores`` with the content's thumbnail: that tier 3 was done for this content is then known
    from the disk, not from the thumbnails' being there (which tier 1 of an event whose tier 3 was lost, with a
    broker, also leaves behind): see :func:`agents.browse.browse_file`'s ``deduplicated``."""
    set_note(thumbnail_path(Path(thumbs_dir), asset_id, 256), SCORES_NOTE, json.dumps(scores).encode())


def remembered_scores(thumbs_dir: str | Path, asset_id: str) -> dict[str, float] | None:
    """The scores :func:`remember_scores` kept for the content, or ``None`` (never scored, or not known: a
    platform or file system that keeps no extended attributes)."""
    note = read_note(thumbnail_path(Path(thumbs_dir), asset_id, 256), SCORES_NOTE)
    try:
        scores = json.loads(note) if note else None
    except ValueError:
        return None
    ok = isinstance(scores, dict) and all(isinstance(v, int | float) for v in scores.values())
    return scores if ok else None


def quality_scores(thumbs_dir: str, asset_id: str, source: str | None = None, **thumbnail_args: Any,
                   ) -> dict[str, float]:
    """The scores of the asset's 256-px thumbnail. One that is missing, empty or damaged (damflow's own file: a
    crash mid-write, a disk fault) is made again from ``source`` (with ``thumbnail_args``, as tier 1 made it)
    and scored; without ``source``, or when the disk will not give it up, that is damflow's storage failing
    (:class:`StorageUnavailable`, retried), never the asset's fault."""
    path = thumbnail_path(Path(thumbs_dir), asset_id, 256)
    try:
        return scores(*_pixels(path))
    except _DAMAGED as exc:
        if source is None or (isinstance(exc, OSError) and exc.errno not in (None, errno.ENOENT)):
            raise StorageUnavailable(f"the thumbnail of {asset_id} cannot be read: {exc}", path=str(path)) from exc
        damage = exc
    if hash_file(source)[0] != asset_id:  # the source's own errors (gone, unreadable) are raised as such
        raise SourceChanged(f"the thumbnail of {asset_id} is lost and {source} no longer holds that content: "
                            "nothing to make it again from", path=source)
    maker = made_for(path)  # the remade one names the same maker: a redo of that event is still no duplicate
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # gone or damaged: made again below (a directory there fails the write, typed)
    make_thumbnails(source, asset_id, Path(thumbs_dir), maker=maker, **thumbnail_args)
    try:
        return scores(*_pixels(path))
    except _DAMAGED as exc:
        raise StorageUnavailable(f"the thumbnail of {asset_id} was made again and still cannot be read: {exc} "
                                 f"(first: {damage})", path=str(path)) from exc


#: What reading a thumbnail can raise besides damflow's own errors: the OS, and a decoder meeting bad bytes.
_DAMAGED = (OSError, ValueError, SyntaxError)


def _pixels(path: Path) -> tuple[Image.Image, Image.Image | None]:
    with Image.open(path) as im:
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            return rgba.convert("RGB"), rgba.getchannel("A").point(lambda a: 255 if a >= 128 else 0)
        return im.convert("RGB"), None


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
    # FIND_EDGES keeps the image's outermost pixels as they are: their brightness, not edges (a flat white frame
    # scored sharpness 0.49, a flat banner 0.73). The picture inside that border only.
    w, h = gray.size
    box = (1, 1, w - 1, h - 1)
    edges = gray.filter(ImageFilter.FIND_EDGES).crop(box) if w >= 3 and h >= 3 else None
    inner = inner.crop(box) if inner is not None and edges is not None else inner
    sharpness = 0.0 if edges is None or (inner is not None and inner.getbbox() is None) else \
        min(ImageStat.Stat(edges, inner).stddev[0] / 64, 1.0)
    saturation = ImageStat.Stat(rgb.convert("HSV"), opaque).mean[1] / 255
    exposure = 1 - abs(brightness - 0.5) * 2
    score = round(0.35 * sharpness + 0.3 * contrast + 0.2 * exposure + 0.15 * saturation, 4)
    return {"brightness": round(brightness, 4), "contrast": round(contrast, 4), "sharpness": round(sharpness, 4),
            "saturation": round(saturation, 4), "score": score}

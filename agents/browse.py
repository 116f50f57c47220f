"""Tier 1's unit of work: make one file browsable — its content hash, then its thumbnails.

:func:`browse_file` runs in a pool process, so it is a top-level function taking and returning small picklable
values (paths as strings, a frozen dataclass back). It touches no broker and no global state besides Pillow's
module settings, which makes it testable on its own and safe to run again: the same bytes give the same id and
the same thumbnail files, and a second run only notices they exist.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agents.faults import inject
from agents.hashing import hash_file
from agents.quality import remembered_scores
from agents.thumbnails import (
    DEFAULT_MAX_PIXELS, DEFAULT_QUALITY, DEFAULT_SIZES, made_for, make_thumbnails, thumbnail_path,
)
from streams.errors import DamflowError, SourceInFlux


@dataclass(frozen=True, slots=True)
class Browsed:
    """The outcome of :func:`browse_file`: enough to announce the asset as browsable.

    ``width``/``height`` are as displayed (EXIF orientation applied); ``thumbnails`` maps size name to the path
    relative to the data directory; ``deduplicated`` is true when every thumbnail already existed (this content
    was browsed before) and tier 3 has scored the content (see :func:`agents.quality.remember_scores`), unless
    they were made for the event the call named (an unknown maker, or no event named, counts as another);
    ``work_ms`` is the wall time of the call, for progress and benchmarks.
    """

    asset_id: str
    size: int
    format: str
    width: int
    height: int
    thumbnails: dict[str, str]
    deduplicated: bool
    work_ms: float
    #: The modification time of what was read (the file held still over the read); None where it could not be
    #: looked at.
    mtime_ns: int | None = None


def browse_file(
    path: str,
    data_dir: str,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    quality: int = DEFAULT_QUALITY,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int | None = None,
    faults: bool = False,
    event_id: str | None = None,
) -> Browsed:
    """Hash the file at ``path`` and make its thumbnails under ``data_dir/thumbs``.

    Hashing comes first so that every failure after it still names the content: a :class:`DamflowError` raised
    while making thumbnails carries ``asset_id`` and ``size`` attributes (they survive pickling back from the
    pool), so the dead letter and the failed-asset event key on the hash. Errors from hashing itself
    (missing, unreadable, too large) carry neither. ``faults`` turns on the test hooks of :mod:`agents.faults`.

    ``event_id`` names the event this is done for, and goes with the thumbnails it makes: the same event worked on
    again (a worker died before its results reached the broker) finds them made for itself, not a duplicate.
    """
    started = time.perf_counter()
    if faults:
        inject(path)
    before = _state(path)
    asset_id, size = hash_file(path, max_bytes=max_file_bytes)
    thumbs_dir = Path(data_dir) / "thumbs"
    try:
        thumbs = make_thumbnails(
            path, asset_id, thumbs_dir, sizes=sizes, quality=quality, max_pixels=max_pixels, maker=event_id
        )
    except DamflowError as exc:
        _holds_still(path, before, exc)  # a partial file does not decode: not the file's fault, if it moved
        exc.asset_id = asset_id  # type: ignore[attr-defined]
        exc.size = size  # type: ignore[attr-defined]
        raise
    _holds_still(path, before)  # else the hash (one read) and the thumbnails (another) may be of two contents
    # found made: another copy of the content was browsed before, unless they were made for this very event; and
    # a duplicate for tier 3 only once tier 3 scored the content (its scores kept with the thumbnail): a file
    # whose first event's tier 3 was lost (with a broker) never got one, every later copy skipped as a duplicate
    redone = (not thumbs.created and event_id is not None
              and made_for(thumbnail_path(thumbs_dir, asset_id, sizes[0])) == event_id)
    scored = not thumbs.created and remembered_scores(thumbs_dir, asset_id) is not None
    return Browsed(
        asset_id=asset_id,
        size=size,
        format=thumbs.format,
        width=thumbs.width,
        height=thumbs.height,
        thumbnails=thumbs.files,
        deduplicated=scored and not redone,
        work_ms=(time.perf_counter() - started) * 1000,
        mtime_ns=before[1] if before is not None else None,
    )


def _state(path: str) -> tuple[int, ...] | None:
    """What changes with the file at ``path``: its size, modification time, inode and change time (which no tool
    can set back: a copy keeping the modification time, a file renamed over it); None where it cannot be looked
    at (hashing says why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def _holds_still(path: str, before: tuple[int, ...] | None, cause: BaseException | None = None) -> None:
    """Raise :class:`SourceInFlux` if the file at ``path`` changed since ``before``: it is being written, and
    what was read of it is a mix of contents, or a part (decoded, a truncated image: dead-lettered for good)."""
    if before is not None and _state(path) not in (before, None):
        raise SourceInFlux("the file changed while it was read (still being written?): it is read again later",
                           path=path) from cause

"""WebP thumbnails of one image, content-addressed under the data directory.

Contract (DESIGN.md, "Thumbnails"): a 256-px (longest side) WebP always, larger previews only when the displayed
image is larger, never upscaled; stored as ``thumbs/<id[:2]>/<id>.<size>.webp``; written under a temp name unique
to the writer and renamed, so a file that exists is complete and two workers may write the same asset at once.
A size whose file already exists is not made again: the name is the content hash, so it holds the same pixels.

Every failure leaves as a typed error from :mod:`streams.errors`, with Pillow's own words in the reason:
a file that is not an image (or one no decoder is installed for) is :class:`UnsupportedFormat`, one that claims a
format and breaks is :class:`CorruptImage`, one declaring too many pixels is :class:`DecompressionBomb` —
refused from the header, before a pixel is allocated. Truncated files are failures: ``LOAD_TRUNCATED_IMAGES``
is held off during the call, because a grey half-image in the catalog is worse than a dead letter one can read.

One call at a time per process: Pillow's module settings and the warnings filter are process-wide, which is
why this runs in the pool's processes rather than in threads.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image, ImageFile, ImageMath, UnidentifiedImageError, features

from agents.atomic_write import read_note, write_atomically
from agents.hashing import source_error
from agents.sniff import sniff_file
from streams.errors import CorruptImage, DamflowError, DecompressionBomb, StorageUnavailable, UnsupportedFormat

DEFAULT_SIZES: tuple[int, ...] = (256, 1440)
DEFAULT_QUALITY = 80
#: Pillow's own hard limit (twice its warning limit): the same default as ``Settings.max_image_pixels``.
DEFAULT_MAX_PIXELS = 178_956_970
#: libwebp effort, 0 (fast) .. 6 (small). Measured here on a 1440-px preview: method 2 takes 60 ms and 199 KB,
#: 4 (libwebp's default) 135 ms and 192 KB, 0 37 ms but 229 KB; at 256 px, 2.9 vs 5.5 ms. 2 is the knee.
WEBP_METHOD = 2

# The formats tier 1 lets Pillow try, in order (the JPEG plugin itself turns multi-picture files into MPO).
# Everything else Pillow could open (EPS runs Ghostscript; TGA, PCX and friends match almost any bytes) is
# refused as unsupported. HEIF/JXL count only when a plugin (pillow-heif, pillow-jxl) has registered them.
_CANDIDATE_FORMATS = (
    "JPEG", "PNG", "WEBP", "GIF", "AVIF", "HEIF", "TIFF", "BMP", "ICO", "PSD", "JPEG2000", "QOI", "JXL",
)
# Formats whose Pillow plugin is only usable when its codec library was built in.
_CODECS = {"JPEG": "jpg", "WEBP": "webp", "AVIF": "avif", "JPEG2000": "jpg_2000"}

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = frozenset({5, 6, 7, 8})

# Exceptions Pillow's plugins are known to leak on malformed input besides OSError.
#: What Pillow's decoders raise on a damaged file (``RuntimeError``: the AVIF plugin's decoder failures).
_DECODE_ERRORS = (SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, ZeroDivisionError,
                  RuntimeError)

_ASSET_ID = re.compile(r"[0-9a-f]{2,128}")

Image.init()  # register every plugin once, at import (a pool process imports this before its first file)


@dataclass(frozen=True, slots=True)
class Thumbnails:
    """What :func:`make_thumbnails` found and made.

    ``width``/``height`` are the image as displayed (after EXIF orientation). ``files`` maps the size name
    (``"256"``) to the path relative to the data directory (``"thumbs/ab/<id>.256.webp"``). ``created`` is false
    when every file already existed (the same content was seen before).
    """

    format: str
    width: int
    height: int
    files: dict[str, str]
    created: bool


def thumbnail_path(thumbs_dir: Path | str, asset_id: str, size: int) -> Path:
    """Where the ``size``-px thumbnail of ``asset_id`` lives: ``thumbs_dir/<id[:2]>/<id>.<size>.webp``."""
    return Path(thumbs_dir) / asset_id[:2] / f"{asset_id}.{size}.webp"


#: The extended attribute of a thumbnail naming the event whose work made it (see :func:`made_for`).
MAKER_NOTE = "user.damflow.made_for"


def made_for(thumb: Path | str) -> str | None:
    """The id of the event whose work made the thumbnail at ``thumb``, if one was named and it is known: finding
    the thumbnails made then tells a redo of that same event (its results lost with a worker) from another copy
    of the content. ``None`` when unknown: made before this was kept, or on a platform or file system that keeps
    no extended attributes (where no copy counts as a duplicate either: see :func:`agents.quality.remember_scores`)."""
    note = read_note(Path(thumb), MAKER_NOTE)
    try:
        return note.decode() if note else None
    except UnicodeDecodeError:
        return None


def _made(thumb: Path) -> bool:
    """Whether a thumbnail is there already (an empty file, left by a crash on a disk that lost the write, is
    not). Failing to look is damflow's own disk's fault, never the source file's."""
    try:
        return thumb.stat().st_size > 0
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageUnavailable(f"cannot look at a thumbnail: {exc.strerror or exc}", path=str(thumb)) from exc


def make_thumbnails(
    path: Path | str,
    asset_id: str,
    thumbs_dir: Path | str,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    quality: int = DEFAULT_QUALITY,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    maker: str | None = None,
) -> Thumbnails:
    """Make the missing WebP thumbnails of the image at ``path`` (content hash ``asset_id``) under ``thumbs_dir``.

    ``sizes[0]`` is always made (at the image's own size when smaller); every other size only when the displayed
    image's longest side is larger than it. ``maker``, the id of the event this is done for, goes with each
    thumbnail made (:func:`made_for`; an extended attribute set before the file is renamed into place, so it
    costs no file of its own: a small file of its own took 0.8-1.6 ms an asset on this project's machines).
    """
    if not _ASSET_ID.fullmatch(asset_id):
        raise ValueError(f"asset id must be lowercase hex, got {asset_id!r}")  # it becomes a path: no "../"
    if not sizes or min(sizes) < 1:
        raise ValueError(f"thumbnail sizes must be positive, got {sizes!r}")
    thumbs_dir = Path(thumbs_dir)

    with _pillow_errors(path, max_pixels), Image.open(path, formats=_openable_formats()) as image:
        image_format = image.format or "unknown"
        stored = image.size
        _check_dimensions(stored, max_pixels, path)
        wanted = [sizes[0], *(s for s in sizes[1:] if s < max(stored))]
        missing = [s for s in wanted if not _made(thumbnail_path(thumbs_dir, asset_id, s))]
        if missing:
            # JPEG only: decode at a reduced scale (1/2..1/8 in the DCT) no smaller than the largest thumbnail.
            image.draft(None, _fit(stored, max(missing)))
            image.load()
        orientation = _orientation(image)
        encoded = _encode(image, orientation, missing, quality)
        turned = orientation in _SWAPS_SIDES and not _displayed_size_at_open(image, stored)

    note = (MAKER_NOTE, maker.encode()) if maker else None
    for size, data in encoded.items():
        write_atomically(thumbnail_path(thumbs_dir, asset_id, size), data, what="thumbnail", note=note)
    width, height = (stored[1], stored[0]) if turned else stored
    files = {str(s): f"{thumbs_dir.name}/{asset_id[:2]}/{asset_id}.{s}.webp" for s in wanted}
    return Thumbnails(image_format, width, height, files, created=bool(encoded))


def _openable_formats() -> tuple[str, ...]:
    """The candidate formats this Pillow can decode now (a plugin registered after import counts too)."""
    return tuple(f for f in _CANDIDATE_FORMATS if _decodable(f))


def _decodable(name: str) -> bool:
    codec = _CODECS.get(name)
    return name in Image.OPEN and (codec is None or bool(features.check(codec)))


def _check_dimensions(size: tuple[int, int], max_pixels: int, path: Path | str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise CorruptImage(f"image declares a zero size ({width}x{height})", path=str(path))
    if width * height > max_pixels:
        raise DecompressionBomb(
            f"image declares {width}x{height} = {width * height:,} pixels, more than the limit of {max_pixels:,}",
            path=str(path),
        )


def _fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """``size`` scaled so its longest side is ``longest``, aspect kept; never larger than ``size``."""
    width, height = size
    if max(width, height) <= longest:
        return size
    if width >= height:
        return longest, max(1, round(height * longest / width))
    return max(1, round(width * longest / height)), longest


def _orientation(image: Image.Image) -> int:
    """The EXIF (or XMP ``tiff:Orientation``) orientation, 1 when absent or unreadable.

    Unreadable metadata is not this tier's failure: the pixels are fine, tier 2 reports the broken EXIF.
    """
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - any malformed EXIF (when decoding, PNG pixels were loaded before this)
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _displayed_size_at_open(image: Image.Image, size: tuple[int, int]) -> bool:
    """Whether Pillow already reported the displayed size when it opened the file: its TIFF reader (Pillow 13)
    turns orientations 5-8 itself, swapping the size at once and the pixels when they load (then dropping the
    tag). Told by the file's own width and length tags being the other way round. Without this, an image whose
    thumbnails already existed (not loaded, tag still there) had its sides swapped a second time."""
    tags = getattr(image, "tag_v2", None)
    if tags is None or size[0] == size[1]:
        return False
    try:
        return (tags.get(256), tags.get(257)) == (size[1], size[0])  # ImageWidth, ImageLength
    except Exception:  # noqa: BLE001 - malformed tags: as if not turned
        return False


def _encode(image: Image.Image, orientation: int, sizes: Sequence[int], quality: int) -> dict[int, bytes]:
    """WebP bytes per size, largest first, each smaller one resized from the one before (less work, same look)."""
    encoded: dict[int, bytes] = {}
    if not sizes:
        return encoded
    source = _displayable(image)
    for size in sorted(sizes, reverse=True):
        target = _fit(source.size, size)
        if target != source.size:
            source = source.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
        # Transposing the small image is cheaper than the decoded one, and it is the same pixels.
        shown = source.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else source
        buffer = io.BytesIO()
        shown.save(buffer, "WEBP", quality=quality, method=WEBP_METHOD)  # no exif/icc passed: none written
        encoded[size] = buffer.getvalue()
    return encoded


def _displayable(image: Image.Image) -> Image.Image:
    """``image`` in a mode WebP stores and LANCZOS resamples well: ``L``, ``RGB`` or ``RGBA`` (alpha kept)."""
    mode = image.mode
    if mode.startswith("I;16"):
        grey = _to_l(image.convert("I"), 0, 65535)  # the full 16-bit range, as viewers show it
    elif mode in ("I", "F"):
        low, high = image.getextrema()  # no fixed range: stretch what is there
        grey = _to_l(image, float(low), float(high))
    elif mode in ("L", "RGB", "RGBA"):
        return image.convert("RGBA") if "transparency" in image.info else image
    else:
        # P/PA/LA/1 with transparency keep it; CMYK (Pillow undid Adobe's inversion when decoding), YCbCr,
        # LAB, RGBX become RGB; "1" becomes L, since resizing a bilevel image falls back to nearest-neighbour.
        if image.has_transparency_data:
            return image.convert("RGBA")
        return image.convert("L" if mode == "1" else "RGB")
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):  # a 16-bit grey tRNS: compared at full depth (Pillow's RGBA clips first)
        full = image.convert("I")
        alpha = ImageMath.lambda_eval(lambda a: (a["im"] != transparent) * 255, im=full).convert("L")
        return Image.merge("LA", (grey, alpha)).convert("RGBA")
    if "transparency" in image.info:
        return Image.merge("LA", (grey, image.convert("RGBA").getchannel("A"))).convert("RGBA")
    return grey


def _to_l(image: Image.Image, low: float, high: float) -> Image.Image:
    """Scale ``low..high`` of a 32-bit (``I`` or ``F``) image onto 0..255 — a plain convert would clip at 255."""
    scale = 255.0 / (high - low) if high > low else 0.0
    return image.point(lambda v: (v - low) * scale).convert("L")


@contextmanager
def _pillow_errors(path: Path | str, max_pixels: int) -> Iterator[None]:
    """Turn whatever Pillow raises for this file into a typed damflow error naming Pillow's reason.

    Warnings are recorded rather than printed: metadata complaints on a good image are noise here, and on a bad
    one they explain the failure (``Invalid APNG`` before ``cannot load this image``), so they join the reason.
    Pillow's module settings are set for the call and restored after it, so other Pillow users in the process
    (tier 2, tests) see the defaults.
    """
    saved = Image.WARN_POSSIBLE_FORMATS, Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Image.WARN_POSSIBLE_FORMATS = True  # says which plugin refused the bytes, and why
        # Pillow refuses on its own above twice this (and only warns below): its hard stop then sits at our
        # limit, and our check of the header decides; the warning between the two is recorded, not raised.
        Image.MAX_IMAGE_PIXELS = (max_pixels + 1) // 2
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # whatever another library in the process chose
        try:
            yield
        except DamflowError:
            raise
        except Image.DecompressionBombError as exc:
            raise DecompressionBomb(str(exc), path=str(path)) from exc
        except UnidentifiedImageError as exc:
            raise _unidentified(path, caught) from exc
        except OSError as exc:
            if exc.errno is not None:  # the OS failed us (gone, permissions, I/O), not the decoder
                raise source_error(exc, path) from exc
            raise CorruptImage(_reason(exc, caught), path=str(path)) from exc
        except _DECODE_ERRORS as exc:
            raise CorruptImage(_reason(exc, caught), path=str(path)) from exc
        finally:
            Image.WARN_POSSIBLE_FORMATS, Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _unidentified(path: Path | str, caught: list[warnings.WarningMessage]) -> DamflowError:
    """No plugin took the bytes: corrupt if they start like a format we decode, else unsupported."""
    try:
        empty = os.path.getsize(path) == 0
    except OSError as exc:  # gone since Pillow looked
        return source_error(exc, path)
    if empty:
        return CorruptImage("empty file (0 bytes)", path=str(path))
    try:
        claimed = sniff_file(path)
    except DamflowError as exc:
        return exc
    if claimed is None:
        return UnsupportedFormat("not a recognised image format", path=str(path))
    if not _decodable(claimed):
        return UnsupportedFormat(f"{claimed} image, but no decoder for {claimed} is installed", path=str(path))
    return CorruptImage(f"starts like {claimed} but cannot be read{_warning_text(caught)}", path=str(path))


def _reason(exc: BaseException, caught: list[warnings.WarningMessage]) -> str:
    return f"cannot decode image: {type(exc).__name__}: {exc}{_warning_text(caught)}"


def _warning_text(caught: list[warnings.WarningMessage]) -> str:
    messages = list(dict.fromkeys(str(w.message)[:200] for w in caught))[:3]
    return f" (Pillow: {'; '.join(messages)})" if messages else ""


__all__ = [
    "DEFAULT_MAX_PIXELS", "DEFAULT_QUALITY", "DEFAULT_SIZES", "WEBP_METHOD", "Thumbnails", "make_thumbnails",
    "thumbnail_path",
]

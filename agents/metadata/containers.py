"""Read what an image file's containers hold, losslessly: :func:`read_containers` fills a
:class:`~agents.metadata.model.Containers`.

Two passes, each doing what it does best:

1. **Our own walk** of the container (:mod:`.png_chunks`, :mod:`.jpeg_segments`, :mod:`.webp_chunks`) — text
   chunks wherever they are, every JPEG comment, flags (ICC, MPF, C2PA, ExtendedXMP), size, and the encoded
   EXIF/XMP/IPTC payloads. Only metadata is read; pixel data is seeked over.
2. **exiv2** (:mod:`.exiv2_reader`) turns those payloads into named values. It runs only when the walk found a
   payload (or for formats we do not walk: TIFF, HEIF, AVIF, ...), and when it refuses a file our fallbacks read
   the payloads instead: Pillow for EXIF, :mod:`.xmp` for XMP, :mod:`.iptc` for IPTC.

Then the pieces exiv2 renders unhelpfully are decoded from the raw bytes (EXIF UserComment), GPS becomes decimal
degrees, and RGB/RGBA PNGs are probed cheaply for A1111 "stealth" metadata in the pixels' low bits
(:mod:`.stealth`).

Bad metadata never raises: each problem is a line in ``warnings`` and reading goes on. Only file problems raise —
:class:`~streams.errors.SourceMissing`, :class:`~streams.errors.SourceUnreadable` — and
:class:`~streams.errors.UnsupportedFormat` for a file that is not an image by its first bytes (an empty file
included). pyexiv2 is not thread-safe; calls into it are serialised by a lock, so threads are safe but gain
nothing — run several processes for throughput.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import BinaryIO

from agents.hashing import source_error
from agents.metadata.blobs import Blobs
from agents.metadata.exif import (
    decode_user_comment,
    find_user_comment,
    gps_position,
    pillow_exif,
    strip_exiv2_charset,
)
from agents.metadata.exiv2_reader import read_with_exiv2
from agents.metadata.iptc import parse_iim
from agents.metadata.jpeg_segments import walk_jpeg
from agents.metadata.model import Containers
from agents.metadata.png_chunks import PngLayout, walk_png
from agents.metadata.stealth import read_stealth
from agents.metadata.webp_chunks import walk_webp
from agents.metadata.xmp import parse_packet
from agents.sniff import HEAD_BYTES, sniff
from streams.errors import UnsupportedFormat

_WALKERS = {"PNG": walk_png, "JPEG": walk_jpeg, "WEBP": walk_webp}
#: Formats exiv2 reads metadata from (GIF, BMP, ICO, QOI: it has none to give).
_EXIV2_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "TIFF", "HEIF", "AVIF", "JXL", "JPEG2000", "PSD"})
_USER_COMMENT_KEYS = ("Exif.Photo.UserComment", "Exif.Image.0x9286")


def read_containers(path: str | Path) -> Containers:
    """Format-level metadata of the image file at ``path`` (see the module docstring)."""
    path = Path(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise UnsupportedFormat("not a regular file", path=str(path))
        with open(path, "rb") as source:
            head = source.read(HEAD_BYTES)
            fmt = sniff(head)
            if fmt is None:
                reason = "empty file" if info.st_size == 0 else "not an image format damflow knows"
                raise UnsupportedFormat(reason, path=str(path))
            out = Containers(format=fmt)
            out.width, out.height = _header_size(fmt, head)
            blobs = Blobs()
            layout = _walk(fmt, source, info.st_size, out, blobs)
            if isinstance(layout, PngLayout):
                _stealth(source, path, layout, out)
    except OSError as exc:
        raise source_error(exc, path) from exc
    try:
        _interpret(path, fmt, out, blobs)
    except Exception as exc:  # noqa: BLE001 - a parser bug on odd data is a warning, the walk's results stay
        out.warnings.append(f"metadata: interpretation stopped ({type(exc).__name__}: {exc})")
    return out


def _header_size(fmt: str, head: bytes) -> tuple[int | None, int | None]:
    """The declared size of formats whose first bytes hold it and which have no walker."""
    if fmt == "GIF" and len(head) >= 10:  # logical screen
        return struct.unpack("<HH", head[6:10])
    if fmt == "BMP" and len(head) >= 26:
        if struct.unpack_from("<I", head, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            return struct.unpack("<HH", head[18:22])
        width, height = struct.unpack("<ii", head[18:26])
        return width, abs(height)  # negative height: rows stored top-down
    if fmt == "QOI" and len(head) >= 12:
        return struct.unpack(">II", head[4:12])
    return None, None


def _walk(fmt: str, source: BinaryIO, size: int, out: Containers, blobs: Blobs) -> PngLayout | None:
    walker = _WALKERS.get(fmt)
    if walker is None:
        return None
    try:
        return walker(source, size, out, blobs)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - a structure the walker did not foresee: keep what it read
        out.warnings.append(f"{fmt.lower()}: walk stopped ({type(exc).__name__}: {exc})")
        return None


def _stealth(source: BinaryIO, path: Path, layout: PngLayout, out: Containers) -> None:
    try:
        text, problem = read_stealth(source, path, layout)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed probe must not cost the rest of the metadata
        text, problem = None, f"stealth: probe failed ({type(exc).__name__}: {exc})"
    if problem:
        out.warnings.append(problem)
    if text is not None:
        out.text["stealth:parameters"] = text
        out.flags["stealth"] = True


def _interpret(path: Path, fmt: str, out: Containers, blobs: Blobs) -> None:
    walked = fmt in _WALKERS
    if fmt in _EXIV2_FORMATS and (not walked or not blobs.empty):
        result = read_with_exiv2(path, dimensions=not walked)
        out.warnings.extend(result.warnings)
        out.exif, out.iptc, out.xmp = result.exif, result.iptc, result.xmp
        if result.warnings and blobs.exif and out.exif:
            _complete_exif(out, blobs)
        if not walked and out.width is None:
            out.width, out.height = result.width, result.height
            if result.icc:
                out.flags["icc"] = True
    # each step on its own: one that stops on odd data (a bug) does not take the others' readings with it
    for step in (lambda: _fallbacks(out, blobs), lambda: _user_comment(out, blobs),
                 lambda: setattr(out, "gps", gps_position(out.exif))):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - a warning, as in read_containers
            out.warnings.append(f"metadata: a reading step stopped ({type(exc).__name__}: {exc})")
    for name, present in (("exif", blobs.exif or out.exif), ("xmp", blobs.xmp or out.xmp),
                          ("iptc", blobs.iptc or out.iptc)):
        if present:
            out.flags[name] = True


def _complete_exif(out: Containers, blobs: Blobs) -> None:
    """Where exiv2 reported a problem and left values empty (it truncates entries it cannot bound), take
    Pillow's reading of the same bytes (which, for instance, joins a TIFF block split over two APP1 segments)."""
    empty = [key for key, value in out.exif.items() if value == ""]
    if not empty:
        return
    values, _ = pillow_exif(blobs.exif[0])
    for key in empty:
        if values.get(key):
            out.exif[key] = values[key]


def _fallbacks(out: Containers, blobs: Blobs) -> None:
    """Read the payloads ourselves where exiv2 gave nothing for them."""
    if blobs.exif and not out.exif:
        for tiff in blobs.exif:
            values, problems = pillow_exif(tiff)
            out.warnings.extend(problems)
            for key, value in values.items():
                out.exif.setdefault(key, value)
        if out.exif:
            out.warnings.append("exif: read by Pillow (exiv2 could not)")
    if blobs.xmp and not out.xmp:
        unreadable = 0
        for packet in blobs.xmp:
            values = parse_packet(packet)
            if values is None:
                unreadable += 1
                continue
            for key, value in values.items():
                out.xmp.setdefault(key, value)
        if out.xmp:
            out.warnings.append("xmp: read by the fallback parser (exiv2 could not)")
        if unreadable:
            out.warnings.append(f"xmp: {unreadable} packet(s) present but not readable XML")
    if blobs.iptc and not out.iptc:
        for iim in blobs.iptc:
            for key, values in parse_iim(iim).items():
                out.iptc.setdefault(key, []).extend(values)
        if out.iptc:
            out.warnings.append("iptc: read by the fallback parser (exiv2 could not)")


def _user_comment(out: Containers, blobs: Blobs) -> None:
    """UserComment decoded from its raw bytes (see :mod:`.exif`), else exiv2's rendering without its prefix."""
    for tiff in blobs.exif:
        found = find_user_comment(tiff)
        if found is not None:
            out.user_comment = decode_user_comment(found.data, found.big_endian)
            key = "Exif.Image.0x9286" if found.in_ifd0 else "Exif.Photo.UserComment"
            if out.user_comment is not None and key in out.exif:
                out.exif[key] = out.user_comment  # instead of exiv2's "charset=Unicode ..." rendering
            return
    for key in _USER_COMMENT_KEYS:
        if out.exif.get(key):
            out.user_comment = strip_exiv2_charset(out.exif[key])
            return

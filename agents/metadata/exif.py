"""EXIF pieces exiv2 does not give us the way we want them, read straight from the TIFF bytes.

- :func:`find_user_comment` / :func:`decode_user_comment`: UserComment (0x9286) from the raw bytes. exiv2
  renders it as ``charset=Unicode ...`` and guesses the UTF-16 byte order from the TIFF header, but A1111 writes
  UTF-16BE into little-endian files, and ComfyUI JPEG savers put bare UTF-8 JSON in IFD0 where no charset
  prefix is expected.
- :func:`pillow_exif`: the fallback when exiv2 refuses a file, mapped to exiv2's key names.
- :func:`gps_position`: decimal latitude/longitude with the sign from the Ref tags.
"""

from __future__ import annotations

import math
import re
import struct
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

from PIL import ExifTags, Image, TiffImagePlugin

from agents.metadata.blobs import decode_text

USER_COMMENT = 0x9286
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
#: Bytes per value of each TIFF field type.
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_MAX_ENTRIES = 1024
#: exiv2's names where Pillow's differ.
_EXIV2_NAMES = {0x8769: "ExifTag", 0x8825: "GPSTag", 0xA005: "InteroperabilityTag"}
#: IFD0 tags above 0x8000 that exiv2 names in its Image group; other high tags there it calls by number.
_IFD0_HIGH = frozenset({0x8298, 0x8769, 0x8825, 0x83BB, 0x8773, 0x4746, 0x4749, 0x9C9B, 0x9C9C, 0x9C9D, 0x9C9E,
                        0x9C9F, 0xC4A5})
#: Binary values longer than this are summarised in the Pillow fallback (exiv2 would expand maker notes).
_MAX_BINARY = 256


class RawComment(NamedTuple):
    """UserComment bytes as stored, with what decoding them needs to know."""

    data: bytes
    #: The TIFF block's byte order (a hint for UTF-16 without a BOM).
    big_endian: bool
    #: Found in IFD0 (ComfyUI JPEG savers) rather than the Exif IFD.
    in_ifd0: bool


def find_user_comment(tiff: bytes) -> RawComment | None:
    """The raw UserComment in a TIFF/EXIF block (Exif IFD first, then IFD0); ``None`` when there is none or the
    structure is broken."""
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd0,) = struct.unpack_from(order + "I", tiff, 4)
    found_in_ifd0 = None
    exif_ifd = None
    for tag, value in _entries(tiff, order, ifd0):
        if tag == USER_COMMENT:
            found_in_ifd0 = value
        elif tag == _EXIF_IFD and len(value) == 4:
            (exif_ifd,) = struct.unpack(order + "I", value)
    if exif_ifd:
        for tag, value in _entries(tiff, order, exif_ifd):
            if tag == USER_COMMENT:
                return RawComment(value, order == ">", in_ifd0=False)
    return RawComment(found_in_ifd0, order == ">", in_ifd0=True) if found_in_ifd0 is not None else None


def _entries(tiff: bytes, order: str, offset: int) -> Iterator[tuple[int, bytes]]:
    """(tag, value bytes) of one IFD, bounds-checked: a bad offset or count ends the walk, never raises."""
    if offset <= 0 or offset + 2 > len(tiff):
        return
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    for i in range(min(count, _MAX_ENTRIES)):
        at = offset + 2 + 12 * i
        if at + 12 > len(tiff):
            return
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, at)
        size = _TYPE_SIZES.get(kind, 1) * n
        if size <= 4:
            yield tag, tiff[at + 8 : at + 8 + size]
            continue
        (value_at,) = struct.unpack_from(order + "I", tiff, at + 8)
        if value_at + size <= len(tiff):
            yield tag, tiff[value_at : value_at + size]


def decode_user_comment(raw: bytes, big_endian: bool = True) -> str | None:
    """UserComment text: the 8-byte charset prefix honoured, bare text (no prefix) taken as UTF-8.

    For ``UNICODE`` the byte order is read from the text itself (ASCII-range characters put their zero byte first
    in UTF-16BE), falling back to the TIFF block's order. Empty or all-NUL comments give ``None``.
    """
    prefix, body = raw[:8], raw[8:]
    charset = prefix.rstrip(b"\x00 ").upper()
    if len(raw) >= 8 and charset == b"UNICODE":
        text = _utf16(body, big_endian)
    elif len(raw) >= 8 and charset == b"ASCII":
        text = decode_text(body)
    elif len(raw) >= 8 and charset == b"JIS":
        text = body.decode("shift_jis", errors="replace")
    elif len(raw) >= 8 and charset == b"":  # "undefined" charset: in practice ASCII/UTF-8 or nothing
        text = decode_text(body)
    else:  # no prefix at all: ComfyUI savers write the JSON straight in
        text = decode_text(raw)
    text = text.split("\x00", 1)[0]
    return text if text.strip() else None


def _utf16(body: bytes, big_endian: bool) -> str:
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body[: len(body) & ~1].decode("utf-16", errors="replace")
    sample = body[:2000]
    zeros_even = sample[0::2].count(0)
    zeros_odd = sample[1::2].count(0)
    if zeros_even != zeros_odd:
        big_endian = zeros_even > zeros_odd
    return body[: len(body) & ~1].decode("utf-16-be" if big_endian else "utf-16-le", errors="replace")


_CHARSET_PREFIX = re.compile(r'^charset=("?)(\w+)\1 ?')


def strip_exiv2_charset(value: str) -> str | None:
    """exiv2's rendering of a comment (``charset=Unicode text``) without the prefix; ``None`` when empty."""
    text = _CHARSET_PREFIX.sub("", value).rstrip("\x00")
    return text if text.strip() else None


def pillow_exif(tiff: bytes) -> tuple[dict[str, str], list[str]]:
    """EXIF read by Pillow from a TIFF block, keyed like exiv2 (``Exif.Image.Make``, ``Exif.Photo.*``,
    ``Exif.GPSInfo.*``), and the problems Pillow reported. Used only where exiv2 failed."""
    problems: list[str] = []
    result: dict[str, str] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exif = Image.Exif()
            exif.load(tiff)
            groups: list[tuple[str, dict[int, Any], dict[int, str]]] = [("Image", dict(exif), ExifTags.TAGS)]
            if _EXIF_IFD in exif:
                groups.append(("Photo", exif.get_ifd(_EXIF_IFD), ExifTags.TAGS))
            if _GPS_IFD in exif:
                groups.append(("GPSInfo", exif.get_ifd(_GPS_IFD), ExifTags.GPSTAGS))
        except Exception as exc:  # noqa: BLE001 - Pillow raises assorted errors on broken TIFF structures
            problems.append(f"pillow: EXIF unreadable ({type(exc).__name__}: {exc})")
            groups = []
        for group, tags, names in groups:
            for tag, value in tags.items():
                named = group != "Image" or tag < 0x8000 or tag in _IFD0_HIGH
                name = _EXIV2_NAMES.get(tag) or (names.get(tag) if named else None) or f"0x{tag:04x}"
                result.setdefault(f"Exif.{group}.{name}", _format(value))
    problems.extend(f"pillow: {w.message}" for w in caught)
    return result, problems


def _format(value: Any) -> str:
    """A Pillow EXIF value as exiv2 prints it: rationals as ``n/d``, sequences space-separated."""
    if isinstance(value, str):
        return value.split("\x00", 1)[0]
    if isinstance(value, TiffImagePlugin.IFDRational):
        return f"{value.numerator}/{value.denominator}"
    if isinstance(value, bytes):
        if len(value) > _MAX_BINARY:
            return f"omitted:{len(value)} bytes"
        return " ".join(str(b) for b in value)
    if isinstance(value, tuple):
        return " ".join(_format(item) for item in value)
    return str(value)


def gps_position(exif: dict[str, str]) -> tuple[float, float] | None:
    """(latitude, longitude) in decimal degrees, south and west negative; ``None`` when absent or invalid."""
    latitude = _degrees(exif.get("Exif.GPSInfo.GPSLatitude"))
    longitude = _degrees(exif.get("Exif.GPSInfo.GPSLongitude"))
    if latitude is None or longitude is None or latitude > 90 or longitude > 180:
        return None
    if exif.get("Exif.GPSInfo.GPSLatitudeRef", "N").strip().upper().startswith("S"):
        latitude = -latitude
    if exif.get("Exif.GPSInfo.GPSLongitudeRef", "E").strip().upper().startswith("W"):
        longitude = -longitude
    return round(latitude, 7), round(longitude, 7)


def _degrees(value: str | None) -> float | None:
    """``"d/1 m/1 s/100"`` (degrees, minutes, seconds as rationals; fewer parts allowed) -> decimal degrees."""
    if not value:
        return None
    total = 0.0
    parts = value.split()
    if not 1 <= len(parts) <= 3:
        return None
    for part, scale in zip(parts, (1, 60, 3600)):
        numerator, _, denominator = part.partition("/")
        try:
            number = float(numerator) / float(denominator or 1)
        except (ValueError, ZeroDivisionError):
            return None
        if not 0 <= number < math.inf:  # negative, "nan" or "inf" text: no position (JSON has no NaN)
            return None
        total += number / scale
    return total

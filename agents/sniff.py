"""Recognise image files by their first bytes, never by their name.

The folder scanner calls :func:`sniff_file` on every file it meets and uploads are checked with :func:`sniff`,
so this reads one small block and compares byte strings — no decoder, no imports of Pillow. A name is a guess
someone typed; ``photo.jpeg`` holding a PNG is common (and a text file named ``.png`` exists in the corpus).

Format names follow Pillow's where Pillow has one, so a caller can compare them with ``Image.format``
(except that Pillow reports a multi-picture JPEG as ``MPO``; by its first bytes it is a JPEG).
"""

from __future__ import annotations

import struct
from pathlib import Path

from agents.hashing import source_error

#: Bytes read from the start of a file: enough for every signature below, including an ISO-BMFF ``ftyp``
#: box with its usual handful of compatible brands.
HEAD_BYTES = 64

# Fixed signatures at offset 0, as (prefix, format). Order matters only where one prefix extends another.
_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JXL"),  # JPEG XL container
    (b"\xff\x0a", "JXL"),  # JPEG XL bare codestream
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),  # bare J2K codestream
    (b"qoif", "QOI"),
)

# ISO-BMFF brands (major or compatible) that make a file AVIF or HEIF. AVIF files usually also list the
# generic HEIF brands ``mif1``/``miaf``, so AVIF brands are looked for first.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"})
_JXL_BRANDS = frozenset({b"jxl "})

# BITMAPINFOHEADER sizes of the known BMP versions; checking it keeps any text starting with "BM" out.
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def sniff(head: bytes) -> str | None:
    """The image format the bytes ``head`` (a file's first bytes) start, or ``None`` when not an image we know."""
    for prefix, name in _PREFIXES:
        if head.startswith(prefix):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return _sniff_ftyp(head)
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_DIB_SIZES:
        return "BMP"
    if head[:4] == b"8BPS" and head[4:6] in (b"\x00\x01", b"\x00\x02"):  # PSD, PSB
        return "PSD"
    if _is_ico(head):
        return "ICO"
    return None


def sniff_file(path: Path | str) -> str | None:
    """The image format of the file at ``path`` by its first :data:`HEAD_BYTES` bytes; ``None`` if not an image.

    An empty file is not an image. OS errors become the same typed errors as when hashing
    (:class:`~streams.errors.SourceMissing`, :class:`~streams.errors.SourceUnreadable`).
    """
    try:
        with open(path, "rb", buffering=0) as source:
            head = source.read(HEAD_BYTES)
    except OSError as exc:
        raise source_error(exc, path) from exc
    return sniff(head)


def _sniff_ftyp(head: bytes) -> str | None:
    """AVIF/HEIF/JXL from an ISO-BMFF ``ftyp`` box: major brand at 8, compatible brands from 16 to box end."""
    box_size = struct.unpack_from(">I", head, 0)[0]
    end = min(box_size, len(head)) if box_size >= 16 else len(head)
    brands = [head[8:12]] + [head[i : i + 4] for i in range(16, end - 3, 4)]
    for family, name in ((_AVIF_BRANDS, "AVIF"), (_HEIF_BRANDS, "HEIF"), (_JXL_BRANDS, "JXL")):
        if any(brand in family for brand in brands):
            return name
    return None


def _is_ico(head: bytes) -> bool:
    """ICO/CUR: reserved 0, type 1 (icon) or 2 (cursor), at least one image, and a zero reserved byte in the
    first directory entry — four zero-ish bytes alone would match far too much."""
    if len(head) < 22 or head[:2] != b"\x00\x00" or head[2:4] not in (b"\x01\x00", b"\x02\x00"):
        return False
    count = struct.unpack_from("<H", head, 4)[0]
    return count > 0 and head[9] == 0

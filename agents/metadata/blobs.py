"""What the container walkers hand on: metadata payloads still in their encoded form.

The PNG, JPEG and WebP walkers fill :class:`~agents.metadata.model.Containers` directly with what needs no further
interpretation (text chunks, comments, flags, dimensions) and collect the encoded payloads here — EXIF (TIFF
bytes), XMP packets, IPTC — for :mod:`agents.metadata.containers` to interpret with exiv2, or with our own
fallbacks where exiv2 refuses the file.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

#: Binary pieces up to this size are kept whole in ``Containers.raw`` (base64); larger ones as a summary only,
#: so an unknown 100-KB vendor segment does not bloat every event about the file.
RAW_INLINE_BYTES = 2048

#: Cap on inflated text: what a PNG's compressed text chunks (zTXt/iTXt) inflate to, all together (decompression
#: bombs stop here), and one stealth payload.
MAX_INFLATED_BYTES = 16 * 1024 * 1024


@dataclass
class Blobs:
    """Encoded metadata payloads found in a file, in file order."""

    #: TIFF-structured EXIF blocks (any ``Exif\\0\\0`` prefix removed).
    exif: list[bytes] = field(default_factory=list)
    #: XMP packets as stored (UTF-8 or UTF-16, maybe NUL-padded).
    xmp: list[bytes] = field(default_factory=list)
    #: IPTC-IIM datasets (already cut out of the Photoshop resource block where they came from one).
    iptc: list[bytes] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.exif or self.xmp or self.iptc)


def raw_value(data: bytes, *, label: str = "") -> str:
    """How a binary piece is kept in ``raw``: ``base64:...`` when small, else ``omitted:<n> bytes[ <label>]``."""
    if len(data) <= RAW_INLINE_BYTES:
        return "base64:" + base64.b64encode(data).decode("ascii")
    return f"omitted:{len(data)} bytes" + (f" {label}" if label else "")


def decode_text(data: bytes) -> str:
    """UTF-8 when the bytes are valid UTF-8, else Latin-1 (which never fails and loses nothing)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def identifier(data: bytes, limit: int = 40) -> str:
    """The printable signature a segment starts with (``Exif``, ``ICC_PROFILE``, ``FLIR``...), for summaries."""
    head = data[:limit].split(b"\x00", 1)[0]
    return "".join(chr(b) if 32 <= b < 127 else "." for b in head)

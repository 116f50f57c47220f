"""JPEG: walk the markers ourselves, from SOI to the first SOS.

Pillow keeps only the last COM segment and the first XMP packet; exiv2 reads one comment and ignores ExtendedXMP,
JUMBF and MPF. Walking the segments gives every COM in order (InvokeAI writes two), every APP1 Exif and XMP, the
ExtendedXMP parts, APP13 Photoshop/IPTC joined across segments, and presence flags for ICC, MPF and C2PA.
Segments nobody here understands are kept in ``raw`` (whole when small, else as a summary).

Metadata after the first SOS (between the scans of a progressive JPEG) is not looked for: finding it means
scanning the entropy-coded data byte by byte, and neither exiv2 nor Pillow does it either.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from agents.metadata.blobs import (
    MAX_INFLATED_BYTES,
    Blobs,
    decode_text,
    identifier,
    raw_value,
)
from agents.metadata.iptc import iim_among, iptc_edited_since_xmp, photoshop_resources
from agents.metadata.model import Containers

_XMP_ID = b"http://ns.adobe.com/xap/1.0/\x00"
_EXTENDED_XMP_ID = b"http://ns.adobe.com/xmp/extension/\x00"
_PHOTOSHOP_ID = b"Photoshop 3.0\x00"
_ICC_ID = b"ICC_PROFILE\x00"
_MPF_ID = b"MPF\x00"
#: Start-of-frame markers (they carry the image size); C4, C8 and CC share the range but are not frames.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Markers without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_SOI, _EOI, _SOS, _COM = 0xD8, 0xD9, 0xDA, 0xFE
#: Known segments that hold nothing for a metadata reader (JFIF/JFXX, Adobe colour transform).
_QUIET = frozenset({b"JFIF", b"JFXX", b"Adobe"})
#: How far junk between segments is skipped looking for the next marker before giving up.
_RESYNC_LIMIT = 65536
#: How many stray pieces (runs of junk, markers without a segment: RSTn, TEM, stuffed 0xFF00) the walk steps over
#: before the image data; real files have a handful. Each costs a few microseconds of Python (a run of junk a
#: 4-KB read), so a file of nothing else ("a\xff\x00" a million times) took seconds per megabyte.
MAX_STRAYS = 4096


def walk_jpeg(source: BinaryIO, size: int, out: Containers, blobs: Blobs) -> None:
    """Read the segments of the JPEG open in ``source`` (``size`` bytes) into ``out`` and ``blobs``."""
    source.seek(2)
    pos = 2
    seen: dict[int, int] = {}
    photoshop = bytearray()
    extended: dict[bytes, dict[int, bytes]] = {}
    mp_images = 0
    junk_reported = False
    strays = 0
    while True:
        if strays > MAX_STRAYS:
            out.warnings.append(f"jpeg: more than {MAX_STRAYS} stray bytes or markers between segments; stopped")
            break
        byte = source.read(1)
        if not byte:
            out.warnings.append("jpeg: file ends before the image data (no SOS)")
            break
        if byte != b"\xff":
            if not junk_reported:
                out.warnings.append(f"jpeg: junk bytes between segments at offset {pos}")
                junk_reported = True
            strays += 1
            skipped = _skip_to_marker(source)
            if skipped is None:
                out.warnings.append("jpeg: no marker found after junk; stopped")
                break
            pos += 1 + skipped
            continue  # at the 0xFF now
        marker = source.read(1)
        while marker == b"\xff":  # fill bytes
            marker = source.read(1)
        if not marker:
            out.warnings.append("jpeg: file ends inside a marker")
            break
        code = marker[0]
        if code in _STANDALONE or code == _SOI or code == 0x00:
            strays += 1
            pos = source.tell()
            continue
        if code == _EOI or code == _SOS:
            break
        length_bytes = source.read(2)
        if len(length_bytes) < 2:
            out.warnings.append(f"jpeg: file ends inside the header of marker 0x{code:02X}")
            break
        (length,) = struct.unpack(">H", length_bytes)
        if length < 2:
            out.warnings.append(f"jpeg: segment 0x{code:02X} at offset {pos} has invalid length {length}")
            break
        data = source.read(length - 2)
        seen[code] = seen.get(code, 0) + 1
        mp_images = _segment(code, seen[code], data, out, blobs, photoshop, extended) or mp_images
        if len(data) < length - 2:
            out.warnings.append(f"jpeg: segment 0x{code:02X} at offset {pos} is cut off by the end of the file")
            break
        pos = source.tell()
    if photoshop:
        resources = photoshop_resources(bytes(photoshop))
        iim = iim_among(resources)
        if iim:
            blobs.iptc.append(iim)
        edited = iptc_edited_since_xmp(resources)
        if edited is not None:
            out.flags["iptc_edited_since_xmp"] = edited
    if extended:
        out.flags["extended_xmp"] = True
        for guid, parts in extended.items():
            packet = b"".join(parts[offset] for offset in sorted(parts))
            key = "jpeg:ExtendedXMP" + (f"#{guid.decode('latin-1')}" if len(extended) > 1 else "")
            out.raw[key] = decode_text(packet) if len(packet) <= MAX_INFLATED_BYTES else raw_value(packet)
    # Pillow's rule: several pictures make an MPO, except an Ultra HDR gain map, which is one picture.
    if mp_images > 1 and not any(b"hdrgm:Version" in packet for packet in blobs.xmp):
        out.format = "MPO"


def _segment(
    code: int, nth: int, data: bytes, out: Containers, blobs: Blobs, photoshop: bytearray,
    extended: dict[bytes, dict[int, bytes]],
) -> int:
    """Take one segment apart; returns the MPF picture count when it is an MPF segment, else 0."""
    if code in _SOF:
        if len(data) >= 5 and out.width is None:
            out.height, out.width = struct.unpack(">HH", data[1:5])
        return 0
    if code == _COM:
        out.comments.append(decode_text(data).rstrip("\x00"))
        return 0
    if not 0xE0 <= code <= 0xEF:
        return 0  # tables, restart interval...: image coding, not metadata
    app = code - 0xE0
    if app == 1 and data.startswith(b"Exif\x00"):
        if nth > 1 and blobs.exif:  # a TIFF block continued in another segment: joined, as Pillow does
            blobs.exif[-1] += data[6:]
        else:
            blobs.exif.append(data[6:])
        return 0
    if app == 1 and data.startswith(_XMP_ID):
        blobs.xmp.append(data[len(_XMP_ID):])
        return 0
    if app == 1 and data.startswith(_EXTENDED_XMP_ID):
        # GUID (32 ASCII hex digits), full length, this part's offset, then the part
        body = data[len(_EXTENDED_XMP_ID):]
        if len(body) >= 40:
            offset = struct.unpack(">I", body[36:40])[0]
            extended.setdefault(body[:32], {})[offset] = body[40:]
        return 0
    if app == 2 and data.startswith(_ICC_ID):
        out.flags["icc"] = True
        return 0
    if app == 2 and data.startswith(_MPF_ID):
        out.flags["mpf"] = True
        return _mpf_image_count(data[4:])
    if app == 11 and data[:2] == b"JP":  # JUMBF (ISO 19566-5); C2PA manifests are JUMBF boxes labelled c2pa
        out.flags["jumbf"] = True
        if b"c2pa" in data[:128]:
            out.flags["c2pa"] = True
        if nth > 1:
            return 0  # one summary for the whole box sequence is enough
    if app == 13 and data.startswith(_PHOTOSHOP_ID):
        photoshop += data[len(_PHOTOSHOP_ID):]
        return 0
    label = identifier(data)
    if label.split(" ")[0] not in {q.decode() for q in _QUIET}:
        out.raw[f"jpeg:APP{app}#{nth}"] = raw_value(data, label=label)
    return 0


def _mpf_image_count(tiff: bytes) -> int:
    """NumberOfImages (tag 0xB001) from the MP index IFD, or 0 when the header is malformed."""
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return 0
    order = "<" if tiff[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", tiff, 4)
    if offset + 2 > len(tiff):
        return 0
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    for i in range(min(count, 64)):
        entry = offset + 2 + 12 * i
        if entry + 12 > len(tiff):
            break
        tag, kind, _n, value = struct.unpack_from(order + "HHII", tiff, entry)
        if tag == 0xB001 and kind == 4:
            return value
    return 0


def _skip_to_marker(source: BinaryIO) -> int | None:
    """Advance ``source`` to the next 0xFF (a marker start); bytes skipped, or None if none is near."""
    skipped = 0
    while skipped < _RESYNC_LIMIT:
        block = source.read(4096)
        if not block:
            return None
        at = block.find(b"\xff")
        if at >= 0:
            source.seek(at - len(block), 1)
            return skipped + at
        skipped += len(block)
    return None

"""IPTC-IIM: cut it out of a Photoshop resource block, and read it ourselves when exiv2 cannot.

JPEG carries IPTC inside APP13 "Photoshop 3.0" image resources (resource 0x0404), sometimes split over several
APP13 segments that must be joined first. exiv2 is the main reader; :func:`parse_iim` is the fallback for files
exiv2 refuses, producing the same ``Iptc.<Record>.<Dataset>`` keys for the datasets people actually use.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

_IPTC_RESOURCE = 0x0404
#: The MD5 of the IPTC-IIM block as it was when a Metadata Working Group aware program last wrote the XMP too.
_IPTC_DIGEST_RESOURCE = 0x0425

_ENVELOPE = {
    0: "ModelVersion", 5: "Destination", 20: "FileFormat", 22: "FileVersion", 30: "ServiceId", 40: "EnvelopeNumber",
    50: "ProductId", 60: "EnvelopePriority", 70: "DateSent", 80: "TimeSent", 90: "CharacterSet", 100: "UNO",
}
_APPLICATION = {
    0: "RecordVersion", 3: "ObjectType", 4: "ObjectAttribute", 5: "ObjectName", 7: "EditStatus", 10: "Urgency",
    12: "Subject", 15: "Category", 20: "SuppCategory", 22: "FixtureId", 25: "Keywords", 26: "LocationCode",
    27: "LocationName", 30: "ReleaseDate", 35: "ReleaseTime", 37: "ExpirationDate", 38: "ExpirationTime",
    40: "SpecialInstructions", 45: "ReferenceService", 47: "ReferenceDate", 50: "ReferenceNumber",
    55: "DateCreated", 60: "TimeCreated", 62: "DigitizationDate", 63: "DigitizationTime", 65: "Program",
    70: "ProgramVersion", 75: "ObjectCycle", 80: "Byline", 85: "BylineTitle", 90: "City", 92: "SubLocation",
    95: "ProvinceState", 100: "CountryCode", 101: "CountryName", 103: "TransmissionReference", 105: "Headline",
    110: "Credit", 115: "Source", 116: "Copyright", 118: "Contact", 120: "Caption", 122: "Writer",
    130: "ImageType", 131: "ImageOrientation", 135: "Language",
}
_RECORDS = {1: ("Envelope", _ENVELOPE), 2: ("Application2", _APPLICATION)}
#: Datasets holding a binary 2-byte number rather than text.
_NUMERIC = frozenset({(1, 0), (1, 20), (1, 22), (2, 0)})
_UTF8_MARK = b"\x1b%G"


def photoshop_resources(block: bytes) -> dict[int, bytes]:
    """Photoshop image resources (``8BIM`` id, Pascal name, size, data) by id; the first of each id wins."""
    resources: dict[int, bytes] = {}
    pos = 0
    while pos + 12 <= len(block) and block[pos : pos + 4] == b"8BIM":
        (resource_id,) = struct.unpack_from(">H", block, pos + 4)
        name_len = block[pos + 6]
        pos += 6 + ((name_len + 2) & ~1)  # length byte + name, padded to even
        if pos + 4 > len(block):
            break
        (size,) = struct.unpack_from(">I", block, pos)
        pos += 4
        resources.setdefault(resource_id, block[pos : pos + size])
        pos += size + (size & 1)
    return resources


def iim_from_photoshop(block: bytes) -> bytes | None:
    """The IPTC-IIM bytes held in a Photoshop resource block, if any."""
    return iim_among(photoshop_resources(block))


def iim_among(resources: Mapping[int, bytes]) -> bytes | None:
    """The IPTC-IIM bytes among Photoshop resources (:func:`photoshop_resources`), if any."""
    return resources.get(_IPTC_RESOURCE) or None


def iptc_edited_since_xmp(resources: Mapping[int, bytes]) -> bool | None:
    """Whether the IPTC-IIM among Photoshop resources (:func:`photoshop_resources`) was changed after the XMP was
    last written beside it, by a program that does not keep the two in step: its digest (resource 0x0425) no
    longer matches it. The Metadata Working Group's guidance then reads IPTC before XMP. ``None``: no IPTC or no
    digest to tell."""
    iim, digest = resources.get(_IPTC_RESOURCE), resources.get(_IPTC_DIGEST_RESOURCE)
    if iim is None or digest is None:
        return None
    # some writers pad the IPTC with up to 3 zero bytes that their digest leaves out (Adobe's DNG SDK checks both)
    padding = min(3, len(iim) - len(iim.rstrip(b"\x00")))
    return all(hashlib.md5(iim[: len(iim) - cut], usedforsecurity=False).digest() != digest
               for cut in range(padding + 1))


def parse_iim(data: bytes) -> dict[str, list[str]]:
    """IPTC-IIM datasets as exiv2 names them (``Iptc.Application2.Keywords``) -> every value, in order."""
    raw: list[tuple[int, int, bytes]] = []
    pos = 0
    while pos + 5 <= len(data) and data[pos] == 0x1C:
        record, dataset = data[pos + 1], data[pos + 2]
        (size,) = struct.unpack_from(">H", data, pos + 3)
        pos += 5
        if size & 0x8000:  # extended dataset: the low bits give how many bytes hold the real length
            count = size & 0x7FFF
            if count > 4 or pos + count > len(data):
                break
            size = int.from_bytes(data[pos : pos + count], "big")
            pos += count
        raw.append((record, dataset, data[pos : pos + size]))
        pos += size
    utf8 = any(r == 1 and d == 90 and _UTF8_MARK in v for r, d, v in raw)
    result: dict[str, list[str]] = {}
    for record, dataset, value in raw:
        group, names = _RECORDS.get(record, (f"Record{record}", {}))
        key = f"Iptc.{group}.{names.get(dataset, f'0x{dataset:04x}')}"
        if (record, dataset) in _NUMERIC and len(value) == 2:
            text = str(int.from_bytes(value, "big"))
        elif utf8:
            text = value.decode("utf-8", errors="replace")
        else:
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                text = value.decode("latin-1")
        result.setdefault(key, []).append(text)
    return result

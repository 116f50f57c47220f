"""PNG: walk the chunk list ourselves.

Pillow stops reading text at the first IDAT (later chunks appear only after ``load()``), and exiv2 refuses a
truncated PNG outright; a plain chunk walk keeps every tEXt/zTXt/iTXt wherever it stands (A1111 and ImageMagick
put some after IDAT), the eXIf chunk wherever it is, and ImageMagick's hex-encoded ``Raw profile type exif/xmp``
text. Pixel data is seeked over, never read, so a 2-MB PNG costs a few dozen small reads.

A damaged chunk (bad CRC, cut short, garbage where a chunk header should be) becomes a warning; whatever was read
before it is kept.
"""

from __future__ import annotations

import datetime
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from agents.metadata.blobs import (
    MAX_INFLATED_BYTES,
    RAW_INLINE_BYTES,
    Blobs,
    decode_text,
    raw_value,
)
from agents.metadata.iptc import iim_from_photoshop
from agents.metadata.model import Containers

SIGNATURE = b"\x89PNG\r\n\x1a\n"

_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})
#: Read whole (everything else is seeked over or summarised).
_READ = _TEXT | {b"IHDR", b"eXIf", b"acTL", b"tIME"}
#: Standard chunks that say nothing a metadata reader keeps (pixels, colour, framing).
_KNOWN = frozenset({
    b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs", b"bKGD", b"hIST",
    b"sPLT", b"iCCP", b"acTL", b"fcTL", b"fdAT", b"cICP", b"mDCV", b"cLLI", b"mDCv", b"cLLi", b"oFFs", b"sCAL",
})
#: Pixel data and animation framing: as many as the image needs (a large image in small IDATs, a long APNG).
_FRAMES = frozenset({b"IDAT", b"fdAT", b"fcTL"})
#: Other chunks walked before giving up: real files have tens. Each costs tens of microseconds of Python (more
#: for the stealth probe's Pillow, which walks them again), so a file of nothing else (300,000 empty chunks in
#: 3.6 MB) took ~10 s, and a 20-MB one outlasted the pool's time limit.
MAX_CHUNKS = 10_000
_XMP_KEYWORD = "XML:com.adobe.xmp"
_RAW_PROFILE = "Raw profile type "


@dataclass
class _Inflation:
    """What is left of one file's allowance of text: :data:`MAX_INFLATED_BYTES` for all its text chunks together,
    compressed ones as inflated. Capping each chunk alone let a 600-KB file of 40 zTXt bombs inflate 600 MB of
    text, and its metadata document several times that: 3 GB, the pool's memory limit. Plain text counts too: a
    20-MB PNG of four tEXt chunks took 570 MB to read and wrote a 240-MB document."""

    left: int


@dataclass
class PngLayout:
    """Where the pixels are, for the stealth-metadata probe (which must not decode a whole image to say no)."""

    width: int = 0
    height: int = 0
    bit_depth: int = 0
    color_type: int = 0
    interlace: int = 0
    #: (file offset, length) of every IDAT chunk's data, in order.
    idat: list[tuple[int, int]] = field(default_factory=list)


def walk_png(source: BinaryIO, size: int, out: Containers, blobs: Blobs) -> PngLayout:
    """Read the chunks of the PNG open in ``source`` (``size`` bytes) into ``out`` and ``blobs``."""
    layout = PngLayout()
    inflation = _Inflation(MAX_INFLATED_BYTES)
    pos = len(SIGNATURE)
    source.seek(pos)
    first = True
    ended = stopped = False
    others = 0
    while pos < size:
        header = source.read(8)
        if len(header) < 8:
            out.warnings.append(f"png: truncated chunk header at offset {pos}")
            stopped = True
            break
        length, kind = struct.unpack(">I4s", header)
        if not kind.isalpha() or not kind.isascii():
            out.warnings.append(f"png: no valid chunk at offset {pos} (type {kind!r}); stopped there")
            stopped = True
            break
        name = kind.decode("ascii")
        others += kind not in _FRAMES
        if others > MAX_CHUNKS:
            out.warnings.append(f"png: more than {MAX_CHUNKS} chunks besides the pixel data; stopped at offset {pos}")
            stopped = True
            break
        if first and kind != b"IHDR":
            out.warnings.append(f"png: first chunk is {name}, not IHDR")
        first = False
        data_at = pos + 8
        end = data_at + length + 4
        if end > size:
            out.warnings.append(f"png: {name} chunk at offset {pos} is cut off by the end of the file")
            if kind == b"IDAT":
                layout.idat.append((data_at, max(0, size - data_at)))
            stopped = True
            break
        if kind == b"IDAT":
            layout.idat.append((data_at, length))
        elif kind == b"iCCP":
            out.flags["icc"] = True
        elif kind == b"caBX":  # C2PA manifest store (JUMBF) in PNG
            out.flags["c2pa"] = True
        if kind in _READ and length > MAX_INFLATED_BYTES:
            out.warnings.append(f"png: {name} chunk at offset {pos} has {length} bytes; skipped")
            source.seek(end)
        elif kind in _READ or (kind not in _KNOWN and length <= RAW_INLINE_BYTES):
            data = source.read(length)
            crc = source.read(4)
            if zlib.crc32(kind + data) != int.from_bytes(crc, "big"):
                out.warnings.append(f"png: bad CRC in {name} chunk at offset {pos}")
            _chunk(kind, data, out, blobs, layout, inflation)
        else:
            if kind not in _KNOWN:
                out.raw[_unique(out.raw, f"png:{name}")] = f"omitted:{length} bytes"
            source.seek(end)
        pos = end
        if kind == b"IEND":
            ended = True
            break
    if not ended and not stopped:
        out.warnings.append("png: no IEND chunk (file truncated?)")
    return layout


def _chunk(kind: bytes, data: bytes, out: Containers, blobs: Blobs, layout: PngLayout,
           inflation: _Inflation) -> None:
    if kind == b"IHDR":
        if len(data) >= 13:
            (layout.width, layout.height, layout.bit_depth, layout.color_type, _, _,
             layout.interlace) = struct.unpack(">IIBBBBB", data[:13])
            out.width, out.height = layout.width, layout.height
    elif kind in _TEXT:
        _text_chunk(kind, data, out, blobs, inflation)
    elif kind == b"eXIf":
        blobs.exif.append(data[6:] if data.startswith(b"Exif\x00") else data)
    elif kind == b"acTL":
        out.flags["animated"] = True
    elif kind == b"tIME":
        if len(data) == 7:
            year, month, day, hour, minute, second = struct.unpack(">HBBBBB", data)
            try:
                out.raw["png:tIME"] = datetime.datetime(year, month, day, hour, minute, second).isoformat()
            except ValueError:
                out.raw["png:tIME"] = raw_value(data)
    else:  # an unknown small ancillary chunk: keep it verbatim
        out.raw[_unique(out.raw, f"png:{kind.decode('ascii')}")] = raw_value(data)


def _text_chunk(kind: bytes, data: bytes, out: Containers, blobs: Blobs, inflation: _Inflation) -> None:
    keyword_bytes, _, rest = data.partition(b"\x00")
    keyword = keyword_bytes.decode("latin-1")
    what = f"png: {kind.decode('ascii')} {keyword[:80]!r}"  # a keyword is 1-79 bytes; a hostile one, megabytes
    if kind == b"tEXt":
        body: bytes | None = rest
        plain = True
    elif kind == b"zTXt":
        body, plain = _inflate(rest[1:], what, out, inflation), False
    else:  # iTXt: compression flag, method, language tag, translated keyword, text (UTF-8)
        flag = rest[:1]  # the method byte after it has one defined value (zlib); inflate judges the stream
        _language, _, rest = rest[2:].partition(b"\x00")
        _translated, _, body = rest.partition(b"\x00")
        plain = flag != b"\x01"
        if not plain:
            body = _inflate(body, what, out, inflation)
    if plain and body is not None and _past_allowance(body, what, out, inflation):
        out.raw[_unique(out.raw, f"png:{keyword}")] = f"omitted:{len(body)} bytes"
        return
    if body is None:
        return
    # tEXt/zTXt are Latin-1 by the letter of the spec, but many writers put UTF-8 there; valid UTF-8 is never
    # plausible Latin-1 text, so UTF-8 first loses nothing.
    text = decode_text(body)
    if keyword not in out.text:
        out.text[keyword] = text
    out.raw[_unique(out.raw, f"png:{keyword}")] = text
    if keyword == _XMP_KEYWORD:
        blobs.xmp.append(body)
    elif keyword.startswith(_RAW_PROFILE):
        _imagemagick_profile(keyword[len(_RAW_PROFILE):].lower(), text, out, blobs)


def _imagemagick_profile(profile: str, text: str, out: Containers, blobs: Blobs) -> None:
    """ImageMagick's ``Raw profile type <name>``: ``\\n<name>\\n<length>\\n<hex lines>``."""
    parts = text.split(None, 2)
    try:
        length = int(parts[1])
        data = bytes.fromhex("".join(parts[2].split()))[:length]
    except (IndexError, ValueError):
        out.warnings.append(f"png: unreadable ImageMagick raw profile {profile!r}")
        return
    if profile in ("exif", "app1"):
        if data.startswith(b"Exif\x00"):
            data = data[6:]
        if data.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
            blobs.xmp.append(data[29:])
        else:
            blobs.exif.append(data)
    elif profile == "xmp":
        blobs.xmp.append(data)
    elif profile in ("iptc", "8bim"):
        iim = iim_from_photoshop(data) if data.startswith(b"8BIM") else data
        if iim:
            blobs.iptc.append(iim)
    elif profile in ("icc", "icm"):
        out.flags["icc"] = True


def _past_allowance(text: bytes, what: str, out: Containers, inflation: _Inflation) -> bool:
    """Whether plain ``text`` is past what is left of the file's :data:`MAX_INFLATED_BYTES` (a warning says so);
    else it is taken from it."""
    if len(text) > inflation.left:
        out.warnings.append(f"{what}: {len(text)} bytes of text past the file's {MAX_INFLATED_BYTES}; dropped")
        return True
    inflation.left -= len(text)
    return False


def _inflate(data: bytes, what: str, out: Containers, inflation: _Inflation) -> bytes | None:
    """zlib-inflate at most what is left of the file's :data:`MAX_INFLATED_BYTES`; a bomb or broken stream is a
    warning, not a crash."""
    too_much = f"{what}: inflates beyond {MAX_INFLATED_BYTES} bytes"
    if inflation.left < MAX_INFLATED_BYTES:
        too_much += " with the file's text before it"
    if inflation.left <= 0:  # (to zlib, a max_length of 0 is no limit at all)
        out.warnings.append(f"{too_much}; dropped")
        return None
    inflater = zlib.decompressobj()
    try:
        result = inflater.decompress(data, inflation.left)
    except zlib.error as exc:
        out.warnings.append(f"{what}: cannot inflate ({exc})")
        return None
    if inflater.unconsumed_tail:
        out.warnings.append(f"{too_much}; dropped")
        return None
    inflation.left -= len(result)
    if not inflater.eof:
        out.warnings.append(f"{what}: compressed text is truncated")
    return result


#: Chunks of one name kept in the raw read-out; past that one ``<name>#more`` entry says the rest were left out
#: (a file can repeat a chunk name tens of thousands of times).
MAX_SAME_NAME = 32


def _unique(raw: dict[str, str], key: str) -> str:
    """``key``, or ``key#2``, ``key#3``... when a chunk of that name was already kept; ``key#more`` once
    :data:`MAX_SAME_NAME` of them are (what is stored there stands for every further one)."""
    if key not in raw:
        return key
    for n in range(2, MAX_SAME_NAME + 1):
        if f"{key}#{n}" not in raw:
            return f"{key}#{n}"
    return f"{key}#more"

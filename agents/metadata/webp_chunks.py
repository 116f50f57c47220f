"""WebP: walk the RIFF chunks (VP8X/VP8/VP8L for the size, EXIF, XMP, ICCP, ANIM).

ComfyUI's WebP savers put the whole prompt and workflow JSON in the EXIF chunk (IFD0 Model/Make), so the EXIF
chunk is read whole however large it is; frame data (VP8/VP8L/ANMF/ALPH) is seeked over.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from agents.metadata.blobs import Blobs, identifier, raw_value
from agents.metadata.model import Containers

#: Chunks read only as far as their first bytes (sizes, flags) and then seeked over; every other chunk is read whole.
_HEADER_ONLY = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ANMF", b"ALPH", b"ANIM", b"ICCP"})
_HEADER_BYTES = 30
#: Chunks besides animation frames (ANMF) walked before giving up, as for PNG (:data:`.png_chunks.MAX_CHUNKS`):
#: 100,000 tiny EXIF or XMP chunks in 1 MB each went to the fallback parsers one by one (~1 s per MB).
MAX_CHUNKS = 10_000


def walk_webp(source: BinaryIO, size: int, out: Containers, blobs: Blobs) -> None:
    """Read the chunks of the WebP open in ``source`` (``size`` bytes) into ``out`` and ``blobs``."""
    source.seek(4)
    (riff_size,) = struct.unpack("<I", source.read(4))
    end_of_riff = min(size, riff_size + 8)
    if riff_size + 8 > size:
        out.warnings.append(f"webp: RIFF says {riff_size + 8} bytes, the file has {size}")
    pos = 12
    source.seek(pos)
    others = 0
    while pos + 8 <= end_of_riff:
        fourcc, length = struct.unpack("<4sI", source.read(8))
        others += fourcc != b"ANMF"
        if others > MAX_CHUNKS:
            out.warnings.append(f"webp: more than {MAX_CHUNKS} chunks besides the frames; stopped at offset {pos}")
            break
        data_at = pos + 8
        if data_at + length > end_of_riff:
            out.warnings.append(f"webp: {fourcc!r} chunk at offset {pos} is cut off by the end of the file")
        if fourcc in _HEADER_ONLY:
            _header_chunk(fourcc, source.read(min(length, _HEADER_BYTES)), out)
        else:
            # no more than the file holds: read(n) allocates n bytes first, and a declared 4 GiB is a MemoryError
            # under the pool's memory limit that stopped the walk and lost what the chunk does hold
            data = source.read(min(length, size - data_at))
            if fourcc == b"EXIF":
                blobs.exif.append(data[6:] if data.startswith(b"Exif\x00") else data)
            elif fourcc == b"XMP ":
                blobs.xmp.append(data)
            else:
                name = fourcc.decode("latin-1").strip()
                if name.upper() == "C2PA":
                    out.flags["c2pa"] = True
                out.raw[f"webp:{name}"] = raw_value(data, label=identifier(data))
        pos = data_at + length + (length & 1)  # chunks are padded to an even size
        source.seek(pos)


def _header_chunk(fourcc: bytes, head: bytes, out: Containers) -> None:
    if fourcc == b"VP8X" and len(head) >= 10:
        out.width = int.from_bytes(head[4:7], "little") + 1
        out.height = int.from_bytes(head[7:10], "little") + 1
    elif fourcc == b"VP8 " and len(head) >= 10 and head[3:6] == b"\x9d\x01\x2a" and out.width is None:
        width, height = struct.unpack("<HH", head[6:10])
        out.width, out.height = width & 0x3FFF, height & 0x3FFF
    elif fourcc == b"VP8L" and len(head) >= 5 and head[0] == 0x2F and out.width is None:
        (bits,) = struct.unpack("<I", head[1:5])
        out.width, out.height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif fourcc == b"ICCP":
        out.flags["icc"] = True
    elif fourcc == b"ANIM":
        out.flags["animated"] = True

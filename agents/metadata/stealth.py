"""A1111 "stealth" metadata: generation parameters hidden in the least significant bits of the pixels.

The sd-webui-stealth-pnginfo extension (and NovelAI) write, column by column (x outer, y inner), one bit per pixel
in the alpha channel (``stealth_pnginfo``/``stealth_pngcomp``) or three per pixel in R, G, B
(``stealth_rgbinfo``/``stealth_rgbcomp``): a 15-byte signature, a 32-bit payload length in bits, then the payload
(gzip-compressed for the ``comp`` variants).

Saying "no" must cost next to nothing, since every RGB/RGBA PNG is asked. The signature sits in the first pixels
of column 0, and for the first pixel of a row every PNG filter depends only on the row above — so the probe
inflates just the first rows of IDAT and undoes the filters for column 0 alone. Only a file whose signature
matches is decoded whole (by Pillow).
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from agents.metadata.blobs import MAX_INFLATED_BYTES
from agents.metadata.png_chunks import PngLayout

_ALPHA = {b"stealth_pnginfo": False, b"stealth_pngcomp": True}
_RGB = {b"stealth_rgbinfo": False, b"stealth_rgbcomp": True}
_SIGNATURE_BITS = 15 * 8
_LENGTH_BITS = 32
#: Images too short for the signature to fit in column 0, and interlaced ones, are decoded whole up to this size.
_SMALL_PIXELS = 1 << 20
#: Bytes -> b"0"/b"1" by their lowest bit.
_LSB = bytes(0x30 | (value & 1) for value in range(256))


def read_stealth(source: BinaryIO, path: Path, layout: PngLayout) -> tuple[str | None, str | None]:
    """(payload text, problem) of the stealth metadata in the PNG ``source``/``path``; (None, None) when absent."""
    if layout.bit_depth != 8 or layout.color_type not in (2, 6) or layout.width <= 0 or layout.height <= 0:
        return None, None
    alpha = layout.color_type == 6
    pixels = layout.width * layout.height
    if pixels * (3 + alpha) < _SIGNATURE_BITS + _LENGTH_BITS:
        return None, None
    fits = layout.height >= _SIGNATURE_BITS if alpha else layout.height * 3 >= _SIGNATURE_BITS
    if layout.interlace or not fits:
        if pixels > _SMALL_PIXELS:
            return None, None
        return _decode(path, ["alpha", "rgb"] if alpha else ["rgb"], probed=False)
    mode = _probe(source, layout, alpha)
    if mode is None:
        return None, None
    return _decode(path, [mode], probed=True)


def _probe(source: BinaryIO, layout: PngLayout, alpha: bool) -> str | None:
    """"alpha" or "rgb" when column 0 starts with that kind of stealth signature, inflating as few rows as that
    takes; None when it does not."""
    channels = 4 if alpha else 3
    stride = 1 + layout.width * channels
    rows = _Rows(source, layout.idat, stride)
    previous = bytes(channels)
    alpha_bits: list[int] = []
    rgb_bits: list[int] = []
    # "stealth_" (64 bits) first: almost every image fails within its first 8 rows / 3 pixels.
    for y in range(_SIGNATURE_BITS if alpha else _SIGNATURE_BITS // 3):
        row = rows.get(y)
        if row is None:
            return None
        pixel = _unfilter_first_pixel(row[0], row[1 : 1 + channels], previous)
        if pixel is None:
            return None
        previous = pixel
        rgb_bits.extend(v & 1 for v in pixel[:3])
        if alpha:
            alpha_bits.append(pixel[3] & 1)
        alpha_ok = alpha and _matches(alpha_bits, _ALPHA)
        rgb_ok = _matches(rgb_bits[:_SIGNATURE_BITS], _RGB)
        if rgb_ok and len(rgb_bits) >= _SIGNATURE_BITS:
            return "rgb"
        if alpha_ok and len(alpha_bits) == _SIGNATURE_BITS:
            return "alpha"
        if not alpha_ok and not rgb_ok:
            return None
    return None


def _matches(bits: list[int], signatures: dict[bytes, bool]) -> bool:
    """Whether the bits read so far are a prefix of one of ``signatures``."""
    whole = len(bits) // 8
    prefix = bytes(int("".join(map(str, bits[i * 8 : i * 8 + 8])), 2) for i in range(whole))
    return any(signature.startswith(prefix) for signature in signatures)


def _unfilter_first_pixel(kind: int, filtered: bytes, above: bytes) -> bytes | None:
    """Undo a PNG row filter for the row's first pixel (its left neighbours are zero by definition)."""
    if kind in (0, 1):  # None, Sub
        return filtered
    if kind in (2, 4):  # Up, Paeth (with a = c = 0 the Paeth predictor is b)
        return bytes((f + b) & 0xFF for f, b in zip(filtered, above))
    if kind == 3:  # Average
        return bytes((f + (b >> 1)) & 0xFF for f, b in zip(filtered, above))
    return None


class _Rows:
    """Filtered scanlines of the IDAT stream, inflated only as far as asked."""

    def __init__(self, source: BinaryIO, idat: list[tuple[int, int]], stride: int) -> None:
        self._source, self._chunks, self._stride = source, iter(idat), stride
        self._inflater = zlib.decompressobj()
        self._data = bytearray()

    def get(self, y: int) -> bytes | None:
        need = (y + 1) * self._stride
        while len(self._data) < need:
            if self._inflater.unconsumed_tail:
                compressed = self._inflater.unconsumed_tail
            else:
                chunk = next(self._chunks, None)
                if chunk is None:
                    return None
                self._source.seek(chunk[0])
                compressed = self._source.read(chunk[1])
            try:
                self._data += self._inflater.decompress(compressed, need - len(self._data))
            except zlib.error:
                return None
            if self._inflater.eof and len(self._data) < need:
                return None
        return bytes(self._data[y * self._stride : need])


def _decode(path: Path, modes: list[str], *, probed: bool) -> tuple[str | None, str | None]:
    """Decode the image and read the payload of the first of ``modes`` ("alpha", "rgb") whose signature the
    pixels carry. ``probed``: the probe saw a signature, so pixels that cannot be decoded are worth a warning."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's complaints about odd files; the result says enough
            with Image.open(path) as image:
                image.load()
                for mode in modes:
                    if mode == "alpha" and image.mode != "RGBA":
                        continue
                    plane = image.getchannel("A") if mode == "alpha" else image.convert("RGB")
                    # transposed, the row-major bytes are in the column-major order the writer used
                    bits = plane.transpose(Image.Transpose.TRANSPOSE).tobytes().translate(_LSB)
                    compressed = (_ALPHA if mode == "alpha" else _RGB).get(_bits_to_bytes(bits[:_SIGNATURE_BITS]))
                    if compressed is not None:
                        return _payload(bits, compressed)
    except Exception as exc:  # noqa: BLE001 - a truncated or broken image, a bomb: no payload
        return None, f"stealth: signature found but pixels unreadable ({type(exc).__name__})" if probed else None
    return None, None


def _payload(bits: bytes, compressed: bool) -> tuple[str | None, str | None]:
    length = int(bits[_SIGNATURE_BITS : _SIGNATURE_BITS + _LENGTH_BITS], 2)
    payload_bits = bits[_SIGNATURE_BITS + _LENGTH_BITS : _SIGNATURE_BITS + _LENGTH_BITS + length]
    if length == 0 or len(payload_bits) < length:
        return None, "stealth: payload length exceeds the image"
    payload = _bits_to_bytes(payload_bits)
    if compressed:
        inflater = zlib.decompressobj(wbits=31)  # gzip container
        try:
            payload = inflater.decompress(payload, MAX_INFLATED_BYTES)
        except zlib.error as exc:
            return None, f"stealth: gzip payload broken ({exc})"
    return payload.decode("utf-8", errors="replace"), None


def _bits_to_bytes(bits: bytes) -> bytes:
    """b"0110..." -> the bytes those bits spell (a trailing partial byte is dropped)."""
    whole = len(bits) // 8 * 8
    return int(bits[:whole], 2).to_bytes(whole // 8, "big") if whole else b""

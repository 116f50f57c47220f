"""Image factories for tests and benchmarks: plain functions writing deterministic files.

Same arguments (and ``seed``) give byte-identical files, a different seed gives different bytes, so a test can
make a duplicate or a distinct asset on purpose. Content is a gradient plus seeded noise: smooth enough to look
like a picture after resizing, noisy enough that two seeds never compress to the same bytes.
Pillow only (no numpy): the noise comes from ``random.Random(seed).randbytes`` poured into ``Image.frombytes``.
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageChops, PngImagePlugin

from streams.demo import comfy_like_png  # one generator for the demo set, benchmarks and tests

__all__ = [
    "comfy_like_png", "make_gif_animated", "make_jpeg", "make_png", "make_webp", "pattern", "write_garbage",
    "write_png_header", "write_truncated",
]


def pattern(size: tuple[int, int], *, seed: int = 0, noise_bits: int = 5) -> Image.Image:
    """An RGB image: three differently oriented gradients plus ``noise_bits`` bits of seeded noise per channel."""
    width, height = size
    linear = Image.linear_gradient("L").resize(size)
    radial = Image.radial_gradient("L").resize(size)
    gradient = Image.merge("RGB", (linear, radial, linear.transpose(Image.Transpose.ROTATE_180)))
    noise = Image.frombytes("RGB", size, random.Random(seed).randbytes(width * height * 3))
    shift = 8 - noise_bits
    return ImageChops.add(gradient, noise.point(lambda v: v >> shift))


def _in_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` (RGB) converted to ``mode``; alpha modes get a left-to-right alpha ramp (real transparency)."""
    if mode == "RGB":
        return image
    alpha = Image.linear_gradient("L").rotate(90).resize(image.size)
    if mode == "RGBA":
        return Image.merge("RGBA", (*image.split(), alpha))
    if mode == "LA":
        return Image.merge("LA", (image.convert("L"), alpha))
    if mode == "I;16":  # 16-bit grey spanning the full range: 8-bit value v becomes v * 257
        return image.convert("L").convert("I").point(lambda v: v * 257).convert("I;16")
    if mode == "P":
        return image.quantize(64)
    if mode == "PA":  # palette image with one fully transparent palette entry
        paletted = image.quantize(64)
        paletted.info["transparency"] = 0
        return paletted
    return image.convert(mode)  # "L", "1", "CMYK", ...


def make_png(
    path: Path | str,
    size: tuple[int, int] = (64, 48),
    mode: str = "RGB",
    text: dict[str, str] | None = None,
    seed: int = 0,
) -> Path:
    """A PNG of ``pattern(size, seed)`` in ``mode`` (RGB, RGBA, LA, L, 1, P, PA, I;16) with ``text`` as tEXt."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    _in_mode(pattern(size, seed=seed), mode).save(path, "PNG", pnginfo=info)
    return Path(path)


def make_png_folder(folder: Path, files: int, size: tuple[int, int] = (16, 16)) -> Path:
    """``folder`` (made) holding ``files`` small distinct PNGs, ``00.png`` on."""
    folder.mkdir(parents=True)
    for i in range(files):
        make_png(folder / f"{i:02d}.png", size=size, seed=i)
    return folder


def make_jpeg(
    path: Path | str,
    size: tuple[int, int] = (64, 48),
    orientation: int | None = None,
    mode: str = "RGB",
    exif_make: str | None = None,
    seed: int = 0,
    quality: int = 90,
    comment: str | None = None,
) -> Path:
    """A JPEG (mode RGB, L or CMYK — Pillow writes CMYK Adobe-inverted) with optional EXIF Orientation/Make and a
    COM segment (``comment``)."""
    image = _in_mode(pattern(size, seed=seed), mode)
    extra = {"comment": comment} if comment is not None else {}
    image.save(path, "JPEG", quality=quality, exif=_exif(orientation, exif_make), **extra)
    return Path(path)


def make_webp(
    path: Path | str,
    size: tuple[int, int] = (64, 48),
    mode: str = "RGB",
    orientation: int | None = None,
    seed: int = 0,
) -> Path:
    """A still WebP (RGB or RGBA), with an EXIF chunk when ``orientation`` is given."""
    image = _in_mode(pattern(size, seed=seed), mode)
    image.save(path, "WEBP", quality=90, exif=_exif(orientation, None))
    return Path(path)


def make_gif_animated(
    path: Path | str, size: tuple[int, int] = (64, 48), frames: int = 3, seed: int = 0
) -> Path:
    """An animated GIF of ``frames`` different frames (frame ``i`` is ``pattern(seed + i)``)."""
    images = [pattern(size, seed=seed + i).quantize(64) for i in range(frames)]
    images[0].save(path, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return Path(path)


def write_truncated(path: Path | str, from_path: Path | str, keep: float = 0.5) -> Path:
    """A copy of ``from_path`` cut after ``keep`` of its bytes (header intact, pixel data cut)."""
    data = Path(from_path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * keep))])
    return Path(path)


def write_garbage(path: Path | str, n: int, seed: int = 0) -> Path:
    """``n`` seeded random bytes, prefixed so no image signature can match by chance."""
    data = b"garbage:" + random.Random(seed).randbytes(max(0, n - 8))
    Path(path).write_bytes(data[:n])
    return Path(path)


def write_png_header(path: Path | str, width: int, height: int) -> Path:
    """A PNG that is all header: a valid IHDR declaring ``width`` x ``height`` (8-bit RGB), no pixel data.

    For what a decoder must refuse from the header alone (decompression bombs, zero or absurd dimensions).
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return Path(path)


def _exif(orientation: int | None, make: str | None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if make is not None:
        exif[0x010F] = make
    return exif.tobytes() if len(exif) else b""

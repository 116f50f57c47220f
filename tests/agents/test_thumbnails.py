"""make_thumbnails: sizes, orientation, modes, atomic dedupe, and every failure typed — generated files first,
then the shared corpus (camera and AI images must thumbnail; every broken file must fail typed, or decode)."""

from __future__ import annotations

import io
import json
import os
import random
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageFile, ImageStat, JpegImagePlugin

from agents.thumbnails import Thumbnails, make_thumbnails, thumbnail_path
from streams.errors import (
    CorruptImage, DamflowError, DecompressionBomb, SourceMissing, TransientError, UnsupportedFormat,
)
from tests.conftest import CORPUS
from tests.images import (
    comfy_like_png, make_gif_animated, make_jpeg, make_png, make_webp, pattern, write_garbage, write_png_header,
    write_truncated,
)

ID = "ab" + "0123456789abcdef" * 3 + "0123456789abcd"
HEIF_DECODABLE = "HEIF" in Image.OPEN


def thumbs(tmp_path: Path) -> Path:
    return tmp_path / "data" / "thumbs"


def run(path: Path, tmp_path: Path, **options: object) -> Thumbnails:
    return make_thumbnails(path, ID, thumbs(tmp_path), **options)  # type: ignore[arg-type]


def opened(tmp_path: Path, relative: str) -> Image.Image:
    """The thumbnail at ``relative`` (to the data dir), fully decoded, after checking it is a WebP."""
    image = Image.open(tmp_path / "data" / relative)
    assert image.format == "WEBP"
    image.load()
    return image


def fitted(size: tuple[int, int], longest: int) -> tuple[int, int]:
    scale = min(1.0, longest / max(size))
    return round(size[0] * scale), round(size[1] * scale)


def assert_close(actual: tuple[int, int], expected: tuple[int, int]) -> None:
    assert abs(actual[0] - expected[0]) <= 1 and abs(actual[1] - expected[1]) <= 1, (actual, expected)


def files_under(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


# -- sizes and paths --------------------------------------------------------------------------------


def test_small_image_gets_one_thumbnail_at_its_own_size(tmp_path: Path) -> None:
    result = run(make_png(tmp_path / "a.png", size=(100, 50)), tmp_path)
    assert result == Thumbnails("PNG", 100, 50, {"256": f"thumbs/ab/{ID}.256.webp"}, created=True)
    assert opened(tmp_path, result.files["256"]).size == (100, 50)  # never upscaled
    assert thumbnail_path(thumbs(tmp_path), ID, 256) == tmp_path / "data" / result.files["256"]


def test_large_image_gets_thumbnail_and_preview(tmp_path: Path) -> None:
    result = run(make_jpeg(tmp_path / "a.jpg", size=(2000, 1000)), tmp_path)
    assert (result.format, result.width, result.height) == ("JPEG", 2000, 1000)
    assert set(result.files) == {"256", "1440"}
    assert opened(tmp_path, result.files["256"]).size == (256, 128)
    assert opened(tmp_path, result.files["1440"]).size == (1440, 720)
    assert result.files["1440"] == f"thumbs/ab/{ID}.1440.webp"


@pytest.mark.parametrize(
    ("size", "preview"), [((1440, 900), None), ((1441, 900), (1440, 899)), ((700, 1500), (672, 1440))]
)
def test_preview_only_when_larger_than_its_size(
    tmp_path: Path, size: tuple[int, int], preview: tuple[int, int] | None
) -> None:
    result = run(make_png(tmp_path / "a.png", size=size), tmp_path)
    if preview is None:
        assert set(result.files) == {"256"}
    else:
        assert opened(tmp_path, result.files["1440"]).size == preview


def test_first_size_always_made_others_only_when_smaller_than_the_image(tmp_path: Path) -> None:
    path = make_png(tmp_path / "a.png", size=(300, 200))
    result = run(path, tmp_path, sizes=(64, 128, 512))
    assert set(result.files) == {"64", "128"}
    assert opened(tmp_path, result.files["128"]).size == (128, 85)
    only = make_thumbnails(path, ID, tmp_path / "other" / "thumbs", sizes=(512,))
    assert only.files == {"512": f"thumbs/ab/{ID}.512.webp"}
    assert Image.open(tmp_path / "other" / only.files["512"]).size == (300, 200)


def test_wrong_extension_is_no_obstacle(tmp_path: Path) -> None:
    assert run(make_png(tmp_path / "actually_png.jpg"), tmp_path).format == "PNG"


def test_invalid_asset_id_is_refused_before_any_path_is_built(tmp_path: Path) -> None:
    path = make_png(tmp_path / "a.png")
    for bad in ("../../etc", "AB12", "a", ""):
        with pytest.raises(ValueError):
            make_thumbnails(path, bad, thumbs(tmp_path))
    assert not thumbs(tmp_path).exists()


# -- orientation ----------------------------------------------------------------------------------------------

RED, BLUE = (255, 0, 0), (0, 0, 255)


def two_colour(path: Path, image_format: str, orientation: int) -> Path:
    """Stored 300x200: left half red, right half blue, with EXIF Orientation ``orientation``."""
    image = Image.new("RGB", (300, 200), BLUE)
    image.paste(RED, (0, 0, 150, 200))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, image_format, exif=exif.tobytes(), quality=95)
    return path


def colour_at(image: Image.Image, x: float, y: float) -> tuple[int, int, int]:
    r, g, b = image.convert("RGB").getpixel((int(x * image.width), int(y * image.height)))[:3]
    return (255, 0, 0) if r > b else (0, 0, 255)


@pytest.mark.parametrize("image_format", ["JPEG", "WEBP", "PNG", "TIFF"])  # PNG: the eXIf chunk
@pytest.mark.parametrize(
    ("orientation", "display", "first", "second"),
    [
        # (where "first"/"second" are the colours at the top/bottom, or left/right when not swapped)
        (6, (200, 300), RED, BLUE),  # rotate 90° clockwise: the stored left comes out on top
        (8, (200, 300), BLUE, RED),  # rotate 90° counter-clockwise: the stored right comes out on top
        (3, (300, 200), BLUE, RED),  # rotate 180°
        (1, (300, 200), RED, BLUE),
    ],
)
def test_exif_orientation_is_applied(
    tmp_path: Path, image_format: str, orientation: int, display: tuple[int, int],
    first: tuple[int, int, int], second: tuple[int, int, int],
) -> None:
    path = two_colour(tmp_path / f"a.{image_format.lower()}", image_format, orientation)
    result = run(path, tmp_path)
    assert (result.width, result.height) == display
    thumb = opened(tmp_path, result.files["256"])
    assert thumb.size == fitted(display, 256)
    if display[0] < display[1]:
        assert (colour_at(thumb, 0.5, 0.1), colour_at(thumb, 0.5, 0.9)) == (first, second)
    else:
        assert (colour_at(thumb, 0.1, 0.5), colour_at(thumb, 0.9, 0.5)) == (first, second)
    assert 0x0112 not in thumb.getexif()  # no viewer may rotate it a second time
    again = run(path, tmp_path)  # the same bytes again: the thumbnails exist, nothing is decoded
    assert not again.created and (again.width, again.height) == display


# -- modes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_transparency_is_kept(tmp_path: Path, mode: str) -> None:
    result = run(make_png(tmp_path / "a.png", size=(400, 300), mode=mode), tmp_path)
    thumb = opened(tmp_path, result.files["256"])
    assert thumb.mode == "RGBA"
    assert thumb.getchannel("A").getextrema()[0] < 128


def test_webp_with_alpha_and_orientation(tmp_path: Path) -> None:
    result = run(make_webp(tmp_path / "a.webp", size=(400, 300), mode="RGBA", orientation=6), tmp_path)
    assert (result.format, result.width, result.height) == ("WEBP", 300, 400)
    thumb = opened(tmp_path, result.files["256"])
    assert (thumb.mode, thumb.size) == ("RGBA", (192, 256))


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "1"])
def test_opaque_modes_need_no_alpha(tmp_path: Path, mode: str) -> None:
    result = run(make_png(tmp_path / "a.png", size=(400, 300), mode=mode), tmp_path)
    assert opened(tmp_path, result.files["256"]).mode == "RGB"


def mean(image: Image.Image, mode: str = "L") -> list[float]:
    return ImageStat.Stat(image.convert(mode)).mean


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey = run(make_png(tmp_path / "l.png", size=(300, 200), mode="L"), tmp_path)
    deep = make_thumbnails(make_png(tmp_path / "i16.png", size=(300, 200), mode="I;16"), ID, tmp_path / "x" / "thumbs")
    expected = mean(opened(tmp_path, grey.files["256"]))[0]
    assert expected < 200  # the pattern is no white sheet, so clipping would show
    assert abs(mean(Image.open(tmp_path / "x" / deep.files["256"]))[0] - expected) < 3


@pytest.mark.parametrize("transparent", [1000, 255])  # beyond 8 bits; and the value 8-bit clipping lands on
def test_16_bit_grey_transparency_is_the_one_16_bit_value(tmp_path: Path, transparent: int) -> None:
    image = Image.new("I;16", (64, 64), 40000)
    image.paste(Image.new("I;16", (16, 16), transparent), (0, 0))  # a transparent corner
    image.save(tmp_path / "g16.png", transparency=transparent)
    thumb = opened(tmp_path, run(tmp_path / "g16.png", tmp_path).files["256"])
    assert thumb.mode == "RGBA"
    assert thumb.getpixel((2, 2))[3] == 0 and thumb.getpixel((40, 40))[3] == 255


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_images_are_stretched_to_their_range(tmp_path: Path, mode: str) -> None:
    image = pattern((300, 200)).convert("L").convert(mode).point(lambda v: v * 4000 + 100_000)
    path = tmp_path / "deep.tif"
    image.save(path, "TIFF")
    low, high = opened(tmp_path, run(path, tmp_path).files["256"]).convert("L").getextrema()
    assert low < 40 and high > 215


def test_cmyk_jpeg_comes_out_in_the_right_colours(tmp_path: Path) -> None:
    rgb = run(make_jpeg(tmp_path / "rgb.jpg", size=(300, 200)), tmp_path)
    cmyk_path = make_jpeg(tmp_path / "cmyk.jpg", size=(300, 200), mode="CMYK")
    with Image.open(cmyk_path) as source:  # Pillow writes Adobe-inverted CMYK
        assert source.mode == "CMYK" and source.info.get("adobe")
    cmyk = make_thumbnails(cmyk_path, ID, tmp_path / "x" / "thumbs")
    expected = mean(opened(tmp_path, rgb.files["256"]), "RGB")
    actual = mean(Image.open(tmp_path / "x" / cmyk.files["256"]), "RGB")
    assert all(abs(a - e) < 12 for a, e in zip(actual, expected, strict=True)), (actual, expected)


def solid_frames(path: Path, image_format: str, mode: str = "RGB") -> Path:
    frames = [Image.new(mode, (120, 80), colour) for colour in ("red", "lime", "blue")]
    frames[0].save(path, image_format, save_all=True, append_images=frames[1:], duration=100)
    return path


@pytest.mark.parametrize("image_format", ["GIF", "WEBP", "PNG", "MPO"])  # PNG: APNG
def test_animations_show_their_first_frame(tmp_path: Path, image_format: str) -> None:
    path = solid_frames(tmp_path / f"anim.{image_format.lower()}", image_format)
    with Image.open(path) as source:
        assert source.n_frames == 3
    result = run(path, tmp_path)
    assert result.format == image_format
    r, g, b = opened(tmp_path, result.files["256"]).convert("RGB").getpixel((60, 40))
    assert r > 200 and g < 60 and b < 60


def test_animated_factory_gif_thumbnails(tmp_path: Path) -> None:
    result = run(make_gif_animated(tmp_path / "a.gif", size=(300, 200)), tmp_path)
    assert (result.format, result.width, result.height) == ("GIF", 300, 200)


def test_jpeg_is_decoded_at_reduced_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[tuple[int, int]] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spying_draft(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        outcome = real_draft(self, mode, size)
        decoded.append(self.size)
        return outcome

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spying_draft)
    result = run(make_jpeg(tmp_path / "a.jpg", size=(1400, 1000)), tmp_path)
    assert decoded == [(350, 250)]  # 1/4 scale is the smallest still covering 256 px
    assert (result.width, result.height) == (1400, 1000)  # the image's size, not the decoded one
    assert opened(tmp_path, result.files["256"]).size == (256, 183)


def test_comfy_sized_png_is_fast(tmp_path: Path) -> None:
    path = comfy_like_png(tmp_path / "comfy.png", seed=1)
    run(path, tmp_path / "warm")
    started = time.perf_counter()
    result = run(path, tmp_path)
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert set(result.files) == {"256"}
    assert elapsed_ms < 250, f"{elapsed_ms:.0f} ms for a 1024x1024 PNG (about 25 ms expected)"


# -- atomic writes and dedupe --------------------------------------------------------------------------------


def test_second_run_reuses_files_without_rewriting(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "a.jpg", size=(1600, 900), orientation=6)
    first = run(path, tmp_path)
    written = {size: tmp_path / "data" / rel for size, rel in first.files.items()}
    for file in written.values():
        os.utime(file, ns=(1_000_000_000, 1_000_000_000))
    before = {size: (file.stat().st_ino, file.stat().st_mtime_ns) for size, file in written.items()}

    second = run(path, tmp_path)
    assert second.created is False and first.created is True
    assert (second.format, second.width, second.height, second.files) == (first.format, 900, 1600, first.files)
    assert {size: (f.stat().st_ino, f.stat().st_mtime_ns) for size, f in written.items()} == before


def test_only_missing_sizes_are_made_again(tmp_path: Path) -> None:
    path = make_png(tmp_path / "a.png", size=(2000, 1500))
    first = run(path, tmp_path)
    preview = tmp_path / "data" / first.files["1440"]
    small = tmp_path / "data" / first.files["256"]
    preview_inode = preview.stat().st_ino
    small.unlink()
    again = run(path, tmp_path)
    assert again.created is True
    assert preview.stat().st_ino == preview_inode
    assert opened(tmp_path, first.files["256"]).size == (256, 192)


def test_no_temp_files_after_success(tmp_path: Path) -> None:
    run(make_png(tmp_path / "a.png", size=(2000, 1000)), tmp_path)
    assert files_under(thumbs(tmp_path)) == [f"{ID}.1440.webp", f"{ID}.256.webp"]


def test_no_files_after_a_decode_failure(tmp_path: Path) -> None:
    broken = write_truncated(tmp_path / "t.png", make_png(tmp_path / "a.png", size=(400, 400)))
    with pytest.raises(CorruptImage):
        run(broken, tmp_path)
    assert files_under(thumbs(tmp_path)) == []


def test_write_failure_is_transient_and_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(TransientError, match="No space left") as caught:
        run(make_png(tmp_path / "a.png"), tmp_path)
    assert caught.value.retriable and caught.value.code == "storage_unavailable"  # damflow's disk, not the file
    assert files_under(thumbs(tmp_path)) == []


def test_a_thumbs_folder_that_cannot_be_looked_at_is_damflows_storage_not_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_stat = Path.stat

    def stat(self, *a, **k):
        if self.suffix == ".webp":
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *a, **k)

    monkeypatch.setattr(Path, "stat", stat)
    with pytest.raises(TransientError, match="cannot look at a thumbnail") as caught:
        run(make_png(tmp_path / "a.png"), tmp_path)  # before: SourceUnreadable, naming the user's file
    assert caught.value.code == "storage_unavailable"


# -- refusals ------------------------------------------------------------------------------------------------


def test_pixel_limit_is_inclusive(tmp_path: Path) -> None:
    path = make_png(tmp_path / "a.png", size=(100, 100))
    assert run(path, tmp_path, max_pixels=10_000).width == 100
    with pytest.raises(DecompressionBomb):
        run(path, tmp_path / "x", max_pixels=9_999)


def test_bomb_is_refused_from_the_header_before_decoding(tmp_path: Path) -> None:
    # No pixel data at all: decoding would fail as corrupt, so a bomb verdict proves nothing was decoded.
    header_only = write_png_header(tmp_path / "bomb.png", 30_000, 30_000)
    with pytest.raises(DecompressionBomb, match="pixels") as caught:
        run(header_only, tmp_path)
    assert not caught.value.retriable
    with pytest.raises(DecompressionBomb):
        run(write_png_header(tmp_path / "small_bomb.png", 200, 100), tmp_path, max_pixels=10_000)
    assert files_under(thumbs(tmp_path)) == []


def test_pillow_warning_zone_is_neither_a_failure_nor_a_leaked_warning(tmp_path: Path) -> None:
    # With a 10,000-pixel limit Pillow warns above 5,000; 8,000 is within our limit.
    path = make_png(tmp_path / "a.png", size=(100, 80))
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(path, tmp_path, max_pixels=10_000).width == 100
    assert caught == []
    assert Image.MAX_IMAGE_PIXELS == limit_before  # Pillow's global is the caller's again


def test_zero_dimension_is_corrupt(tmp_path: Path) -> None:
    with pytest.raises(CorruptImage):
        run(write_png_header(tmp_path / "zero.png", 0, 10), tmp_path)


@pytest.mark.parametrize("maker", [make_png, make_jpeg])
@pytest.mark.parametrize("elsewhere_allowed", [False, True])
def test_truncated_image_is_corrupt_never_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maker: Callable[..., Path], elsewhere_allowed: bool
) -> None:
    # Even when another library in the process told Pillow to accept truncated files.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", elsewhere_allowed)
    whole = maker(tmp_path / "whole", size=(400, 300))
    with pytest.raises(CorruptImage, match="(?i)truncated|broken|cannot"):
        run(write_truncated(tmp_path / "cut", whole, keep=0.6), tmp_path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is elsewhere_allowed


def test_signature_then_garbage_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + write_garbage(tmp_path / "g", 200).read_bytes())
    with pytest.raises(CorruptImage, match="PNG"):
        run(path, tmp_path)


def test_an_avif_whose_pixel_data_is_damaged_is_corrupt(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(buffer, "AVIF")
    data = bytearray(buffer.getvalue())
    rng = random.Random(1)
    for i in range(data.find(b"mdat") + 12, len(data)):  # the AV1 payload, scrambled
        data[i] = rng.randrange(256)
    path = tmp_path / "damaged.avif"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptImage, match="AVIF|decode"):  # Pillow's AVIF decoder raises RuntimeError
        run(path, tmp_path)


def test_empty_file_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "empty.png").touch()
    with pytest.raises(CorruptImage, match="empty"):
        run(tmp_path / "empty.png", tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"test-pictures/Lincoln-and-Parrot-512.png",  # a git symlink checked out as text
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",  # EPS would run Ghostscript
        b"P6\n2 2\n255\n" + bytes(12),  # PPM: Pillow reads it, tier 1 does not take it
    ],
)
def test_non_images_and_refused_formats_are_unsupported(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(content)
    with pytest.raises(UnsupportedFormat):
        run(path, tmp_path)


def test_garbage_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormat):
        run(write_garbage(tmp_path / "a.jpg", 4000), tmp_path)


@pytest.mark.skipif(HEIF_DECODABLE, reason="a HEIF plugin is installed")
def test_heif_without_plugin_is_unsupported_not_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "a.heic"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200))
    with pytest.raises(UnsupportedFormat, match="HEIF"):
        run(path, tmp_path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceMissing):
        run(tmp_path / "gone.png", tmp_path)
    with pytest.raises(UnsupportedFormat):
        run(tmp_path, tmp_path)


# -- the corpus ------------------------------------------------------------------------------------------------

IMAGE_KINDS = {"camera", "comfyui", "a1111", "invokeai", "other-ai"}
MANIFEST = json.loads((CORPUS / "manifest.json").read_text()) if (CORPUS / "manifest.json").is_file() else []

# What each "broken" file really is to Pillow 13. None: the pixels decode fully — the damage is in metadata
# (EXIF, ICC, IPTC, text chunks, extra frames) or in a CRC Pillow does not check — so thumbnails are made and
# reporting the metadata is tier 2's job.
BROKEN: dict[str, type[DamflowError] | None] = {
    "broken/sdp_empty_file.png": CorruptImage,
    "broken/pillow_broken.png": CorruptImage,
    "broken/pillow_broken_data_stream.png": CorruptImage,
    "broken/pillow_truncated_image.png": CorruptImage,
    "broken/pillow_truncated_end_chunk.png": CorruptImage,
    "broken/pillow_truncated_jpeg.jpg": CorruptImage,
    "broken/pillow_truncated_app14.jpg": None,
    "broken/pillow_png_decompression_dos.png": CorruptImage,  # zTXt bomb: Pillow refuses the file on open
    "broken/pillow_decompression_bomb.gif": DecompressionBomb,
    "broken/pillow_decompression_bomb_extents.gif": None,  # only frame 2 is a bomb; frame 1 is shown
    "broken/pillow_hopper_bad_exif.jpg": None,
    "broken/pillow_invalid-exif.jpg": None,
    "broken/pillow_invalid-exif-without-x-resolution.jpg": None,
    "broken/pillow_exif-ifd-offset.jpg": None,
    "broken/pillow_exif_typeerror.jpg": None,
    "broken/pillow_truncated_exif_dpi.jpg": None,
    "broken/pillow_exif-dpi-zerodivision.jpg": None,
    "broken/pillow_junk_jpeg_header.jpg": None,
    "broken/pillow_zero_width.gif": CorruptImage,
    "broken/pillow_sugarshack_bad_mpo_header.jpg": None,
    "broken/pillow_sugarshack_no_data.mpo": None,  # frame 2 missing; frame 1 is shown
    "broken/pillow_hopper_idat_after_image_end.png": None,
    "broken/pillow_unknown_compression_method.png": CorruptImage,
    "broken/pillow_tRNS_null_1x1.png": None,
    "broken/pillow_apng_syntax_num_frames_zero.png": CorruptImage,
    "broken/pillow_icc-after-SOF.jpg": None,
    "broken/pillow_photoshop-200dpi-broken.jpg": None,
    "broken/pillow_broken_exif_dpi.jpg": None,
    "broken/pillow_ultrahdr.jpg": CorruptImage,
    "broken/pngsuite_xs1n0g01.png": UnsupportedFormat,  # signature damaged: nothing says "image" any more
    "broken/pngsuite_xcrn0g04.png": UnsupportedFormat,
    "broken/pngsuite_xhdn0g08.png": CorruptImage,
    "broken/pngsuite_xcsn0g01.png": None,  # bad IDAT CRC, intact data
    "broken/pngsuite_xdtn0g01.png": CorruptImage,
    "broken/pngsuite_xc1n0g08.png": CorruptImage,
    "broken/pngsuite_xd0n2c08.png": CorruptImage,
    "broken/pngrs_x_issue#230.0.png": CorruptImage,
    "broken/pngrs_x_unexpected_eof.png": CorruptImage,
    "broken/pngrs_x_ihdr_missing.png": CorruptImage,
    "broken/pngrs_x_issue#214.png": CorruptImage,
    "broken/pngrs_large-text-chunks-issue#337.png": None,
    "broken/pngrs_broken_iccp.png": None,
    "broken/pngrs_F-exif-chunk-early.png": None,
    "broken/ianare_corrupted.jpg": None,
    "broken/ianare_invalid_image01137.jpg": None,
    "broken/invoke_Lincoln-and-Parrot-512_symlink-as-text.png": UnsupportedFormat,
}


def _entries(*kinds: str) -> list[pytest.param]:
    return [pytest.param(e, id=e["file"]) for e in MANIFEST if e["kind"] in kinds]


def display_size(entry: dict) -> tuple[int, int]:
    """The manifest stores the stored size; orientations 6 and 8 display it turned on its side."""
    swapped = re.search(r"Orientation=[5-8]\b", entry["expect"])
    return (entry["height"], entry["width"]) if swapped else (entry["width"], entry["height"])


def has_real_alpha(path: Path) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corpus's metadata complaints are not this check's business
        with Image.open(path) as source:
            if not source.has_transparency_data:
                return False
            return source.convert("RGBA").getchannel("A").getextrema()[0] < 250


def assert_good_thumbnails(result: Thumbnails, entry: dict, source: Path, tmp_path: Path) -> None:
    display = display_size(entry)
    assert (result.width, result.height) == display
    assert result.format == entry["format"]
    thumb = opened(tmp_path, result.files["256"])
    assert max(thumb.size) == min(256, max(display))
    assert_close(thumb.size, fitted(display, 256))
    assert ("1440" in result.files) == (max(display) > 1440)
    if "1440" in result.files:
        assert_close(opened(tmp_path, result.files["1440"]).size, fitted(display, 1440))
    if has_real_alpha(source):
        assert thumb.mode == "RGBA"


@pytest.mark.corpus
@pytest.mark.parametrize("entry", _entries(*IMAGE_KINDS))
def test_corpus_image_thumbnails(corpus: Path, tmp_path: Path, entry: dict) -> None:
    source = corpus / entry["file"]
    if entry["format"] == "HEIF" and not HEIF_DECODABLE:
        with pytest.raises(UnsupportedFormat):
            run(source, tmp_path)
        return
    assert_good_thumbnails(run(source, tmp_path), entry, source, tmp_path)


def test_broken_table_covers_the_manifest() -> None:
    if not MANIFEST:
        pytest.skip("no corpus")
    assert {e["file"] for e in MANIFEST if e["kind"] == "broken"} == set(BROKEN)


@pytest.mark.corpus
@pytest.mark.parametrize("entry", _entries("broken"))
def test_corpus_broken_file(corpus: Path, tmp_path: Path, entry: dict) -> None:
    source = corpus / entry["file"]
    expected = BROKEN[entry["file"]]
    started = time.perf_counter()
    if expected is None:
        assert_good_thumbnails(run(source, tmp_path), entry, source, tmp_path)
    else:
        with pytest.raises(DamflowError) as caught:
            run(source, tmp_path)
        assert type(caught.value) is expected, f"{type(caught.value).__name__}: {caught.value}"
        assert caught.value.message and caught.value.path == str(source)
        assert files_under(thumbs(tmp_path)) == []
    assert time.perf_counter() - started < 5

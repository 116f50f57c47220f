"""read_containers: what PNG, JPEG and WebP containers hold, losslessly, and never an exception for bad metadata.

Two layers: files built here (Pillow writes most of them; chunk and segment surgery places the rest where real
tools put them), and the shared corpus, whose manifest states facts about each file in formulaic phrases that
:func:`~tests.agents.metadata.expectations.container_checks` turns into assertions — one test per manifest entry,
named by its file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from agents.metadata import png_chunks
from agents.metadata.containers import read_containers
from agents.metadata.exif import decode_user_comment
from agents.metadata.xmp import parse_packet
from streams.errors import SourceMissing, SourceUnreadable, UnsupportedFormat
from tests.conftest import CORPUS

pytest.register_assert_rewrite("tests.agents.metadata.expectations")
from tests.agents.metadata.expectations import ALLOWED, check_failure, container_checks
from tests.images import make_png, pattern, write_garbage

XMP_PACKET = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
    'xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:CreatorTool="Draw Things">'
    '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">a cat\nSteps: 20</rdf:li></rdf:Alt></dc:description>'
    "<dc:subject><rdf:Bag><rdf:li>cat</rdf:li><rdf:li>space</rdf:li></rdf:Bag></dc:subject>"
    '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


# -- builders ------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes, *, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _before_iend(png: bytes, *chunks: bytes) -> bytes:
    return png[:-12] + b"".join(chunks) + png[-12:]


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _after_soi(jpeg: bytes, *segments: bytes) -> bytes:
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def _jpeg(exif: Image.Exif | None = None, **params: object) -> bytes:
    buffer = io.BytesIO()
    pattern((32, 24)).save(buffer, "JPEG", exif=exif if exif is not None else b"", **params)
    return buffer.getvalue()


def _png_bytes(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def _info(**text: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    return info


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _camera_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Maker"
    exif[0x0110] = "ION230\x00F"  # NUL-padded with garbage after it, as a real Polaroid writes it
    exif.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "S", (0.0, 22.278, 0.0), "W", (36.0, 3.385, 0.0)
    return exif


def _stealth_png(path: Path, size: tuple[int, int], text: str, *, mode: str = "alpha", compressed: bool = True) -> Path:
    """What sd-webui-stealth-pnginfo writes: signature, 32-bit bit-length, payload, column by column in LSBs."""
    payload = gzip.compress(text.encode()) if compressed else text.encode()
    signature = f"stealth_{'png' if mode == 'alpha' else 'rgb'}{'comp' if compressed else 'info'}".encode()
    bits = "".join(f"{b:08b}" for b in signature) + f"{len(payload) * 8:032b}" + "".join(f"{b:08b}" for b in payload)
    width, height = size
    image = pattern(size, seed=3)
    if mode == "alpha":
        image.putalpha(Image.linear_gradient("L").resize(size))
    channels = 4 if mode == "alpha" else 3
    data = bytearray(image.tobytes())
    for i, bit in enumerate(bits):
        pixel, channel = (i, 3) if mode == "alpha" else divmod(i, 3)
        x, y = divmod(pixel, height)
        at = (y * width + x) * channels + channel
        data[at] = (data[at] & 0xFE) | int(bit)
    Image.frombytes(image.mode, size, bytes(data)).save(path, "PNG")
    return path


# -- PNG -----------------------------------------------------------------------------------------


def test_png_text_chunks_of_every_kind_are_kept_in_text_and_raw(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Seed: 1")
    info.add_text("prompt", '{"3": {"class_type": "KSampler"}}', zip=True)
    info.add_itxt("Comment", "crème brûlée ✓", lang="fr", tkey="Kommentar", zip=True)
    path = _write(tmp_path, "a.png", _png_bytes(pattern((16, 16)), pnginfo=info))

    c = read_containers(path)

    assert (c.format, c.width, c.height) == ("PNG", 16, 16)
    assert c.text == {
        "parameters": "a cat\nSteps: 20, Seed: 1",
        "prompt": '{"3": {"class_type": "KSampler"}}',
        "Comment": "crème brûlée ✓",
    }
    assert c.raw["png:parameters"] == c.text["parameters"] and c.raw["png:Comment"] == c.text["Comment"]
    assert c.warnings == []


def test_png_text_after_idat_and_duplicates_are_kept(tmp_path: Path) -> None:
    png = _png_bytes(pattern((8, 8)), pnginfo=_info(early="before"))
    late = _chunk(b"tEXt", b"parameters\x00after the pixels")
    again = _chunk(b"zTXt", b"parameters\x00\x00" + zlib.compress(b"second copy"))
    path = _write(tmp_path, "late.png", _before_iend(png, late, again))

    c = read_containers(path)

    assert c.text == {"early": "before", "parameters": "after the pixels"}  # first of a keyword wins in text
    assert c.raw["png:parameters#2"] == "second copy"  # ... and every copy stays in raw


def test_png_copies_of_one_chunk_name_are_kept_up_to_a_cap(tmp_path: Path) -> None:
    png = _png_bytes(pattern((8, 8)))
    copies = [_chunk(b"tEXt", b"k\x00" + str(i).encode()) for i in range(png_chunks.MAX_SAME_NAME + 500)]
    c = read_containers(_write(tmp_path, "many.png", _before_iend(png, *copies)))
    kept = [k for k in c.raw if k.startswith("png:k")]
    # the first copies by number, then one entry standing for the rest: not one per copy (that made the
    # walk quadratic: tens of thousands of copies ran past the pool's time limit)
    assert len(kept) == png_chunks.MAX_SAME_NAME + 1 and "png:k#more" in kept
    assert c.raw["png:k"] == "0" and c.raw[f"png:k#{png_chunks.MAX_SAME_NAME}"] == str(png_chunks.MAX_SAME_NAME - 1)


def test_png_bad_crc_and_truncation_are_warnings_and_what_was_read_stays(tmp_path: Path) -> None:
    png = _png_bytes(pattern((64, 64)), pnginfo=_info(first="kept"))
    bad = _chunk(b"tEXt", b"checked\x00still kept", crc=0)

    whole = read_containers(_write(tmp_path, "crc.png", _before_iend(png, bad)))
    assert whole.text == {"first": "kept", "checked": "still kept"}
    assert any("bad CRC in tEXt" in w for w in whole.warnings)

    cut = read_containers(_write(tmp_path, "cut.png", _before_iend(png, bad)[: len(png) - 12 + len(bad) - 4]))
    assert cut.text == {"first": "kept"}  # a chunk cut short is not guessed at
    assert any("cut off" in w for w in cut.warnings)


def test_png_text_bomb_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png_chunks, "MAX_INFLATED_BYTES", 1000)
    bomb = _chunk(b"zTXt", b"big\x00\x00" + zlib.compress(b"A" * 5000))
    path = _write(tmp_path, "bomb.png", _before_iend(_png_bytes(pattern((8, 8))), bomb))

    c = read_containers(path)

    assert "big" not in c.text
    assert any("inflates beyond" in w for w in c.warnings)


def test_png_text_bombs_are_capped_for_the_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # capped chunk by chunk, 40 bombs of 15 MB in a 600-KB file ran a pool process into its 3-GB memory limit
    monkeypatch.setattr(png_chunks, "MAX_INFLATED_BYTES", 1000)
    chunks = [_chunk(b"zTXt", name + b"\x00\x00" + zlib.compress(b"A" * 600)) for name in (b"a", b"b", b"c")]
    chunks.append(_chunk(b"iTXt", b"d\x00\x01\x00\x00\x00" + zlib.compress(b"B" * 300)))
    chunks.append(_chunk(b"tEXt", b"little\x00" + b"C" * 100))
    # plain text counts too: a 20-MB PNG of four tEXt chunks took 570 MB to read and wrote a 240-MB document
    chunks.append(_chunk(b"tEXt", b"plain\x00" + b"D" * 900))
    c = read_containers(_write(tmp_path, "bombs.png", _before_iend(_png_bytes(pattern((8, 8))), *chunks)))

    assert c.text == {"a": "A" * 600, "d": "B" * 300, "little": "C" * 100}
    assert sum("inflates beyond 1000 bytes with the file's text before it" in w for w in c.warnings) == 2
    assert any("'plain': 900 bytes of text past the file's 1000; dropped" in w for w in c.warnings)
    assert c.raw["png:plain"] == "omitted:900 bytes"


@pytest.mark.timeout(60)
def test_png_walk_gives_up_on_endless_small_chunks(tmp_path: Path) -> None:
    png = _png_bytes(pattern((8, 8), seed=1))
    endless = [_chunk(b"abCd", b"")] * 200_000 + [_chunk(b"tEXt", b"late\x00never read")]
    start = time.perf_counter()
    c = read_containers(_write(tmp_path, "endless.png", _before_iend(png, _chunk(b"tEXt", b"early\x00kept"), *endless)))
    assert time.perf_counter() - start < 2  # ~6 s, chunk by chunk
    assert c.text == {"early": "kept"} and c.width == 8
    assert any(f"more than {png_chunks.MAX_CHUNKS} chunks" in w for w in c.warnings)


def test_png_exif_chunk_xmp_and_imagemagick_raw_profile(tmp_path: Path) -> None:
    exif = _camera_exif()
    xmp = PngImagePlugin.PngInfo()
    xmp.add_itxt("XML:com.adobe.xmp", XMP_PACKET)
    c = read_containers(_write(tmp_path, "exif.png", _png_bytes(pattern((8, 8)), pnginfo=xmp, exif=exif)))
    assert c.exif["Exif.Image.Make"] == "Maker"
    assert c.xmp["Xmp.xmp.CreatorTool"] == "Draw Things"
    assert c.flags["exif"] and c.flags["xmp"]

    # ImageMagick's legacy form: hex text in a (here compressed) text chunk, after the pixels
    payload = b"Exif\x00\x00" + exif.tobytes()
    hexed = payload.hex()
    profile = f"\nexif\n{len(payload):8d}\n" + "\n".join(hexed[i : i + 72] for i in range(0, len(hexed), 72)) + "\n"
    magick = _chunk(b"zTXt", b"Raw profile type exif\x00\x00" + zlib.compress(profile.encode()))
    c = read_containers(_write(tmp_path, "magick.png", _before_iend(_png_bytes(pattern((8, 8))), magick)))
    assert c.exif["Exif.Image.Make"] == "Maker"
    assert c.exif["Exif.Photo.DateTimeOriginal"] == "2024:01:02 03:04:05"


def test_truncated_png_falls_back_to_pillow_for_exif(tmp_path: Path) -> None:
    png = _png_bytes(pattern((64, 64)), exif=_camera_exif())
    path = _write(tmp_path, "trunc.png", png[: len(png) // 2])  # exiv2 refuses a PNG cut mid-IDAT

    c = read_containers(path)

    assert c.exif["Exif.Image.Make"] == "Maker"
    assert c.gps == pytest.approx((-0.3713, -36.0564), abs=1e-4)
    assert any(w.startswith("exiv2:") for w in c.warnings)
    assert "exif: read by Pillow (exiv2 could not)" in c.warnings


# -- stealth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "mode", "compressed"),
    [((300, 200), "alpha", True), ((64, 64), "alpha", True), ((300, 200), "alpha", False), ((200, 160), "rgb", True)],
    ids=["probe-alpha-gzip", "small-alpha", "probe-alpha-plain", "probe-rgb"],
)
def test_stealth_metadata_in_pixel_lsbs(tmp_path: Path, size: tuple[int, int], mode: str, compressed: bool) -> None:
    text = "a circle\nNegative prompt: a square\nSteps: 20, Sampler: Euler, Seed: 2015833630" * 3
    path = _stealth_png(tmp_path / "s.png", size, text, mode=mode, compressed=compressed)

    c = read_containers(path)

    assert c.text["stealth:parameters"] == text
    assert c.flags["stealth"]


def _png_every_filter(image: Image.Image) -> bytes:
    """``image`` (RGB/RGBA) as a PNG whose rows use filter types 0-4 in turn (Pillow never writes Average)."""
    channels = len(image.getbands())
    width, height = image.size
    pixels = image.tobytes()
    stride = width * channels
    out, above = bytearray(), bytes(stride)
    for y in range(height):
        row = pixels[y * stride : (y + 1) * stride]
        kind = y % 5
        filtered = bytearray()
        for i, value in enumerate(row):
            a = row[i - channels] if i >= channels else 0
            b, c = above[i], above[i - channels] if i >= channels else 0
            p = a + b - c
            paeth = a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else b if abs(p - b) <= abs(p - c) else c
            predictor = (0, a, b, (a + b) // 2, paeth)[kind]
            filtered.append((value - predictor) & 0xFF)
        out += bytes([kind]) + filtered
        above = row
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6 if channels == 4 else 2, 0, 0, 0)
    return png_chunks.SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(out))) + _chunk(
        b"IEND", b"")


def test_stealth_probe_undoes_every_png_filter(tmp_path: Path) -> None:
    text = "Steps: 20, Sampler: Euler"
    for mode in ("alpha", "rgb"):
        made = Image.open(_stealth_png(tmp_path / f"{mode}.png", (150, 130), text, mode=mode))
        data = _png_every_filter(made)
        assert Image.open(io.BytesIO(data)).tobytes() == made.tobytes()  # the encoder above is right
        c = read_containers(_write(tmp_path, f"{mode}-filters.png", data))
        assert c.text.get("stealth:parameters") == text, mode


def test_no_stealth_in_ordinary_rgba_and_probe_is_cheap(tmp_path: Path) -> None:
    path = make_png(tmp_path / "plain.png", size=(1024, 1024), mode="RGBA")
    read_containers(path)
    start = time.perf_counter()
    c = read_containers(path)
    assert time.perf_counter() - start < 0.05  # the probe inflates a few rows, never the image
    assert "stealth" not in c.flags and c.text == {}


# -- JPEG ----------------------------------------------------------------------------------------


def test_jpeg_exif_strings_gps_and_a1111_user_comment(tmp_path: Path) -> None:
    exif = _camera_exif()
    text = "photo of a duck\nNegative prompt: monochrome\nSteps: 15, Sampler: UniPC"
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf-16-be")  # A1111 writes BE into II files
    c = read_containers(_write(tmp_path, "a.jpg", _jpeg(exif)))

    assert (c.format, c.width, c.height) == ("JPEG", 32, 24)
    assert c.exif["Exif.Image.Model"] == "ION230"  # cut at the first NUL
    assert c.exif["Exif.Photo.DateTimeOriginal"] == "2024:01:02 03:04:05"
    assert c.user_comment == text
    assert c.exif["Exif.Photo.UserComment"] == text  # not exiv2's "charset=Unicode ..." rendering
    assert c.gps == pytest.approx((-0.3713, -36.05642), abs=1e-4)


def test_comfyui_jpeg_json_in_ifd0_user_comment(tmp_path: Path) -> None:
    exif = Image.Exif()
    document = json.dumps({"prompt": {"3": {"class_type": "KSampler"}}, "workflow": {"nodes": []}})
    exif[0x9286] = document
    c = read_containers(_write(tmp_path, "comfy.jpg", _jpeg(exif)))
    assert json.loads(c.user_comment or "") == json.loads(document)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"ASCII\x00\x00\x00Steps: 20\x00", "Steps: 20"),
        (b"UNICODE\x00" + "Steps: 20 ✓".encode("utf-16-be"), "Steps: 20 ✓"),
        (b"UNICODE\x00" + "Steps: 20 ✓".encode("utf-16-le"), "Steps: 20 ✓"),
        (b"UNICODE\x00\xfe\xff" + "BOM".encode("utf-16-be"), "BOM"),
        (b"UNICODE\x00\xff\xfe" + "odd".encode("utf-16-le") + b"\x00", "odd"),  # a stray byte: not an error
        (b"UNICODE\x00\xff\xfe\x00\xd8", "\ufffd"),  # a lone surrogate: replaced
        (b"JIS\x00\x00\x00\x00\x00" + "猫".encode("shift_jis"), "猫"),
        (b"\x00" * 8 + b"\x00" * 20, None),
        (b"\x00" * 8 + b"       ", None),
        (b'{"prompt": {}}', '{"prompt": {}}'),
        (b"", None),
    ],
    ids=["ascii", "utf16-be", "utf16-le", "utf16-bom", "utf16-bom-odd", "utf16-lone-surrogate", "jis", "zero-filled", "blank", "bare-json", "empty"],
)
def test_user_comment_decoding(raw: bytes, expected: str | None) -> None:
    assert decode_user_comment(raw, big_endian=False) == expected


def test_every_jpeg_comment_in_order_utf8_else_latin1(tmp_path: Path) -> None:
    jpeg = _jpeg(comment="invokeai_workflow: {}")  # Pillow writes one COM; two more go before it
    jpeg = _after_soi(jpeg, _segment(0xFE, b"invokeai_graph: {}"), _segment(0xFE, b"caf\xe9 \xa8"))
    c = read_containers(_write(tmp_path, "com.jpg", jpeg))
    assert c.comments == ["invokeai_graph: {}", "café ¨", "invokeai_workflow: {}"]


def test_jpeg_xmp_extended_xmp_icc_c2pa_and_unknown_segments(tmp_path: Path) -> None:
    jpeg = _jpeg(xmp=XMP_PACKET.encode(), icc_profile=b"not really a profile")
    extended = b"http://ns.adobe.com/xmp/extension/\x00" + b"0" * 32 + struct.pack(">II", 9, 0) + b"<x:extra/>"
    jumbf = b"JP\x00\x01\x00\x00\x00\x01" + struct.pack(">I", 40) + b"jumb" + struct.pack(">I", 24) + b"jumd" + b"c2pa"
    vendor = b"FLIR\x00" + bytes(10)
    jpeg = _after_soi(jpeg, _segment(0xE1, extended), _segment(0xEB, jumbf), _segment(0xE5, vendor))

    c = read_containers(_write(tmp_path, "x.jpg", jpeg))

    assert c.xmp["Xmp.xmp.CreatorTool"] == "Draw Things"
    assert c.xmp["Xmp.dc.description"] == {"x-default": "a cat\nSteps: 20"}
    assert c.xmp["Xmp.dc.subject"] == ["cat", "space"]
    assert c.flags["icc"] and c.flags["extended_xmp"] and c.flags["c2pa"] and c.flags["xmp"]
    assert c.raw["jpeg:ExtendedXMP"] == "<x:extra/>"
    assert c.raw["jpeg:APP5#1"].startswith("base64:")


def test_iptc_split_over_two_app13_segments_is_joined(tmp_path: Path) -> None:
    iim = b"".join(
        b"\x1c\x02" + bytes([dataset]) + struct.pack(">H", len(value)) + value
        for dataset, value in ((5, b"Title"), (25, b"ExifTool"), (25, b"Test"), (120, b"A witty caption"))
    )
    resource = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(iim)) + iim + b"\x00" * (len(iim) & 1)
    half = len(resource) // 2
    segments = [_segment(0xED, b"Photoshop 3.0\x00" + part) for part in (resource[:half], resource[half:])]
    c = read_containers(_write(tmp_path, "iptc.jpg", _after_soi(_jpeg(), *segments)))

    assert c.iptc["Iptc.Application2.Keywords"] == ["ExifTool", "Test"]
    assert c.iptc["Iptc.Application2.ObjectName"] == ["Title"]
    assert c.flags["iptc"]


def _photoshop_iptc(caption: bytes, digest_of: bytes | None, pad: int = 0) -> bytes:
    """An APP13 segment: IPTC with a caption (and ``pad`` zero bytes after it), and an IPTC digest (resource
    0x0425) of ``digest_of`` if given."""
    iim = b"\x1c\x02\x78" + struct.pack(">H", len(caption)) + caption + b"\x00" * pad

    def resource(rid: int, data: bytes) -> bytes:
        return b"8BIM" + struct.pack(">H", rid) + b"\x00\x00" + struct.pack(">I", len(data)) + data + b"\x00" * (
            len(data) & 1)

    digest = resource(0x0425, hashlib.md5(digest_of).digest()) if digest_of is not None else b""
    return _segment(0xED, b"Photoshop 3.0\x00" + resource(0x0404, iim) + digest)


@pytest.mark.parametrize(("digest_of", "pad", "edited", "caption"), [
    (None, 0, None, "from xmp"),  # no digest: XMP, as the Metadata Working Group reads it
    ("same", 0, False, "from xmp"),  # the digest matches: IPTC and XMP were written together
    ("same", 2, False, "from xmp"),  # ... leaving out the zero bytes the IPTC was padded with
    ("older", 0, True, "from iptc"),  # IPTC edited since by a program that does not write XMP
], ids=["no-digest", "digest-matches", "digest-matches-unpadded", "digest-differs"])
def test_a_caption_in_iptc_and_xmp_is_read_as_the_mwg_guidance_says(
    tmp_path: Path, digest_of: str | None, pad: int, edited: bool | None, caption: str
) -> None:
    from agents.index import camera_fields

    iim = b"\x1c\x02\x78\x00\x09from iptc"
    packet = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
              '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description><rdf:Alt>'
              '<rdf:li xml:lang="x-default">from xmp</rdf:li></rdf:Alt></dc:description></rdf:Description>'
              '</rdf:RDF></x:xmpmeta>').encode()
    digested = {None: None, "same": iim, "older": b"\x1c\x02\x78\x00\x03old"}[digest_of]
    data = _after_soi(_jpeg(xmp=packet), _photoshop_iptc(b"from iptc", digested, pad))
    c = read_containers(_write(tmp_path, "mwg.jpg", data))
    assert c.iptc["Iptc.Application2.Caption"] == ["from iptc"] and c.flags.get("iptc_edited_since_xmp") is edited
    assert camera_fields(c)["description"] == caption
    exif = Image.Exif()
    exif[0x010E] = "from exif"  # ImageDescription: EXIF comes first whatever the digest says
    c = read_containers(_write(tmp_path, "mwg-exif.jpg", _after_soi(_jpeg(exif, xmp=packet),
                                                                     _photoshop_iptc(b"from iptc", digested, pad))))
    assert camera_fields(c)["description"] == "from exif"


@pytest.mark.parametrize(("cut", "edited"), [(0, False), (1, False), (3, False), (4, True)])
def test_an_iptc_digest_may_leave_out_up_to_three_zero_bytes_of_padding(cut: int, edited: bool) -> None:
    from agents.metadata.iptc import iptc_edited_since_xmp

    iim = b"\x1c\x02\x78\x00\x05hello" + b"\x00" * 5
    digest = hashlib.md5(iim[: len(iim) - cut]).digest()
    assert iptc_edited_since_xmp({0x0404: iim, 0x0425: digest}) is edited
    assert iptc_edited_since_xmp({0x0404: iim}) is None  # no digest: nothing to tell


def test_utf16_and_nul_padded_xmp_packets(tmp_path: Path) -> None:
    utf16 = XMP_PACKET.encode("utf-16")  # BOM + UTF-16, as exiftool's XMP.jpg
    padded = XMP_PACKET.encode() + b"\x00" * 100
    for name, packet in (("utf16.jpg", utf16), ("padded.jpg", padded)):
        c = read_containers(_write(tmp_path, name, _jpeg(xmp=packet)))
        assert c.xmp["Xmp.xmp.CreatorTool"] == "Draw Things", name
        assert parse_packet(packet)["Xmp.xmp.CreatorTool"] == "Draw Things", name


def test_fallback_xmp_parser_reads_what_exiv2_rejects() -> None:
    duplicated = XMP_PACKET.replace('xmp:CreatorTool="Draw Things">', 'xmp:CreatorTool="Draw Things">'
                                    "<xmp:Rating>1</xmp:Rating><xmp:Rating>2</xmp:Rating>")
    values = parse_packet(duplicated.encode())
    assert values is not None and values["Xmp.xmp.Rating"] == "1"
    assert parse_packet(b"<?xpacket begin='' ?>@@@@@@@@") is None
    assert parse_packet(b'<!DOCTYPE x [<!ENTITY a "b">]><rdf:RDF/>') is None


def test_an_xmp_packet_nested_hundreds_deep_keeps_everything_else_in_the_file(tmp_path: Path) -> None:
    # the fallback parser ran out of Python's stack: its error stopped the reading of EXIF's UserComment, where
    # A1111 keeps its parameters, and the file was indexed with no generation at all
    body = '<dc:a rdf:parseType="Resource">' * 600 + "x" + "</dc:a>" * 600
    packet = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
              '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" dc:title="t">' + body +
              "</rdf:Description></rdf:RDF></x:xmpmeta>").encode()
    values = parse_packet(packet)
    assert values is not None and values["Xmp.dc.title"] == "t"
    exif = _camera_exif()
    text = "photo of a duck\nSteps: 15, Sampler: UniPC, Seed: 7"
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf-16-be")
    c = read_containers(_write(tmp_path, "deep.jpg", _jpeg(exif, xmp=packet)))
    assert c.user_comment == text and c.gps is not None and c.xmp.get("Xmp.dc.title") == "t"


@pytest.mark.timeout(60)  # every unclosed start was scanned to the end of the packet: this file took ~20 s
def test_a_packet_of_unclosed_xmp_starts_is_refused_in_linear_time(tmp_path: Path) -> None:
    junk = ("<x:xmpmeta " * 8000 + "<rdf:RDF " * 8000).encode()
    png = make_png(tmp_path / "plain.png").read_bytes()
    start = time.perf_counter()
    c = read_containers(_write(tmp_path, "junk.png", _before_iend(png, _chunk(
        b"iTXt", b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + zlib.compress(junk)))))
    assert time.perf_counter() - start < 2
    assert c.xmp == {} and "xmp: 1 packet(s) present but not readable XML" in c.warnings


def test_searchable_caption_is_the_default_language_wherever_it_stands(tmp_path: Path) -> None:
    from agents.index import camera_fields

    # exiv2 refuses the packet (a duplicated property): the fallback parser keeps the document's order
    packet = XMP_PACKET.replace('xmp:CreatorTool="Draw Things">', 'xmp:CreatorTool="Draw Things">'
                                "<xmp:Rating>1</xmp:Rating><xmp:Rating>2</xmp:Rating>").replace(
        '<rdf:li xml:lang="x-default">a cat\nSteps: 20</rdf:li>',
        '<rdf:li xml:lang="de">eine Katze</rdf:li><rdf:li xml:lang="x-default">a cat</rdf:li>')
    c = read_containers(_write(tmp_path, "alt.jpg", _jpeg(xmp=packet.encode())))
    assert c.xmp["Xmp.dc.description"] == {"de": "eine Katze", "x-default": "a cat"}
    assert camera_fields(c)["description"] == "a cat"  # was the first language's, "eine Katze"


def test_gps_missing_or_invalid_is_none(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "Maker"
    exif.get_ifd(0x8825)[0] = b"\x02\x02\x00\x00"  # a GPS IFD with only the version
    assert read_containers(_write(tmp_path, "v.jpg", _jpeg(exif))).gps is None
    exif.get_ifd(0x8825)[2] = (91.0, 0.0, 0.0)  # latitude out of range
    exif.get_ifd(0x8825)[4] = (10.0, 0.0, 0.0)
    assert read_containers(_write(tmp_path, "r.jpg", _jpeg(exif))).gps is None


def test_broken_jpeg_structures_warn_and_never_raise(tmp_path: Path) -> None:
    jpeg = _jpeg(_camera_exif())
    first_end = 4 + int.from_bytes(jpeg[4:6], "big")
    for name, data in {
        "cut-in-app1.jpg": jpeg[:40],
        "junk.jpg": jpeg[:first_end] + b"\x00\x13junk" + jpeg[first_end:],
        "bad-length.jpg": jpeg[:2] + b"\xff\xe1\x00\x01" + jpeg[2:],
        "garbage-exif.jpg": _after_soi(_jpeg(), _segment(0xE1, b"Exif\x00\x00" + b"\xff" * 40)),
    }.items():
        c = read_containers(_write(tmp_path, name, data))
        assert c.format == "JPEG", name
        assert c.warnings or name == "garbage-exif.jpg", name


@pytest.mark.timeout(60)
def test_jpeg_walk_gives_up_on_endless_stray_markers(tmp_path: Path) -> None:
    jpeg = _jpeg(comment="before")
    first_end = 4 + int.from_bytes(jpeg[4:6], "big")
    a_few = jpeg[:first_end] + b"junk\xff\x00\xff\xd0" * 10 + _segment(0xFE, b"kept") + jpeg[first_end:]
    assert read_containers(_write(tmp_path, "few.jpg", a_few)).comments == ["kept", "before"]

    endless = jpeg[:first_end] + b"a\xff\x00" * 1_000_000 + _segment(0xFE, b"never seen") + jpeg[first_end:]
    start = time.perf_counter()
    c = read_containers(_write(tmp_path, "endless.jpg", endless))
    assert time.perf_counter() - start < 2  # ~8 s walking it byte by byte
    assert c.comments == [] and any("stray" in w for w in c.warnings)


# -- WebP and others ---------------------------------------------------------------------------------


def test_webp_exif_xmp_icc_and_comfyui_prompt_in_ifd0(tmp_path: Path) -> None:
    prompt = json.dumps({str(i): {"inputs": {"text": "x" * 200}, "class_type": "CLIPTextEncode"} for i in range(500)})
    exif = Image.Exif()
    exif[0x0110] = "prompt:" + prompt
    exif[0x010F] = "workflow:" + json.dumps({"nodes": [], "last_node_id": 9})
    path = tmp_path / "comfy.webp"
    pattern((40, 30)).save(path, "WEBP", exif=exif, xmp=XMP_PACKET.encode(), icc_profile=b"icc")

    c = read_containers(path)

    assert (c.format, c.width, c.height) == ("WEBP", 40, 30)
    assert json.loads(c.exif["Exif.Image.Model"].removeprefix("prompt:")) == json.loads(prompt)  # never truncated
    assert c.exif["Exif.Image.Make"].startswith("workflow:{")
    assert c.xmp["Xmp.xmp.CreatorTool"] == "Draw Things"
    assert c.flags["icc"] and c.flags["exif"] and c.flags["xmp"]


class _Reads(io.BytesIO):
    """A file that remembers the largest read asked of it."""

    largest = 0

    def read(self, size: int | None = -1) -> bytes:
        self.largest = max(self.largest, size or 0)
        return super().read(size)


def test_webp_chunk_declaring_more_than_the_file_is_read_as_far_as_it_goes() -> None:
    from agents.metadata.blobs import Blobs
    from agents.metadata.model import Containers
    from agents.metadata.webp_chunks import walk_webp

    out, blobs = io.BytesIO(), Blobs()
    pattern((8, 8)).save(out, "WEBP")
    tiff = _camera_exif().tobytes()
    body = out.getvalue()[12:] + b"EXIF" + struct.pack("<I", 0xFFFFFFF0) + tiff  # cut off: ~4 GiB declared
    source = _Reads(b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body)
    c = Containers(format="WEBP")
    walk_webp(source, len(source.getvalue()), c, blobs)
    # read(4 GiB) allocates it first: a MemoryError under the pool's limit, which stopped the walk
    assert source.largest <= len(source.getvalue())
    assert blobs.exif == [tiff.removeprefix(b"Exif\x00\x00")] and any("cut off" in w for w in c.warnings)


def test_user_comment_of_a_format_read_by_exiv2_alone_is_decoded(tmp_path: Path) -> None:
    from agents.metadata.generators import detect

    # Pillow stores UserComment as Byte: exiv2 prints it as numbers ("85 78 73 ..."), and past 16 KB of those
    # it was summarised as binary; a TIFF (or HEIF, AVIF) has no walker of ours to read the raw bytes instead
    text = "a cat, " * 400 + "\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Seed: 42, Size: 16x16"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf-16-be")
    path = tmp_path / "a1111.tif"
    pattern((16, 16)).save(path, "TIFF", exif=exif.tobytes())

    c = read_containers(path)

    assert c.format == "TIFF" and c.user_comment == text and c.exif["Exif.Photo.UserComment"] == text
    gen = detect(c)
    assert gen is not None and (gen.generator, gen.seed, gen.negative) == ("a1111", 42, "dog")


def test_webp_walk_gives_up_on_endless_small_chunks(tmp_path: Path) -> None:
    from agents.metadata import webp_chunks

    out = io.BytesIO()
    pattern((8, 8)).save(out, "WEBP")
    body = out.getvalue()[12:] + b"EXIF\x00\x00\x00\x00" * 100_000 + b"XMP " + struct.pack("<I", 4) + b"late"
    c = read_containers(_write(tmp_path, "endless.webp", b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body))
    assert c.width == 8 and any(f"more than {webp_chunks.MAX_CHUNKS} chunks" in w for w in c.warnings)
    assert not any("xmp" in w for w in c.warnings)  # the XMP packet past the cap was not read


def test_heif_stub_and_other_formats_do_not_crash(tmp_path: Path) -> None:
    heif = _write(tmp_path, "x.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(100))
    assert read_containers(heif).format == "HEIF"
    gif = tmp_path / "a.gif"
    pattern((20, 10)).save(gif, "GIF", comment=b"hello")
    c = read_containers(gif)
    assert (c.format, c.width, c.height) == ("GIF", 20, 10)


def test_file_problems_raise_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceMissing):
        read_containers(tmp_path / "gone.png")
    with pytest.raises(UnsupportedFormat):
        read_containers(tmp_path)
    with pytest.raises(UnsupportedFormat):
        read_containers(_write(tmp_path, "empty.png", b""))
    with pytest.raises(UnsupportedFormat):
        read_containers(write_garbage(tmp_path / "text.png", 100))
    locked = make_png(tmp_path / "locked.png")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as a user who can read anything (root)")
        with pytest.raises(SourceUnreadable):
            read_containers(locked)
    finally:
        locked.chmod(0o644)


def test_result_is_plain_json_data(tmp_path: Path) -> None:
    from dataclasses import asdict

    c = read_containers(_write(tmp_path, "a.jpg", _jpeg(_camera_exif(), comment="hi")))
    assert json.loads(json.dumps(asdict(c)))["comments"] == ["hi"]


# -- corpus (the checks: tests/agents/metadata/expectations.py) ------------------------------------


def _entries() -> list:
    manifest = CORPUS / "manifest.json"
    if not manifest.is_file():
        return [pytest.param(None, id="no-corpus")]
    return [pytest.param(entry, id=entry["file"]) for entry in json.loads(manifest.read_text())]


@pytest.mark.corpus
@pytest.mark.parametrize("entry", _entries())
def test_corpus_file(corpus: Path, entry: dict) -> None:
    path = corpus / entry["file"]
    started = time.perf_counter()
    if entry["format"] in ("empty", "unknown"):
        with pytest.raises(UnsupportedFormat):
            read_containers(path)
        return
    try:
        c = read_containers(path)
    except ALLOWED:
        if entry["kind"] == "broken":
            return
        raise
    assert time.perf_counter() - started < 2.0, "too slow"
    failures, gaps, surprises = [], [], []
    for check in container_checks(entry):
        failure = check_failure(check, c)
        if failure is not None:
            (gaps if check.xfail is not None else failures).append(failure)
        elif check.xfail is not None:
            surprises.append(check.name)
    assert not failures, "\n".join(failures)
    assert not surprises, f"now passing, drop from KNOWN_GAPS: {surprises}"
    if gaps:
        pytest.xfail("; ".join(gaps))


@pytest.mark.corpus
def test_manifest_phrases_yield_checks(corpus: Path) -> None:
    """Every non-broken entry yields a fact beyond format and size, so a phrase the parser stopped recognising
    cannot silently turn a test into a no-op."""
    entries = json.loads((corpus / "manifest.json").read_text())
    bare = [e["file"] for e in entries
            if e["kind"] != "broken" and len(container_checks(e)) <= 2 and "Bare 8x8 JPEG" not in e["expect"]]
    assert bare == []


def test_metadata_that_cannot_be_written_is_a_transient_error(tmp_path: Path) -> None:
    from agents.index import index_file
    from streams.errors import TransientError

    png = make_png(tmp_path / "a.png", size=(8, 8))
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata").write_text("a file where the directory should be")  # like a full or read-only disk
    with pytest.raises(TransientError, match="cannot write metadata"):
        index_file(str(png), "ab" * 32, str(data))

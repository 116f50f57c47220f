"""sniff / sniff_file: image formats are told by their first bytes, never by the file name."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image, features

from agents import sniff as sniff_module
from agents.sniff import HEAD_BYTES, sniff, sniff_file
from streams.errors import SourceMissing, UnsupportedFormat
from tests.images import make_jpeg, make_png, write_garbage


def _encoded(fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("pillow_format", "expected"),
    [
        ("JPEG", "JPEG"), ("PNG", "PNG"), ("GIF", "GIF"), ("WEBP", "WEBP"), ("TIFF", "TIFF"), ("BMP", "BMP"),
        ("ICO", "ICO"), ("QOI", "QOI"),
        pytest.param("AVIF", "AVIF", marks=pytest.mark.skipif(not features.check("avif"), reason="no AVIF codec")),
        pytest.param(
            "JPEG2000", "JPEG2000",
            marks=pytest.mark.skipif(not features.check("jpg_2000"), reason="no OpenJPEG"),
        ),
    ],
)
def test_files_pillow_writes_are_recognised(pillow_format: str, expected: str) -> None:
    assert sniff(_encoded(pillow_format)[:HEAD_BYTES]) == expected


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "HEIF"),
        # AVIF lists the generic HEIF brands too: the AVIF brand wins wherever it stands
        (b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1miafavif", "AVIF"),
        (b"\x00\x00\x00\x1cftypavis\x00\x00\x00\x00avismsf1miaf", "AVIF"),
        (b"\x00\x00\x00\x14ftypjxl \x00\x00\x00\x00jxl ", "JXL"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n\x00\x00\x00\x14ftypjxl ", "JXL"),
        (b"\xff\x0a\xfa\x7f", "JXL"),
        (b"8BPS\x00\x01\x00\x00\x00\x00\x00\x00\x00\x03", "PSD"),
        (b"MM\x00*\x00\x00\x00\x08", "TIFF"),
        (b"GIF89a\x01\x00\x01\x00", "GIF"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8L", "WEBP"),
    ],
)
def test_container_and_rare_signatures(head: bytes, expected: str) -> None:
    assert sniff(head) == expected


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"\xff\xd8",  # too short to be a JPEG
        b"\x89PNG\r\r\n\x1a\n",  # line endings mangled by a text-mode transfer
        b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2mp41",  # an MP4 video
        b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ",  # a QuickTime movie
        b"RIFF\x10\x00\x00\x00WAVEfmt ",  # a WAV file: RIFF but not WebP
        b"BMW and Mercedes are German carmakers, founded long ago.",  # text starting with "BM"
        b"\x00\x00\x01\x00\x00\x00",  # ICO-like prefix announcing zero images
        b"%!PS-Adobe-3.0 EPSF-3.0\n",
        b"test-pictures/Lincoln-and-Parrot-512.png",
    ],
)
def test_non_images_and_near_misses_are_none(head: bytes) -> None:
    assert sniff(head) is None


def test_content_decides_not_the_extension(tmp_path: Path) -> None:
    assert sniff_file(make_png(tmp_path / "photo.jpg")) == "PNG"
    assert sniff_file(make_jpeg(tmp_path / "image.png")) == "JPEG"
    assert sniff_file(write_garbage(tmp_path / "x.png", 500)) is None


def test_empty_file_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "empty.png").touch()
    assert sniff_file(tmp_path / "empty.png") is None


def test_sniff_file_reads_only_the_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_png(tmp_path / "a.png", size=(300, 300))
    requested: list[int] = []

    class CountingFile(io.FileIO):
        def read(self, size: int = -1) -> bytes:
            requested.append(size)
            return super().read(size)

    def counting_open(file: Path, mode: str = "r", buffering: int = -1) -> io.FileIO:
        assert mode == "rb"
        return CountingFile(file, "r")

    monkeypatch.setattr(sniff_module, "open", counting_open, raising=False)
    assert sniff_file(path) == "PNG"
    assert requested == [HEAD_BYTES]


def test_sniff_file_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(SourceMissing):
        sniff_file(tmp_path / "gone.png")
    with pytest.raises(UnsupportedFormat):
        sniff_file(tmp_path)


# Pillow's names for formats we report by signature: a multi-picture JPEG starts like any JPEG.
_BY_SIGNATURE = {"MPO": "JPEG", "unknown": None, "empty": None}


def test_corpus_formats_by_signature(corpus: Path) -> None:
    entries = json.loads((corpus / "manifest.json").read_text())
    wrong = {}
    for entry in entries:
        expected = _BY_SIGNATURE.get(entry["format"], entry["format"])
        found = sniff_file(corpus / entry["file"])
        if found != expected:
            wrong[entry["file"]] = (found, expected)
    assert not wrong
    assert len(entries) > 100

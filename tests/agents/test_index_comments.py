"""Comments and PNG's own text keywords become searchable authoring text, a generator's records do not."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.index import camera_fields, comment_text, summarise
from agents.metadata.containers import read_containers
from agents.metadata.generators import detect
from agents.metadata.model import Containers, Generation
from consumers.catalog import metadata_row
from schemas import AssetIndexed
from tests.images import make_jpeg, make_png

A1111 = "a red fox in snow\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, Seed: 1, Model: foxXL"


def _summary(path: Path) -> dict:
    c = read_containers(str(path))
    return summarise(c, detect(c))


def test_png_comment_and_text_keywords_are_read_whatever_their_case(tmp_path: Path) -> None:
    path = make_png(tmp_path / "a.png", text={"comment": "made at the pier", "Title": "Pier at noon",
                                               "Author": "Ana Lima", "Description": "gulls over the water",
                                               "Software": "GIMP 2.10"})
    camera = _summary(path)["camera"]
    assert camera == {"comment": "made at the pier", "title": "Pier at noon", "artist": "Ana Lima",
                      "description": "gulls over the water", "software": "GIMP 2.10"}


def test_every_jpeg_comment_segment_and_the_user_comment_are_kept_once_each() -> None:
    c = Containers(comments=["first note", "second note", "first note"], user_comment="third note",
                   exif={"Exif.Image.XPComment": "fourth note"})
    assert comment_text(c) == "first note\nsecond note\nthird note\nfourth note"
    assert comment_text(Containers(comments=["  ", "\x00\x00"])) is None


def test_a_jpeg_com_segment_is_searchable(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "a.jpg", comment="harbour lights at dusk")
    assert _summary(path)["camera"]["comment"] == "harbour lights at dusk"


@pytest.mark.parametrize("record", [
    '{"steps": 28, "sampler": "k_euler"}',  # NovelAI's Comment
    'invokeai_graph: {"nodes": {}}',  # InvokeAI's JPEG COM
    "prompt:{\"3\": {}}",  # ComfyUI savers
    A1111,  # A1111's parameters in a comment or UserComment
], ids=["json", "invokeai", "comfyui", "a1111"])
def test_a_generators_record_is_not_comment_text(record: str) -> None:
    assert comment_text(Containers(comments=[record], user_comment=record)) is None


def test_text_holding_the_prompt_is_left_to_the_prompt(tmp_path: Path) -> None:
    # NovelAI's PNG: Description is the prompt, Comment its parameters as JSON; Title and Software are its own
    path = make_png(tmp_path / "nai.png", text={
        "Title": "AI generated image", "Description": "a cat in space, icon", "Software": "NovelAI",
        "Source": "Stable Diffusion 1D44365E",
        "Comment": '{"steps": 28, "sampler": "k_euler", "seed": 7, "scale": 5, "uc": "lowres"}'})
    summary = _summary(path)
    assert summary["generator"] == "novelai" and summary["positive"] == "a cat in space, icon"
    assert summary["camera"] == {"title": "AI generated image", "software": "NovelAI"}
    g = Generation(generator="a1111", source="png:parameters", parser="a1111/3", positive="a red fox")
    c = Containers(comments=["a red fox, by the river", "my favourite"])
    assert comment_text(c, g) == "my favourite"
    assert camera_fields(Containers(), g) == {}


def test_the_catalog_searches_comments_with_the_photo_text(tmp_path: Path) -> None:
    path = make_png(tmp_path / "a.png", text={"parameters": A1111, "Comment": "from the winter series"})
    event = AssetIndexed(event_id="e", batch_id="b", lane="batch", source="scan", asset_id="ab" * 32,
                         path=str(path), parser_version=3, metadata_path="m.json", indexed_at=1.0,
                         **_summary(path))
    assert event.camera == {"comment": "from the winter series"} and event.positive == "a red fox in snow"
    assert "from the winter series" in metadata_row(event)  # photo_text, indexed for search

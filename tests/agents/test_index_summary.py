"""What tier 2's summary makes searchable: comments and PNG's own text keywords as authoring text (a generator's
records not), every model a generation names."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.index import all_models, camera_fields, comment_text, summarise
from agents.metadata.containers import read_containers
from agents.metadata.generators import a1111, comfyui, detect
from agents.metadata.model import Containers, Generation
from consumers.catalog import metadata_row
from schemas import AssetIndexed
from tests.agents.metadata.test_generators import base_refiner_graph
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
    g = Generation(generator="a1111", source="png:parameters", parser="a1111/3",
                   positive="a red fox in fresh snow, golden hour", negative="text, watermark")
    c = Containers(comments=["a red fox in fresh snow, golden hour, by the river", "my favourite"])
    assert comment_text(c, g) == "my favourite"
    assert camera_fields(Containers(), g) == {}


def test_short_prompts_and_words_that_look_like_records_leave_a_persons_text_alone() -> None:
    # a prompt of a few characters is found in any text: only the whole text being it makes it a copy
    g = Generation(generator="a1111", source="png:parameters", parser="a1111/3", positive="a", negative="cat")
    c = Containers(exif={"Exif.Image.Make": "Canon", "Exif.Image.Artist": "Ana Lima",
                         "Exif.Image.ImageDescription": "A black cat at night"},
                   comments=["Note: [draft] needs crop", "[draft] needs crop", "cat", "Steps: climb the hill"])
    camera = camera_fields(c, g)
    assert (camera["make"], camera["artist"], camera["description"]) == ("Canon", "Ana Lima", "A black cat at night")
    assert camera["comment"] == "Note: [draft] needs crop\n[draft] needs crop\nSteps: climb the hill"


def test_the_catalog_searches_comments_with_the_photo_text(tmp_path: Path) -> None:
    path = make_png(tmp_path / "a.png", text={"parameters": A1111, "Comment": "from the winter series"})
    event = AssetIndexed(event_id="e", batch_id="b", lane="batch", source="scan", asset_id="ab" * 32,
                         path=str(path), parser_version=3, metadata_path="m.json", indexed_at=1.0,
                         **_summary(path))
    assert event.camera == {"comment": "from the winter series"} and event.positive == "a red fox in snow"
    assert "from the winter series" in metadata_row(event)  # photo_text, indexed for search


def test_every_model_a_generation_names_is_summarised_the_main_one_first() -> None:
    gen = comfyui.generation_from_graph(base_refiner_graph(), None, "png:prompt")
    assert all_models(gen) == ["base.safetensors", "refiner.safetensors"]
    text = ("a fox\nSteps: 20, Sampler: Euler, Seed: 1, Model: foxXL, Denoising strength: 0.4, Hires upscale: 2, "
            "Hires checkpoint: foxXL_hires, Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8")
    gen = a1111.generation_from_text(text, "png:parameters")
    assert gen is not None and gen.model == "foxXL"
    assert all_models(gen) == ["foxXL", "foxXL_hires", "sd_xl_refiner_1.0 [7440042bbd]"]
    summary = summarise(Containers(), gen)
    assert summary["model"] == "foxXL" and summary["models"] == all_models(gen)
    assert all_models(Generation(generator="x", source="y", parser="x/3")) == []


def test_exiftools_mwg_test_image_reads_the_right_values(corpus: Path) -> None:
    # exiftool's Metadata Working Group test image: the values its guidance picks say RIGHT, the others WRONG
    camera = _summary(corpus / "camera" / "exiftool_MWG.jpg")["camera"]
    assert {k: camera[k] for k in ("description", "artist", "keywords", "copyright")} == {
        "description": "RIGHT-EXIF-Description", "artist": "RIGHT1of2-EXIF-Creator; RIGHT2of2-EXIF-Creator",
        "keywords": "RIGHT1of2-XMP-Keywords, RIGHT2of2-XMP-Keywords", "copyright": "RIGHT-XMP-Copyright"}

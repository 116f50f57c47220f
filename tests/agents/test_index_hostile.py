"""Metadata that is hostile or broken still gives an event that can be read back, for a file that is readable."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from agents.hashing import hash_file
from agents.index import CAMERA_FIELDS, index_file, summarise
from agents.metadata.model import Containers, Generation, LoRA
from agents.metadata.generators.coerce import to_float
from schemas import AssetIndexed, decode, encode
from streams.errors import SourceChanged

ASSET = "ab" * 32


def _gps_exif(latitude: bytes) -> bytes:
    """A little-endian TIFF block whose GPS latitude is ASCII text (as some writers store it) rather than rationals."""
    entries = [(1, 2, 2, b"N\x00\x00\x00"), (2, 2, 4, latitude.ljust(4, b"\x00")), (3, 2, 2, b"E\x00\x00\x00"),
               (4, 2, 2, b"1\x00\x00\x00")]
    gps_offset = 8 + 2 + 12 + 4
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHII", 0x8825, 4, 1, gps_offset) + struct.pack("<I", 0)
    gps = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, k, n) + v for t, k, n, v in entries)
    return b"II*\x00" + struct.pack("<I", 8) + ifd0 + gps + struct.pack("<I", 0)


def _event(path: Path, data_dir: Path) -> AssetIndexed:
    result = index_file(str(path), ASSET, str(data_dir))
    event = AssetIndexed(event_id="e", batch_id="b", lane="batch", source="scan", asset_id=ASSET, path=str(path),
                         parser_version=1, metadata_path=result.metadata_path, indexed_at=1.0, **result.summary)
    return decode(encode(event), AssetIndexed)  # what the catalog and tier 3 will read


def test_numbers_written_as_nan_or_inf_are_no_numbers(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler, CFG scale: nan, Seed: 1, Denoising strength: inf")
    path = tmp_path / "nan.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info, exif=_gps_exif(b"nan"))
    event = _event(path, tmp_path)  # before: the event went out with null in a float field, and nobody read it
    assert event.gps is None and event.cfg is None and event.positive == "a cat" and event.steps == 20
    assert [to_float(v) for v in ("nan", "-inf", float("inf"), 10**400, "1.5")] == [None, None, None, None, 1.5]


def test_a_generator_record_nested_too_deep_is_left_out_and_the_rest_kept(tmp_path: Path) -> None:
    deep: object = "x"
    for _ in range(700):  # deeper than Python recurses while it copies and writes the record
        deep = [deep]
    graph = {
        "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0], "junk": deep}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "a dog", "clip": ["4", 1]}},
    }
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(graph))
    path = tmp_path / "deep.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    event = _event(path, tmp_path)  # before: RecursionError, a permanent dead letter for a readable file
    assert (event.generator, event.positive, event.seed) == ("comfyui", "a cat", 5)
    assert any("nested too deep" in w for w in event.warnings)
    document = json.loads((tmp_path / event.metadata_path).read_bytes())
    assert document["generation"]["positive"] == "a cat" and document["generation"]["documents"] == {}


def test_megabytes_of_metadata_give_an_event_that_fits_one_request(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    prompt = "a cat, " * 300_000  # 2.1 MB of prompt
    info.add_text("parameters", f"{prompt}\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Model: {'m' * 100_000}")
    path = tmp_path / "big.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    data = path.read_bytes()
    ihdr_end = 8 + 8 + 13 + 4
    # zTXt chunks with no keyword separator: the whole megabyte reads as the keyword of each warning
    body = zlib.compress(b"k" * 1_000_000)
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    path.write_bytes(data[:ihdr_end] + chunk * 5 + data[ihdr_end:])
    result = index_file(str(path), ASSET, str(tmp_path))
    event = AssetIndexed(event_id="e", batch_id="b", lane="batch", source="scan", asset_id=ASSET, path=str(path),
                         parser_version=1, metadata_path=result.metadata_path, indexed_at=1.0, **result.summary)
    size = len(encode(event))
    assert size < 300_000, size  # before: over 2 MB, refused by the producer (its requests take 1 MB)
    assert event.positive is not None and event.positive.startswith("a cat, a cat")
    whole = json.loads((tmp_path / event.metadata_path).read_bytes())
    assert len(whole["generation"]["positive"]) >= 2_000_000  # all of it kept there


def test_the_event_fits_one_request_even_at_every_bound_in_its_costliest_characters() -> None:
    worst = "\x01" * 100_000  # 6 bytes each in JSON (\u0001)
    c = Containers(format=worst, warnings=[worst] * 50, gps=(1.0, 2.0))
    other = "\x02" * 100_000  # as costly, and not the prompt (which is left out of the camera's fields)
    c.exif = {key: other for places in CAMERA_FIELDS.values() for source, key in places if source == "exif"}
    c.xmp = {key: other for places in CAMERA_FIELDS.values() for source, key in places if source == "xmp"}
    c.text, c.comments, c.user_comment = {"Comment": other}, [other + str(i) for i in range(50)], other + "!"
    g = Generation(generator=worst, source="png:parameters", parser="a1111/1", model=worst, vae=worst,
                   sampler=worst, scheduler=worst, positive=worst, negative="\U0001f600" * 100_000,
                   loras=[LoRA(name=worst)] * 500)
    event = AssetIndexed(event_id="e", batch_id="b", lane="batch", source="scan", asset_id=ASSET, path="/p",
                         parser_version=1, metadata_path="m.json", indexed_at=1.0, **summarise(c, g))
    assert len(encode(event)) < 700_000  # the producer's requests take 1 MB, envelope and headers included


def test_a_file_changed_since_it_was_hashed_is_not_indexed_as_the_old_asset(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler, Seed: 1")
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    asset_id, _ = hash_file(path)
    seen = (path.stat().st_size, path.stat().st_mtime_ns)
    os.utime(path, ns=(seen[1] + 10**9, seen[1] + 10**9))  # touched, same bytes: still this asset
    assert index_file(str(path), asset_id, str(tmp_path), seen).summary["positive"] == "a cat"

    info = PngImagePlugin.PngInfo()  # saved again over it (a ComfyUI temp preview, an edit) before tier 2 ran
    info.add_text("parameters", "a dog\nSteps: 20, Sampler: Euler, Seed: 2")
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with pytest.raises(SourceChanged):  # it indexed the dog as the cat's asset
        index_file(str(path), asset_id, str(tmp_path), seen)


def test_a_comment_of_brackets_nested_too_deep_is_a_record_not_a_failure(tmp_path: Path) -> None:
    # json.loads raised RecursionError out of the comment check: "unexpected", a permanent dead letter for a
    # readable file whose A1111 parameters were never indexed
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1")
    info.add_text("Comment", "[" * 5000 + "]" * 5000)
    path = tmp_path / "brackets.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    event = _event(path, tmp_path)
    assert (event.generator, event.positive) == ("a1111", "a cat")
    assert "[[[" not in (event.camera.get("comment") or "")  # JSON-like junk stays out of search


def test_comments_are_read_only_as_far_as_they_are_kept(monkeypatch) -> None:
    # 100k JPEG COM segments: each was checked against every one kept before (a list), and all of them were
    # checked though only the first CAMERA_CHARS characters are kept: minutes, then a timeout and a dead letter
    import agents.index as index

    looked: list[str] = []
    real = index._generators_own
    monkeypatch.setattr(index, "_generators_own", lambda text, g: looked.append(text) or real(text, g))
    comments = [f"note {i:06d}" for i in range(100_000)]
    text = index.comment_text(Containers(format="JPEG", comments=comments))
    assert text is not None and text.startswith("note 000000\nnote 000001") and len(text) <= index.CAMERA_CHARS
    assert len(looked) <= index.CAMERA_CHARS // len("note 000000\n") + 1


def _combined(encoders: int, samplers: int) -> dict:
    """A ComfyUI graph: ``encoders`` text encoders joined by one ConditioningCombine, fed to ``samplers``."""
    graph: dict = {"ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}}}
    for i in range(encoders):
        graph[f"e{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": f"w{i}", "clip": ["ck", 1]}}
    graph["comb"] = {"class_type": "ConditioningCombine",
                     "inputs": {f"conditioning_{i}": [f"e{i}", 0] for i in range(encoders)}}
    for s in range(samplers):
        graph[f"s{s}"] = {"class_type": "KSampler", "inputs": {
            "seed": s, "steps": 20, "cfg": 7, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
            "model": ["ck", 0], "positive": ["comb", 0], "negative": ["comb", 0]}}
    return graph


def test_a_graph_walked_past_its_step_budget_keeps_what_it_found(monkeypatch) -> None:
    # a graph of thousands of encoders combined, walked for each of 64 samplers, took over a minute (a 79 KB PNG
    # timed out three times, then was dead-lettered): the links one parse follows are bounded
    from agents.metadata.generators import comfy_graph, detect

    graph = _combined(100, 4)
    graph["vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": "sdxl_vae.safetensors"}}
    graph["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["s0", 0], "vae": ["vae", 0]}}
    whole = detect(Containers(format="PNG", text={"prompt": json.dumps(graph)}))
    assert whole is not None and len((whole.positive or "").split()) == 100 and "graph_cut" not in whole.extra
    monkeypatch.setattr(comfy_graph, "MAX_STEPS", 150)  # the whole parse follows about 1,500
    cut = detect(Containers(format="PNG", text={"prompt": json.dumps(graph)}))
    assert cut is not None and (cut.generator, cut.model) == ("comfyui", "m.safetensors")
    words = (cut.positive or "").split()
    assert 0 < len(words) < 100 and words[0] == "w0"  # the start of the prompt, as far as the budget went
    assert cut.extra["graph_cut"] is True  # and it says so
    # walks that visit each node once are not counted: the decoder's VAE is found however far the others went
    assert cut.vae == whole.vae == "sdxl_vae.safetensors"


def test_encoders_that_share_a_text_node_each_read_it() -> None:
    # each encoder walks its text afresh (a copy of the conditioning walk's visited set made big graphs quadratic)
    from agents.metadata.generators import detect

    graph = _combined(2, 1)
    graph["words"] = {"class_type": "PrimitiveString", "inputs": {"value": "a lighthouse"}}
    graph["e0"]["inputs"]["text"] = graph["e1"]["inputs"]["text"] = ["words", 0]
    graph["e1"]["class_type"] = "CLIPTextEncodeSDXL"  # another kind of node, the same text
    generation = detect(Containers(format="PNG", text={"prompt": json.dumps(graph)}))
    assert generation is not None and "a lighthouse" in (generation.positive or "")

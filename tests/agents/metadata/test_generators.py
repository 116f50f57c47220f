"""Generator layer: unit tests on synthetic inputs, then every AI entry of the corpus manifest checked fact by fact.

The corpus part reads files through the real :func:`agents.metadata.containers.read_containers` when it exists;
:func:`pillow_containers` (below) is a stand-in built on Pillow for checkouts without it, covering exactly what the
generator parsers read (text chunks, a few IFD0 tags, UserComment, XMP, COM segments, stealth alpha bits).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from agents.metadata.generators import a1111, comfyui, detect, invokeai
from agents.metadata.model import PARSER_VERSION, Containers, Generation
from tests.conftest import CORPUS

pytest.register_assert_rewrite("tests.agents.metadata.expectations")
from tests.agents.metadata.expectations import (
    ADDITIONAL,
    AI_KINDS,
    EXPLICIT,
    OVERRIDES,
    fact_failure,
    facts_for,
)

try:  # the other half of the issue; the corpus tests prefer it whenever it is there
    from agents.metadata.containers import read_containers as _read_containers
except ImportError:  # pragma: no cover - depends on the checkout
    _read_containers = None


# ---------------------------------------------------------------------------------------------------------------
# Containers for corpus files
# ---------------------------------------------------------------------------------------------------------------

_IFD0 = {0x010F: "Exif.Image.Make", 0x0110: "Exif.Image.Model", 0x0131: "Exif.Image.Software",
         0x013B: "Exif.Image.Artist", 0x010E: "Exif.Image.ImageDescription"}


def _user_comment(raw: Any) -> str | None:
    if isinstance(raw, str):
        return raw.rstrip("\0")
    if not isinstance(raw, bytes):
        return None
    head, body = raw[:8], raw[8:]
    if head.startswith(b"UNICODE"):
        return body.decode("utf-16-be" if body[:1] == b"\0" else "utf-16-le", "replace").rstrip("\0")
    if head.startswith(b"ASCII") or head == b"\0" * 8:
        return body.decode("utf-8", "replace").rstrip("\0")
    return raw.decode("utf-8", "replace").rstrip("\0")


def _com_segments(data: bytes) -> list[str]:
    out: list[str] = []
    i = 2 if data[:2] == b"\xff\xd8" else len(data)
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xFE:
            out.append(data[i + 4 : i + 2 + length].decode("utf-8", "replace"))
        if marker == 0xDA:
            break
        i += 2 + length
    return out


def _stealth(im: Image.Image) -> str | None:
    """A1111 stealth_pnginfo: alpha LSBs, column-major, signature + 32-bit bit count + (gzip) payload."""
    if "A" not in im.getbands():
        return None
    lsb = bytes(b & 1 for b in im.getchannel("A").transpose(Image.Transpose.TRANSPOSE).tobytes()[:200_000])

    def take(start: int, nbits: int) -> bytes:
        bits = lsb[start : start + nbits]
        return bytes(int("".join(map(str, bits[k : k + 8])), 2) for k in range(0, len(bits) - 7, 8))

    sig = take(0, 120)
    if sig not in (b"stealth_pnginfo", b"stealth_pngcomp"):
        return None
    nbits = int.from_bytes(take(120, 32), "big")
    payload = take(152, nbits)
    return (gzip.decompress(payload) if sig.endswith(b"comp") else payload).decode("utf-8", "replace")


def pillow_containers(path: Path) -> Containers:
    """Stand-in for read_containers, built on Pillow (and pyexiv2 for XMP)."""
    data = path.read_bytes()
    c = Containers()
    im = Image.open(io.BytesIO(data))
    with contextlib.suppress(OSError, SyntaxError, ValueError):
        im.load()  # text chunks after IDAT only appear after load(); truncated files still have their chunks
    c.format, (c.width, c.height) = im.format, im.size
    c.text = {k: v for k, v in im.info.items() if isinstance(v, str) and k != "XML:com.adobe.xmp"}
    exif = im.getexif()
    c.exif = {key: str(exif[tag]).split("\0")[0] for tag, key in _IFD0.items() if isinstance(exif.get(tag), str)}
    try:
        raw_uc = exif.get_ifd(0x8769).get(0x9286)
    except Exception:  # noqa: BLE001
        raw_uc = None
    c.user_comment = _user_comment(raw_uc if raw_uc is not None else exif.get(0x9286))
    with contextlib.suppress(ImportError, RuntimeError, OSError, ValueError):
        import pyexiv2

        with pyexiv2.Image(str(path)) as meta:
            c.xmp = meta.read_xmp()
    c.comments = _com_segments(data)
    if im.format == "PNG":
        stealth = _stealth(im)
        if stealth is not None:
            c.text["stealth:parameters"] = stealth
    return c


@cache
def generation_for(rel: str) -> Generation | None:
    path = CORPUS / rel
    c = _read_containers(path) if _read_containers is not None else pillow_containers(path)
    return detect(c)


# ---------------------------------------------------------------------------------------------------------------
# A1111 text
# ---------------------------------------------------------------------------------------------------------------

A1111_TEXT = (
    "masterpiece, <lora:detail:0.6>, 1girl\n"
    "second line\n"
    "Negative prompt: lowres,\n"
    "bad hands\n"
    'Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 0, Size: 832x1216, '
    'Model hash: abc123, Model: my model v2, VAE: vae.safetensors, Clip skip: 2, '
    'Lora hashes: "detail: 1111, extra: 2222", RP Ratios: "1,1", Civitai resources: [{"a": "x, y"}], '
    "ControlNet 0: \"Module: canny, Model: cn, Weight: 1\", Version: v1.10.1\n"
    "Template: a, b, c"
)


def test_a1111_quoted_values_bracketed_json_and_trailing_lines() -> None:
    gen = a1111.generation_from_text(A1111_TEXT, "png:parameters")
    assert gen is not None
    assert gen.positive == "masterpiece, <lora:detail:0.6>, 1girl\nsecond line"
    assert gen.negative == "lowres,\nbad hands"
    assert (gen.steps, gen.sampler, gen.scheduler, gen.cfg, gen.seed) == (28, "DPM++ 2M", "Karras", 6.5, 0)
    assert (gen.width, gen.height, gen.extra["size_param"]) == (832, 1216, "832x1216")
    assert (gen.model, gen.model_hash, gen.vae) == ("my model v2", "abc123", "vae.safetensors")
    assert gen.extra["Lora hashes"] == "detail: 1111, extra: 2222"
    assert gen.extra["RP Ratios"] == "1,1"
    assert gen.extra["Civitai resources"] == [{"a": "x, y"}]
    assert gen.extra["ControlNet 0"] == "Module: canny, Model: cn, Weight: 1"
    assert gen.extra["Clip skip"] == "2" and gen.extra["Version"] == "v1.10.1"
    assert gen.extra["trailing_lines"] == ["Template: a, b, c"]
    assert [(x.name, x.weight) for x in gen.loras] == [("detail", 0.6), ("extra", None)]
    assert gen.parser == f"a1111/{PARSER_VERSION}" and gen.generator == "a1111"


def test_a1111_split_settings_edge_cases() -> None:
    pairs = a1111.split_settings('A: 1, B: "x, \\"y\\"", C: [1, [2, 3]], D: {"k": "v,w"}, junk, E: 5')
    assert pairs == [("A", "1"), ("B", 'x, "y"'), ("C", "[1, [2, 3]]"), ("D", '{"k": "v,w"}, junk'), ("E", "5")]


def test_a1111_family_names() -> None:
    base = "p\nSteps: 20, Sampler: Euler, Seed: 1, Size: 512x512"
    assert a1111.generation_from_text(base + ", Version: f2.0.1v1.10.1", "x").generator == "forge"
    assert a1111.generation_from_text(base + ", App: SD.Next, Version: 0d7c025", "x").generator == "sdnext"
    assert a1111.generation_from_text(base + ", Version: Fooocus v2.5.0", "x").generator == "fooocus"
    assert a1111.generation_from_text(base + ', Civitai resources: [{"a": 1}]', "x").generator == "civitai"
    assert a1111.generation_from_text(base + ", Version: v1.9.0", "x").generator == "a1111"


def test_a1111_hires_makes_two_passes_and_keeps_denoise_off_top_level() -> None:
    text = ("p\nSteps: 20, Sampler: Euler a, Seed: 7, Size: 512x768, Denoising strength: 0.4, "
            "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent")
    gen = a1111.generation_from_text(text, "x")
    assert gen is not None and gen.denoise is None and gen.extra["Denoising strength"] == "0.4"
    assert [(p.node_type, p.steps, p.denoise) for p in gen.passes] == [("txt2img", 20, None), ("hires", 10, 0.4)]
    img2img = a1111.generation_from_text("p\nSteps: 20, Seed: 7, Size: 8x8, Denoising strength: 0.4", "x")
    assert img2img is not None and img2img.denoise == 0.4 and "Denoising strength" not in img2img.extra


def test_a1111_empty_negative_and_plain_text() -> None:
    gen = a1111.generation_from_text("car\nNegative prompt: \nSteps: 20, Size: 768x1024, Seed: 1", "x")
    assert gen is not None and gen.negative == "" and gen.positive == "car" and gen.sampler is None
    assert a1111.generation_from_text("Just a camera comment, nothing else", "x") is None
    assert detect(Containers(user_comment="ASCII text, by: someone")) is None


def test_a1111_sources_and_duplicate_copies() -> None:
    text = "duck\nSteps: 15, Sampler: UniPC, Seed: 5, Size: 512x400"
    gen = detect(Containers(text={"stealth:parameters": text}))
    assert gen is not None and gen.source == "stealth:alpha" and gen.seed == 5
    both = detect(Containers(text={"parameters": text, "stealth:parameters": text + ", ENSD: 1"}))
    assert both is not None and both.source == "png:parameters" and "stealth:alpha" in both.documents


@pytest.mark.parametrize("prompt", ["[a red fox:a wolf:10], snow", "{masterpiece}, a red fox", " [fox], snow"])
def test_a1111_prompt_that_begins_like_json_keeps_its_generation(prompt: str) -> None:
    text = f"{prompt}\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 1234, Size: 512x512, Model: foxXL"
    for containers in (Containers(text={"parameters": text}), Containers(user_comment=text)):
        gen = detect(containers)
        assert gen is not None and gen.generator == "a1111" and gen.positive == prompt.strip()
        assert (gen.seed, gen.model, gen.negative) == (1234, "foxXL", "blurry")
    # text that decodes as JSON is still left to the parsers of JSON
    assert a1111.parse(Containers(text={"parameters": '["Steps: 20, Seed: 1, Size: 8x8"]'})) is None


# ---------------------------------------------------------------------------------------------------------------
# ComfyUI graphs
# ---------------------------------------------------------------------------------------------------------------


def _n(cls: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": cls, "inputs": inputs}


def base_refiner_graph() -> dict[str, Any]:
    return {
        "4": _n("CheckpointLoaderSimple", ckpt_name="base.safetensors"),
        "12": _n("CheckpointLoaderSimple", ckpt_name="refiner.safetensors"),
        "5": _n("EmptyLatentImage", width=1024, height=768, batch_size=1),
        "6": _n("CLIPTextEncode", text="a cat", clip=["4", 1]),
        "7": _n("CLIPTextEncode", text="blurry", clip=["4", 1]),
        "10": _n("KSamplerAdvanced", noise_seed=42, steps=30, cfg=7.0, sampler_name="euler", scheduler="normal",
                 model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["5", 0]),
        "11": _n("KSamplerAdvanced", noise_seed=0, steps=30, cfg=7.0, sampler_name="euler", scheduler="normal",
                 model=["12", 0], positive=["6", 0], negative=["7", 0], latent_image=["10", 0]),
        "13": _n("VAELoader", vae_name="sdxl_vae.safetensors"),
        "17": _n("VAEDecode", samples=["11", 0], vae=["13", 0]),
    }


def test_comfy_two_samplers_base_is_main_refiner_is_a_pass() -> None:
    gen = comfyui.generation_from_graph(base_refiner_graph(), None, "png:prompt")
    assert [(p.node_id, p.seed, p.model) for p in gen.passes] == [
        ("10", 42, "base.safetensors"), ("11", 0, "refiner.safetensors")]
    assert (gen.seed, gen.model, gen.width, gen.height) == (42, "base.safetensors", 1024, 768)
    assert (gen.positive, gen.negative, gen.vae) == ("a cat", "blurry", "sdxl_vae.safetensors")
    assert gen.extra["main_pass"] == "10" and gen.extra["models"] == ["base.safetensors", "refiner.safetensors"]
    assert gen.parser == f"comfyui/{PARSER_VERSION}" and gen.documents["prompt"]["10"]["inputs"]["noise_seed"] == 42


def test_comfy_a_crafted_chain_of_thousands_of_samplers_is_read_up_to_a_cap() -> None:
    graph = {"0": _n("CheckpointLoaderSimple", ckpt_name="m"), "1": _n("EmptyLatentImage", width=8, height=8)}
    for i in range(3000):  # each sampler refines the one before: the walk between them grows with their square
        graph[str(i + 2)] = _n("KSampler", seed=i, steps=1, model=["0", 0], latent_image=[str(i + 1), 0])
    gen = comfyui.generation_from_graph(graph, None, "png:prompt")
    assert len(gen.passes) == comfyui.MAX_SAMPLERS and gen.seed == 0 and gen.model == "m"


def test_comfy_json_with_lone_surrogate_escapes_is_read_with_replacement_characters() -> None:
    from agents.metadata.generators.coerce import load_json

    # msgspec refuses the escape, Python's json takes it; no UTF-8 output (document, event) could hold it
    graph = load_json('{"6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat \\ud800 x"}}}')
    assert graph["6"]["inputs"]["text"].encode() and "\ufffd" in graph["6"]["inputs"]["text"]


def test_comfy_lora_chain_collects_every_lora_with_strengths() -> None:
    graph = {
        "1": _n("CheckpointLoaderSimple", ckpt_name="sd15.ckpt"),
        "2": _n("LoraLoader", lora_name="a.safetensors", strength_model=0.8, strength_clip=0.5,
                model=["1", 0], clip=["1", 1]),
        "3": _n("LoraLoaderModelOnly", lora_name="b.safetensors", strength_model=1.2, model=["2", 0]),
        "4": _n("ModelSamplingDiscrete", sampling="eps", model=["3", 0]),
        "5": _n("Power Lora Loader (rgthree)", model=["4", 0], lora_1={"on": True, "lora": "c.safetensors",
                                                                         "strength": 0.3},
                lora_2={"on": False, "lora": "off.safetensors", "strength": 1}),
        "6": _n("CLIPTextEncode", text="x", clip=["2", 1]),
        "9": _n("KSampler", seed=1, steps=20, cfg=7, sampler_name="euler", scheduler="normal", denoise=1.0,
                model=["5", 0], positive=["6", 0], negative=["6", 0], latent_image=["8", 0]),
        "8": _n("EmptyLatentImage", width=512, height=512, batch_size=1),
    }
    gen = comfyui.generation_from_graph(graph, None, "png:prompt")
    assert gen.model == "sd15.ckpt"
    assert [(x.name, x.weight, x.clip_weight) for x in gen.loras] == [
        ("c.safetensors", 0.3, 0.3), ("b.safetensors", 1.2, None), ("a.safetensors", 0.8, 0.5)]


def test_comfy_prompt_through_primitive_and_concatenation() -> None:
    graph = {
        "1": _n("CheckpointLoaderSimple", ckpt_name="m.ckpt"),
        "20": _n("PrimitiveString", value="a red fox"),
        "21": _n("StringConcatenate", string_a=["20", 0], string_b=["22", 0], delimiter=", "),
        "22": _n("Text Concatenate", text_a="in snow", text_b=["23", 0], delimiter=" "),
        "23": _n("ImpactWildcardProcessor", wildcard_text="{day|night}", populated_text="at night", seed=3),
        "6": _n("CLIPTextEncode", text=["21", 0], clip=["1", 1]),
        "7": _n("CLIPTextEncodeSDXL", text_g="ugly", text_l="bad", clip=["1", 1], width=1024, height=1024),
        "30": _n("ConditioningCombine", conditioning_1=["6", 0], conditioning_2=["31", 0]),
        "31": _n("CLIPTextEncode", text="second", clip=["1", 1]),
        "32": _n("ControlNetApplyAdvanced", positive=["30", 0], negative=["7", 0], strength=1.0),
        "9": _n("KSampler", seed=9, steps=20, cfg=7, sampler_name="euler", scheduler="normal", denoise=1.0,
                model=["1", 0], positive=["32", 0], negative=["32", 1], latent_image=["8", 0]),
        "8": _n("EmptyLatentImage", width=512, height=512, batch_size=1),
    }
    gen = comfyui.generation_from_graph(graph, None, "png:prompt")
    assert gen.positive == "a red fox, in snow at night\nsecond"
    assert gen.negative == "ugly\nbad"


def test_comfy_linked_seed_steps_cfg_and_sampler_are_resolved() -> None:
    graph = {
        "1": _n("CheckpointLoaderSimple", ckpt_name="m.ckpt"),
        "40": _n("Seed Everywhere", seed=781452317169929),
        "41": _n("Reroute", input=["40", 0]),
        "42": _n("Sampler Settings (Small) // RvTools", Sampler="dpmpp_2m", Scheduler="karras", Steps=30, CFG=6.0),
        "43": _n("Sampler Settings Out (Small) // RvTools", pipe=["42", 0]),
        "44": _n("MathExpression|pysssss", expression="a*3", a=["45", 0]),
        "45": _n("PrimitiveInt", value=15),
        "9": _n("KSampler", seed=["41", 0], steps=["43", 3], cfg=["43", 4], sampler_name=["43", 1],
                scheduler=["43", 2], denoise=1.0, model=["1", 0], positive=None, negative=None,
                latent_image=["8", 0]),
        "10": _n("KSampler", seed=["99", 0], steps=["44", 0], cfg=7, sampler_name="euler", scheduler="normal",
                 model=["1", 0], latent_image=["8", 0]),
        "8": _n("EmptyLatentImage", width=512, height=512, batch_size=1),
    }
    _, ps = comfyui.passes(graph)
    first, second = (p.sp for p in ps)
    assert (first.seed, first.steps, first.cfg, first.sampler, first.scheduler) == (
        781452317169929, 30, 6.0, "dpmpp_2m", "karras")
    # A computed value (a*3) and a dangling link stay unknown instead of guessing.
    assert (second.seed, second.steps) == (None, None)


def test_comfy_sampler_custom_advanced_noise_guider_scheduler() -> None:
    graph = {
        "12": _n("UNETLoader", unet_name="flux1-dev.safetensors", weight_dtype="default"),
        "30": _n("ModelSamplingFlux", max_shift=1.15, base_shift=0.5, width=1024, height=1024, model=["12", 0]),
        "6": _n("CLIPTextEncode", text="fennec", clip=["11", 0]),
        "26": _n("FluxGuidance", guidance=3.5, conditioning=["6", 0]),
        "22": _n("BasicGuider", model=["30", 0], conditioning=["26", 0]),
        "25": _n("RandomNoise", noise_seed=0),
        "16": _n("KSamplerSelect", sampler_name="euler"),
        "17": _n("BasicScheduler", scheduler="simple", steps=20, denoise=1.0, model=["30", 0]),
        "27": _n("EmptySD3LatentImage", width=1024, height=768, batch_size=1),
        "13": _n("SamplerCustomAdvanced", noise=["25", 0], guider=["22", 0], sampler=["16", 0], sigmas=["17", 0],
                 latent_image=["27", 0]),
        "10": _n("VAELoader", vae_name="ae.safetensors"),
        "8": _n("VAEDecode", samples=["13", 0], vae=["10", 0]),
    }
    gen = comfyui.generation_from_graph(graph, None, "png:prompt")
    assert gen.seed == 0  # zero is a seed, not "missing"
    assert (gen.steps, gen.sampler, gen.scheduler, gen.denoise) == (20, "euler", "simple", 1.0)
    assert (gen.model, gen.positive, gen.vae, gen.extra["guidance"]) == ("flux1-dev.safetensors", "fennec",
                                                                        "ae.safetensors", 3.5)
    assert (gen.width, gen.height) == (1024, 768)


def test_comfy_cycles_and_dangling_links_terminate() -> None:
    graph = {
        "1": _n("LoraLoader", lora_name="l.safetensors", strength_model=1, strength_clip=1, model=["2", 0]),
        "2": _n("ModelSamplingDiscrete", model=["1", 0]),
        "3": _n("ConditioningCombine", conditioning_1=["4", 0], conditioning_2=["3", 0]),
        "4": _n("StringConcatenate", string_a=["5", 0], string_b=["4", 0]),
        "5": _n("CLIPTextEncode", text=["4", 0], clip=["77", 1]),
        "6": _n("PrimitiveInt", value=["7", 0]),
        "7": _n("PrimitiveInt", value=["6", 0]),
        "9": _n("KSampler", seed=["6", 0], steps=20, cfg=5, sampler_name="euler", scheduler="normal",
                model=["1", 0], positive=["3", 0], negative=["404", 0], latent_image=["9", 0]),
    }
    gen = comfyui.generation_from_graph(graph, None, "png:prompt")
    assert gen.seed is None and gen.model is None and gen.negative is None
    assert [x.name for x in gen.loras] == ["l.safetensors"]


def test_comfy_workflow_only_uses_widgets_values() -> None:
    workflow = {
        "last_node_id": 9, "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 6, 0, 3, 1, "CONDITIONING"],
                                     [3, 5, 0, 3, 3, "LATENT"], [4, 4, 1, 6, 0, "CLIP"]],
        "nodes": [
            {"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["wf.safetensors"]},
            {"id": 5, "type": "EmptyLatentImage", "widgets_values": [640, 448, 1]},
            {"id": 6, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "link": 4}],
             "widgets_values": ["from the workflow"]},
            {"id": 3, "type": "KSampler", "widgets_values": [0, "randomize", 12, 5.5, "dpmpp_2m", "karras", 1],
             "inputs": [{"name": "model", "link": 1}, {"name": "positive", "link": 2},
                        {"name": "latent_image", "link": 3}]},
            {"id": 9, "type": "Note", "mode": 2, "widgets_values": ["muted"]},
        ],
    }
    gen = detect(Containers(text={"workflow": json.dumps(workflow)}))
    assert gen is not None and gen.generator == "comfyui" and gen.source == "png:workflow"
    assert gen.extra["from_workflow"] is True and "prompt" not in gen.documents
    assert (gen.seed, gen.steps, gen.cfg, gen.sampler, gen.scheduler) == (0, 12, 5.5, "dpmpp_2m", "karras")
    assert (gen.model, gen.positive, gen.width, gen.height) == ("wf.safetensors", "from the workflow", 640, 448)


def test_comfy_container_locations() -> None:
    graph = base_refiner_graph()
    webp = detect(Containers(exif={"Exif.Image.Model": "prompt:" + json.dumps(graph),
                                   "Exif.Image.Make": 'workflow:{"nodes": [], "last_node_id": 0}'}))
    assert webp is not None and webp.seed == 42 and webp.documents["workflow"]["last_node_id"] == 0
    assert webp.source == "exif:Model"
    nested = detect(Containers(user_comment=json.dumps({"prompt": json.dumps(graph), "workflow": None})))
    assert nested is not None and nested.source == "exif:UserComment" and nested.seed == 42


def test_comfy_and_a1111_parameters_are_both_surfaced() -> None:
    graph = base_refiner_graph()
    graph["5"]["inputs"]["width"] = ["50", 0]  # an unresolvable size: the text fills it
    params = "wildcard result\nNegative prompt: bad\nSteps: 30, Sampler: DPM++ 3M SDE, Seed: 42, Size: 896x1152"
    gen = detect(Containers(text={"prompt": json.dumps(graph), "parameters": params}))
    assert gen is not None and gen.generator == "comfyui" and gen.positive == "a cat"
    assert (gen.width, gen.height) == (896, 1152) and gen.extra["filled_from_parameters"] == ["width", "height"]
    assert gen.extra["parameters"]["positive"] == "wildcard result"
    assert gen.documents["parameters"] == params


def test_civitai_graph_in_user_comment() -> None:
    graph = {"resource-stack": _n("CheckpointLoaderSimple", ckpt_name="urn:air:sdxl:checkpoint:civitai:1@2"),
             "6": _n("smZ CLIPTextEncode", text="snake", clip=["resource-stack", 1]),
             "11": _n("KSampler", seed=5, steps=30, cfg=3.5, sampler_name="euler", scheduler="normal", denoise=1,
                      model=["resource-stack", 0], positive=["6", 0], negative=["6", 0], latent_image=["26", 0]),
             "26": _n("EmptyLatentImage", width=832, height=1216, batch_size=1),
             "extra": {"airs": ["urn:air:sdxl:checkpoint:civitai:1@2"]},
             "extraMetadata": json.dumps({"prompt": "snake", "negativePrompt": "ugly", "steps": 30})}
    gen = detect(Containers(user_comment=json.dumps(graph)))
    assert gen is not None and (gen.generator, gen.parser) == ("civitai", f"civitai/{PARSER_VERSION}")
    assert gen.model == "urn:air:sdxl:checkpoint:civitai:1@2" and gen.positive == "snake"
    assert gen.extra["airs"] and gen.documents["extraMetadata"]["negativePrompt"] == "ugly"


# ---------------------------------------------------------------------------------------------------------------
# InvokeAI, NovelAI, Fooocus, SwarmUI, Draw Things
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dream", "expected"), [
    ('"a cat [ugly, blurry]" -s 50 -S 42 -W 512 -H 768 -C 7.5 -A k_lms', ("a cat", "ugly, blurry", 42, 50, 7.5)),
    ("banana sushi -s 50 -S 42 -W 512 -H 512 -C 7.5 -A k_lms", ("banana sushi", None, 42, 50, 7.5)),
    ('"lucy" -s50 -W512 -H512 -C7.5 -Ak_lms -S3357757885', ("lucy", None, 3357757885, 50, 7.5)),
])
def test_invokeai_dream_variants(dream: str, expected: tuple[Any, ...]) -> None:
    gen = detect(Containers(text={"Dream": dream}))
    assert gen is not None and gen.generator == "invokeai"
    assert (gen.positive, gen.negative, gen.seed, gen.steps, gen.cfg) == expected
    assert gen.sampler == "k_lms"


def test_invokeai_placeholder_dream_invents_nothing() -> None:
    assert invokeai.parse_dream("<too lazy to implement>") is None
    gen = detect(Containers(text={"Dream": "<too lazy to implement>"}))
    assert gen is not None and gen.positive is None and gen.seed is None and gen.extra["dream_unparsed"]


def test_invokeai_metadata_v4_shapes_and_jpeg_comments() -> None:
    meta = {"positive_prompt": "p", "seed": 1, "model": {"name": "juggernaut", "hash": "blake3:ab"},
            "loras": [{"model": {"name": "l1"}, "weight": 0.5}, {"lora": {"model_name": "l2"}, "weight": 1}]}
    gen = detect(Containers(text={"invokeai_metadata": json.dumps(meta)}))
    assert gen is not None and (gen.model, gen.model_hash) == ("juggernaut", "blake3:ab")
    assert [(x.name, x.weight) for x in gen.loras] == [("l1", 0.5), ("l2", 1.0)]
    graph = {"id": "g", "nodes": {"n": {"id": "n", "type": "core_metadata", "seed": 9, "positive_prompt": "q"}}}
    jpeg = detect(Containers(comments=["invokeai_graph: " + json.dumps(graph), 'invokeai_workflow: {"nodes": []}']))
    assert jpeg is not None and jpeg.source == "jpeg:COM" and (jpeg.seed, jpeg.positive) == (9, "q")
    assert set(jpeg.documents) == {"invokeai_graph", "invokeai_workflow"}


def test_novelai_fooocus_swarmui_drawthings() -> None:
    nai = detect(Containers(text={"Software": "NovelAI", "Description": "cat", "Source": "NAI Diffusion",
                                  "Comment": json.dumps({"seed": 0, "steps": 28, "scale": 5, "uc": "bad",
                                                         "strength": 0.7})}))
    assert nai is not None and (nai.generator, nai.seed, nai.cfg, nai.negative) == ("novelai", 0, 5.0, "bad")
    assert nai.extra["strength"] == 0.7 and nai.model == "NAI Diffusion"

    params = json.dumps({"prompt": "fish", "seed": "6952411511246973023", "resolution": "(768, 1280)",
                         "loras": [["l.safetensors", 0.5]], "base_model": "juggernaut", "guidance_scale": 4})
    foo = detect(Containers(text={"parameters": params, "fooocus_scheme": "fooocus"}))
    assert foo is not None and foo.generator == "fooocus" and foo.parser.startswith("fooocus/")
    assert (foo.seed, foo.width, foo.height, foo.loras[0].weight) == (6952411511246973023, 768, 1280, 0.5)

    sui = json.dumps({"sui_image_params": {"prompt": "p", "negativeprompt": "n", "seed": 3, "cfgscale": 7,
                                           "loras": ["a"], "loraweights": ["0.6"], "model": "m"}})
    swarm = detect(Containers(text={"parameters": sui}))
    assert swarm is not None and (swarm.generator, swarm.negative, swarm.loras[0].weight) == ("swarmui", "n", 0.6)

    xmp = {"Xmp.xmp.CreatorTool": "Draw Things",
           "Xmp.dc.description": {'lang="x-default"': "cyborg\nSteps: 26, Sampler: Euler A Trailing, "
                                                     "Guidance Scale: 3.5, Seed: 7, Size: 768x1024, "
                                                     "LoRA Model: l.ckpt, LoRA Weight: 0.8"}}
    text_only = detect(Containers(xmp=xmp))
    assert text_only is not None and text_only.generator == "drawthings"
    assert (text_only.cfg, text_only.seed, text_only.loras[0].name) == (3.5, 7, "l.ckpt")
    xmp["Xmp.exif.UserComment"] = json.dumps({"c": "cyborg", "seed": 8, "scale": 2, "model": "f.ckpt"})
    with_json = detect(Containers(xmp=xmp))
    assert with_json is not None and (with_json.seed, with_json.cfg, with_json.steps) == (8, 2.0, 26)


def test_xmp_text_shapes() -> None:
    """pyexiv2 and our own XMP reader spell language alternatives differently; both are read."""
    from agents.metadata.generators.coerce import xmp_text

    assert xmp_text({'lang="x-default"': "a", 'lang="de"': "b"}) == "a"
    assert xmp_text({"x-default": "a"}) == "a" and xmp_text({"de": "b"}) == "b"
    assert xmp_text("plain") == "plain" and xmp_text(["first", "second"]) == "first"
    assert xmp_text(None) is None and xmp_text({}) is None


def test_parser_error_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(c: Containers) -> Generation | None:
        raise KeyError("broken")

    from agents.metadata import generators

    monkeypatch.setattr(generators, "PARSERS", (("comfyui", boom),) + generators.PARSERS[1:])
    gen = detect(Containers(text={"parameters": "p\nSteps: 1, Seed: 2, Size: 3x4"}))
    assert gen is not None and gen.generator == "a1111" and "comfyui" in gen.extra["parser_errors"]
    only = detect(Containers(text={"prompt": "{}"}))
    assert only is not None and only.extra["parser_error"].startswith("KeyError")


_GARBAGE: list[Any] = [
    None, 0, -1, 1.5, True, "", "x", [], {}, [None], ["1"], ["1", 0], ["1", "0"], [["1", 0]], {"a": 1},
    {"class_type": 3}, {"class_type": "KSampler", "inputs": None}, {"on": True, "lora": ["1", 0]}, [1, 2, 3],
    "NaN", {"content": None}, [[1, 2]], {"nodes": {}}, {"nodes": [None, {"type": None}]},
]


def _garbage_graph(seed: int) -> dict[str, Any]:
    import random

    rnd = random.Random(seed)
    classes = ["KSampler", "SamplerCustomAdvanced", "LoraLoader", "CLIPTextEncode", "StringConcatenate",
               "ConditioningCombine", "ControlNetApplyAdvanced", "BasicGuider", "EmptyLatentImage", "Reroute",
               "Power Lora Loader (rgthree)", "CR Apply LoRA Stack", "FaceDetailer", "CheckpointLoaderSimple"]
    keys = ["seed", "noise_seed", "steps", "cfg", "model", "positive", "negative", "latent_image", "guider",
            "text", "string_a", "string_b", "conditioning", "conditioning_1", "lora_name", "lora_1", "lora_stack",
            "sampler", "sigmas", "noise", "ckpt_name", "width", "samples", "vae", "delimiter"]
    graph: dict[str, Any] = {}
    for nid in range(12):
        inputs = {k: rnd.choice([*_GARBAGE, [str(rnd.randrange(14)), rnd.randrange(3)]])
                  for k in rnd.sample(keys, rnd.randrange(len(keys)))}
        graph[str(nid)] = {"class_type": rnd.choice(classes), "inputs": inputs}
    graph["junk"] = rnd.choice(_GARBAGE)
    return graph


@pytest.mark.parametrize("seed", range(60))
def test_parsers_never_raise_on_garbage(seed: int) -> None:
    """Each parser on its own (without detect's safety net) takes malformed input without raising."""
    import random

    from agents.metadata.generators import PARSERS

    rnd = random.Random(seed)
    graph = _garbage_graph(seed)
    workflow = {"nodes": [{"id": i, "type": rnd.choice(["KSampler", "PrimitiveNode", "X"]),
                           "widgets_values": rnd.choice(_GARBAGE),
                           "inputs": [{"name": "model", "link": rnd.choice(_GARBAGE)}]} for i in range(5)],
                "links": [rnd.choice(_GARBAGE), [1, 0, 0, 1, 0, "MODEL"]]}
    junk = json.dumps(rnd.choice(_GARBAGE))
    c = Containers(
        text={"prompt": json.dumps(graph), "workflow": json.dumps(workflow), "parameters": junk, "Dream": junk,
              "sd-metadata": junk, "invokeai_metadata": json.dumps({"loras": rnd.choice(_GARBAGE),
                                                                    "model": rnd.choice(_GARBAGE)}),
              "invokeai_graph": json.dumps({"nodes": rnd.choice(_GARBAGE), "edges": [rnd.choice(_GARBAGE)]}),
              "Software": "NovelAI", "Comment": junk, "fooocus_scheme": "fooocus"},
        user_comment=json.dumps(graph), xmp={"Xmp.xmp.CreatorTool": "Draw Things",
                                             "Xmp.exif.UserComment": rnd.choice(_GARBAGE)},
        comments=["invokeai_graph: " + junk])
    for _, parse in PARSERS:
        parse(c)
    c.text.pop("prompt")
    comfyui.parse(c)  # the workflow-only path
    gen = detect(c)
    assert gen is None or "parser_error" not in gen.extra


def test_generation_is_json_able() -> None:
    gen = comfyui.generation_from_graph(base_refiner_graph(), None, "png:prompt")
    assert json.loads(json.dumps(dataclasses.asdict(gen)))["passes"][1]["node_id"] == "11"


# ---------------------------------------------------------------------------------------------------------------
# Corpus: every AI entry of the manifest, fact by fact (the facts: tests/agents/metadata/expectations.py)
# ---------------------------------------------------------------------------------------------------------------


def _manifest() -> list[dict[str, Any]]:
    path = CORPUS / "manifest.json"
    if not path.is_file():
        return []
    return [e for e in json.loads(path.read_text()) if e["kind"] in AI_KINDS]


MANIFEST = _manifest()


def test_every_explicit_entry_is_in_the_manifest() -> None:
    if not MANIFEST:
        pytest.skip("corpus manifest not present")
    files = {e["file"] for e in MANIFEST}
    assert set(EXPLICIT) <= files and set(OVERRIDES) <= files and set(ADDITIONAL) <= files
    assert {e["file"] for e in MANIFEST if e["kind"] in ("invokeai", "other-ai")} <= set(EXPLICIT)


@pytest.mark.corpus
@pytest.mark.parametrize("entry", MANIFEST or [None], ids=[e["file"].split("/", 1)[1] for e in MANIFEST] or ["none"])
def test_corpus_entry(corpus: Path, entry: dict[str, Any] | None) -> None:
    if entry is None:
        pytest.skip("corpus manifest not present")
    gen = generation_for(entry["file"])
    facts = facts_for(entry)
    assert len(facts) >= 1
    failed = [failure for fact in facts if (failure := fact_failure(fact, gen)) is not None]
    assert not failed, f"{entry['file']}: {failed}"
    if gen is not None:
        assert gen.parser.endswith(f"/{PARSER_VERSION}")
        json.dumps(dataclasses.asdict(gen))


@pytest.mark.corpus
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's complaints about the corpus' broken files
def test_detect_is_fast_on_the_corpus(corpus: Path) -> None:
    """The parsers add well under a millisecond per file typically (containers read once, outside the timing)."""
    inputs = []
    for entry in json.loads((corpus / "manifest.json").read_text()):
        path = corpus / entry["file"]
        with contextlib.suppress(Exception):  # broken files are the container layer's business
            inputs.append(_read_containers(path) if _read_containers is not None else pillow_containers(path))
    timings = []
    for c in inputs:
        start = time.perf_counter()
        detect(c)
        timings.append(time.perf_counter() - start)
    timings.sort()
    assert timings[len(timings) // 2] < 0.001, f"median {timings[len(timings) // 2] * 1e3:.2f} ms"


@pytest.mark.timeout(20)  # joined once per part, as before, two million parts took minutes: past the decode limit
def test_a_settings_line_of_endless_junk_is_read_in_one_pass() -> None:
    pairs = a1111.split_settings("Steps: 20, " + "a, " * 2_000_000 + 'Sampler: "Euler, a"')
    assert [k for k, _ in pairs] == ["Steps", "Sampler"] and pairs[1][1] == "Euler, a"
    assert pairs[0][1] == "20" + ", a" * 2_000_000


@pytest.mark.timeout(60)  # each unclosed tag was scanned to the end of the text: these prompts took ~20 s each
def test_unclosed_lora_tags_are_read_in_linear_time() -> None:
    unclosed = "<lora:a:b:" * 10_000 + " a cat"
    graph = {"1": _n("CheckpointLoaderSimple", ckpt_name="m"), "2": _n("LoraTagLoader", text=unclosed, model=["1", 0]),
             "3": _n("KSampler", seed=1, steps=2, model=["2", 0])}
    start = time.perf_counter()
    assert a1111.loras_from(unclosed, {}) == []
    assert comfyui.generation_from_graph(graph, None, "png:prompt").loras == []
    assert time.perf_counter() - start < 2
    # a tag is what lies between one "<lora:" and its ">", never across another tag's "<"
    assert [(x.name, x.weight) for x in a1111.loras_from("<lora:a:b: x <lora:kept:0.5>", {})] == [("kept", 0.5)]


@pytest.mark.timeout(60)
def test_hostile_conditioning_input_names_are_ordered_quickly_and_never_raise() -> None:
    long_key, many_digits = "conditioning_" + "1" * 30_000 + "x", "conditioning_" + "9" * 5000
    graph = {"1": _n("CheckpointLoaderSimple", ckpt_name="m"),
             "2": _n("ConditioningCombine", **{long_key: ["3", 0], many_digits: ["4", 0]}),
             "3": _n("CLIPTextEncode", text="a", clip=["1", 1]), "4": _n("CLIPTextEncode", text="b", clip=["1", 1]),
             "5": _n("KSampler", seed=1, steps=2, model=["1", 0], positive=["2", 0])}
    start = time.perf_counter()  # a regex took ~15 s over the long name; int() refuses the 5000 digits
    gen = comfyui.generation_from_graph(graph, None, "png:prompt")
    assert time.perf_counter() - start < 2
    assert gen.positive == "b\na" and gen.model == "m"


def test_a1111_values_that_decode_to_lone_surrogates_or_nest_too_deep_are_kept_safely() -> None:
    from agents.index import summarise
    from schemas import AssetIndexed, decode, encode

    text = ('a cat\nSteps: 20, Seed: 1, Sampler: "Euler \\ud800", Lora hashes: "x\\udfff: 1", '
            'Model: m, Deep: ' + "[" * 5000 + "]" * 5000)
    c = Containers(format="PNG", text={"parameters": text})
    gen = detect(c)
    assert gen is not None and gen.generator == "a1111" and gen.sampler.encode()
    assert gen.sampler.startswith("Euler \ufffd") and gen.loras[0].name.startswith("x\ufffd")
    assert gen.extra["Deep"].startswith("[[")
    event = AssetIndexed(event_id="e", batch_id="b", lane="batch", source="scan", asset_id="a", path="p",
                         parser_version=PARSER_VERSION, metadata_path="m", indexed_at=1.0, **summarise(c, gen))
    assert decode(encode(event), AssetIndexed).sampler == gen.sampler  # encoding raised UnicodeEncodeError


def test_json_nested_deeper_than_python_recurses_is_no_json_and_names_no_generator() -> None:
    from agents.metadata.generators.coerce import load_json

    deep = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert load_json(deep) is None and load_json('{"a": ' + "[" * 900 + "]" * 900 + "}") is not None
    # it raised RecursionError: every JSON parser failed, and the file was indexed as "swarmui" (the first)
    assert detect(Containers(format="PNG", text={"parameters": deep})) is None
    workflow = {"nodes": [{"id": 1, "type": "KSampler", "widgets_values": [7, "fixed", 20, 8, "euler", "normal", 1]}]}
    gen = detect(Containers(format="PNG", text={"prompt": deep, "workflow": json.dumps(workflow)}))
    assert gen is not None and gen.generator == "comfyui" and gen.seed == 7 and "parser_errors" not in gen.extra

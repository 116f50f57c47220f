"""Draw Things (macOS/iOS): XMP ``xmp:CreatorTool`` = "Draw Things"; ``dc:description`` holds A1111-like text
("Guidance Scale:" instead of "CFG scale:", "LoRA Model:"/"LoRA Weight:"), and ``exif:UserComment`` (in XMP, or
EXIF for JPEG) a JSON object: ``c`` prompt, ``uc`` negative, ``seed``, ``steps``, ``scale``, ``sampler``,
``model``, ``lora`` [{file|model, weight}], ``size`` "WxH", ``strength``, ``v2`` (the full configuration).
The JSON is structured, so it wins; the text fills what the JSON lacks and is kept verbatim.
"""

from __future__ import annotations

from typing import Any

from agents.metadata.generators import a1111
from agents.metadata.generators.coerce import (
    as_list,
    json_object,
    parse_size,
    parser_id,
    to_float,
    to_int,
    to_str,
    xmp_text,
)
from agents.metadata.model import Containers, Generation, LoRA, SamplerPass

_MAPPED = frozenset({"c", "uc", "seed", "steps", "scale", "sampler", "model", "lora", "size", "strength", "v2",
                     "profile"})


def _from_json(doc: dict[str, Any], source: str) -> Generation:
    width, height = parse_size(doc.get("size"))
    loras = [LoRA(name=str(item.get("file") or item.get("model")), weight=to_float(item.get("weight")))
             for item in as_list(doc.get("lora")) if isinstance(item, dict) and (item.get("file") or item.get("model"))]
    strength = to_float(doc.get("strength"))
    gen = Generation(generator="drawthings", source=source, parser=parser_id("drawthings"),
                     model=to_str(doc.get("model")), loras=loras, seed=to_int(doc.get("seed")),
                     steps=to_int(doc.get("steps")), cfg=to_float(doc.get("scale")),
                     sampler=to_str(doc.get("sampler")), denoise=strength, width=width, height=height,
                     positive=to_str(doc.get("c")), negative=to_str(doc.get("uc")))
    gen.extra.update({k: v for k, v in doc.items() if k not in _MAPPED})
    gen.documents["UserComment"] = doc
    return gen


def _from_text(text: str) -> Generation | None:
    gen = a1111.generation_from_text(text, "xmp:dc:description", generator="drawthings")
    if gen is None:
        return None
    gen.parser = parser_id("drawthings")
    gen.passes = []
    if gen.cfg is None:
        gen.cfg = to_float(gen.extra.pop("Guidance Scale", None))
    if "LoRA Model" in gen.extra:
        gen.loras.append(LoRA(name=str(gen.extra.pop("LoRA Model")),
                              weight=to_float(gen.extra.pop("LoRA Weight", None))))
    if gen.denoise is None:
        gen.denoise = to_float(gen.extra.pop("Strength", None))
    return gen


def parse(c: Containers) -> Generation | None:
    tool = xmp_text(c.xmp.get("Xmp.xmp.CreatorTool")) or c.exif.get("Exif.Image.Software", "")
    if "draw things" not in tool.lower():
        return None
    doc = json_object(xmp_text(c.xmp.get("Xmp.exif.UserComment"))) or json_object(c.user_comment)
    text = xmp_text(c.xmp.get("Xmp.dc.description"))
    from_text = _from_text(text) if text else None
    if doc is not None:
        gen = _from_json(doc, "xmp:exif:UserComment" if c.xmp.get("Xmp.exif.UserComment") else "exif:UserComment")
        if from_text is not None:
            for name in ("model", "seed", "steps", "cfg", "sampler", "width", "height", "positive", "negative"):
                if getattr(gen, name) is None:
                    setattr(gen, name, getattr(from_text, name))
            if not gen.loras:
                gen.loras = from_text.loras
    elif from_text is not None:
        gen = from_text
    else:
        return None
    if text:
        gen.documents["description"] = text
    gen.passes = [SamplerPass(seed=gen.seed, steps=gen.steps, cfg=gen.cfg, sampler=gen.sampler,
                              denoise=gen.denoise, model=gen.model, positive=gen.positive, negative=gen.negative)]
    return gen

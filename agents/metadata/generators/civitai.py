"""Civitai's on-site generator: EXIF UserComment holds a ComfyUI API graph *directly* (no {"prompt": ...}
wrapper), with node ids like "resource-stack", "resource-stack-1", models named by AIR URNs
("urn:air:sdxl:checkpoint:civitai:288584@324619"), plus two non-node entries: ``extra`` ({"airs": [...]}) and
``extraMetadata`` (a JSON *string* with prompt/steps/cfgScale/sampler/seed/resources). It lives in UserComment,
where A1111 text usually is, so it must be recognised before the A1111 parser reads UserComment.

The graph is walked by the ComfyUI parser; ``extraMetadata`` only fills what the graph leaves unknown. A bare
ComfyUI graph in UserComment without Civitai's markers is reported as generator "comfyui".
"""

from __future__ import annotations

from agents.metadata.generators import comfyui
from agents.metadata.generators.coerce import (
    json_object,
    parser_id,
    to_float,
    to_int,
    to_str,
)
from agents.metadata.model import Containers, Generation


def parse(c: Containers) -> Generation | None:
    doc = json_object(c.user_comment)
    if doc is None or "prompt" in doc or "workflow" in doc:
        return None
    if not any(isinstance(v, dict) and "class_type" in v for v in doc.values()):
        return None
    civitai = (any(str(k).startswith("resource-stack") for k in doc) or "extraMetadata" in doc
               or "urn:air:" in (c.user_comment or ""))
    name = "civitai" if civitai else "comfyui"
    gen = comfyui.generation_from_graph(doc, None, "exif:UserComment", name=name)
    gen.parser = parser_id(name)
    extra = doc.get("extra")
    if isinstance(extra, dict) and isinstance(extra.get("airs"), list):
        gen.extra["airs"] = extra["airs"]
    meta = json_object(doc.get("extraMetadata"))
    if meta is not None:
        gen.documents["extraMetadata"] = meta
        fill = {"positive": to_str(meta.get("prompt")), "negative": to_str(meta.get("negativePrompt")),
                "steps": to_int(meta.get("steps")), "cfg": to_float(meta.get("cfgScale")),
                "sampler": to_str(meta.get("sampler")), "seed": to_int(meta.get("seed"))}
        for key, value in fill.items():
            if getattr(gen, key) is None and value is not None:
                setattr(gen, key, value)
        if "workflowId" in meta:
            gen.extra["workflow_id"] = meta["workflowId"]
    return gen

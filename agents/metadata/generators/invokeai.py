"""InvokeAI, across its metadata generations (best source first):

- ``invokeai_metadata`` (v3+): flat JSON written for the image; the truth when present.
- ``sd-metadata`` (v2.x, and lstein/stable-diffusion before it): JSON with an ``image`` record.
- ``Dream`` (v1/v2, lstein): a CLI command string: ``"prompt" -s 50 -S 42 -W 512 -H 768 -C 7.5 -A k_lms``; the
  prompt may be unquoted and flags may lack the space (``-S3357757885``, ``-Ak_lms``). Placeholders such as
  ``<too lazy to implement>`` are not commands and yield nothing.
- ``invokeai_graph`` / ``invokeai_workflow`` (PNG text, or JPEG COM segments prefixed ``invokeai_graph: ``):
  only read for a ``core_metadata`` node, else best-effort from the denoise/model nodes. The graph's noise seed
  is *not* trusted over ``invokeai_metadata``: batch graphs re-seed through ``range_of_size`` nodes.

InvokeAI 2.x writes the negative prompt inside the prompt, in square brackets ("photo [blurry, lowres]"); those
parts become ``negative`` and are removed from ``positive``.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from agents.metadata.generators.coerce import (
    as_list,
    json_object,
    parser_id,
    to_float,
    to_int,
    to_str,
)
from agents.metadata.model import Containers, Generation, LoRA, SamplerPass

_FLAGS = {"s": "steps", "S": "seed", "W": "width", "H": "height", "C": "cfg", "A": "sampler", "f": "strength",
          "G": "gfpgan_strength", "cf": "codeformer_fidelity", "U": "upscale", "I": "init_img", "n": "iterations",
          "v": "variation_amount", "V": "with_variations", "ft": "facetool", "tm": "text_mask", "M": "init_mask",
          "m": "model", "b": "batch_size", "g": "grid", "F": "fit", "t": "log_tokenization", "x": "skip_normalize"}
_SHORT = sorted(_FLAGS, key=len, reverse=True)
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


def split_negative(prompt: str) -> tuple[str, str | None]:
    """InvokeAI 2.x: "[...]" parts are the negative prompt."""
    parts = [p.strip() for p in _BRACKETS.findall(prompt)]
    if not parts:
        return prompt.strip(), None
    return re.sub(r"\s+", " ", _BRACKETS.sub(" ", prompt)).strip(), ", ".join(p for p in parts if p)


def parse_dream(text: str) -> dict[str, Any] | None:
    """Options of a Dream command string; None when it is not one (no recognised flag)."""
    try:
        tokens = shlex.split(text)
    except ValueError:
        tokens = text.split()
    prompt: list[str] = []
    opts: dict[str, Any] = {}
    key: str | None = None
    for tok in tokens:
        if re.match(r"^--?[A-Za-z]", tok):
            body = tok.lstrip("-")
            if tok.startswith("--"):
                name, _, value = body.partition("=")
                key, inline = name.replace("-", "_"), value
            else:
                short = next((f for f in _SHORT if body.startswith(f)), None)
                if short is None:
                    key, inline = body, ""
                else:
                    key, inline = _FLAGS[short], body[len(short):]
            opts[key] = [inline] if inline else []
        elif key is not None:
            opts[key].append(tok)
        else:
            prompt.append(tok)
    if not opts:
        return None
    out: dict[str, Any] = {k: (v[0] if len(v) == 1 else " ".join(v) if v else True) for k, v in opts.items()}
    out["prompt"] = " ".join(prompt)
    return out


def _model_name(v: Any) -> str | None:
    if isinstance(v, dict):
        return to_str(v.get("model_name") or v.get("name"))
    return to_str(v)


def _from_metadata(meta: dict[str, Any], source: str) -> Generation:
    gen = Generation(generator="invokeai", source=source, parser=parser_id("invokeai"),
                     model=_model_name(meta.get("model")), vae=_model_name(meta.get("vae")),
                     seed=to_int(meta.get("seed")), steps=to_int(meta.get("steps")),
                     cfg=to_float(meta.get("cfg_scale")), scheduler=to_str(meta.get("scheduler")),
                     denoise=to_float(meta.get("strength")), width=to_int(meta.get("width")),
                     height=to_int(meta.get("height")), positive=to_str(meta.get("positive_prompt")),
                     negative=to_str(meta.get("negative_prompt")))
    model = meta.get("model")
    if isinstance(model, dict):
        gen.model_hash = to_str(model.get("hash"))
    for item in as_list(meta.get("loras")):
        if isinstance(item, dict):
            name = _model_name(item.get("lora") or item.get("model"))
            if name:
                gen.loras.append(LoRA(name=name, weight=to_float(item.get("weight"))))
    gen.extra.update({k: v for k, v in meta.items() if k not in _META_MAPPED})
    gen.passes.append(SamplerPass(node_type=to_str(meta.get("generation_mode")), seed=gen.seed, steps=gen.steps,
                                  cfg=gen.cfg, scheduler=gen.scheduler, denoise=gen.denoise, model=gen.model,
                                  positive=gen.positive, negative=gen.negative))
    return gen


_META_MAPPED = frozenset({"model", "vae", "seed", "steps", "cfg_scale", "scheduler", "strength", "width", "height",
                          "positive_prompt", "negative_prompt", "loras"})


def _from_sd_metadata(doc: dict[str, Any]) -> Generation:
    image = doc.get("image")
    if not isinstance(image, dict):
        images = doc.get("images")
        image = images[0] if isinstance(images, list) and images and isinstance(images[0], dict) else {}
    prompt = image.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(str(p.get("prompt", "")) for p in prompt if isinstance(p, dict))
    positive, negative = split_negative(prompt) if isinstance(prompt, str) else (None, None)
    gen = Generation(generator="invokeai", source="png:sd-metadata", parser=parser_id("invokeai"),
                     model=to_str(doc.get("model_weights") or doc.get("model_id")),
                     model_hash=to_str(doc.get("model_hash")), seed=to_int(image.get("seed")),
                     steps=to_int(image.get("steps")), cfg=to_float(image.get("cfg_scale")),
                     sampler=to_str(image.get("sampler")), denoise=to_float(image.get("strength")),
                     width=to_int(image.get("width")), height=to_int(image.get("height")),
                     positive=positive, negative=negative)
    gen.extra.update({k: v for k, v in doc.items() if k not in ("image", "images", "model_weights", "model_hash")})
    gen.extra.update({f"image.{k}": v for k, v in image.items()
                      if k not in ("prompt", "seed", "steps", "cfg_scale", "sampler", "strength", "width", "height")})
    return gen


def _from_dream(text: str) -> Generation | None:
    opts = parse_dream(text)
    if opts is None:
        return None
    positive, negative = split_negative(opts.pop("prompt"))
    gen = Generation(generator="invokeai", source="png:Dream", parser=parser_id("invokeai"),
                     seed=to_int(opts.pop("seed", None)), steps=to_int(opts.pop("steps", None)),
                     cfg=to_float(opts.pop("cfg", None)), sampler=to_str(opts.pop("sampler", None)),
                     width=to_int(opts.pop("width", None)), height=to_int(opts.pop("height", None)),
                     denoise=to_float(opts.pop("strength", None)), positive=positive or None, negative=negative)
    gen.model = to_str(opts.pop("model", None))
    gen.extra.update(opts)
    return gen


def _from_graph(graph: dict[str, Any]) -> Generation:
    """Graph-only files (JPEG COM): a core_metadata node if any, else the denoise/model/prompt nodes."""
    nodes = graph.get("nodes")
    nodes = list(nodes.values()) if isinstance(nodes, dict) else nodes if isinstance(nodes, list) else []
    nodes = [n for n in nodes if isinstance(n, dict)]
    meta = next((n for n in nodes if n.get("type") in ("core_metadata", "metadata_accumulator")), None)
    if meta is not None:
        gen = _from_metadata(meta, "invokeai_graph")
        gen.extra = {}
        return gen
    gen = Generation(generator="invokeai", source="invokeai_graph", parser=parser_id("invokeai"))
    by_id = {n["id"]: n for n in nodes if isinstance(n.get("id"), str)}
    edges = graph.get("edges")
    for edge in edges if isinstance(edges, list) else []:
        dst, src = (edge.get("destination"), edge.get("source")) if isinstance(edge, dict) else (None, None)
        if not (isinstance(dst, dict) and isinstance(src, dict)):
            continue
        field = dst.get("field")
        source_node = by_id.get(src.get("node_id")) if isinstance(src.get("node_id"), str) else None
        if field in ("positive_conditioning", "negative_conditioning") and isinstance(source_node, dict):
            setattr(gen, field.split("_")[0], to_str(source_node.get("prompt")))
    for n in nodes:
        kind = str(n.get("type", ""))
        if "denoise" in kind and gen.steps is None:
            gen.steps, gen.cfg = to_int(n.get("steps")), to_float(n.get("cfg_scale"))
            gen.scheduler = to_str(n.get("scheduler"))
        elif "model_loader" in kind and gen.model is None:
            gen.model = _model_name(n.get("model"))
    return gen


def _graph_documents(c: Containers) -> dict[str, Any]:
    docs: dict[str, Any] = {}
    for key in ("invokeai_graph", "invokeai_workflow"):
        doc = json_object(c.text.get(key))
        if doc is not None:
            docs[key] = doc
    for comment in c.comments:
        head, sep, body = comment.partition(":")
        if sep and head.strip() in ("invokeai_graph", "invokeai_workflow", "invokeai_metadata"):
            doc = json_object(body)
            if doc is not None:
                docs.setdefault(head.strip(), doc)
    return docs


def _fill(primary: Generation, other: Generation) -> None:
    for name in ("model", "seed", "steps", "cfg", "sampler", "scheduler", "width", "height", "positive", "negative"):
        if getattr(primary, name) is None and getattr(other, name) is not None:
            setattr(primary, name, getattr(other, name))


def parse(c: Containers) -> Generation | None:
    meta, sd_meta, dream = json_object(c.text.get("invokeai_metadata")), None, c.text.get("Dream")
    docs = _graph_documents(c)
    if meta is None and "invokeai_metadata" in docs:
        meta = docs.pop("invokeai_metadata")
    sd_meta = json_object(c.text.get("sd-metadata"))
    if meta is None and sd_meta is None and dream is None and not docs:
        return None
    dream_gen = _from_dream(dream) if isinstance(dream, str) else None
    if meta is not None:
        gen = _from_metadata(meta, "png:invokeai_metadata")
        gen.documents["invokeai_metadata"] = meta
    elif sd_meta is not None:
        gen = _from_sd_metadata(sd_meta)
        if dream_gen is not None:
            _fill(gen, dream_gen)
    elif dream_gen is not None:
        gen = dream_gen
    elif "invokeai_graph" in docs:
        gen = _from_graph(docs["invokeai_graph"])
        gen.source = "png:invokeai_graph" if "invokeai_graph" in c.text else "jpeg:COM"
    else:
        gen = Generation(generator="invokeai", source="png:Dream" if dream else "jpeg:COM",
                         parser=parser_id("invokeai"))
        if dream is not None:
            gen.extra["dream_unparsed"] = True
    if sd_meta is not None:
        gen.documents["sd-metadata"] = sd_meta
    if dream is not None:
        gen.documents["Dream"] = dream
    gen.documents.update(docs)
    if not gen.passes and any(getattr(gen, f) is not None for f in ("seed", "steps", "positive")):
        gen.passes.append(SamplerPass(seed=gen.seed, steps=gen.steps, cfg=gen.cfg, sampler=gen.sampler,
                                      scheduler=gen.scheduler, denoise=gen.denoise, model=gen.model,
                                      positive=gen.positive, negative=gen.negative))
    return gen

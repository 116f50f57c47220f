"""Fooocus: PNG ``parameters`` holding a JSON object (not A1111 text) plus ``fooocus_scheme`` = "fooocus".

The key is the same as A1111's, so the JSON test must run before the A1111 parser sees it. (With
``fooocus_scheme`` = "a1111" Fooocus writes A1111 text; the A1111 parser handles that and names the generator.)
``resolution`` is "(width, height)"; ``seed`` is a decimal string (64-bit seeds exceed JSON-safe integers);
``loras`` are [name, weight] pairs.
"""

from __future__ import annotations

from typing import Any

from agents.metadata.generators.coerce import (
    json_object,
    parse_size,
    parser_id,
    to_float,
    to_int,
    to_str,
)
from agents.metadata.model import Containers, Generation, LoRA, SamplerPass

_MAPPED = frozenset({"prompt", "negative_prompt", "seed", "steps", "guidance_scale", "sampler", "scheduler",
                     "base_model", "base_model_hash", "resolution", "loras", "vae", "full_prompt",
                     "full_negative_prompt"})


def _loras(v: Any) -> list[LoRA]:
    out: list[LoRA] = []
    for item in v if isinstance(v, list) else []:
        if isinstance(item, (list, tuple)) and item:
            name, weight = item[0], item[1] if len(item) > 1 else None
        elif isinstance(item, str):
            name, _, weight = item.rpartition(" : ") if " : " in item else (item, "", None)
        else:
            continue
        if isinstance(name, str) and name and name != "None":
            out.append(LoRA(name=name, weight=to_float(weight)))
    return out


def parse(c: Containers) -> Generation | None:
    doc = json_object(c.text.get("parameters"))
    if doc is None:
        return None
    scheme = str(c.text.get("fooocus_scheme") or doc.get("metadata_scheme") or "").lower()
    if scheme != "fooocus" and "fooocus" not in str(doc.get("version", "")).lower():
        return None
    width, height = parse_size(doc.get("resolution"))
    vae = to_str(doc.get("vae"))
    gen = Generation(generator="fooocus", source="png:parameters", parser=parser_id("fooocus"),
                     model=to_str(doc.get("base_model")), model_hash=to_str(doc.get("base_model_hash")),
                     loras=_loras(doc.get("loras")), vae=None if vae in (None, "Default (model)") else vae,
                     seed=to_int(doc.get("seed")), steps=to_int(doc.get("steps")),
                     cfg=to_float(doc.get("guidance_scale")), sampler=to_str(doc.get("sampler")),
                     scheduler=to_str(doc.get("scheduler")), width=width, height=height,
                     positive=to_str(doc.get("prompt")), negative=to_str(doc.get("negative_prompt")))
    gen.extra.update({k: v for k, v in doc.items() if k not in _MAPPED})
    if vae is not None:
        gen.extra["vae"] = vae
    gen.documents["parameters"] = doc
    gen.passes.append(SamplerPass(seed=gen.seed, steps=gen.steps, cfg=gen.cfg, sampler=gen.sampler,
                                  scheduler=gen.scheduler, model=gen.model, positive=gen.positive,
                                  negative=gen.negative))
    return gen

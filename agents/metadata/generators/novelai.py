"""NovelAI: PNG text ``Software`` = "NovelAI", ``Description`` = prompt, ``Comment`` = JSON settings
(steps, sampler, seed, scale, uc = negative, strength, noise, width/height in later versions), ``Source`` = the
model ("Stable Diffusion 1D44365E", "NovelAI Diffusion V4 ..."). Newer images may carry the same keys as one
JSON object in the alpha channel (stealth); the container layer exposes that as ``stealth:parameters``.

``strength``/``noise`` are kept in ``extra``, not as ``denoise``: NovelAI records them for txt2img too.
"""

from __future__ import annotations

from typing import Any

from agents.metadata.generators.coerce import (
    json_object,
    parser_id,
    to_float,
    to_int,
    to_str,
)
from agents.metadata.model import Containers, Generation, SamplerPass

_MAPPED = frozenset({"steps", "sampler", "seed", "scale", "uc", "width", "height", "prompt", "noise_schedule"})


def generation_from_fields(fields: dict[str, Any], source: str) -> Generation | None:
    """From the NovelAI key set (Software/Description/Comment/Source...); None unless Software says NovelAI."""
    if "novelai" not in str(fields.get("Software", "")).lower():
        return None
    comment = json_object(fields.get("Comment")) or {}
    gen = Generation(generator="novelai", source=source, parser=parser_id("novelai"),
                     model=to_str(fields.get("Source")), seed=to_int(comment.get("seed")),
                     steps=to_int(comment.get("steps")), cfg=to_float(comment.get("scale")),
                     sampler=to_str(comment.get("sampler")), scheduler=to_str(comment.get("noise_schedule")),
                     width=to_int(comment.get("width")), height=to_int(comment.get("height")),
                     positive=to_str(fields.get("Description")) or to_str(comment.get("prompt")),
                     negative=to_str(comment.get("uc")))
    gen.extra.update({k: v for k, v in comment.items() if k not in _MAPPED})
    for key in ("Title", "Software", "Generation time"):
        if key in fields:
            gen.extra[key] = fields[key]
    if comment:
        gen.documents["Comment"] = comment
    gen.passes.append(SamplerPass(seed=gen.seed, steps=gen.steps, cfg=gen.cfg, sampler=gen.sampler,
                                  scheduler=gen.scheduler, model=gen.model, positive=gen.positive,
                                  negative=gen.negative))
    return gen


def parse(c: Containers) -> Generation | None:
    gen = generation_from_fields(c.text, "png:Comment")
    if gen is not None:
        return gen
    stealth = json_object(c.text.get("stealth:parameters"))
    return generation_from_fields(stealth, "stealth:alpha") if stealth else None

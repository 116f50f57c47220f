"""SwarmUI (StableSwarmUI): a JSON object ``{"sui_image_params": {...}, "sui_extra_data": {...}}`` in PNG
``parameters`` or, for JPEG/WebP, in EXIF UserComment. Keys are lower-case run-together names
(``negativeprompt``, ``cfgscale``); LoRAs come as parallel ``loras``/``loraweights`` lists.
"""

from __future__ import annotations

from agents.metadata.generators.coerce import (
    json_object,
    parser_id,
    to_float,
    to_int,
    to_str,
)
from agents.metadata.model import Containers, Generation, LoRA, SamplerPass

_MAPPED = frozenset({"prompt", "negativeprompt", "model", "seed", "steps", "cfgscale", "sampler", "scheduler",
                     "width", "height", "loras", "loraweights", "vae", "initimagecreativity"})


def parse(c: Containers) -> Generation | None:
    for source, raw in (("png:parameters", c.text.get("parameters")), ("exif:UserComment", c.user_comment)):
        doc = json_object(raw)
        params = doc.get("sui_image_params") if doc else None
        if isinstance(params, dict):
            break
    else:
        return None
    names = params.get("loras") if isinstance(params.get("loras"), list) else []
    weights = params.get("loraweights") if isinstance(params.get("loraweights"), list) else []
    loras = [LoRA(name=str(n), weight=to_float(weights[i]) if i < len(weights) else None)
             for i, n in enumerate(names) if n]
    gen = Generation(generator="swarmui", source=source, parser=parser_id("swarmui"),
                     model=to_str(params.get("model")), loras=loras, vae=to_str(params.get("vae")),
                     seed=to_int(params.get("seed")), steps=to_int(params.get("steps")),
                     cfg=to_float(params.get("cfgscale")), sampler=to_str(params.get("sampler")),
                     scheduler=to_str(params.get("scheduler")),
                     denoise=to_float(params.get("initimagecreativity")), width=to_int(params.get("width")),
                     height=to_int(params.get("height")), positive=to_str(params.get("prompt")),
                     negative=to_str(params.get("negativeprompt")))
    gen.extra.update({k: v for k, v in params.items() if k not in _MAPPED})
    gen.documents["parameters"] = doc
    gen.passes.append(SamplerPass(seed=gen.seed, steps=gen.steps, cfg=gen.cfg, sampler=gen.sampler,
                                  scheduler=gen.scheduler, denoise=gen.denoise, model=gen.model,
                                  positive=gen.positive, negative=gen.negative))
    return gen

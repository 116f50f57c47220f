"""ComfyUI: the API-format ``prompt`` graph (and the UI ``workflow`` when it is all there is).

Where ComfyUI puts it: PNG text chunks ``prompt``/``workflow``; WebP/animated-WebP EXIF IFD0 ``Model`` =
"prompt:{...}" and ``Make`` = "workflow:{...}" (other IFD0 strings may carry more "key:{json}" pairs); JPEG
savers put ``{"prompt": ..., "workflow": ...}`` into EXIF UserComment (the values themselves sometimes JSON
strings). Both documents are kept verbatim (parsed) in ``documents``.

One :class:`SamplerPass` per sampler node. The *main* pass supplies the top-level fields. It is chosen as:
1. among samplers that depend on no other sampler (the heads of their chains: base before refiner/hires/detailer),
2. prefer ones whose inputs resolve (a model or a prompt: a dangling leftover KSampler loses),
3. then ones that start from an empty latent (txt2img) over image-encoded latents,
4. then the one most other samplers build on (the chain that produced the final image in hires/detailer graphs),
5. then the most steps, then the first in document order.
LoRAs are those on the model chains of the main pass and the passes built on it; ``vae`` is the VAE of the
decoder fed by the main chain (None when the checkpoint's baked VAE is used). Seeds, steps, cfg, sampler and
scheduler are followed through links (seed nodes, primitives, pipes, RandomNoise, KSamplerSelect,
BasicScheduler); a value computed by a node (math, counters) stays None rather than being guessed. A sampler or
scheduler given as an object node without a name input (SamplerDPMPP_SDE, SDTurboScheduler) is reported by its
class name. Width/height come from the main pass's empty latent; img2img passes record ``extra['init_image']``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agents.metadata.generators.coerce import (
    json_object,
    parser_id,
    to_float,
    to_int,
    to_str,
)
from agents.metadata.generators.comfy_graph import MAX_DEPTH, Graph
from agents.metadata.generators.comfy_workflow import workflow_to_api
from agents.metadata.model import Containers, Generation, LoRA, SamplerPass

KNOWN_SAMPLERS = frozenset({"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"})
_WIDTH_KEYS = ("width", "empty_latent_width", "Width")
_HEIGHT_KEYS = ("height", "empty_latent_height", "Height")
_LATENT_KEYS = ("latent_image", "samples", "latent", "latents", "pixels", "image", "images", "latent_in")


def is_sampler(cls: str, ins: dict[str, Any]) -> bool:
    """Core samplers by name; custom ones by shape: seed *and* steps inputs plus a model/prompt/guider to sample
    with (KSampler (Efficient), FaceDetailer, UltimateSDUpscale, KSamplerAdvanced //Inspire...). Seed-only
    nodes (wildcard processors, TIPO, seed widgets) are not samplers."""
    if cls in KNOWN_SAMPLERS:
        return True
    if "save" in cls.lower():  # prompt savers (SDPromptSaver) take seed/steps/positive to *record* them
        return False
    seeded = "seed" in ins or "noise_seed" in ins
    return seeded and "steps" in ins and any(k in ins for k in ("model", "positive", "guider", "basic_pipe", "pipe"))


@dataclass
class _Pass:
    node_id: str
    sp: SamplerPass
    latent: str | None = None  # "empty" | "image" | "sampler" | None
    width: int | None = None
    height: int | None = None
    init_image: str | None = None
    loras: list[LoRA] = field(default_factory=list)
    guidance: float | None = None
    upstream: set[str] = field(default_factory=set)


def _sigmas(g: Graph, v: Any) -> dict[str, Any]:
    """steps/scheduler/denoise from a sigmas chain (BasicScheduler, SDTurboScheduler, split/flip nodes...)."""
    link = g.target(v)
    for _ in range(MAX_DEPTH):
        if link is None:
            return {}
        ins = g.inputs(link[0])
        if "steps" in ins:
            cls = g.cls(link[0])
            return {"steps": to_int(g.scalar(ins["steps"], "steps")),
                    "scheduler": to_str(g.scalar(ins["scheduler"], "scheduler")) if "scheduler" in ins else cls,
                    "denoise": to_float(g.scalar(ins.get("denoise"), "denoise"))}
        link = g.target(ins.get("sigmas"))
    return {}


def _latent(g: Graph, v: Any, samplers: set[str]) -> tuple[str | None, int | None, int | None, str | None]:
    """Where a sampler's latent comes from: ("empty", w, h) / ("image", init image) / ("sampler",) / unknown."""
    link, seen = g.target(v), set()
    while link is not None and link[0] not in seen and len(seen) < MAX_DEPTH:
        nid = link[0]
        seen.add(nid)
        if nid in samplers:
            return "sampler", None, None, None
        ins, cls = g.inputs(nid), g.cls(nid)
        loads = "loadimage" in cls.lower().replace(" ", "")
        if loads or (isinstance(ins.get("image"), str) and "load" in cls.lower()):
            return "image", None, None, to_str(ins.get("image"))
        w = next((g.scalar(ins[k], "width") for k in _WIDTH_KEYS if k in ins), None)
        h = next((g.scalar(ins[k], "height") for k in _HEIGHT_KEYS if k in ins), None)
        if "empty" in cls.lower() or "batch_size" in ins or (w is not None and h is not None and "latent" in cls.lower()):
            return "empty", to_int(w), to_int(h), None
        link = next((g.target(ins[k]) for k in _LATENT_KEYS if g.target(ins.get(k)) is not None), None)
    return None, None, None, None


def _sampler_pass(g: Graph, nid: str, samplers: set[str]) -> _Pass:
    ins, cls = g.inputs(nid), g.cls(nid)
    model_v, pos_v, neg_v, cfg_v = ins.get("model"), ins.get("positive"), ins.get("negative"), ins.get("cfg")
    guider = g.target(ins.get("guider"))
    if guider is not None:  # SamplerCustomAdvanced: model, prompts and cfg live on the guider
        gins = g.inputs(guider[0])
        model_v = gins.get("model", model_v)
        pos_v = next((gins[k] for k in ("positive", "conditioning", "cond1") if k in gins), None)
        neg_v = gins.get("negative")
        cfg_v = gins.get("cfg", cfg_v)
    seed_v = ins["seed"] if "seed" in ins else ins.get("noise_seed", ins.get("noise"))
    sig = _sigmas(g, ins.get("sigmas")) if "sigmas" in ins else {}
    sampler = to_str(g.scalar(ins["sampler_name"], "sampler_name")) if "sampler_name" in ins else None
    sampler_link = g.target(ins.get("sampler"))
    if sampler is None and sampler_link is not None:
        sins = g.inputs(sampler_link[0])
        sampler = (to_str(g.scalar(sins["sampler_name"], "sampler_name")) if "sampler_name" in sins
                   else g.cls(sampler_link[0]))
    state: dict[str, Any] = {}
    model, loras = g.model_chain(model_v)
    positive = g.conditioning_text(pos_v, state)
    negative = g.conditioning_text(neg_v, {})
    steps = to_int(g.scalar(ins["steps"], "steps")) if "steps" in ins else sig.get("steps")
    sp = SamplerPass(
        node_id=nid, node_type=cls, seed=to_int(g.scalar(seed_v, "seed")), steps=steps,
        cfg=to_float(g.scalar(cfg_v, "cfg")), sampler=sampler,
        scheduler=to_str(g.scalar(ins["scheduler"], "scheduler")) if "scheduler" in ins else sig.get("scheduler"),
        denoise=to_float(g.scalar(ins["denoise"], "denoise")) if "denoise" in ins else sig.get("denoise"),
        model=model, positive=positive, negative=negative,
    )
    latent, w, h, init = _latent(g, next((ins[k] for k in ("latent_image", "latent") if k in ins), None), samplers)
    return _Pass(nid, sp, latent, w, h, init, loras, to_float(state.get("guidance")))


def _upstream_samplers(g: Graph, nid: str, samplers: set[str]) -> set[str]:
    """Every other sampler this one (transitively) takes any input from."""
    found: set[str] = set()
    stack, seen = [nid], {nid}
    while stack:
        for v in g.inputs(stack.pop()).values():
            link = g.linked(v)
            if link is not None and link[0] not in seen:
                seen.add(link[0])
                if link[0] in samplers:
                    found.add(link[0])
                stack.append(link[0])
    return found


def _decoder_vae(g: Graph, nid: str) -> str | None:
    for cid, key in g.consumers(nid):
        if key == "samples":
            vae = g.linked(g.inputs(cid).get("vae"))
            if vae is not None:
                name = g.inputs(vae[0]).get("vae_name")
                if isinstance(name, str) and name not in ("", "None", "Baked VAE"):
                    return name
    return None


#: Samplers of one graph taken into account (in node order): real workflows have a handful, and the walk between
#: them grows with their square (a crafted graph of thousands would outlast the pool's time limit).
MAX_SAMPLERS = 64


def passes(graph: dict[str, Any]) -> tuple[Graph, list[_Pass]]:
    g = Graph(graph)
    samplers = [nid for nid in g.nodes if is_sampler(g.cls(nid), g.inputs(nid))][:MAX_SAMPLERS]
    ids = set(samplers)
    out = [_sampler_pass(g, nid, ids) for nid in samplers]
    for p in out:
        p.upstream = _upstream_samplers(g, p.node_id, ids)
    return g, out


def pick_main(ps: list[_Pass]) -> _Pass:
    """The main pass; see the module docstring for the rule."""
    heads = [p for p in ps if not p.upstream] or ps

    def rank(item: tuple[int, _Pass]) -> tuple[bool, bool, int, int, int]:
        i, p = item
        built_on = sum(1 for q in ps if p.node_id in q.upstream)
        connected = p.sp.model is not None or p.sp.positive is not None
        return connected, p.latent == "empty", built_on, p.sp.steps or 0, -i

    return max(enumerate(heads), key=rank)[1]


def generation_from_graph(prompt: dict[str, Any] | None, workflow: dict[str, Any] | None, source: str,
                          name: str = "comfyui") -> Generation:
    """A :class:`Generation` from the API graph, or from the workflow converted to one when there is no graph."""
    graph = prompt if prompt is not None else workflow_to_api(workflow or {})
    g, ps = passes(graph)
    gen = Generation(generator=name, source=source, parser=parser_id(name))
    if prompt is not None:
        gen.documents["prompt"] = prompt
    if workflow is not None:
        gen.documents["workflow"] = workflow
    if prompt is None:
        gen.extra["from_workflow"] = True
    gen.passes = [p.sp for p in ps]
    if not ps:
        return gen
    main = pick_main(ps)
    chain = [main] + [p for p in ps if main.node_id in p.upstream]
    sp = main.sp
    gen.model, gen.seed, gen.steps, gen.cfg = sp.model, sp.seed, sp.steps, sp.cfg
    gen.sampler, gen.scheduler, gen.denoise = sp.sampler, sp.scheduler, sp.denoise
    gen.positive, gen.negative = sp.positive, sp.negative
    sized = next((p for p in [main, *ps] if p.width is not None and p.height is not None), None)
    if sized is not None:
        gen.width, gen.height = sized.width, sized.height
    seen_loras: set[str] = set()
    for p in chain:
        for lora in p.loras:
            if lora.name not in seen_loras:
                seen_loras.add(lora.name)
                gen.loras.append(lora)
    gen.vae = next((v for v in (_decoder_vae(g, p.node_id) for p in reversed(chain)) if v), None)
    gen.extra["main_pass"] = main.node_id
    if main.latent in ("empty", "image"):
        gen.extra["latent"] = "txt2img" if main.latent == "empty" else "img2img"
    if main.init_image:
        gen.extra["init_image"] = main.init_image
    if main.guidance is not None:
        gen.extra["guidance"] = main.guidance
    models = list(dict.fromkeys(p.sp.model for p in chain if p.sp.model))
    if len(models) > 1:
        gen.extra["models"] = models
    if g.cut:
        gen.extra["graph_cut"] = True
    return gen


def sources(c: Containers) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str] | None:
    """(prompt graph, workflow, source) from wherever this file keeps them; None if it has neither."""
    prompt, workflow = json_object(c.text.get("prompt")), json_object(c.text.get("workflow"))
    if prompt is not None or workflow is not None:
        return prompt, workflow, "png:prompt" if prompt is not None else "png:workflow"
    src = None
    for key, value in c.exif.items():
        head, sep, body = value.partition(":") if isinstance(value, str) else ("", "", "")
        label = head.strip().lower()
        if sep and label in ("prompt", "workflow") and (prompt if label == "prompt" else workflow) is None:
            doc = json_object(body)
            if doc is not None:
                if label == "prompt":
                    prompt, src = doc, f"exif:{key.rsplit('.', 1)[-1]}"
                else:
                    workflow, src = doc, src or f"exif:{key.rsplit('.', 1)[-1]}"
    if prompt is not None or workflow is not None:
        return prompt, workflow, src or "exif"
    doc = json_object(c.user_comment)
    if doc is not None and ("prompt" in doc or "workflow" in doc):
        prompt, workflow = json_object(doc.get("prompt")), json_object(doc.get("workflow"))
        if prompt is not None or workflow is not None:
            return prompt, workflow, "exif:UserComment"
    return None


def parse(c: Containers) -> Generation | None:
    found = sources(c)
    if found is None:
        return None
    prompt, workflow, source = found
    if prompt is None and not (isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list)):
        return None
    return generation_from_graph(prompt, workflow, source)

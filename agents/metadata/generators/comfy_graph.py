"""Walking a ComfyUI API-format graph: ``{node_id: {"class_type": str, "inputs": {name: literal | [node_id, slot]}}}``.

Custom nodes number in the thousands, so nothing here relies on a full list of class names. Instead each walk
asks what a node *looks like*: a text encoder has a text-like input and a ``clip``; a conditioning node has a
``conditioning``-like input; a node with both ``positive`` and ``negative`` inputs passes them through by output
slot (ControlNetApplyAdvanced, InpaintModelConditioning); a LoRA node has ``lora_name``; a loader has
``ckpt_name``/``unet_name``. Known class names only refine this (guiders, schedulers, noise sources).

Every walk carries a ``seen`` set and a depth bound, so cycles (which a hand-edited or broken graph can have) and
dangling links (to a node id that is not in the graph) end the walk instead of looping or raising.
"""

from __future__ import annotations

import re
from typing import Any

from agents.metadata.generators.coerce import to_float, to_str
from agents.metadata.model import LoRA

Link = tuple[str, int]
MAX_DEPTH = 64
#: Links one parse of a graph follows at most in its value walks (prompts, scalars, conditioning; not the walks
#: bounded by their own visited set, :meth:`Graph.linked`): a graph of a few thousand encoders combined, walked
#: for each of 64 samplers, took over a minute (a 79 KB PNG timed out three times, then was dead-lettered). Past
#: it, walks end as at a dangling link, the parse keeps what it found and says so (``extra["graph_cut"]``). A
#: real workflow of 1,500 nodes and 40 samplers follows about 100,000 links in all.
MAX_STEPS = 400_000

_TEXT_KEYS = ("populated_text", "text", "string", "value", "prompt", "text_g", "t5xxl", "clip_g", "clip_l",
              "text_l", "texts", "wildcard_text", "positive", "str", "string_field", "text_positive")
_CONCAT_PART = re.compile(r"^(?:string|text|str|input|prompt)[ _]?(?:\d+|[a-h])$", re.IGNORECASE)
#: ``<lora:name:weight...>`` in tag loaders' text; never spanning a ``<`` (see ``a1111._LORA_TAG``).
_LORA_TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?[^<>]*>")
_COND_KEY = re.compile(r"^(?:cond(?:itioning)?)(?:_|\d|$)", re.IGNORECASE)
_DELIMITER_KEYS = ("delimiter", "separator", "join_with", "sep")
_LOADER_KEYS = ("ckpt_name", "unet_name", "model_path", "base_ckpt_name", "gguf_name", "checkpoint")
_SCALAR_ALIASES: dict[str, tuple[str, ...]] = {
    "seed": ("seed", "noise_seed", "seed_value", "value", "int", "number", "seed_num"),
    "steps": ("steps", "value", "int", "number"),
    "cfg": ("cfg", "cfg_scale", "value", "float", "number"),
    "sampler_name": ("sampler_name", "sampler", "value", "string"),
    "scheduler": ("scheduler", "value", "string"),
    "denoise": ("denoise", "value", "float", "number"),
    "width": ("width", "value", "int", "number"),
    "height": ("height", "value", "int", "number"),
}


def as_link(v: Any) -> Link | None:
    """``[node_id, slot]`` -> (str id, slot); anything else None. Ids may be ints, "12" or "266:0" (subgraphs)."""
    if (isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], (str, int))
            and not isinstance(v[0], bool) and isinstance(v[1], int) and not isinstance(v[1], bool)):
        return str(v[0]), v[1]
    return None


def _name_of(v: Any) -> str | None:
    """A model/LoRA name: a string, or rgthree/pysssss' ``{"content": name, ...}`` wrapper."""
    if isinstance(v, dict):
        v = v.get("content") or v.get("name")
    return v if isinstance(v, str) and v and v != "None" else None


class Graph:
    """Read-only view of an API graph with link-following helpers; non-node entries (Civitai's "extra") skipped."""

    def __init__(self, prompt: dict[str, Any]) -> None:
        self.nodes: dict[str, dict[str, Any]] = {
            str(k): v for k, v in prompt.items()
            if isinstance(v, dict) and isinstance(v.get("class_type"), str) and isinstance(v.get("inputs", {}), dict)
        }
        self._consumers: dict[str, list[tuple[str, str]]] | None = None
        self.steps = 0

    def cls(self, nid: str) -> str:
        return self.nodes[nid]["class_type"]

    def inputs(self, nid: str) -> dict[str, Any]:
        return self.nodes[nid].get("inputs") or {}

    def linked(self, v: Any) -> Link | None:
        """The link in ``v`` if it points at a node that exists, not counted against ``MAX_STEPS``: for walks
        that visit each node once (their own visited set bounds them)."""
        link = as_link(v)
        return link if link is not None and link[0] in self.nodes else None

    def target(self, v: Any) -> Link | None:
        """The link in ``v`` if it points at a node that exists (dangling links read as absent, and every link
        once the parse has followed ``MAX_STEPS``)."""
        link = self.linked(v)
        if link is None:
            return None
        self.steps += 1
        return link if self.steps <= MAX_STEPS else None

    @property
    def cut(self) -> bool:
        """Whether walks were cut short by ``MAX_STEPS``: what they would have found is missing."""
        return self.steps > MAX_STEPS

    def consumers(self, nid: str) -> list[tuple[str, str]]:
        """(node id, input name) pairs fed by ``nid``; built once, lazily."""
        if self._consumers is None:
            index: dict[str, list[tuple[str, str]]] = {}
            for cid, node in self.nodes.items():
                for key, v in (node.get("inputs") or {}).items():
                    link = as_link(v)
                    if link is not None:
                        index.setdefault(link[0], []).append((cid, key))
            self._consumers = index
        return self._consumers.get(nid, [])

    def _single_link(self, nid: str) -> Link | None:
        """The only input of a pure pass-through node (Reroute, pipe unpackers); None if it has anything else."""
        ins = self.inputs(nid)
        if len(ins) == 1:
            return self.target(next(iter(ins.values())))
        return None

    # -- scalars ------------------------------------------------------------------------------------------------

    def scalar(self, v: Any, kind: str, seen: set[str] | None = None, depth: int = 0) -> Any:
        """A literal, or the literal a link leads to: the target node's input named like ``kind`` (or a generic
        alias: ``value``, ``int``...), followed through further links and pass-through nodes. Computed values
        (math nodes, counters, random generators) have no such input and resolve to None."""
        link = self.target(v)
        if link is None:
            return None if as_link(v) is not None else v
        seen = set() if seen is None else seen
        nid = link[0]
        if nid in seen or depth > MAX_DEPTH:
            return None
        seen.add(nid)
        ins = self.inputs(nid)
        lowered = {k.lower(): k for k in ins}
        for alias in _SCALAR_ALIASES.get(kind, (kind,)):
            key = lowered.get(alias)
            if key is not None:
                found = self.scalar(ins[key], kind, seen, depth + 1)
                if found is not None:
                    return found
        through = self._single_link(nid)
        return self.scalar(list(through), kind, seen, depth + 1) if through else None

    # -- text ---------------------------------------------------------------------------------------------------

    def text(self, v: Any, seen: set[str] | None = None, depth: int = 0) -> str | None:
        """A literal string, or the string a link produces: primitives, string nodes, concatenations (joined with
        their delimiter), wildcard processors (the populated text when the node keeps it, else the template)."""
        if isinstance(v, str):
            return v
        if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            return "\n".join(v)
        link = self.target(v)
        if link is None:
            return to_str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        seen = set() if seen is None else seen
        nid = link[0]
        if nid in seen or depth > MAX_DEPTH:
            return None
        seen.add(nid)
        ins = self.inputs(nid)
        cls = self.cls(nid).lower()
        parts = sorted((k for k in ins if _CONCAT_PART.match(k)), key=_natural)
        if len(parts) >= 2 or "concat" in cls or "merge string" in cls or "join" in cls:
            if "batch" in cls and parts:
                return self.text(ins[parts[0]], seen, depth + 1)
            delimiter = next((ins[k] for k in ins if k.lower() in _DELIMITER_KEYS and isinstance(ins[k], str)), "")
            delimiter = delimiter.replace("\\n", "\n")
            texts = [self.text(ins[k], seen, depth + 1) for k in parts]
            joined = [t for t in texts if t]
            if joined:
                return delimiter.join(joined)
        lowered = {k.lower(): k for k in ins}
        for name in _TEXT_KEYS:
            key = lowered.get(name)
            if key is not None:
                found = self.text(ins[key], seen, depth + 1)
                if found is not None:
                    return found
        through = self._single_link(nid)
        return self.text(list(through), seen, depth + 1) if through else None

    # -- conditioning -------------------------------------------------------------------------------------------

    def encoder_text(self, nid: str, seen: set[str], depth: int) -> str | None:
        """The prompt of a text-encoder node; multi-encoder nodes (SDXL g/l, Flux t5/l, SD3) join distinct texts.
        Each text is walked afresh from the encoder (two encoders may share a text node): not with a copy of the
        conditioning walk's ``seen``, which made thousands of encoders combined quadratic."""
        ins = self.inputs(nid)
        multi = [k for k in ("t5xxl", "text_g", "clip_g", "text_l", "clip_l") if k in ins]
        if multi and "text" not in ins:
            texts: list[str] = []
            for k in multi:
                t = self.text(ins[k], {nid}, depth + 1)
                if t and t not in texts:
                    texts.append(t)
            return "\n".join(texts) if texts else ("" if any(ins[k] == "" for k in multi) else None)
        lowered = {k.lower(): k for k in ins}
        for name in _TEXT_KEYS:
            key = lowered.get(name)
            if key is not None:
                t = self.text(ins[key], {nid}, depth + 1)
                if t is not None:
                    return t
        return None

    def conditioning_text(self, v: Any, state: dict[str, Any], seen: set[str] | None = None,
                          depth: int = 0) -> str | None:
        """Follow a conditioning link back to the text encoder(s) it came from; combine nodes join with "\\n".
        ``state`` collects side facts met on the way (Flux guidance)."""
        link = self.target(v)
        if link is None:
            return None
        seen = set() if seen is None else seen
        nid, slot = link
        if nid in seen or depth > MAX_DEPTH:
            return None
        seen.add(nid)
        ins = self.inputs(nid)
        cls = self.cls(nid)
        if "guidance" in ins and "guidance" not in state:
            state["guidance"] = to_float(self.scalar(ins["guidance"], "cfg"))
        if "zeroout" in cls.lower().replace(" ", ""):
            return ""
        if "positive" in ins and "negative" in ins:
            if isinstance(ins["positive"], str) and isinstance(ins["negative"], str):
                return ins["negative"] if slot == 2 else ins["positive"]  # loaders with prompts (Efficient Loader)
            negative_slot = 2 if "loader" in cls.lower() else 1
            return self.conditioning_text(ins["negative" if slot == negative_slot else "positive"], state, seen,
                                          depth + 1)
        cond_keys = [k for k in ins if _COND_KEY.search(k) and self.target(ins[k]) is not None]
        is_encoder = ("encode" in cls.lower() or any(k in ins for k in ("clip", "T5", "chatglm3_model"))) and any(
            k.lower() in _TEXT_KEYS for k in ins)
        if is_encoder and not cond_keys:
            return self.encoder_text(nid, seen, depth)
        if cond_keys:
            keys = ["conditioning"] if "conditioning" in cond_keys else sorted(cond_keys, key=_natural)
            if "conditioning_to" in cond_keys:
                keys = ["conditioning_to"] + [k for k in cond_keys if k != "conditioning_to"]
            texts = [self.conditioning_text(ins[k], state, seen, depth + 1) for k in keys]
            kept = [t for t in texts if t]
            return "\n".join(kept) if kept else next((t for t in texts if t is not None), None)
        if is_encoder:
            return self.encoder_text(nid, seen, depth)
        through = self._single_link(nid)
        return self.conditioning_text(list(through), state, seen, depth + 1) if through else None

    # -- model chain --------------------------------------------------------------------------------------------

    def loras_of(self, nid: str, seen: set[str], depth: int = 0) -> list[LoRA]:
        """LoRAs one node applies: ``lora_name`` (+ strengths), numbered stacks (CR LoRA Stack), rgthree Power
        Lora Loader's ``lora_N`` dicts, ``<lora:...>`` tags of tag loaders, and linked ``lora_stack`` inputs."""
        ins = self.inputs(nid)
        out: list[LoRA] = []
        name = _name_of(ins.get("lora_name"))
        if name:
            out.append(LoRA(name=name,
                            weight=to_float(_first(ins, "strength_model", "lora_weight", "model_weight",
                                                   "strength", "lora_model_strength")),
                            clip_weight=to_float(_first(ins, "strength_clip", "clip_weight", "clip_strength",
                                                        "lora_clip_strength"))))
        for key, value in ins.items():
            m = re.match(r"^lora_name_(\d+)$", key)
            if m and _name_of(value):
                i = m.group(1)
                if str(ins.get(f"switch_{i}", "On")).lower() in ("off", "false"):
                    continue
                out.append(LoRA(name=_name_of(value) or "",
                                weight=to_float(_first(ins, f"model_weight_{i}", f"lora_wt_{i}", f"strength_{i}")),
                                clip_weight=to_float(_first(ins, f"clip_weight_{i}", f"clip_str_{i}"))))
            elif re.match(r"^lora_\d+$", key) and isinstance(value, dict) and value.get("on", True):
                lname = _name_of(value.get("lora"))
                if lname:
                    out.append(LoRA(name=lname, weight=to_float(value.get("strength")),
                                    clip_weight=to_float(value.get("strengthTwo", value.get("strength")))))
        if "lora" in self.cls(nid).lower() and isinstance(ins.get("text"), (str, list)):
            tags = self.text(ins.get("text"), set(seen), depth + 1) or ""
            for tname, weight in _LORA_TAG.findall(tags):
                out.append(LoRA(name=tname, weight=to_float(weight), clip_weight=to_float(weight)))
        stack = self.target(ins.get("lora_stack"))
        if stack is not None and stack[0] not in seen and depth < MAX_DEPTH:
            seen.add(stack[0])
            out.extend(self.loras_of(stack[0], seen, depth + 1))
        return out

    def model_chain(self, v: Any, seen: set[str] | None = None) -> tuple[str | None, list[LoRA]]:
        """Follow ``model`` links to the loader: (checkpoint/UNet name, LoRAs met on the way, nearest first)."""
        seen = set() if seen is None else seen
        loras: list[LoRA] = []
        link = self.target(v)
        for _ in range(MAX_DEPTH):
            if link is None or link[0] in seen:
                break
            nid = link[0]
            seen.add(nid)
            ins = self.inputs(nid)
            loras.extend(self.loras_of(nid, seen))
            for key in _LOADER_KEYS:
                name = _name_of(ins.get(key)) or (self.text(ins.get(key)) if self.target(ins.get(key)) else None)
                if name:
                    return name, loras
            if "model_name" in ins and "loader" in self.cls(nid).lower() and "upscale" not in self.cls(nid).lower():
                return _name_of(ins["model_name"]), loras
            link = None
            for key in ("model", "unet", "model1", "base_model", "MODEL"):
                link = self.target(ins.get(key))
                if link is not None:
                    break
            if link is None:
                link = next((self.target(x) for k, x in ins.items()
                             if "model" in k.lower() and self.target(x) is not None), None)
        return None, loras


def _first(ins: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in ins:
            return ins[k]
    return None


def _natural(key: str) -> tuple[str, int, str]:
    """Sort string_2 before string_10: by the text before the trailing digits, then by their value (the count
    of significant digits, then the digits). Neither a regex (``^(.*?)(\\d+)$`` took quadratic time on a long key
    of digits) nor ``int`` (which refuses more than 4300 digits) is given a hostile key's length."""
    head = key.rstrip("0123456789")
    if len(head) == len(key):
        return key, -1, key
    digits = key[len(head):].lstrip("0")
    return head, len(digits), digits


"""AUTOMATIC1111-style "parameters" text (also Forge, SD.Next, Fooocus' a1111 scheme, Civitai's site generator).

The format is three parts: positive prompt lines, optional ``Negative prompt:`` lines, and one settings line of
``Key: value`` pairs separated by commas. Values containing commas or colons are JSON-quoted
(``Lora hashes: "a: 1, b: 2"``); Civitai writes raw JSON arrays (``Civitai resources: [{...}]``); extensions
append lines after the settings line (Dynamic Prompts' ``Template:``). So the settings line is the *last* line
that parses into at least three pairs with a core key, not blindly the last line, and values are read with a
small tokenizer that honours quotes and brackets rather than a split on ",".

Field policy (documented because the text is ambiguous):
- ``width``/``height`` come from ``Size`` as written; the same string is kept in ``extra['size_param']``. The
  pixels may differ (hires fix, crops, grids): trusting the pixels is the container layer's job, not ours.
- ``Denoising strength`` becomes top-level ``denoise`` only without hires keys (img2img). With ``Hires ...``
  keys it belongs to the hires pass: the result then has two passes ("txt2img" and "hires") and top-level
  ``denoise`` stays None.
- LoRAs come from ``<lora:name:weight>`` tags in the prompt, then names only seen in ``Lora hashes``.
- Every other key is kept verbatim in ``extra`` under its own name.
"""

from __future__ import annotations

import json
import re

from agents.metadata.generators.coerce import (
    load_json, parse_size, parser_id, to_float, to_int, without_surrogates,
)
from agents.metadata.model import Containers, Generation, LoRA, SamplerPass

_KEY = re.compile(r"(\w[\w \-/]*?):\s*")
#: A tag ends at its ``>`` and never spans a ``<``: with ``[^>]*`` alone, every unclosed ``<lora:`` scanned to the
#: end of the text (quadratic: a 200-KB prompt of them took minutes, past the pool's time limit).
_LORA_TAG = re.compile(r"<(?:lora|lyco):([^:<>]+)(?::([^:<>]*))?(?::[^<>]*)?>", re.IGNORECASE)
_CORE_KEYS = frozenset({"Steps", "Seed", "Sampler", "Size", "CFG scale", "Model", "Model hash"})
_MAPPED = frozenset(
    {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model", "Model hash", "VAE",
     "Denoising strength"}
)
_HIRES = ("Hires upscale", "Hires steps", "Hires upscaler", "Hires resize")


def _read_value(line: str, i: int) -> tuple[str, int]:
    """Read one value starting at ``i``; return it and the index just past it (at a comma or the end)."""
    n = len(line)
    if i < n and line[i] == '"':
        j = i + 1
        while j < n and line[j] != '"':
            j += 2 if line[j] == "\\" else 1
        raw = line[i : j + 1]
        try:
            value = without_surrogates(json.loads(raw))  # "\\ud800" would fail the event's encoding
        except ValueError:
            value = raw.strip('"')
        k = line.find(",", j + 1)
        return str(value), n if k < 0 else k
    if i < n and line[i] in "[{":
        depth, j, in_str = 0, i, False
        while j < n:
            ch = line[j]
            if in_str:
                if ch == "\\":
                    j += 1
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        k = line.find(",", j)
        return line[i : j + 1].strip(), n if k < 0 else k
    k = line.find(",", i)
    k = n if k < 0 else k
    return line[i:k].strip(), k


def split_settings(line: str) -> list[tuple[str, str]]:
    """``Key: value, Key: "quoted, value"`` -> pairs in order; comma-separated junk joins the previous value."""
    pairs: list[tuple[str, list[str]]] = []  # each value's parts, joined once at the end (not once per part)
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " ,\t":
            i += 1
        if i >= n:
            break
        m = _KEY.match(line, i)
        if m is None:
            k = line.find(",", i)
            k = n if k < 0 else k
            if pairs:
                pairs[-1][1].append(line[i:k].strip())
            i = k
            continue
        value, i = _read_value(line, m.end())
        pairs.append((m.group(1).strip(), [value]))
    return [(key, ", ".join(parts)) for key, parts in pairs]


def parse_parameters(text: str) -> tuple[str | None, str | None, dict[str, str], list[str]] | None:
    """Split A1111 text into (positive, negative, settings, trailing lines); None if it is not A1111 text.

    ``negative`` is "" when a ``Negative prompt:`` line is present but empty, None when there is none.
    """
    lines = text.strip().replace("\r\n", "\n").split("\n")
    settings: dict[str, str] = {}
    cut = len(lines)
    for idx in range(len(lines) - 1, -1, -1):
        pairs = split_settings(lines[idx])
        if len(pairs) >= 3 and any(k in _CORE_KEYS for k, _ in pairs):
            settings = dict(pairs)
            cut = idx
            break
    trailing = [ln for ln in lines[cut + 1 :] if ln.strip()] if settings else []
    positive: list[str] = []
    negative: list[str] | None = None
    for line in lines[:cut]:
        if negative is None and line.strip().startswith("Negative prompt:"):
            rest = line.strip()[len("Negative prompt:") :]
            negative = [rest.removeprefix(" ")]
        elif negative is not None:
            negative.append(line)
        else:
            positive.append(line)
    if not settings and negative is None:
        return None
    # Verbatim apart from the line breaks that separate the parts: prompts are data (trailing spaces included).
    pos = "\n".join(positive).strip("\n")
    neg = "\n".join(negative).strip("\n") if negative is not None else None
    return (pos if pos.strip() else None), neg, settings, trailing


def generator_name(settings: dict[str, str]) -> str:
    """Which A1111 family member wrote the text, from its fingerprints."""
    version = settings.get("Version", "")
    if settings.get("App", "").lower().replace(" ", "") == "sd.next":
        return "sdnext"
    if re.match(r"f\d", version) or version.lower().startswith("forge"):
        return "forge"
    if version.lower().startswith("fooocus"):
        return "fooocus"
    if not version and ("Civitai resources" in settings or "Civitai metadata" in settings):
        return "civitai"
    return "a1111"


def loras_from(prompt: str | None, settings: dict[str, str]) -> list[LoRA]:
    """LoRAs from prompt tags (with weights), then names that only ``Lora hashes`` mentions."""
    out: list[LoRA] = []
    seen: set[str] = set()
    for name, weight, *_ in _LORA_TAG.findall(prompt or ""):
        name = name.strip()
        if name and name not in seen:
            seen.add(name)
            out.append(LoRA(name=name, weight=to_float(weight) if weight else None))
    for pair in (settings.get("Lora hashes") or "").split(","):
        name = pair.partition(":")[0].strip()
        if name and name not in seen:
            seen.add(name)
            out.append(LoRA(name=name))
    return out


def _extra_value(key: str, value: str) -> object:
    if value[:1] in "[{":
        try:
            return without_surrogates(json.loads(value))
        except (ValueError, RecursionError):  # not JSON; JSON nested deeper than Python recurses
            return value
    return value


def generation_from_text(text: str, source: str, generator: str | None = None) -> Generation | None:
    """A :class:`Generation` from A1111-format text; None when the text is not in that format."""
    parsed = parse_parameters(text)
    if parsed is None:
        return None
    positive, negative, settings, trailing = parsed
    width, height = parse_size(settings.get("Size"))
    hires = any(k in settings for k in _HIRES)
    name = generator or generator_name(settings)
    gen = Generation(
        generator=name,
        source=source,
        parser=parser_id("a1111"),
        model=settings.get("Model"),
        model_hash=settings.get("Model hash"),
        loras=loras_from(positive, settings),
        vae=settings.get("VAE"),
        seed=to_int(settings.get("Seed")),
        steps=to_int(settings.get("Steps")),
        cfg=to_float(settings.get("CFG scale")),
        sampler=settings.get("Sampler"),
        scheduler=settings.get("Schedule type"),
        denoise=None if hires else to_float(settings.get("Denoising strength")),
        width=width,
        height=height,
        positive=positive,
        negative=negative,
    )
    for key, value in settings.items():
        if key not in _MAPPED or (key == "Denoising strength" and hires):
            gen.extra[key] = _extra_value(key, value)
    if "Size" in settings:
        gen.extra["size_param"] = settings["Size"]
    if trailing:
        gen.extra["trailing_lines"] = trailing
    base = SamplerPass(node_type="txt2img" if hires or gen.denoise is None else "img2img", seed=gen.seed,
                       steps=gen.steps, cfg=gen.cfg, sampler=gen.sampler, scheduler=gen.scheduler,
                       denoise=gen.denoise, model=gen.model, positive=positive, negative=negative)
    gen.passes.append(base)
    if hires:
        gen.passes.append(
            SamplerPass(node_type="hires", seed=gen.seed,
                        steps=to_int(settings.get("Hires steps")) or gen.steps,
                        cfg=to_float(settings.get("Hires CFG Scale")) or gen.cfg,
                        sampler=settings.get("Hires sampler") or gen.sampler,
                        scheduler=settings.get("Hires schedule type") or gen.scheduler,
                        denoise=to_float(settings.get("Denoising strength")),
                        model=settings.get("Hires checkpoint") or gen.model,
                        positive=settings.get("Hires prompt") or positive,
                        negative=settings.get("Hires negative prompt") or negative)
        )
    gen.documents["parameters"] = text
    return gen


def _is_text(v: object) -> bool:
    """Text to read as A1111's, not JSON (which other generators' parsers read). Only text that *decodes* as JSON
    is left out: a prompt may well begin like JSON, with A1111's prompt editing (``[fox:wolf:10]``, ``[word]``) or
    NovelAI-style emphasis (``{masterpiece}``), and such a file lost its whole generation (prompt, seed, model)."""
    return isinstance(v, str) and bool(v.strip()) and load_json(v) is None


def parse(c: Containers) -> Generation | None:
    """A1111 text from the places tools put it, best first: PNG ``parameters``, EXIF UserComment, stealth alpha
    bits, JPEG COM. Other copies are kept in ``documents`` (some files carry the same text twice)."""
    scheme = c.text.get("fooocus_scheme", "").strip().lower()
    generator = "fooocus" if scheme == "a1111" else None
    candidates = [
        ("png:parameters", c.text.get("parameters")),
        ("exif:UserComment", c.user_comment),
        ("stealth:alpha", c.text.get("stealth:parameters")),
    ]
    candidates += [("jpeg:COM", t) for t in c.comments if "Steps: " in t]
    found = [(src, t) for src, t in candidates if _is_text(t)]
    for i, (src, text) in enumerate(found):
        gen = generation_from_text(text, src, generator)
        if gen is None:
            continue
        for other_src, other in found[i + 1 :]:
            if other.strip() != text.strip():
                gen.documents[other_src] = other
            else:  # same text stored twice (tEXt + stealth alpha): say so without a second copy
                gen.extra.setdefault("duplicate_sources", []).append(other_src)
        return gen
    return None

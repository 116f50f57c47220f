"""Generator layer: pure functions from a :class:`Containers` to a normalised :class:`Generation`.

:func:`detect` tries the parsers in this order; the first that recognises its markers wins:

1. ``comfyui``   — ``prompt``/``workflow`` (PNG text, WebP EXIF "prompt:"/"workflow:", JPEG UserComment JSON).
   Structured graphs are the richest source, and some custom save nodes *also* write an A1111 ``parameters``
   chunk: the graph then supplies the fields, the A1111 text fills what the graph leaves unknown (recorded in
   ``extra['filled_from_parameters']``) and is kept whole in ``extra['parameters']``/``documents``.
2. ``civitai``   — a ComfyUI graph stored directly in UserComment (Civitai's site); before A1111, which would
   otherwise look at the same UserComment.
3. ``swarmui``   — JSON with ``sui_image_params``; 4. ``fooocus`` — JSON ``parameters`` + ``fooocus_scheme``.
   Both use the A1111 key ``parameters`` for JSON, so both run before A1111.
5. ``invokeai``  — ``invokeai_metadata`` / ``sd-metadata`` / ``Dream`` / ``invokeai_graph`` (PNG or JPEG COM).
6. ``novelai``   — ``Software`` = NovelAI (or the same keys as stealth JSON).
7. ``drawthings``— XMP CreatorTool "Draw Things" (its description is A1111-like, so before A1111).
8. ``a1111``     — A1111/Forge/SD.Next/Civitai text: PNG ``parameters``, UserComment, stealth alpha, COM.

A parser that raises on some odd file does not sink the file: the next parsers still run, and if none
recognises the file, a bare :class:`Generation` names the failed parser with ``extra['parser_error']``, so the
asset stays indexable and the bug shows up in the catalog (to be re-parsed after a fix).
"""

from __future__ import annotations

from collections.abc import Callable

from agents.metadata.generators import (
    a1111,
    civitai,
    comfyui,
    drawthings,
    fooocus,
    invokeai,
    novelai,
    swarmui,
)
from agents.metadata.generators.coerce import parser_id
from agents.metadata.model import Containers, Generation

__all__ = ["PARSERS", "detect"]

Parser = Callable[[Containers], "Generation | None"]

#: (name, parse function) in priority order.
PARSERS: tuple[tuple[str, Parser], ...] = (
    ("comfyui", comfyui.parse),
    ("civitai", civitai.parse),
    ("swarmui", swarmui.parse),
    ("fooocus", fooocus.parse),
    ("invokeai", invokeai.parse),
    ("novelai", novelai.parse),
    ("drawthings", drawthings.parse),
    ("a1111", a1111.parse),
)

_FILLABLE = ("model", "model_hash", "vae", "seed", "steps", "cfg", "sampler", "scheduler", "denoise", "width",
             "height", "positive", "negative")


def _summary(gen: Generation) -> dict[str, object]:
    """The secondary generation's facts as a JSON-able dict (non-empty fields only)."""
    out: dict[str, object] = {"generator": gen.generator, "source": gen.source}
    for name in _FILLABLE:
        value = getattr(gen, name)
        if value is not None:
            out[name] = value
    if gen.loras:
        out["loras"] = [{"name": x.name, "weight": x.weight} for x in gen.loras]
    if gen.extra:
        out["extra"] = gen.extra
    return out


def _merge_parameters(primary: Generation, secondary: Generation) -> None:
    filled = []
    for name in _FILLABLE:
        if getattr(primary, name) is None and getattr(secondary, name) is not None:
            setattr(primary, name, getattr(secondary, name))
            filled.append(name)
    if not primary.loras and secondary.loras:
        primary.loras = list(secondary.loras)
        filled.append("loras")
    primary.extra["parameters"] = _summary(secondary)
    if filled:
        primary.extra["filled_from_parameters"] = filled
    for key, value in secondary.documents.items():
        primary.documents.setdefault(key, value)


def detect(c: Containers) -> Generation | None:
    """The generation parameters this file records, or None when it records none."""
    errors: list[tuple[str, Exception]] = []
    for name, parse in PARSERS:
        try:
            gen = parse(c)
        except Exception as exc:  # noqa: BLE001 - one parser's bug must not hide the others' results
            errors.append((name, exc))
            continue
        if gen is None:
            continue
        if name == "comfyui":
            try:
                alt = a1111.parse(c)
            except Exception as exc:  # noqa: BLE001
                alt = None
                errors.append(("a1111", exc))
            if alt is not None:
                _merge_parameters(gen, alt)
        if errors:
            gen.extra["parser_errors"] = {n: f"{type(e).__name__}: {e}" for n, e in errors}
        return gen
    if errors:
        name, exc = errors[0]
        return Generation(generator=name, source="unknown", parser=parser_id(name),
                          extra={"parser_error": f"{type(exc).__name__}: {exc}"})
    return None

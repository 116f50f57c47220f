"""Tier 2's unit of work: read everything a file's metadata holds, normalise it, keep it, summarise it.

:func:`index_file` runs in a pool process. It reads the containers losslessly (:mod:`agents.metadata.containers`),
detects the generator's parameters (:mod:`agents.metadata.generators`), writes the full record as a JSON document
under the data directory (content-addressed and versioned: ``metadata/ab/<id>.v<parser>.json``, written
atomically), and returns the searchable summary that travels in ``AssetIndexed``.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agents.atomic_write import write_atomically
from agents.hashing import hash_file, source_error
from agents.metadata.containers import read_containers
from agents.metadata.generators import detect
from agents.metadata.model import PARSER_VERSION, Containers, Generation
from streams.errors import SourceChanged

#: Camera / authoring fields for search and display: summary name -> where to look, first found wins. Where EXIF,
#: IPTC and XMP overlap they are read as the Metadata Working Group's guidance says (as exiftool's MWG tags do):
#: EXIF first, then XMP, then IPTC — IPTC before XMP when the file's IPTC digest says that IPTC was edited after
#: the XMP was written (see :func:`_places`). ``png``: the PNG text keywords of the PNG specification (whatever
#: their case: ImageMagick writes them in lower case); ``XP*``: what Windows' file properties write into EXIF.
CAMERA_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "make": (("exif", "Exif.Image.Make"),),
    "model": (("exif", "Exif.Image.Model"),),
    "lens": (("exif", "Exif.Photo.LensModel"), ("exif", "Exif.Photo.LensMake")),
    "datetime_original": (("exif", "Exif.Photo.DateTimeOriginal"), ("exif", "Exif.Image.DateTime")),
    "software": (("exif", "Exif.Image.Software"), ("xmp", "Xmp.xmp.CreatorTool"), ("png", "software")),
    "artist": (("exif", "Exif.Image.Artist"), ("xmp", "Xmp.dc.creator"), ("iptc", "Iptc.Application2.Byline"),
               ("png", "author"), ("exif", "Exif.Image.XPAuthor")),
    "description": (("exif", "Exif.Image.ImageDescription"), ("xmp", "Xmp.dc.description"),
                    ("iptc", "Iptc.Application2.Caption"), ("png", "description"), ("exif", "Exif.Image.XPSubject")),
    "copyright": (("exif", "Exif.Image.Copyright"), ("xmp", "Xmp.dc.rights"), ("iptc", "Iptc.Application2.Copyright"),
                  ("png", "copyright")),
    "keywords": (("xmp", "Xmp.dc.subject"), ("iptc", "Iptc.Application2.Keywords"), ("exif", "Exif.Image.XPKeywords")),
    "title": (("xmp", "Xmp.dc.title"), ("iptc", "Iptc.Application2.ObjectName"), ("png", "title"),
              ("exif", "Exif.Image.XPTitle")),
    "city": (("xmp", "Xmp.photoshop.City"), ("iptc", "Iptc.Application2.City")),
}
#: ComfyUI WebP savers put JSON into Make/Model: that is not a camera.
_NOT_A_CAMERA = ("prompt:", "workflow:", "{")
#: A generator's record kept as ``name: {json}`` (ComfyUI's "prompt:", InvokeAI's "invokeai_graph: " in JPEG COM).
_NAMED_RECORD = re.compile(r"[\w-]+:\s*(?=[{\[])")
#: Text a generator keeps its parameters in, as A1111 writes them: "Steps: 20, Sampler: ..."
_A1111_MARK = re.compile(r"\bSteps: \d+,")
#: Free-text fields, where a generator may keep a copy of its prompt (NovelAI's Description is its prompt).
_FREE_TEXT = frozenset({"description", "title"})
#: A prompt shorter than this is taken for a copy only when the whole text is the prompt: "a cat" in a caption
#: about a cat is the person's words.
_PROMPT_COPY_MIN = 20

#: Bounds of the ``AssetIndexed`` event, whatever the file holds (the whole of it is in the metadata document):
#: an event must fit in one produce request (1 MB), or tier 2 fails for good on a readable file. In characters,
#: sized for the worst case of 6 bytes each (a control character, escaped in JSON): prompts 2 x 24 Ki, warnings
#: 20 x 500, LoRA names 100 x 200, model names 20 x 500, the camera's 12 fields x 2000 and 6 other names x 500 make
#: at most ~0.7 MB.
PROMPT_CHARS = 24 * 1024
FIELD_CHARS = 500
WARNINGS = 20
LORAS = 100
LORA_CHARS = 200
MODELS = 20
CAMERA_CHARS = 2000


@dataclass(frozen=True)
class Indexed:
    """What :func:`index_file` found; ``summary`` holds the ``AssetIndexed`` fields."""

    metadata_path: str
    summary: dict[str, Any] = field(default_factory=dict)
    work_ms: float = 0.0


def _text(value: Any) -> str | None:
    """pyexiv2 values come as str, list (repeatable) or dict (lang-alt); flatten to one string."""
    if value is None:
        return None
    if isinstance(value, dict):  # language -> text: "x-default" (ours) or 'lang="x-default"' (pyexiv2's own)
        value = next((text for lang, text in value.items() if "x-default" in str(lang)), None) or next(
            iter(value.values()), None)
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value if v)
    text = str(value).strip()
    return text or None


def camera_fields(c: Containers, g: Generation | None = None) -> dict[str, str]:
    """The camera and authoring fields (:data:`CAMERA_FIELDS`) and ``comment`` (:func:`comment_text`), each
    without what the generator ``g`` keeps its parameters in: a NovelAI PNG's ``Description`` is its prompt, and
    is searched for as the prompt already."""
    out: dict[str, str] = {}
    sources = {"exif": c.exif, "iptc": c.iptc, "xmp": c.xmp, "png": {k.lower(): v for k, v in c.text.items()}}
    iptc_first = c.flags.get("iptc_edited_since_xmp", False)
    for name, places in CAMERA_FIELDS.items():
        for source, key in _places(places, iptc_first):
            value = _text(sources[source].get(key))
            if value and not value.startswith(_NOT_A_CAMERA) and not (name in _FREE_TEXT and _generators_own(value, g)):
                out[name] = value[:CAMERA_CHARS]
                break
    comment = comment_text(c, g)
    if comment:
        out["comment"] = comment
    return out


def _places(places: tuple[tuple[str, str], ...], iptc_first: bool) -> tuple[tuple[str, str], ...]:
    """``places`` with its IPTC place before its XMP place when ``iptc_first``: a program that knows nothing of
    XMP edited the IPTC last (its digest no longer matches), so the XMP holds the older text."""
    kinds = [source for source, _ in places]
    if not (iptc_first and "xmp" in kinds and "iptc" in kinds):
        return places
    i, j = kinds.index("xmp"), kinds.index("iptc")
    swapped = list(places)
    swapped[i], swapped[j] = places[j], places[i]
    return tuple(swapped)


def comment_text(c: Containers, g: Generation | None = None) -> str | None:
    """What people and tools left as a comment, for search: PNG ``Comment`` text chunks (GIMP writes "Created with
    GIMP", ImageMagick and exiftool a lower-case ``comment``), every JPEG COM segment, EXIF UserComment and Windows'
    XPComment, each once, in that order; less a generator's records (:func:`_generators_own`). ``None``: none."""
    pieces = [text for key, text in c.text.items() if key.lower() == "comment"]
    pieces += [*c.comments, c.user_comment or "", _text(c.exif.get("Exif.Image.XPComment")) or ""]
    kept: dict[str, None] = {}  # in order, each once (a list's `in` made 100k COM segments take minutes)
    length = 0
    for piece in pieces:
        if length >= CAMERA_CHARS:  # the rest would be cut off anyway
            break
        text = piece.replace("\x00", "").strip()
        if text and text not in kept and not _generators_own(text, g):
            kept[text] = None
            length += len(text) + 1
    return "\n".join(kept)[:CAMERA_CHARS] or None


def _generators_own(text: str, g: Generation | None) -> bool:
    """Whether ``text`` is where a generator keeps its parameters: JSON (alone, or as ``name: {json}``), A1111's
    text, or, for a file with generation parameters, a copy of its prompt (the whole text, or holding a prompt of
    at least ``_PROMPT_COPY_MIN`` characters). "[draft] needs crop" or a caption about "a cat" stays."""
    named = _NAMED_RECORD.match(text)
    if _is_json(text[named.end():] if named else text) or _A1111_MARK.search(text):
        return True
    if g is None:
        return False
    prompts = [p.strip() for p in (g.positive, g.negative) if p and p.strip()]
    return any(text == p or (len(p) >= _PROMPT_COPY_MIN and p in text) for p in prompts)


def _is_json(text: str) -> bool:
    """Whether ``text`` is a JSON object or array (a record, not words)."""
    if not text.startswith(("{", "[")):
        return False
    try:
        return isinstance(json.loads(text), dict | list)
    except ValueError:
        return False
    except RecursionError:  # brackets nested past Python's depth: a record (and no words) all the same
        return True


def _cap(text: str | None, limit: int = FIELD_CHARS) -> str | None:
    return text[:limit] if text is not None else None


def summarise(c: Containers, g: Generation | None) -> dict[str, Any]:
    """The ``AssetIndexed`` fields for one file (pixels' size, not the generator's claimed size), each bounded
    (a hostile file's megabytes of prompt or warnings stay in its metadata document)."""
    summary: dict[str, Any] = {
        "camera": camera_fields(c, g), "gps": c.gps, "width": c.width, "height": c.height, "format": _cap(c.format),
        "warnings": [_cap(w) for w in c.warnings[:WARNINGS]],
    }
    if g is not None:
        summary |= {
            "generator": _cap(g.generator), "model": _cap(g.model),
            "models": [_cap(name) for name in all_models(g)[:MODELS]],
            "loras": [_cap(lora.name, LORA_CHARS) for lora in g.loras[:LORAS]], "vae": _cap(g.vae), "seed": g.seed,
            "steps": g.steps, "cfg": g.cfg, "sampler": _cap(g.sampler), "scheduler": _cap(g.scheduler),
            "denoise": g.denoise, "positive": _cap(g.positive, PROMPT_CHARS),
            "negative": _cap(g.negative, PROMPT_CHARS),
        }
    return summary


def all_models(g: Generation) -> list[str]:
    """Every model the generation names, each once, the main one first: each sampling pass's (an SDXL refiner, a
    hires fix's checkpoint, a detailer's) and A1111's ``Refiner``. Searched with ``model:``; the catalog shows the
    main one."""
    names = [g.model, *(p.model for p in g.passes), *_listed(g.extra.get("models")), g.extra.get("Refiner")]
    return list(dict.fromkeys(n.strip() for n in names if isinstance(n, str) and n.strip()))


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def metadata_relpath(asset_id: str) -> str:
    return f"metadata/{asset_id[:2]}/{asset_id}.v{PARSER_VERSION}.json"


def index_file(path: str, asset_id: str, data_dir: str, seen: tuple[int, int] | None = None) -> Indexed:
    """Read, normalise and keep the metadata of the file at ``path`` (whose content hash is ``asset_id``).

    ``seen``: the file's (size, mtime_ns) when its asset was hashed. A file that no longer has them is hashed
    again, and one that no longer holds the asset's bytes (edited or replaced since tier 1) is a
    :class:`SourceChanged`: its metadata is another content's, and would be searched for as this asset's."""
    started = time.perf_counter()
    if seen is not None:
        _check_unchanged(path, asset_id, seen)
    containers = read_containers(path)
    generation = detect(containers)
    rel = metadata_relpath(asset_id)
    try:
        document_bytes = _document(asset_id, path, containers, generation)
    except RecursionError:
        # a generator's records nested deeper than Python recurses (a hostile or broken ComfyUI graph): the
        # parsed parameters are kept, the verbatim records are not; the file stays readable and searchable
        containers.warnings.insert(0, "generator records nested too deep to keep: left out of the metadata")
        generation = replace(generation, documents={}, extra={}) if generation else None
        document_bytes = _document(asset_id, path, containers, generation)
    write_atomically(Path(data_dir) / rel, document_bytes, what="metadata")
    return Indexed(rel, summarise(containers, generation), (time.perf_counter() - started) * 1000)


def _check_unchanged(path: str, asset_id: str, seen: tuple[int, int]) -> None:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise source_error(exc, path) from exc
    if (info.st_size, info.st_mtime_ns) != tuple(seen) and hash_file(path)[0] != asset_id:
        raise SourceChanged(f"the file no longer holds asset {asset_id} (changed since it was hashed)", path=path)


def _document(asset_id: str, path: str, containers: Containers, generation: Generation | None) -> bytes:
    document = {
        "asset_id": asset_id, "parser_version": PARSER_VERSION, "path": path,
        "containers": asdict(containers), "generation": asdict(generation) if generation else None,
    }
    return json.dumps(document, default=str, ensure_ascii=False).encode("utf-8", "replace")

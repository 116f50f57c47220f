"""What tier 2 reads out of a file, in two layers.

- :class:`Containers` — what the file's containers hold, format-level and lossless: PNG text chunks, EXIF, IPTC,
  XMP, JPEG comments, EXIF UserComment (decoded), plus every chunk/segment kept verbatim in ``raw``.
  Filled by :mod:`agents.metadata.containers`.
- :class:`Generation` — what an AI generator recorded, normalised across generators (ComfyUI, A1111/Forge/SD.Next,
  InvokeAI, NovelAI, Fooocus, SwarmUI, Draw Things, Civitai, ...). Filled by :mod:`agents.metadata.generators`
  from a :class:`Containers`.

Both are plain data (JSON-able via ``dataclasses.asdict``) so they travel in events and land in the catalog.
``PARSER_VERSION`` is bumped whenever extraction changes what it would return for some file, so older results can
be re-parsed (``damflow reprocess --tier 2``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PARSER_VERSION = 4


@dataclass
class Containers:
    """Format-level metadata of one file; nothing is dropped (unparsed pieces stay in ``raw``)."""

    #: Format by magic bytes ("PNG", "JPEG", "WEBP", "AVIF", "HEIF", "GIF", "TIFF", "MPO", ...), None if unknown.
    format: str | None = None
    width: int | None = None
    height: int | None = None
    #: PNG tEXt/iTXt/zTXt chunks, keyword -> text, in file order, including chunks after IDAT.
    text: dict[str, str] = field(default_factory=dict)
    #: EXIF tags as exiv2 keys ("Exif.Image.Make", "Exif.Photo.DateTimeOriginal", "Exif.GPSInfo.GPSLatitude")
    #: -> human value as string (NUL-padded strings cut at the first NUL). Falls back to Pillow when exiv2 fails.
    exif: dict[str, str] = field(default_factory=dict)
    #: IPTC datasets ("Iptc.Application2.Keywords") -> list of values (repeatable datasets keep every value).
    iptc: dict[str, list[str]] = field(default_factory=dict)
    #: XMP properties ("Xmp.dc.description", "Xmp.xmp.CreatorTool") -> value or list of values.
    xmp: dict[str, Any] = field(default_factory=dict)
    #: JPEG COM segments, every one, in file order (UTF-8, else Latin-1).
    comments: list[str] = field(default_factory=list)
    #: EXIF UserComment (0x9286) decoded: charset prefix honoured ("UNICODE" -> UTF-16 BE/LE, "ASCII", none),
    #: found in the Exif IFD or, as some ComfyUI savers do, in IFD0.
    user_comment: str | None = None
    #: Decimal GPS (lat, lon) with the sign taken from the Ref tags, when present and valid.
    gps: tuple[float, float] | None = None
    #: Presence flags: "icc", "c2pa", "mpf", "extended_xmp", "exif", "xmp", "iptc", "stealth" ...; and
    #: "iptc_edited_since_xmp" where a JPEG's IPTC digest says whether it was (see :mod:`.iptc`).
    flags: dict[str, bool] = field(default_factory=dict)
    #: Verbatim pieces: "png:<keyword>", "jpeg:APP1#2", "webp:EXIF", "exif:0x010f"... -> text (or "base64:..." for
    #: binary). Everything a parser did not understand is here, so a newer parser can use it later.
    raw: dict[str, str] = field(default_factory=dict)
    #: Problems met while reading (a broken EXIF IFD, exiv2 refusing the file); reading went on past them.
    warnings: list[str] = field(default_factory=list)


@dataclass
class LoRA:
    name: str
    weight: float | None = None
    clip_weight: float | None = None


@dataclass
class SamplerPass:
    """One sampling pass (ComfyUI graphs may have several: base + refiner, hires, detailers)."""

    node_id: str | None = None
    node_type: str | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    denoise: float | None = None
    model: str | None = None
    positive: str | None = None
    negative: str | None = None


@dataclass
class Generation:
    """Normalised generation parameters; the main pass's values at top level, every pass in ``passes``."""

    #: "comfyui", "a1111", "forge", "sdnext", "invokeai", "novelai", "fooocus", "swarmui", "drawthings", "civitai"...
    generator: str
    #: Where it was read from: "png:parameters", "exif:UserComment", "xmp:dc:description", "stealth:alpha", ...
    source: str
    #: "<parser name>/<PARSER_VERSION>", e.g. "comfyui/1".
    parser: str
    model: str | None = None
    model_hash: str | None = None
    loras: list[LoRA] = field(default_factory=list)
    vae: str | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    denoise: float | None = None
    width: int | None = None
    height: int | None = None
    positive: str | None = None
    negative: str | None = None
    passes: list[SamplerPass] = field(default_factory=list)
    #: Every other parsed key/value (Hires upscale, ControlNet, version, Clip skip, app version ...).
    extra: dict[str, Any] = field(default_factory=dict)
    #: The generator's own structured records kept verbatim (ComfyUI "prompt" and "workflow" JSON, ...).
    documents: dict[str, Any] = field(default_factory=dict)

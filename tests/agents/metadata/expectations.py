"""What the corpus manifest says about each file, as checks: shared by the metadata tests and the tier-2 bench.

The manifest (``shared/corpus/manifest.json``) states facts about every file in formulaic ``expect`` phrases.
Two layers of checks are built from them:

- container checks (:func:`container_checks`): what :func:`agents.metadata.containers.read_containers` must find
  (format, size, camera EXIF/IPTC/XMP, flags, the raw AI sources); each is a :class:`Check` whose ``test``
  raises ``AssertionError`` when it does not hold; :func:`check_failure` runs one.
- generator facts (:func:`facts_for`): what :func:`agents.metadata.generators.detect` must make of an AI file;
  each is a ``(label, predicate on the Generation)`` :data:`Fact`; :func:`fact_failure` runs one.

``tests/agents/metadata/test_containers.py`` and ``test_generators.py`` assert them per manifest entry;
``bench/tier2_fidelity.py`` counts how many hold. Pure: nothing here reads a file. The test modules register
this module for pytest's assertion rewriting (before importing it), so a failing check reports the same detail
as when the checks lived in the test modules.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from agents.metadata.model import Containers, Generation
from streams.errors import SourceMissing, SourceUnreadable, UnsupportedFormat

# ---------------------------------------------------------------------------------------------------------------
# Container checks (read_containers)
# ---------------------------------------------------------------------------------------------------------------


class Check(NamedTuple):
    """One fact the manifest states: ``test(containers, *args)`` raises AssertionError when it does not hold."""

    name: str
    test: Callable[..., None]
    args: tuple = ()
    #: Why this check is expected to fail (pyexiv2/Pillow cannot do it); None for checks that must pass.
    xfail: str | None = None


#: Facts no reader available here can establish, by (file, check name) -> why. Empty: every stated fact holds.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


def container_checks(entry: dict) -> list[Check]:
    """The assertions the manifest's ``expect`` text states about one file, one Check per formulaic phrase."""
    text = entry["expect"]
    checks: list[Check] = []

    def add(name: str, test: Callable[..., None], *args: object) -> None:
        checks.append(Check(name, test, args, KNOWN_GAPS.get((entry["file"], name))))

    add("format", _attr_is, "format", entry["format"])
    if entry["width"] is not None:
        add("size", _size_is, (entry["width"], entry["height"]))

    # camera facts
    if m := re.search(r"EXIF Make '([^']*)' Model '([^']*)'", text):
        add("Make", _exif_is, "Exif.Image.Make", m.group(1))
        add("Model", _exif_is, "Exif.Image.Model", m.group(2))
    if m := re.search(r"DateTimeOriginal (\d{4}:\d\d:\d\d \d\d:\d\d:\d\d)", text):
        add("DateTimeOriginal", _exif_is, "Exif.Photo.DateTimeOriginal", m.group(1))
    if m := re.search(r"\bDateTime '([^']*)'", text):
        add("DateTime", _exif_is, "Exif.Image.DateTime", m.group(1))
    if m := re.search(r"(?<![\w:])Orientation=(\d)", text):
        add("Orientation", _exif_is, "Exif.Image.Orientation", m.group(1))
    if m := re.search(r"LensModel '([^']*)'", text):
        add("LensModel", _exif_is, "Exif.Photo.LensModel", m.group(1))
    if m := re.search(r"ImageDescription '([^']*)'", text):
        add("ImageDescription", _exif_is, "Exif.Image.ImageDescription", m.group(1))
    if m := re.search(r"Software '([^']*?)(?: ?\.\.\.)?'", text):
        add("Software", _exif_starts, "Exif.Image.Software", m.group(1))
    if m := re.search(r"GPS IFD with (\d+) tags", text):
        add("GPS tags", _gps_tags, int(m.group(1)))
    if re.search(r"GPS IFD pointer (?:present but the IFD is empty|is bogus)", text):
        add("GPS invalid", _attr_is, "gps", None)
    if m := re.search(r"approx (-?[\d.]+), (-?[\d.]+)", text):
        add("GPS position", _gps_near, float(m.group(1)), float(m.group(2)))
    if m := re.search(r"EXIF \((\d+) tags via exiv2\)", text):
        add("EXIF tags", _counted, "exif", int(m.group(1)))
    if m := re.search(r"XMP \((\d+) props(?:, (\w+)=(.*?))?\)(?=;|$)", text):
        add("XMP props", _counted, "xmp", int(m.group(1)))
        if m.group(2):
            key = {"CreatorTool": "Xmp.xmp.CreatorTool", "description": "Xmp.dc.description"}[m.group(2)]
            add(f"XMP {m.group(2)}", _xmp_is, key, m.group(3))
    if m := re.search(r"IPTC \((\d+) tags(?:, (\w+)=(.*?))?\)(?=;|$)", text):
        add("IPTC tags", _counted, "iptc", int(m.group(1)))
        if m.group(2) == "Keywords":  # the manifest cuts long lists mid-word: each listed word is a prefix
            add("IPTC Keywords", _iptc_prefixes, "Iptc.Application2.Keywords", re.findall(r"'([^']*)'?", m.group(3)))
        elif m.group(2):
            add(f"IPTC {m.group(2)}", _iptc_is, f"Iptc.Application2.{m.group(2)}", [m.group(3)])
    if m := re.search(r"Keywords \[([^\]]*)\]", text):
        add("IPTC Keywords list", _iptc_is, "Iptc.Application2.Keywords", re.findall(r"'([^']*)'", m.group(1)))
    if m := re.search(r"By-line '([^']*)'", text):
        add("IPTC By-line", _iptc_is, "Iptc.Application2.Byline", [m.group(1)])
    if m := re.search(r"photoshop:City '([^']*)'", text):
        add("XMP City", _xmp_is, "Xmp.photoshop.City", m.group(1))
    if m := re.search(r"(?:XMP CreatorTool '|xmp:CreatorTool=')([^']*)'", text):
        add("XMP CreatorTool", _xmp_is, "Xmp.xmp.CreatorTool", m.group(1))
    for flag, phrase in (("icc", r"\bICC profile\b"), ("c2pa", r"\bC2PA\b"), ("mpf", r"\bMPF\b"),
                         ("extended_xmp", r"\bExtendedXMP\b"), ("xmp", r"XMP packet present"),
                         ("exif", r"eXIf chunk")):
        if re.search(phrase, text):
            add(f"flag {flag}", _flagged, flag)
    if "without Make/Model" in text or "no EXIF/XMP/IPTC of note" in text:
        add("no Make", _no_key, "exif", "Exif.Image.Make")
    if "no EXIF/XMP/IPTC of note" in text:
        add("no IPTC/XMP", _empty, "iptc", "xmp")
    if "IPTC-only (no EXIF)" in text:
        add("no EXIF", _empty, "exif")
    if re.search(r"no text chunks|only (?:sRGB/)?pHYs", text):
        add("no metadata", _empty, "text", "exif", "xmp")
    if re.search(r"reads no EXIF/XMP|pyexiv2 finds nothing", text):
        add("no EXIF/XMP", _empty, "exif", "xmp")
    if m := re.search(r"JPEG COM = (b'[^']*')", text):
        add("COM latin-1", _attr_is, "comments", [ast.literal_eval(m.group(1)).decode("latin-1")])
    if m := re.search(r"\bCOM '([^']*)'", text):
        add("COM", _comments_include, m.group(1))
    _ai_checks(entry, add)
    return checks


def _ai_checks(entry: dict, add: Callable[..., None]) -> None:
    """AI generators: the raw sources the generator layer parses must be there, and whole."""
    text, kind = entry["expect"], entry["kind"]
    if "PNG tEXt:" in text:
        for key in ("prompt", "workflow"):
            if f"{key} = " in text:
                add(f"text {key}", _text_json, key)
    if "Model(0x0110)='prompt:" in text:
        add("WebP prompt", _exif_json, "Exif.Image.Model", "prompt:")
        add("WebP workflow", _exif_json, "Exif.Image.Make", "workflow:")
    if m := re.search(r"value = JSON object with keys \[([^\]]*)\]", text):
        add("UserComment JSON", _user_comment_keys, sorted(re.findall(r"'([^']*)'", m.group(1))))
    if re.search(r"'parameters' (?:tEXt|zTXt|iTXt|chunk)|tEXt 'parameters'", text):
        add("text parameters", _text_has, "parameters", None)
    if "EXIF UserComment" in text:
        add("UserComment", _user_comment_has, "")
        if kind == "a1111":
            add("UserComment Steps", _user_comment_has, "Steps:")
    if m := re.search(r"node ids include '([^']*)'", text):
        add("UserComment content", _user_comment_has, m.group(1))
    if starts := re.findall(r"prompt starts (?:'([^']*)'|\"([^\"]*)\")", text):
        start = "".join(starts[0])
        if "stealth metadata in alpha-channel LSBs" in text:
            add("stealth", _text_starts, "stealth:parameters", start)
            add("flag stealth", _flagged, "stealth")
        if "'parameters'" in text:
            add("parameters prompt", _text_starts, "parameters", start)
        elif "EXIF UserComment" in text:
            add("UserComment prompt", _user_comment_starts, start)
    for m in re.finditer(r"(?:tEXt|zTXt|iTXt) '([^']+)'(?:='([^']*)')?", text):
        add(f"text {m.group(1)}", _text_has, m.group(1), m.group(2))
    if m := re.search(r"PNG tEXt\): (.*)", text):
        for key, value in re.findall(r"\b(\w+)='([^']*)'", m.group(1)):
            add(f"text {key}", _text_has, key, value)
    elif "PNG" not in text:
        for key, value in re.findall(r"\b(Software|Artist)='([^']*)'", text):
            add(f"EXIF {key}", _exif_is, f"Exif.Image.{key}", value)
    if m := re.search(r"first '(\w+): \{json\}', second '(\w+): \{json\}'", text):
        add("COM segments", _comment_prefixes, list(m.groups()))
    if m := re.search(r"dc:description = A1111-like text \('(.*?)(?: ?\.\.\.|\\n)", text):
        add("XMP description", _xmp_starts, "Xmp.dc.description", m.group(1))


# The checks themselves: each takes the Containers first, then what the manifest says.


def _attr_is(c: Containers, attr: str, expected: object) -> None:
    assert getattr(c, attr) == expected, f"{attr}: {getattr(c, attr)!r}, the manifest says {expected!r}"


def _size_is(c: Containers, expected: tuple[int, int]) -> None:
    assert (c.width, c.height) == expected, f"size {c.width}x{c.height}, the manifest says {expected}"


def _exif_is(c: Containers, key: str, expected: str) -> None:
    value = c.exif.get(key, "").strip()  # exiv2 keeps the blank padding of fixed-width fields ("WWL     ")
    assert value == expected, f"{key}: {value!r}, the manifest says {expected!r}"


def _exif_starts(c: Containers, key: str, prefix: str) -> None:
    assert c.exif.get(key, "").startswith(prefix), f"{key}: {c.exif.get(key)!r} does not start {prefix!r}"


def _exif_json(c: Containers, key: str, prefix: str) -> None:
    assert c.exif[key].startswith(prefix), f"{key} does not start {prefix!r}"
    assert isinstance(json.loads(c.exif[key].removeprefix(prefix)), dict), f"{key} is not a whole JSON object"


def _xmp_text(c: Containers, key: str) -> object:
    value = c.xmp.get(key)
    return value.get("x-default") if isinstance(value, dict) else value


def _xmp_is(c: Containers, key: str, expected: str) -> None:
    assert _xmp_text(c, key) == expected, f"{key}: {_xmp_text(c, key)!r}, the manifest says {expected!r}"


def _xmp_starts(c: Containers, key: str, prefix: str) -> None:
    assert str(_xmp_text(c, key)).startswith(prefix), f"{key} does not start {prefix!r}"


def _iptc_is(c: Containers, key: str, expected: list[str]) -> None:
    assert c.iptc.get(key) == expected, f"{key}: {c.iptc.get(key)!r}, the manifest says {expected!r}"


def _iptc_prefixes(c: Containers, key: str, prefixes: list[str]) -> None:
    values = c.iptc.get(key, [])
    assert len(values) >= len(prefixes), f"{key}: {values!r}"
    assert all(value.startswith(prefix) for value, prefix in zip(values, prefixes, strict=False)), values


def _counted(c: Containers, attr: str, expected: int) -> None:
    assert c.flags.get(attr), f"{attr} not flagged"
    found = len(getattr(c, attr))
    assert found == expected, f"{attr}: {found} properties, the manifest (exiv2) says {expected}"


def _gps_tags(c: Containers, expected: int) -> None:
    tags = [key for key in c.exif if key.startswith("Exif.GPSInfo.")]
    assert abs(len(tags) - expected) <= 2, f"{len(tags)} GPS tags, the manifest says {expected}"
    if "Exif.GPSInfo.GPSLatitude" in c.exif and "Exif.GPSInfo.GPSLongitude" in c.exif:
        assert c.gps is not None, "GPS coordinates present but no position"


def _gps_near(c: Containers, latitude: float, longitude: float) -> None:
    assert c.gps == pytest.approx((latitude, longitude), abs=1e-3), f"gps {c.gps}"


def _flagged(c: Containers, flag: str) -> None:
    assert c.flags.get(flag), f"flag {flag!r} not set"


def _no_key(c: Containers, attr: str, key: str) -> None:
    assert key not in getattr(c, attr), f"{key} present"


def _empty(c: Containers, *attrs: str) -> None:
    for attr in attrs:
        assert not getattr(c, attr), f"{attr} not empty: {list(getattr(c, attr))[:5]}"


def _comments_include(c: Containers, comment: str) -> None:
    assert comment in c.comments, f"comments: {c.comments!r}"


def _comment_prefixes(c: Containers, prefixes: list[str]) -> None:
    assert [x[: len(p)] for x, p in zip(c.comments, prefixes, strict=False)] == prefixes, c.comments
    assert len(c.comments) == len(prefixes), f"{len(c.comments)} comments"


def _text_has(c: Containers, key: str, value: str | None) -> None:
    assert key in c.text, f"no {key!r} text chunk (have {list(c.text)})"
    assert c.text[key], f"text {key!r} is empty"
    assert value is None or c.text[key] == value, f"text {key!r}: {c.text[key]!r}, the manifest says {value!r}"


def _text_json(c: Containers, key: str) -> None:
    assert isinstance(json.loads(c.text[key]), dict), f"text {key!r} is not a JSON object"


def _text_starts(c: Containers, key: str, prefix: str) -> None:
    assert c.text[key].startswith(prefix), f"text {key!r} starts {c.text[key][:60]!r}, not {prefix!r}"


def _user_comment_has(c: Containers, part: str) -> None:
    assert c.user_comment and part in c.user_comment, f"user_comment {str(c.user_comment)[:60]!r} lacks {part!r}"


def _user_comment_starts(c: Containers, prefix: str) -> None:
    assert (c.user_comment or "").startswith(prefix), f"user_comment starts {str(c.user_comment)[:60]!r}"


def _user_comment_keys(c: Containers, keys: list[str]) -> None:
    assert sorted(json.loads(c.user_comment or "")) == keys, "user_comment JSON keys differ"


#: What read_containers may raise for a corpus file; anything else is a bug.
ALLOWED = (SourceMissing, SourceUnreadable, UnsupportedFormat)
#: What a failing container check may raise; anything else is a bug in the check or the reader.
CHECK_ERRORS = (AssertionError, KeyError, TypeError, ValueError, AttributeError)


def check_failure(check: Check, c: Containers) -> str | None:
    """Run one container check: None when it holds, else the line the test reports for it."""
    try:
        check.test(c, *check.args)
    except CHECK_ERRORS as exc:
        line = f"{check.name}: {type(exc).__name__}: {exc}"
        return f"{line} ({check.xfail})" if check.xfail else line
    return None


# ---------------------------------------------------------------------------------------------------------------
# Generator facts (detect)
# ---------------------------------------------------------------------------------------------------------------

AI_KINDS = ("comfyui", "a1111", "invokeai", "other-ai")
Fact = tuple[str, Callable[[Generation | None], bool]]


def _graph_seed_nodes(prompt: dict[str, Any]) -> int:
    return sum(1 for n in prompt.values() if isinstance(n, dict) and any(
        k in (n.get("inputs") or {}) and isinstance(n["inputs"][k], int) for k in ("seed", "noise_seed")))


def _main_input(g: Generation, name: str) -> Any:
    return g.documents["prompt"][g.extra["main_pass"]]["inputs"].get(name)


def comfy_facts(text: str) -> list[Fact]:
    """Facts of the ComfyUI manifest phrases: node counts, the seed-bearing node, model, workflow shape."""
    facts: list[Fact] = [("generator comfyui", lambda g: g is not None and g.generator == "comfyui")]
    m = re.search(r"prompt = API-format JSON, (\d+) nodes", text)
    if m:
        n = int(m.group(1))
        facts.append((f"prompt has {n} nodes", lambda g, n=n: len(g.documents["prompt"]) == n))
    m = re.search(r"workflow = UI JSON, (\d+) nodes, last_node_id (\d+), (classic|new-style)", text)
    if m:
        n, last, style = int(m.group(1)), int(m.group(2)), m.group(3)
        facts.append((f"workflow has {n} nodes", lambda g, n=n: len(g.documents["workflow"]["nodes"]) == n))
        facts.append((f"last_node_id {last}", lambda g, v=last: g.documents["workflow"]["last_node_id"] == v))
        facts.append((f"workflow {style}", lambda g, s=style: ("revision" in g.documents["workflow"]) == (
            s == "new-style")))
    m = re.search(r"nodes, ([^;,]+?) node (\S+) seed (\d+)(?: \(\+(\d+) more seed inputs\))?", text)
    if m:
        cls, nid, seed, more = m.group(1), m.group(2), int(m.group(3)), int(m.group(4) or 0)
        facts.append((f"{cls} node {nid} seed {seed} in the graph", lambda g, c=cls, i=nid, s=seed: (
            g.documents["prompt"][i]["class_type"] == c
            and s in (g.documents["prompt"][i]["inputs"].get("seed"),
                      g.documents["prompt"][i]["inputs"].get("noise_seed")))))
        facts.append((f"{1 + more} literal seed inputs", lambda g, k=1 + more: _graph_seed_nodes(
            g.documents["prompt"]) == k))
        if cls in ("KSampler", "KSamplerAdvanced", "SamplerCustom"):
            facts.append((f"pass {nid} ({cls}) seed {seed}", lambda g, c=cls, i=nid, s=seed: any(
                p.node_id == i and p.node_type == c and p.seed == s for p in g.passes)))
            facts.append((f"main seed {seed}", lambda g, s=seed: g.seed == s))
        elif cls in ("RandomNoise", "Seed Everywhere"):  # seed sources feeding the main sampler
            facts.append((f"main seed {seed} via {cls}", lambda g, s=seed: g.seed == s and any(
                p.seed == s for p in g.passes)))
    if "no literal seed" in text:
        facts.append(("linked seed: unresolvable counter -> None", lambda g: isinstance(
            _main_input(g, "noise_seed") or _main_input(g, "seed"), list) and g.seed is None))
    m = re.search(r"model '([^']+)'", text)
    if m:
        model = m.group(1)
        facts.append((f"model {model}", lambda g, v=model: g.model == v))
    if "NO 'prompt' chunk" in text:
        facts.append(("workflow-only", lambda g: "prompt" not in g.documents and g.extra.get("from_workflow")))
    if "JSON lives in EXIF IFD0" in text:
        facts.append(("read from EXIF", lambda g: g.source.startswith("exif:")))
    if "EXIF UserComment" in text:
        facts.append(("read from UserComment", lambda g: g.source == "exif:UserComment"))
    m = re.search(r"ALSO has A1111-style 'parameters' chunk \((.*)\) written", text)
    if m:
        facts += [(f"parameters: {label}", lambda g, f=check: f(_as_generation(g.extra["parameters"])))
                  for label, check in a1111_facts(m.group(1))]
    return facts


def _as_generation(summary: dict[str, Any]) -> Generation:
    fields = {k: v for k, v in summary.items() if k in {f.name for f in dataclasses.fields(Generation)}}
    fields.pop("loras", None)
    return Generation(parser="", **fields)


def a1111_facts(text: str) -> list[Fact]:
    """Facts of the A1111 manifest phrases ("prompt starts '...'; Steps 15, Sampler UniPC, Seed ...")."""
    facts: list[Fact] = []
    m = re.search(r"prompt starts (['\"])(.*?)\1(?=[;,)])", text)
    if m:
        prefix = m.group(2)
        facts.append((f"prompt starts {prefix[:20]!r}", lambda g, v=prefix: (g.positive or "").startswith(v)))
    text = text.replace(m.group(0), "") if m else text
    for label, pattern, attr, conv in (("Steps", r"\bSteps (\d+)", "steps", int),
                                       ("Seed", r"\bSeed (\d+)", "seed", int),
                                       ("Sampler", r"(?<![/ ]no )(?<!/)\bSampler (?!field|keys)([^,;]+)", "sampler",
                                        str),
                                       ("Model", r"\bModel (?!hash|name|is )([^,;]+)", "model", str),
                                       ("Model hash", r"\bModel hash (\w+)", "model_hash", str)):
        m = re.search(pattern, text)
        if m:
            value = conv(m.group(1).strip())
            facts.append((f"{label} {value}", lambda g, a=attr, v=value: getattr(g, a) == v))
    m = re.search(r"\bSize (\d+)x(\d+)", text)
    if m:
        w, h = int(m.group(1)), int(m.group(2))
        facts.append((f"Size {w}x{h}", lambda g, w=w, h=h: (g.width, g.height) == (w, h)))
    m = re.search(r"params Size (\S+) != actual pixels", text)
    if m:
        size = m.group(1)
        facts.append(("size_param kept", lambda g, v=size: g.extra.get("size_param") == v))
    if "no Model name" in text:
        facts.append(("no Model name", lambda g: g.model is None))
    if "no Sampler field" in text:
        facts.append(("no Sampler", lambda g: g.sampler is None))
    if "no Seed/Sampler keys" in text:
        facts.append(("no Seed", lambda g: g.seed is None))
    if "negative prompt present" in text:
        facts.append(("negative present", lambda g: g.negative is not None))
    if "negative prompt absent" in text:
        facts.append(("negative absent", lambda g: g.negative is None))
    if "empty negative prompt line" in text:
        facts.append(("negative empty", lambda g: g.negative == ""))
    if "SD.Next" in text:
        facts.append(("generator sdnext", lambda g: g.generator == "sdnext"
                      and g.extra["Pipeline"] == "ChromaPipeline"))
    for tag in re.findall(r"LoRA tag <lora:([^:>]+):([\d.]+)>", text):
        facts.append((f"lora {tag[0]}", lambda g, t=tag: any(
            x.name == t[0] and x.weight == float(t[1]) for x in g.loras)))
    if "ControlNet extension params" in text:
        facts.append(("ControlNet kept", lambda g: "ControlNet Model" in g.extra))
    if "Regional Prompter" in text and "RP Active" in text:
        facts.append(("RP kept", lambda g: g.extra.get("RP Active") == "True"))
    if "stealth metadata in alpha-channel" in text and "tEXt" not in text.split("stealth")[0]:
        facts.append(("read from stealth alpha", lambda g: g.source == "stealth:alpha"))
    if "EXIF UserComment" in text:
        facts.append(("read from UserComment", lambda g: g.source == "exif:UserComment"))
    if re.search(r"A1111 'parameters' (?:tEXt|zTXt|iTXt)", text):
        facts.append(("read from parameters", lambda g: g.source == "png:parameters"))
    if "Same params stored twice (tEXt + alpha-LSB stealth)" in text:
        facts.append(("stealth copy noted", lambda g: "stealth:alpha" in g.extra.get("duplicate_sources", [])))
    return facts


def _starts(attr: str, prefix: str) -> Callable[[Generation | None], bool]:
    return lambda g: (getattr(g, attr) or "").startswith(prefix)


def _eq(**expected: Any) -> list[Fact]:
    return [(f"{k} {v!r}", lambda g, k=k, v=v: getattr(g, k) == v) for k, v in expected.items()]


def _extra(key: str, value: Any) -> Fact:
    return (f"extra {key}", lambda g: g.extra.get(key) == value)


def _none() -> list[Fact]:
    return [("no generation parameters", lambda g: g is None)]


#: Entries whose phrases are free-form: the facts of their ``expect`` text, written out.
EXPLICIT: dict[str, list[Fact]] = {
    "invokeai/sdp_invokeai_dream1.png": [
        *_eq(generator="invokeai", source="png:Dream", steps=50, seed=2980747362, width=512, height=768, cfg=5.0,
             sampler="k_lms", negative="rendering, glowing eyes, skinny"),
        ("prompt", _starts("positive", "professional full body photo of young woman")),
        ("[negative] removed from prompt", lambda g: "[" not in g.positive and g.positive.endswith("low contrast")),
        _extra("gfpgan_strength", "0.9"), _extra("codeformer_fidelity", "0.75"), _extra("upscale", "4 0.95"),
        ("no sd-metadata", lambda g: "sd-metadata" not in g.documents)],
    "invokeai/sdp_invokeai_imeta1.png": [
        *_eq(generator="invokeai", seed=3293022630, steps=35, cfg=8.0, vae="VAEFix"),
        ("prompt", _starts("positive", "digital artwork, oil painting")),
        _extra("generation_mode", "sdxl_txt2img"),
        ("ipAdapters", lambda g: g.extra["ipAdapters"][0]["ip_adapter_model"]["model_name"]
         == "ip-adapter-plus_sdxl_vit-h"),
        ("no graph/workflow", lambda g: "invokeai_graph" not in g.documents
         and "invokeai_workflow" not in g.documents)],
    "invokeai/sdp_invokeai_sdmeta1.png": [
        *_eq(generator="invokeai", source="png:sd-metadata", seed=2980747362, model="deliberateForInvoke_v08"),
        _extra("app_id", "invoke-ai/InvokeAI"), _extra("app_version", "2.3.0"),
        ("Dream kept", lambda g: g.documents["Dream"].endswith("-U 4 0.95"))],
    "invokeai/invoke_blue-sphere-red-cube-hybrid.png": [
        *_eq(generator="invokeai", positive="blue sphere, red cube, hybrid", seed=754100013, steps=15, cfg=7.5,
             scheduler="euler", model="stable-diffusion-v1-5"), _extra("app_version", "3.0.2post1"),
        ("graph kept", lambda g: g.documents["invokeai_graph"]["id"] == "text_to_image_graph"),
        ("graph noise seed not used", lambda g: g.documents["invokeai_graph"]["nodes"]["noise"]["seed"] == 1425968824
         and {"iterate", "range_of_size"} <= set(g.documents["invokeai_graph"]["nodes"]))],
    "invokeai/invoke_mountain-man.png": [
        *_eq(generator="invokeai", positive="mountain man", seed=4082001100, steps=20, cfg=7.5, sampler="ddim",
             width=512, height=512), _extra("app_version", "v2.02"),
        ("Dream kept", lambda g: g.documents["Dream"].startswith('"mountain man" -s 20')),
        ("image.prompt list", lambda g: g.documents["sd-metadata"]["image"]["prompt"] == [
            {"prompt": "mountain man", "weight": 1.0}])],
    "invokeai/invoke_000001.3357757885.png": [
        *_eq(generator="invokeai", source="png:Dream", seed=3357757885, steps=50, width=512, height=512, cfg=7.5,
             sampler="k_lms"),
        ("prompt", _starts("positive", "lucy lawless as xena")),
        ("no sd-metadata", lambda g: "sd-metadata" not in g.documents)],
    "invokeai/invoke_curly-outcrop.png": [
        *_eq(generator="invokeai", source="png:sd-metadata", seed=942491079, steps=50,
             positive="pretty curly-haired redhead woman", width=512, height=512),
        _extra("app_id", "lstein/stable-diffusion"),
        ("outcrop postprocessing", lambda g: g.extra["image.postprocessing"][0]["tool"] == "outcrop"),
        ("no Dream", lambda g: "Dream" not in g.documents)],
    "invokeai/invoke_000030.step-0.png": [
        *_eq(generator="invokeai", positive=None, seed=None, steps=None),
        ("placeholder kept", lambda g: g.documents["Dream"] == "<too lazy to implement>")],
    "invokeai/invoke_000004.42.png": [
        *_eq(generator="invokeai", positive="banana sushi", seed=42, steps=50, width=512, height=512, cfg=7.5,
             sampler="k_lms"), _extra("image.facetool", "gfpgan"),
        ("Dream kept unquoted", lambda g: g.documents["Dream"].startswith("banana sushi -s 50"))],
    "invokeai/invoke_paste_images_blank_background_result.jpg": [
        *_eq(generator="invokeai", source="jpeg:COM"),
        ("first COM = graph", lambda g: "nodes" in g.documents["invokeai_graph"]),
        ("workflow meta.version 3.0.0", lambda g: g.documents["invokeai_workflow"]["meta"]["version"] == "3.0.0"),
        ("blank_image width 2240", lambda g: any(
            n["data"]["type"] == "blank_image" and n["data"]["inputs"]["width"]["value"] == 2240
            for n in g.documents["invokeai_workflow"]["nodes"]))],
    "other-ai/sdp_novelai1_cropped.png": [
        *_eq(generator="novelai", positive="masterpiece, best quality,  cat, space, icon", steps=50,
             sampler="k_euler_ancestral", seed=2253955223, cfg=10.0, model="Stable Diffusion 1D44365E"),
        _extra("strength", 0.4), _extra("Title", "AI generated image"),
        ("uc = negative", _starts("negative", "lowres, bad anatomy"))],
    "other-ai/sdp_fooocus1_cropped.png": [
        *_eq(generator="fooocus", model="juggernautXL_v8Rundiffusion", positive="a smiling goldfish",
             seed=6952411511246973023, steps=30),
        ("not A1111", lambda g: g.parser.startswith("fooocus/")), _extra("adm_guidance", "(1.5, 0.8, 0.3)"),
        ("full_negative_prompt list", lambda g: isinstance(g.documents["parameters"]["full_negative_prompt"], list))],
    "other-ai/dt_drawthings_w1z_m4ch1n4_2050777441.png": [
        *_eq(generator="drawthings", steps=26, sampler="Euler A Trailing", cfg=3.5, seed=2050777441, width=768,
             height=1024, model="flux_1_dev_q8p.ckpt"),
        ("prompt", _starts("positive", "w1z_m4ch1n4. gentleman cyborg")),
        ("LoRA", lambda g: [x.name for x in g.loras] == ["wizards_machina_lora_f16.ckpt"]),
        ("UserComment JSON kept", lambda g: "v2" in g.documents["UserComment"] and "c" in g.documents["UserComment"]),
        ("description kept", lambda g: "LoRA Model: wizards_machina_lora_f16.ckpt" in g.documents["description"])],
    "other-ai/dt_CivitaiComfyui_Test.jpeg": [
        *_eq(generator="civitai", source="exif:UserComment", model="urn:air:sdxl:checkpoint:civitai:288584@324619"),
        ("resource-stack ids", lambda g: {"resource-stack", "resource-stack-1"} <= set(g.documents["prompt"])),
        ("smZ prompt", lambda g: "year of the snake" in g.positive),
        ("AIR LoRA", lambda g: g.loras[0].name == "urn:air:sdxl:lora:civitai:1141783@1284026")],
    "other-ai/dt_f89a16be-d486-456f-aa23-58de367250ba-0.jpg": _none(),
    "other-ai/dt_809ba505d44a4e019926985df9ab6060 (1).jpeg": _none(),
    "other-ai/dt_4b897c4b-d1ff-4367-bb01-189ac2960402.jpeg": _none(),
    "other-ai/dt_ルリアちゃん「ありがとうございます」スタンプ(透過背景).png": _none(),
}


def _unconnected_loader(named: str, node: str, used: str) -> dict[str, Fact]:
    """The manifest's model phrase names the first loader in the file; when no node consumes that loader, the
    model is the one at the end of the main sampler's model chain instead (``used``)."""
    return {f"model {named}": (
        f"model {used} (loader {node}, {named}, is unconnected)",
        lambda g: g.model == used and named in g.documents["prompt"][node]["inputs"].values()
        and not any(v[0] == node for n in g.documents["prompt"].values()
                    for v in (n.get("inputs") or {}).values() if isinstance(v, list) and v))}


#: Where the manifest's generic phrase does not hold for a reason explained here, the fact that replaces it.
OVERRIDES: dict[str, dict[str, Fact]] = {
    # Sampler 152's model chain (LoraTagLoader 91) ends at CheckpointLoaderSimple 240.
    "comfyui/dt_ComfyUI_0202.png": _unconnected_loader(
        "FLUX1\\flux-hyp8-Q5_1.gguf", "116", "FLUX1\\colossusProjectFlux_21DeDistilledFP8UNET.safetensors"),
    # BasicGuider 22 and BasicScheduler 17 take their model from UnetLoaderGGUF 55; UNETLoader 12 feeds nothing.
    "comfyui/dt_dfd29e0c-7819-4ad9-9d55-5bc3c3acf437.jpeg": _unconnected_loader(
        "animepro_fp8-e4m3fn.safetensors", "12", "animepro-Q5_K_M.gguf"),
}


#: Facts the manifest text gets wrong, stated correctly: "no Seed/Sampler keys" for the LoRA-trainer samples, whose
#: settings line does have "Sampler: DDIM" (only Seed is missing; "no Seed" is checked from the manifest).
ADDITIONAL: dict[str, list[Fact]] = {
    "a1111/dt_Elysian_e000001_02_20250321072508.png": _eq(sampler="DDIM", cfg=7.5),
    "a1111/dt_JossyLoRa_e000003_02_20241030181251.png": _eq(sampler="DDIM", cfg=7.5),
}


def facts_for(entry: dict[str, Any]) -> list[Fact]:
    """Every fact the manifest states about one AI entry."""
    if entry["file"] in EXPLICIT:
        return EXPLICIT[entry["file"]]
    facts = comfy_facts(entry["expect"]) if entry["kind"] == "comfyui" else [
        ("generator a1111 family", lambda g: g is not None and g.parser.startswith("a1111/"))] + a1111_facts(
        entry["expect"])
    overrides = OVERRIDES.get(entry["file"], {})
    return [overrides.get(label, (label, check)) for label, check in facts] + ADDITIONAL.get(entry["file"], [])


#: What a failing generator fact may raise (a missing document, a None generation); anything else is a bug.
FACT_ERRORS = (KeyError, TypeError, AttributeError, IndexError)


def fact_failure(fact: Fact, g: Generation | None) -> str | None:
    """Evaluate one fact against ``g``: None when it holds, else its label (with the exception, if one)."""
    label, check = fact
    try:
        ok = bool(check(g))
    except FACT_ERRORS as exc:
        ok, label = False, f"{label} ({type(exc).__name__}: {exc})"
    return None if ok else label

"""Small, forgiving value conversions shared by the generator parsers.

Generators write numbers as ints, floats, numeric strings ("7.5", "6952411511246973023") or booleans by accident;
every parser needs the same tolerant conversions, and none of them may raise on odd input: a parser that raises
would turn a readable file into a failed one. ``True``/``False`` are never numbers here (``bool`` is an ``int``
subclass in Python, and a JSON ``true`` in a seed field is not seed 1).
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec

from agents.metadata.model import PARSER_VERSION


def parser_id(name: str) -> str:
    """The ``Generation.parser`` value: "<parser name>/<PARSER_VERSION>"."""
    return f"{name}/{PARSER_VERSION}"


def to_int(v: Any) -> int | None:
    """An int from an int, an integral float or a numeric string; None otherwise (0 stays 0, it is a valid seed)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return int(v) if v.is_integer() else None
    if isinstance(v, str):
        s = v.strip()
        try:
            return int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                return None
            return int(f) if f.is_integer() else None
    return None


def to_float(v: Any) -> float | None:
    """A finite float from a number or a numeric string; None otherwise ("nan" and "inf" included: events carry
    numbers as JSON, which has none for them)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        if isinstance(v, (int, float)):
            f = float(v)
        elif isinstance(v, str):
            f = float(v.strip())
        else:
            return None
    except (ValueError, OverflowError):  # not a number; an int too large for a float
        return None
    return f if math.isfinite(f) else None


def to_str(v: Any) -> str | None:
    """A string as is; numbers rendered; anything else None. Empty strings are kept (an empty negative is a fact)."""
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    return None


def as_list(v: Any) -> list[Any]:
    """``v`` if it is a list, else []: JSON from the wild puts scalars where lists belong."""
    return v if isinstance(v, list) else []


def load_json(text: Any) -> Any:
    """JSON-decode a string that should hold JSON; None when it does not (never raises)."""
    if not isinstance(text, str):
        return None
    s = text.strip().lstrip("\ufeff").rstrip("\x00")
    if not s or s[0] not in "{[":
        return None
    try:
        return msgspec.json.decode(s)  # about twice as fast as json on the 50-120 KB ComfyUI documents
    except msgspec.DecodeError:
        pass
    except RecursionError:  # nested deeper than Python recurses: no generator writes that
        return None
    try:
        # what msgspec refuses but Python writers produce: NaN, Infinity, and escapes of lone surrogates
        # (``"\ud800"``), which no UTF-8 output can hold: those become U+FFFD
        return without_surrogates(json.loads(s))
    except (ValueError, RecursionError):
        return None


def without_surrogates(v: Any) -> Any:
    """``v`` (JSON-decoded) with lone surrogates, which Python's ``json`` makes of escapes like ``"\\ud800"`` and
    which no UTF-8 output (an event, the catalog) can hold, replaced by U+FFFD."""
    if isinstance(v, str):
        try:
            v.encode()
        except UnicodeEncodeError:
            return v.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        return v
    if isinstance(v, dict):
        return {without_surrogates(k): without_surrogates(x) for k, x in v.items()}
    if isinstance(v, list):
        return [without_surrogates(x) for x in v]
    return v


def json_object(v: Any) -> dict[str, Any] | None:
    """A dict from a dict or from a string holding a JSON object (ComfyUI JPEG savers nest JSON as strings)."""
    if isinstance(v, dict):
        return v
    obj = load_json(v)
    return obj if isinstance(obj, dict) else None


def xmp_text(v: Any) -> str | None:
    """Text of an XMP property: pyexiv2 gives lang-alt values as ``{'lang="x-default"': text}``, others as str/list."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and v:
        for key, text in v.items():
            if "x-default" in str(key) and isinstance(text, str):
                return text
        first = next(iter(v.values()))
        return first if isinstance(first, str) else None
    if isinstance(v, list) and v and isinstance(v[0], str):
        return v[0]
    return None


def parse_size(v: Any) -> tuple[int | None, int | None]:
    """(width, height) from "512x768", "512*768", "(768, 1280)" or a two-item list; (None, None) otherwise."""
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return to_int(v[0]), to_int(v[1])
    if not isinstance(v, str):
        return None, None
    s = v.strip().strip("()[]")
    for sep in ("x", "X", "×", "*", ","):
        if sep in s:
            a, _, b = s.partition(sep)
            w, h = to_int(a), to_int(b)
            if w is not None and h is not None:
                return w, h
    return None, None

"""EXIF, IPTC and XMP values through exiv2 (pyexiv2), made safe to call on any file.

- exiv2 reports problems through its log. At log level "error" pyexiv2 turns an error into a RuntimeError at
  open, which is how we learn of it (a warning on the result); the file is then opened again with the log muted,
  where exiv2 reads whatever it still can (a broken maker note no longer costs the whole EXIF). Nothing is
  ever printed to stderr.
- Values come from exiv2's rows as bytes and are decoded one by one, UTF-8 else Latin-1 — pyexiv2's own readers
  decode everything with one codec and raise on the first non-UTF-8 byte (a Latin-1 copyright sign).
- pyexiv2 is not thread-safe (and the log level is process-wide): every call holds one lock.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyexiv2

from agents.metadata.blobs import decode_text
from agents.metadata.exif import decode_user_comment

_LOG_ERRORS, _LOG_MUTE = 3, 4
_lock = threading.Lock()
#: Binary EXIF values (exiv2 prints them as space-separated numbers) above this many characters are summarised:
#: a maker note printed byte by byte is 4x its size and tells nobody anything.
_MAX_BINARY_CHARS = 16384
_BINARY_TYPES = frozenset({"Undefined", "Byte", "SByte"})
#: Windows XP* tags: UCS-2LE stored as bytes.
_UCS2 = frozenset({"Exif.Image.XPTitle", "Exif.Image.XPComment", "Exif.Image.XPAuthor", "Exif.Image.XPKeywords",
                   "Exif.Image.XPSubject"})
#: UserComment, in the Exif IFD or (ComfyUI JPEG savers) IFD0.
_USER_COMMENTS = frozenset({"Exif.Photo.UserComment", "Exif.Image.0x9286"})
_LANG_SPLIT = re.compile(r'(?:^|, )lang="([^"]+)" ')


@dataclass
class Exiv2Result:
    exif: dict[str, str] = field(default_factory=dict)
    iptc: dict[str, list[str]] = field(default_factory=dict)
    xmp: dict[str, Any] = field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    icc: bool = False
    #: exiv2 opened the file (perhaps only on the second, muted try).
    opened: bool = False
    warnings: list[str] = field(default_factory=list)


def read_with_exiv2(path: Path, *, dimensions: bool = False) -> Exiv2Result:
    """Everything exiv2 reads from the file at ``path``; never raises (failures are warnings)."""
    result = Exiv2Result()
    with _lock:
        try:
            _read(path, dimensions, result)
        finally:
            pyexiv2.set_log_level(_LOG_ERRORS)
    return result


def _read(path: Path, dimensions: bool, result: Exiv2Result) -> None:
    # Reads run at the log level their open succeeded with: muted after a first failure, so half-broken data
    # does not raise again on the way out.
    image = _open(path, _LOG_ERRORS, result) or _open(path, _LOG_MUTE, result)
    if image is None:
        return
    result.opened = True
    try:
        backend = image._exiv2api_image  # the rows as bytes; see the module docstring
        result.exif = _exif(backend.read_exif())
        result.iptc = _iptc(backend.read_iptc())
        result.xmp = _xmp(backend.read_xmp())
        if dimensions:
            result.width = image.get_pixel_width() or None
            result.height = image.get_pixel_height() or None
            result.icc = bool(image.read_icc())
    except Exception as exc:  # noqa: BLE001 - exiv2 raises on data it half-read; keep what is read
        result.warnings.append(f"exiv2: {_first_line(exc)}")
    finally:
        image.close()


def _open(path: Path, level: int, result: Exiv2Result) -> pyexiv2.Image | None:
    pyexiv2.set_log_level(level)
    try:
        try:
            return pyexiv2.Image(str(path))
        except UnicodeEncodeError:  # a file name that is not valid UTF-8: hand exiv2 the bytes instead
            return pyexiv2.ImageData(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - RuntimeError mostly, but any failure here is "exiv2 cannot"
        if level == _LOG_ERRORS:
            result.warnings.append(f"exiv2: {_first_line(exc)}")
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _exif(rows: list[dict[str, Any]]) -> dict[str, str]:
    exif: dict[str, str] = {}
    for row in rows:
        key = row["tag"].decode("latin-1")
        if key in exif:
            continue
        raw = row["value"]
        kind = row.get("typeName", "")
        if key in _USER_COMMENTS and kind in _BINARY_TYPES:
            value = _comment(raw)
        elif kind in _BINARY_TYPES and len(raw) > _MAX_BINARY_CHARS:
            value = f"omitted:{raw.count(b' ') + 1} bytes"
        elif key in _UCS2:
            value = _ucs2(raw)
        else:
            value = decode_text(raw)
            if kind == "Ascii":
                value = value.split("\x00", 1)[0]
        exif[key] = value
    return exif


def _comment(raw: bytes) -> str:
    """A UserComment stored as Byte/Undefined that exiv2 prints as numbers (it gives its ``charset=...`` text only
    to the Comment type): decoded from those bytes as the containers' walkers decode it, whatever its length (a
    generator's parameters are kilobytes; summarised as binary they were lost). Files we do not walk (TIFF,
    HEIF, AVIF...) have no other reading of it."""
    try:
        return decode_user_comment(bytes(int(n) for n in raw.split())) or ""
    except ValueError:
        return decode_text(raw)


def _ucs2(raw: bytes) -> str:
    try:
        return bytes(int(n) for n in raw.split()).decode("utf-16-le", errors="replace").rstrip("\x00")
    except ValueError:
        return decode_text(raw)


def _iptc(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    iptc: dict[str, list[str]] = {}
    for row in rows:
        iptc.setdefault(row["tag"].decode("latin-1"), []).append(decode_text(row["value"]))
    return iptc


def _xmp(rows: list[dict[str, Any]]) -> dict[str, Any]:
    xmp: dict[str, Any] = {}
    for row in rows:
        key = row["tag"].decode("latin-1")
        raw = row["value"]
        value: Any
        if isinstance(raw, (list, tuple)):
            value = [decode_text(item) for item in raw]
        else:
            value = decode_text(raw)
            if row.get("typeName") == "LangAlt" and value.startswith("lang="):
                parts = _LANG_SPLIT.split(value)[1:]
                value = dict(zip(parts[0::2], parts[1::2]))
        if key not in xmp:
            xmp[key] = value
        elif isinstance(xmp[key], list):
            xmp[key].append(value)
        else:
            xmp[key] = [xmp[key], value]
    return xmp

"""XMP packets: decode (UTF-8 or UTF-16, NUL-padded or not) and, where exiv2 refused them, read them ourselves.

exiv2's XMP toolkit rejects a whole packet for one duplicated property, and a file exiv2 cannot open yields no XMP
at all; :func:`parse_packet` is the tolerant fallback. It reads RDF the way XMP writes it — properties as
attributes or elements of ``rdf:Description``, arrays as ``rdf:Bag``/``rdf:Seq`` (a list), language
alternatives as ``rdf:Alt`` (a dict language -> text), structures flattened to ``Xmp.ns.Struct/ns2:Field`` — and
names keys as exiv2 does (``Xmp.<prefix>.<name>``), with the prefix the packet itself declares.
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree import ElementTree

_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
#: Where a packet's XML starts, and how each kind of start ends (the first such end after it).
_OPEN = re.compile(r"<(x:xmpmeta|rdf:RDF)\b")
_CLOSE = {"x:xmpmeta": re.compile(r"</x:xmpmeta\s*>"), "rdf:RDF": re.compile(r"</rdf:RDF\s*>")}
_NAMESPACE = re.compile(r"""xmlns:([\w.-]+)\s*=\s*["']([^"']*)["']""")
#: exiv2's prefixes for namespaces whose packets often use others.
_KNOWN_PREFIXES = {"http://ns.adobe.com/xap/1.0/": "xmp", "http://purl.org/dc/elements/1.1/": "dc"}


def decode_packet(packet: bytes) -> str:
    """The packet as text: a BOM or the NUL pattern of its first characters tells UTF-16/32 from UTF-8."""
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xfe\xff", "utf-16"), (b"\xff\xfe", "utf-16")):
        if packet.startswith(bom):
            return packet.decode(codec, errors="replace").rstrip("\x00")
    head = packet[:64]
    if head[:1] == b"\x00" and head[1:2] != b"\x00":
        return packet[: len(packet) & ~1].decode("utf-16-be", errors="replace").rstrip("\x00")
    if head[1:2] == b"\x00" and head[:1] != b"\x00":
        return packet[: len(packet) & ~1].decode("utf-16-le", errors="replace").rstrip("\x00")
    return packet.decode("utf-8", errors="replace").rstrip("\x00")


def parse_packet(packet: bytes) -> dict[str, Any] | None:
    """XMP properties of one packet as ``Xmp.<prefix>.<name>`` -> value; ``None`` when it is not XML we can read
    (an empty but well-formed packet gives ``{}``).

    Documents with a DOCTYPE are refused (entity expansion is not something a metadata reader should do).
    """
    text = decode_packet(packet)
    xml = _packet_xml(text)
    if xml is None or "<!DOCTYPE" in text or "<!ENTITY" in text:
        return None
    prefixes = {uri: prefix for prefix, uri in _NAMESPACE.findall(text)}
    prefixes.update(_KNOWN_PREFIXES)
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    result: dict[str, Any] = {}
    documents = [root] if root.tag == f"{{{_RDF}}}RDF" else root.iter(f"{{{_RDF}}}RDF")
    for document in documents:
        for description in document.iterfind(f"{{{_RDF}}}Description"):
            _properties(description, "Xmp.", prefixes, result)
    return result


def _packet_xml(text: str) -> str | None:
    """The first ``<x:xmpmeta>...</x:xmpmeta>`` or ``<rdf:RDF>...</rdf:RDF>`` in ``text``. Each kind's end is
    looked for once at most: a lazy ``.*?`` regex scanned to the end of the text from every unclosed start, and
    a packet of them (hundreds of thousands in a few kilobytes of zTXt) outlasted the pool's time limit."""
    unclosed: set[str] = set()
    for start in _OPEN.finditer(text):
        kind = start.group(1)
        if kind in unclosed:
            continue  # no end after an earlier start of this kind: none after this one either
        end = _CLOSE[kind].search(text, start.end())
        if end is not None:
            return text[start.start() : end.end()]
        unclosed.add(kind)
        if len(unclosed) == len(_CLOSE):
            return None
    return None


#: Structures nested deeper than this are left out: real XMP nests a few levels; a packet of hundreds ran out of
#: Python's stack, and the error stopped the reading of everything after the XMP (EXIF UserComment, IPTC, GPS).
MAX_NESTING = 32


def _properties(node: ElementTree.Element, base: str, prefixes: dict[str, str], out: dict[str, Any],
                depth: int = 0) -> None:
    for attribute, value in node.attrib.items():
        if attribute.startswith(f"{{{_RDF}}}") or attribute == _XML_LANG:
            continue
        out.setdefault(base + _name(attribute, prefixes, base), value)
    for child in node:
        key = base + _name(child.tag, prefixes, base)
        _value(child, key, prefixes, out, depth)


def _value(element: ElementTree.Element, key: str, prefixes: dict[str, str], out: dict[str, Any],
           depth: int = 0) -> None:
    containers = [c for c in element if c.tag in (f"{{{_RDF}}}Bag", f"{{{_RDF}}}Seq", f"{{{_RDF}}}Alt")]
    if containers:
        container = containers[0]
        items = [li for li in container if li.tag == f"{{{_RDF}}}li"]
        if container.tag == f"{{{_RDF}}}Alt" and all(_XML_LANG in li.attrib for li in items):
            out.setdefault(key, {li.attrib[_XML_LANG]: (li.text or "") for li in items})
        else:
            out.setdefault(key, [(li.text or "").strip() if len(li) == 0 else "" for li in items])
        return
    nested = element.find(f"{{{_RDF}}}Description")
    if element.get(f"{{{_RDF}}}parseType") == "Resource" or nested is not None or (len(element) and element.attrib):
        if depth < MAX_NESTING:
            _properties(nested if nested is not None else element, key + "/", prefixes, out, depth + 1)
        return
    resource = element.get(f"{{{_RDF}}}resource")
    out.setdefault(key, resource if resource is not None else (element.text or ""))


def _name(tag: str, prefixes: dict[str, str], base: str) -> str:
    """``{uri}local`` -> ``prefix.local`` at the top level, ``prefix:local`` inside a structure (as exiv2)."""
    uri, _, local = tag[1:].partition("}") if tag.startswith("{") else ("", "", tag)
    prefix = prefixes.get(uri, "ns")
    return f"{prefix}{':' if base.endswith('/') else '.'}{local}"

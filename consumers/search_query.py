"""The query language of ``damflow search``, compiled to one SQL statement with bound parameters.

Pure: text in, ``(sql, params)`` out; :meth:`consumers.catalog.Catalog.search` runs it against the catalog's
``metadata`` table and its FTS5 index ``metadata_fts``. The language::

    golden hour            words, all of which must match (AND) — in the prompt, model, LoRAs, sampler,
                           generator, file names, camera and photo captions; not in the negative prompt, which
                           says "blurry, watermark" on nearly every image (ask for it with negative:)
    "golden hour"          a phrase: these words next to each other, in this order
    light*                 a prefix: light, lighting, lighthouse …  ("golden ho"* works too)
    model:juggernaut       a field; an unquoted value is a phrase whose last word is a prefix, so model:jugg
                           finds juggernautXL_v9 and sampler:dpmpp_2m finds dpmpp_2m_sde
    model:"sd xl base"     a quoted value is an exact phrase in that field
    -blurry  -model:sd15   exclusion of a word, phrase or field match

Fields: ``prompt`` (positive prompt only), ``negative``, ``model`` (any the generation names: base, refiner,
hires, detailer), ``lora``, ``sampler``, ``generator``,
``camera`` (make, model, lens), ``file`` (file names, including upload names) — matched in the full-text index;
``seed`` (exact whole number), ``scheduler`` (prefix, e.g. ``scheduler:karras``; exact when quoted), ``format``
(png, jpeg/jpg, webp, …) — matched on columns.

Prefixes: a word ending in ``*`` anywhere; and the last free word of the query (search as you type) unless the
query ends with a space. Implicit prefixes need two characters (``a`` alone is not "every word starting with
a"). Matching ignores case and diacritics (café = cafe); punctuation separates words, as in the index
(``sd_xl_base`` is the phrase "sd xl base", ``(cat:1.2)`` is "cat 1 2"). Free words with no letter or digit
(emoji, ``&``, a lone ``*``) are dropped. Results are ranked by bm25; a query of filters and exclusions only
lists the newest indexed assets that pass them. Ranking costs a few µs per match, so a query matching more than
``RANK_WINDOW`` (2000) assets ranks its newest 2000 matches: the best of the recent, in bounded time.

Every input either compiles to a statement SQLite and FTS5 accept, or raises :class:`BadQuery` with a reason a
person can act on: empty or oversized query, unknown field (put text with a colon in quotes to search for it),
a field without a value, a seed that is not a whole number in [0, 2**64).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from streams.errors import PermanentError

#: The full-text index's columns, in order (the catalog creates the index from this; bm25 weights follow it).
#: ``models``: every model the generation names (the catalog's ``model`` is the main one, shown).
#: ``facets``: the values of the column fields, as words (see :func:`facets_text`), so that the index narrows a
#: search by them instead of every match being checked against them; never matched by free words, weighed 0 in
#: the ranking (its few words count only in a row's length).
FTS_COLUMNS = ("positive", "negative", "models", "loras", "sampler", "generator", "file_names", "camera_text",
               "photo_text", "facets")
#: A match in a short, deliberate field (a model, a LoRA, a file name) says more than one word of a long prompt.
_WEIGHTS = {"positive": 1.0, "negative": 0.5, "models": 2.0, "loras": 2.0, "sampler": 1.0, "generator": 1.0,
            "file_names": 2.0, "camera_text": 2.0, "photo_text": 1.0, "facets": 0.0}
RANK = f"bm25({', '.join(str(_WEIGHTS[c]) for c in FTS_COLUMNS)})"
#: Where free words are looked for: every indexed column but the negative prompt and the facets.
FREE_COLUMNS = tuple(c for c in FTS_COLUMNS if c not in ("negative", "facets"))
#: Fields matched in the index: name -> column.
TEXT_FIELDS = {"prompt": "positive", "negative": "negative", "model": "models", "lora": "loras",
               "sampler": "sampler", "generator": "generator", "camera": "camera_text", "file": "file_names"}
#: Fields matched on columns.
COLUMN_FIELDS = ("seed", "scheduler", "format")
FIELDS = tuple(sorted((*TEXT_FIELDS, *COLUMN_FIELDS)))
#: Spellings of ``format:`` values that differ from what tier 1 records.
FORMAT_ALIASES = {"JPG": "JPEG", "JPE": "JPEG", "TIF": "TIFF", "HEIC": "HEIF"}
MAX_LENGTH = 1000
MAX_TERMS = 32
MAX_LIMIT = 10_000
#: How many of the newest matches bm25 ranks (see :func:`to_sql`); a limit above it widens it.
RANK_WINDOW = 2000
SNIPPET_TOKENS = 12
SEED_RANGE = 1 << 64

_FIELD = re.compile(r"([A-Za-z_]+):")
#: Runs of letters and digits: roughly what the index's unicode61 tokenizer keeps as words.
_WORD = re.compile(r"[^\W_]+")


class BadQuery(PermanentError):
    """A search query that cannot be run; the message says why and what to write instead."""

    code = "bad_query"


@dataclass(frozen=True)
class Term:
    """One piece of a query: a free word or phrase (``field`` None) or a field filter."""

    text: str
    field: str | None = None
    #: Quoted: an exact phrase (or, for scheduler:, an exact value).
    quoted: bool = False
    #: The last word matches as a prefix.
    prefix: bool = False
    negated: bool = False


def parse(query: str) -> list[Term]:
    """The terms of ``query``, implicit prefixes applied and wordless free terms dropped; see the module doc."""
    if not isinstance(query, str):
        raise BadQuery(f"a query is text, not {type(query).__name__}")
    # NUL would end the FTS5 expression early; lone surrogates (undecodable bytes from argv) cannot be bound.
    query = "".join(" " if c == "\0" else "\ufffd" if "\ud800" <= c <= "\udfff" else c for c in query)
    if len(query) > MAX_LENGTH:
        raise BadQuery(f"query too long ({len(query)} characters, at most {MAX_LENGTH})")
    terms = []
    for term in _scan(query):
        if term.field is None and not _WORD.search(term.text):
            continue  # nothing the index could hold: "&", "🎉", a lone "*"
        terms.append(_checked(term))
    if not terms:
        raise BadQuery("nothing to search for: give words, \"a phrase\", or a filter such as model:sdxl"
                       if not query.strip() else
                       f"nothing to search for in {query.strip()!r}: words need letters or digits")
    if len(terms) > MAX_TERMS:
        raise BadQuery(f"too many terms ({len(terms)}, at most {MAX_TERMS})")
    last = terms[-1]
    if (last.field is None and not last.quoted and not last.negated and not query[-1].isspace()
            and _long_enough(last.text)):
        terms[-1] = replace(last, prefix=True)  # search as you type
    # A term twice means it once, and each costs a pass over its matches (a one-letter prefix merges every word
    # it starts: 16 times "a*" took 6 s on 150,000 assets)
    return list(dict.fromkeys(terms))


def _scan(query: str) -> list[Term]:
    terms = []
    i, n = 0, len(query)
    while i < n:
        if query[i].isspace():
            i += 1
            continue
        negated = query[i] == "-" and i + 1 < n and not query[i + 1].isspace()
        i += negated
        field = None
        if m := _FIELD.match(query, i):
            field = m.group(1).lower()
            if field not in FIELDS:
                raise BadQuery(f"unknown field {m.group(0)!r} (fields: {', '.join(f + ':' for f in FIELDS)}); "
                               "to search for text with a colon, put it in quotes")
            i = m.end()
        if i < n and query[i] == '"':
            end = query.find('"', i + 1)  # an unclosed quote runs to the end: forgiving, not an error
            text, i = (query[i + 1:], n) if end < 0 else (query[i + 1:end], end + 1)
            star = i < n and query[i] == "*"
            i += star
            terms.append(Term(text, field, quoted=True, prefix=star, negated=negated))
            continue
        j = i
        while j < n and not query[j].isspace() and query[j] != '"':
            j += 1
        text, i = query[i:j], j
        terms.append(Term(text.rstrip("*"), field, prefix=text.endswith("*"), negated=negated))
    return terms


def _checked(term: Term) -> Term:
    """A field term validated, with the implicit prefix of unquoted text-field values."""
    if term.field is None:
        return term
    text = term.text.strip()
    if not text:
        raise BadQuery(f"{term.field}: needs a value, e.g. {term.field}:{_EXAMPLES[term.field]}")
    if term.field == "seed":
        if not re.fullmatch(r"\+?[0-9]{1,20}", text) or int(text) >= SEED_RANGE:
            raise BadQuery(f"seed: takes a whole number from 0 to {SEED_RANGE - 1}, not {text!r}")
        return replace(term, text=str(int(text)), prefix=False)
    if term.field in COLUMN_FIELDS:
        return replace(term, text=text)
    if not _WORD.search(text):
        raise BadQuery(f"{term.field}: needs letters or digits, e.g. {term.field}:{_EXAMPLES[term.field]}")
    return replace(term, prefix=term.prefix or (not term.quoted and _long_enough(text)))


_EXAMPLES = {"prompt": "lighthouse", "negative": "blurry", "model": "juggernaut", "lora": "add_detail",
             "sampler": "euler", "generator": "comfyui", "camera": "canon", "file": "IMG_0042", "seed": "12345",
             "scheduler": "karras", "format": "png"}


def _long_enough(text: str) -> bool:
    words = _WORD.findall(text)
    return bool(words) and len(words[-1]) >= 2


# -- SQL ----------------------------------------------------------------------------------------------

_COLUMNS = """m.asset_id,
    (SELECT l.path FROM locations l WHERE l.asset_id = m.asset_id ORDER BY l.last_seen_at DESC, l.path LIMIT 1)
        AS path,
    m.generator, m.model, m.seed, m.sampler, m.scheduler, m.steps, m.cfg, {snippet} AS snippet,
    a.format, a.width, a.height, a.thumbnails, {rank} AS rank"""
# The prompt's best fragment; a photo has no prompt, so its captions' instead.
_SNIPPET = ("CASE WHEN COALESCE(m.positive, '') = '' "
            f"THEN snippet(metadata_fts, {FTS_COLUMNS.index('photo_text')}, '«', '»', '…', {SNIPPET_TOKENS}) "
            f"ELSE snippet(metadata_fts, {FTS_COLUMNS.index('positive')}, '«', '»', '…', {SNIPPET_TOKENS}) END")
_TEXT = "COALESCE(NULLIF(m.positive, ''), NULLIF(m.photo_text, ''))"
_HEAD = f"CASE WHEN length({_TEXT}) > 120 THEN substr({_TEXT}, 1, 119) || '…' ELSE {_TEXT} END"
_ASSETS = "LEFT JOIN assets a ON a.asset_id = m.asset_id"


def compile_search(query: str, *, limit: int = 50) -> tuple[str, list[Any]]:
    """``(sql, params)`` of one statement returning the rows :meth:`Catalog.search` documents."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}")
    return to_sql(parse(query), limit=limit)


def to_sql(terms: list[Term], *, limit: int) -> tuple[str, list[Any]]:
    """One statement for ``terms`` (all must hold), in one of four shapes, each with a plan that stays fast:

    * words, no seed: the index drives. Ranking costs a few µs per match, and a common word matches most of a
      large catalog, so bm25 ranks the newest ``RANK_WINDOW`` matches (row id order is indexing order, read
      without sorting); a query matching fewer is ranked in full. ``format:`` and ``scheduler:`` are phrases
      in the index's ``facets`` column too (:func:`facets_text`), so that a rare format does not have every
      match of a common word checked (and ranked) against it: on 100,000 assets, ``quality format:jpeg`` took
      285 ms without, 5 ms with; the index's IDF of a common format costs a word with it about 10-20 ms more.
    * a seed: its index drives (a seed names a handful of images), each row checked against the words;
    * filters only, with a ``format:`` or ``scheduler:``: the index drives, newest first (a format no asset has
      took 330-410 ms down the row ids, 0.1 ms so; a scheduler most assets have costs a few ms more than the
      walk down the row ids did, its prefix's matches being read first);
    * other filters and exclusions only: newest first, down the row id.
    """
    text_terms = [t for t in terms if t.field is None or t.field in TEXT_FIELDS]
    wanted = [_fts(t) for t in text_terms if not t.negated]
    unwanted = [_fts(t) for t in text_terms if t.negated]
    seed = any(t.field == "seed" and not t.negated for t in terms)
    # the column filters' phrases in ``facets``: the index hands over only assets that may pass them (a seed's
    # own index narrows more)
    facets = [] if seed else [f for t in terms if (f := _facet(t)) is not None]
    where: list[str] = []
    values: list[Any] = []
    for term in terms:
        if term.field in COLUMN_FIELDS:
            sql, value = _column_filter(term)
            where.append(sql)
            values.append(value)
    filters = "".join(f" AND {w}" for w in where)

    def expression(phrases: list[str]) -> str:
        expr = " AND ".join(phrases)
        return f"({expr}) NOT ({' OR '.join(unwanted)})" if unwanted else expr

    if not wanted and facets:  # filters only, the index narrowing them: newest first, down the index's row ids
        sql = (f"SELECT {_COLUMNS.format(snippet=_HEAD, rank='NULL')}\n"
               f"FROM metadata_fts(?) AS f JOIN metadata m ON m.doc_id = f.rowid {_ASSETS}\n"
               f"WHERE 1{filters}\nORDER BY f.rowid DESC LIMIT ?")
        return sql, [expression(facets), *values, limit]
    if not wanted:
        if unwanted:
            where.append("m.doc_id NOT IN (SELECT rowid FROM metadata_fts WHERE metadata_fts MATCH ?)")
            values.append(" OR ".join(unwanted))
        sql = (f"SELECT {_COLUMNS.format(snippet=_HEAD, rank='NULL')}\nFROM metadata m {_ASSETS}\n"
               f"WHERE {' AND '.join(where)}\nORDER BY m.doc_id DESC LIMIT ?")
        return sql, [*values, limit]

    expr = expression(wanted + facets)
    columns = _COLUMNS.format(snippet=_SNIPPET, rank="metadata_fts.rank")
    if seed:
        sql = (f"SELECT {columns}\n"
               f"FROM metadata m CROSS JOIN metadata_fts ON metadata_fts.rowid = m.doc_id {_ASSETS}\n"
               f"WHERE metadata_fts MATCH ? AND metadata_fts.rank MATCH ?{filters}\n"
               "ORDER BY metadata_fts.rank LIMIT ?")
        return sql, [expr, RANK, *values, limit]
    # The window's lower bound: the row id of the RANK_WINDOW-th newest match (none when there are fewer).
    joined = f" JOIN metadata m ON m.doc_id = w.rowid {_ASSETS}" if where else ""
    window = (f"SELECT w.rowid FROM metadata_fts(?) AS w{joined} WHERE 1{filters} "
              "ORDER BY w.rowid DESC LIMIT 1 OFFSET ?")
    sql = (f"SELECT {columns}\n"
           f"FROM metadata_fts JOIN metadata m ON m.doc_id = metadata_fts.rowid {_ASSETS}\n"
           f"WHERE metadata_fts MATCH ? AND metadata_fts.rank MATCH ?{filters}\n"
           f"    AND metadata_fts.rowid >= COALESCE(({window}), 0)\n"
           "ORDER BY metadata_fts.rank LIMIT ?")
    return sql, [expr, RANK, *values, expr, *values, max(RANK_WINDOW, limit) - 1, limit]


def _fts(term: Term) -> str:
    """An FTS5 phrase for ``term`` in its column(s). The text is always a quoted FTS5 string (quotes doubled),
    so no user input is ever read as FTS5 syntax — ``AND``, ``NEAR``, ``(``, ``:``, ``^`` are just words."""
    columns = FREE_COLUMNS if term.field is None else (TEXT_FIELDS[term.field],)
    phrase = '"' + term.text.replace('"', '""') + '"' + (" *" if term.prefix else "")
    return "{" + " ".join(columns) + "} : " + phrase


def facets_text(fmt: str | None, scheduler: str | None) -> str:
    """What the index's ``facets`` column holds for an asset of format ``fmt`` (as tier 1 records it) whose
    generation used ``scheduler``: the scheduler first, so that ``scheduler:`` is a phrase at the column's start
    (``scheduler:dpmpp_2m`` → ``^"dpmpp_2m" *``), then the format as one word (``format:jpeg`` → ``"fmtjpeg"``:
    one word's list is read faster than a phrase's)."""
    return f"{scheduler or ''} {_format_word(fmt or '')}"


def _format_word(fmt: str) -> str:
    word = "".join(c for c in fmt.lower() if c.isascii() and c.isalnum())
    return f"fmt{word}" if word else ""


def _facet(term: Term) -> str | None:
    """The phrase in ``facets`` that every asset passing the column filter ``term`` matches, or None where none
    narrows it (a negation, a seed, a value without a word, a one-letter prefix, which would merge every word it
    starts). The index tokenizes the value as it tokenized the column, so a match of the filter's value (equal,
    or for ``scheduler:`` a prefix) is a match of the phrase: the phrase only narrows, the filter decides."""
    if term.negated:
        return None
    if term.field == "format":
        word = _format_word(_format(term.text))
        return '{facets} : "' + word + '"' if word else None
    if term.field != "scheduler":
        return None
    prefix = not term.quoted
    if not _WORD.search(term.text) or (prefix and not _long_enough(term.text)):
        return None
    return '{facets} : ^"' + term.text.replace('"', '""') + '"' + (" *" if prefix else "")


def _format(text: str) -> str:
    """A ``format:`` value as tier 1 records formats: jpg → JPEG."""
    fmt = text.lstrip(".").upper()
    return FORMAT_ALIASES.get(fmt, fmt)


def _column_filter(term: Term) -> tuple[str, Any]:
    if term.field == "seed":
        seed = int(term.text)
        stored = seed - SEED_RANGE if seed >= SEED_RANGE // 2 else seed  # as the catalog stores it
        return ("(m.seed IS NULL OR m.seed <> ?)" if term.negated else "m.seed = ?"), stored
    if term.field == "scheduler":
        if term.quoted:
            test, value = "m.scheduler = ? COLLATE NOCASE", term.text
        else:
            escaped = term.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            test, value = "m.scheduler LIKE ? ESCAPE '\\'", escaped + "%"
        return (f"NOT COALESCE({test}, 0)" if term.negated else test), value
    test = "a.format = ? COLLATE NOCASE"
    return (f"NOT COALESCE({test}, 0)" if term.negated else test), _format(term.text)

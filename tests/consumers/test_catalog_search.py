"""Tier 2 in the catalog: ``AssetIndexed`` projected idempotently, the full-text index, search, migration."""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
from pathlib import Path

import pytest

from consumers import search_query
from consumers.catalog import _MIGRATIONS, CATALOG_VERSION, BadQuery, Catalog, CatalogUnavailable
from consumers.views import render_asset, render_search
from schemas.events import AssetIndexed
from tests.consumers.test_catalog import A1, A2, ROOT, T0, browsable, dump, failed, scanned

A3 = "c3" * 32
COMFY = dict(generator="comfyui", model="juggernautXL_v9Rundiffusionphoto2.safetensors",
             models=["juggernautXL_v9Rundiffusionphoto2.safetensors", "sd_xl_refiner_1.0.safetensors"],
             loras=["add_detail"],
             seed=123456789, steps=30, cfg=7.0, sampler="dpmpp_2m_sde", scheduler="karras", denoise=1.0,
             positive="a lighthouse on a cliff at golden hour, dramatic sky, masterpiece",
             negative="blurry, watermark, bad hands")
PHOTO = dict(camera={"make": "Canon", "model": "Canon EOS R5", "lens": "RF24-70mm F2.8 L IS USM",
                     "datetime_original": "2024:06:01 18:30:00", "description": "Café terrace at dusk in Lisbon",
                     "keywords": "travel, street", "artist": "Ana Lima"}, gps=(38.7139, -9.1394))


def indexed(asset_id: str = A1, *, event_id: str = "e1", path: str | None = None, batch: str = "b1",
            parser: int = 1, at: float = T0 + 30, **fields) -> AssetIndexed:
    return AssetIndexed(
        event_id=event_id, batch_id=batch, lane="batch", source="scan", asset_id=asset_id,
        path=path or f"{ROOT}/{event_id}.png", parser_version=parser,
        metadata_path=f"metadata/{asset_id[:2]}/{asset_id}.v{parser}.json", indexed_at=at, **fields)


def ids(rows: list[dict]) -> list[str]:
    return [r["asset_id"] for r in rows]


def index_rows(path: Path) -> list[tuple]:
    """What the full-text index holds, term by term: equal lists mean equal indexes, however they were written."""
    db = sqlite3.connect(path)
    try:
        db.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, 'metadata_fts', 'instance')")
        return db.execute("SELECT * FROM temp.vocab ORDER BY 1, 2, 3, 4").fetchall()
    finally:
        db.close()


def check_index(path: Path) -> None:
    """FTS5's own check that the index matches the ``metadata`` rows it was built from."""
    db = sqlite3.connect(path)
    try:
        db.execute("INSERT INTO metadata_fts (metadata_fts, rank) VALUES ('integrity-check', 1)")
    finally:
        db.close()


def logical_dump(path: Path) -> dict:
    """Every table's rows but the index's storage (its b-tree depends on write history), plus the index terms."""
    tables = {t: rows for t, rows in dump(path).items() if not t.startswith("metadata_fts")}
    return {**tables, "index": index_rows(path)}


@pytest.fixture
def library(catalog: Catalog) -> Catalog:
    """Three assets: a ComfyUI image with two locations, a camera photo, an A1111 image."""
    catalog.apply([
        scanned(3, complete=True),
        browsable("e1", f"{ROOT}/ComfyUI_00012_.png"), browsable("e9", f"{ROOT}/best/lighthouse final.png"),
        browsable("e2", f"{ROOT}/IMG_0042.JPG", A2, at=T0 + 11),
        browsable("e3", "/up/originals/c3/x.webp", A3, at=T0 + 12, display_name="Neon Fox.webp"),
        indexed(A1, event_id="e1", **COMFY),
        indexed(A2, event_id="e2", at=T0 + 31, **PHOTO),
        indexed(A3, event_id="e3", at=T0 + 32, generator="a1111", model="ponyDiffusionV6XL.safetensors",
                seed=2 ** 64 - 1, sampler="Euler a", scheduler="normal", steps=20, cfg=5.5,
                positive="neon fox in a cyberpunk city at night, (rain:1.2), café sign",
                negative="lowres, watermark", loras=["neon_palette", "more_details"]),
    ])
    return catalog


# -- projection ------------------------------------------------------------------------------------


def test_indexed_twice_changes_nothing_not_even_the_index_storage(library: Catalog) -> None:
    once = dump(library.path)
    library.apply([indexed(A1, event_id="e1", **COMFY), indexed(A2, event_id="e2", at=T0 + 31, **PHOTO)])
    assert dump(library.path) == once


def test_newest_parser_then_latest_run_wins_in_any_order(make_catalog) -> None:
    events = [
        indexed(parser=1, at=T0 + 50, **{**COMFY, "positive": "old parser, later run", "seed": 1}),
        indexed(parser=2, at=T0 + 20, **{**COMFY, "positive": "new parser, first run", "seed": 2}),
        indexed(parser=2, at=T0 + 40, **{**COMFY, "positive": "new parser, second run", "seed": 3}),
        browsable("e1", f"{ROOT}/e1.png"),
    ]
    dumps = []
    for n, order in enumerate(itertools.permutations(events)):
        cat = make_catalog(f"{n}.sqlite")
        for event in order:
            cat.apply([event])
        meta = cat.asset(A1)["metadata"]
        assert (meta["parser_version"], meta["seed"], meta["indexed_at"]) == (2, 3, T0 + 40)
        assert ids(cat.search("second run")) == [A1]
        assert cat.search("first") == [] and cat.search("later") == []
        check_index(cat.path)
        dumps.append(logical_dump(cat.path))
    assert all(d == dumps[0] for d in dumps[1:])


def test_an_older_parsers_late_event_does_not_overwrite(catalog: Catalog) -> None:
    catalog.apply([indexed(parser=3, at=T0 + 10, **{**COMFY, "positive": "three"})])
    catalog.apply([indexed(parser=2, at=T0 + 99, **{**COMFY, "positive": "two"})])
    assert catalog.asset(A1)["metadata"]["positive"] == "three"
    assert catalog.parser_versions() == {3: 1}


def test_tier2_progress_and_states(catalog: Catalog) -> None:
    catalog.apply([
        scanned(4, complete=True),
        browsable("e1", f"{ROOT}/1.png"), browsable("e2", f"{ROOT}/2.png", A2),
        browsable("e3", f"{ROOT}/3.png", A3), failed("e4", f"{ROOT}/4.png"),
        indexed(A1, event_id="e1", path=f"{ROOT}/1.png"),
        failed("e2", f"{ROOT}/2.png", tier=2, asset_id=A2, outcome="retrying", at=T0 + 25),
        indexed(A2, event_id="e2", path=f"{ROOT}/2.png", at=T0 + 35),
        failed("e2", f"{ROOT}/2.png", tier=2, asset_id=A2, outcome="dead_lettered", at=T0 + 36),  # stale
        failed("e3", f"{ROOT}/3.png", tier=2, asset_id=A3, outcome="dead_lettered", at=T0 + 37),
    ])
    p = catalog.progress("b1", 2, now=T0 + 60)
    assert (p.known_total, p.total_final, p.done, p.dead_lettered, p.retrying, p.in_flight) == (3, True, 2, 1, 0, 0)
    assert catalog.progress("b1", 1, now=T0 + 60).done == 3  # tier 2 is not counted as tier 1
    assert catalog.asset(A2)["tier2_state"] == "indexed"  # done beats the failure of a retried attempt
    assert catalog.asset(A3)["tier2_state"] == "dead_lettered"
    assert catalog.status(now=T0 + 60)["asset_states"]["tier2"] == {"indexed": 2, "dead_lettered": 1, "pending": 0}
    assert catalog.counts()["indexed"] == 2


def test_tier2_progress_counts_the_file_once_when_redelivered(catalog: Catalog) -> None:
    catalog.apply([scanned(1, complete=True), browsable("e1", f"{ROOT}/1.png")])
    catalog.apply([indexed(event_id="e1")] * 3 + [indexed(event_id="e1", parser=2, at=T0 + 90)])
    p = catalog.progress("b1", 2, now=T0 + 100)
    assert (p.known_total, p.done, p.in_flight) == (1, 1, 0)


def test_indexed_before_browsable_ends_the_same(make_catalog) -> None:
    events = [browsable("e1", f"{ROOT}/ComfyUI_1.png"), indexed(event_id="e1", path=f"{ROOT}/ComfyUI_1.png",
                                                                 **COMFY)]
    first, second = make_catalog("a.sqlite"), make_catalog("b.sqlite")
    first.apply(events)
    second.apply(events[1:])
    stub = second.asset(A1)
    assert stub["size"] is None and stub["tier2_state"] == "indexed" and stub["metadata"]["seed"] == 123456789
    assert second.search("file:ComfyUI_1") == []  # no location yet
    second.apply(events[:1])
    assert ids(second.search("file:ComfyUI_1")) == [A1]
    assert logical_dump(second.path) == logical_dump(first.path)


def test_file_names_follow_the_locations(library: Catalog) -> None:
    assert ids(library.search("file:ComfyUI_00012")) == [A1]
    assert ids(library.search('file:"lighthouse final"')) == [A1]  # every location counts
    assert ids(library.search("file:neon")) == [A3]  # an upload's own name
    library.apply([browsable("e7", f"{ROOT}/renamed/harbour-dawn.png", at=T0 + 70)])
    assert ids(library.search("file:harbour")) == [A1]
    # New bytes at a path: the old asset loses that name, the new one (indexed later) gets it.
    library.apply([browsable("e8", f"{ROOT}/best/lighthouse final.png", A2, at=T0 + 80)])
    assert ids(library.search('file:"lighthouse final"')) == [A2]
    check_index(library.path)


def test_values_sqlite_cannot_hold_are_made_safe(catalog: Catalog) -> None:
    catalog.apply([indexed(seed=2 ** 70, steps=10 ** 30, cfg=float("nan"), denoise=float("inf"),
                           positive="caf\udce9 au lait", loras=["lo\udcffra"], gps=(999.0, 1.0))])
    meta = catalog.asset(A1)["metadata"]
    assert (meta["seed"], meta["steps"], meta["cfg"], meta["denoise"], meta["gps_lat"]) == (None,) * 5
    assert meta["positive"] == "caf\ufffd au lait" and meta["loras"] == ["lo\ufffdra"]
    assert json.loads(json.dumps(meta)) == meta


def test_asset_shows_metadata_when_indexed(library: Catalog) -> None:
    catalog = library
    catalog.apply([browsable("e5", f"{ROOT}/plain.png", "d4" * 32)])
    assert catalog.asset("d4" * 32)["metadata"] is None
    meta = catalog.asset(A2)["metadata"]
    assert json.loads(json.dumps(meta)) == meta
    assert (meta["camera_make"], meta["camera_model"], meta["lens"]) == ("Canon", "Canon EOS R5",
                                                                         "RF24-70mm F2.8 L IS USM")
    assert (meta["gps_lat"], meta["gps_lon"], meta["generator"], meta["loras"]) == (38.7139, -9.1394, None, [])
    assert catalog.asset(A3)["metadata"]["seed"] == 2 ** 64 - 1  # unsigned 64-bit seeds survive


# -- search ----------------------------------------------------------------------------------------


def test_search_finds_prompt_words_and_returns_the_documented_row(library: Catalog) -> None:
    [row] = library.search("lighthouse golden")
    assert row["asset_id"] == A1 and row["path"] == f"{ROOT}/ComfyUI_00012_.png"  # last seen, then by path
    assert (row["generator"], row["seed"], row["sampler"], row["scheduler"], row["steps"], row["cfg"]) == (
        "comfyui", 123456789, "dpmpp_2m_sde", "karras", 30, 7.0)
    assert (row["format"], row["width"], row["height"]) == ("PNG", 1024, 768)
    assert row["thumbnails"] == {"256": f"thumbs/a1/{A1}.256.webp"}
    assert "«lighthouse»" in row["snippet"] and "«golden»" in row["snippet"]
    assert isinstance(row["rank"], float)
    assert json.loads(json.dumps(row)) == row


def test_words_are_and_phrases_are_ordered(library: Catalog) -> None:
    assert ids(library.search("lighthouse neon")) == []
    assert ids(library.search('"golden hour"')) == [A1]
    assert ids(library.search('"hour golden"')) == []


def test_prefixes(library: Catalog) -> None:
    assert ids(library.search("lightho")) == [A1]  # the last word, as typed
    assert ids(library.search("lightho ")) == []  # a finished word is a word
    assert ids(library.search("cyber* neon ")) == [A3]
    assert ids(library.search("model:jugg")) == [A1]
    assert ids(library.search('"golden ho"*')) == [A1]


def test_case_and_diacritics_do_not_matter(library: Catalog) -> None:
    assert set(ids(library.search("CAFE"))) == set(ids(library.search("café"))) == {A2, A3}
    assert ids(library.search("İSTANBUL ÇAFÉ")) == []  # non-ASCII case folding does not raise either


@pytest.mark.parametrize(("query", "expected"), [
    ("model:juggernautxl", {A1}),
    ('model:"pony diffusion"', set()),
    ("model:pony", {A3}),  # (an event of a parser before 3: its main model only)
    ("model:refiner", {A1}),  # every model the generation names, not only the main one
    ("refiner", {A1}),
    ("seed:123456789", {A1}),
    (f"seed:{2 ** 64 - 1}", {A3}),
    ("seed:5", set()),
    ("sampler:dpmpp_2m", {A1}),
    ('sampler:"euler a"', {A3}),
    ("scheduler:KARR", {A1}),
    ('scheduler:"norm"', set()),
    ("camera:canon", {A2}),
    ("camera:rf24", {A2}),
    ("camera:lisbon", set()),  # a caption is not the camera…
    ("lisbon", {A2}),  # …but free words find it
    ("file:img_0042", {A2}),
    ("lora:neon_palette", {A3}),
    ("lora:add", {A1}),
    ("generator:comfy", {A1}),
    ("format:png", {A1, A2, A3}),
    ("format:jpeg", set()),
    ("prompt:watermark", set()),
    ("negative:watermark", {A1, A3}),
    ("negative:hands", {A1}),
    ("watermark", set()),  # free words do not look in the negative prompt
    ("(rain:1.2)", {A3}),
    ("sd_xl", {A1}),  # its refiner, sd_xl_refiner_1.0
])
def test_field_filters(library: Catalog, query: str, expected: set[str]) -> None:
    assert set(ids(library.search(query))) == expected


def test_exclusions(library: Catalog) -> None:
    assert set(ids(library.search("café -lisbon"))) == {A3}
    assert set(ids(library.search("-neon"))) == {A1, A2}  # exclusions alone: everything else, newest first
    assert ids(library.search("-neon -canon")) == [A1]
    assert set(ids(library.search("format:png -model:pony"))) == {A1, A2}
    assert set(ids(library.search("negative:watermark -seed:123456789"))) == {A3}
    assert set(ids(library.search('-"golden hour" -format:webp'))) == {A2, A3}


def test_combinations(library: Catalog) -> None:
    assert ids(library.search("lighthouse model:jugg sampler:dpmpp seed:123456789 format:png")) == [A1]
    assert ids(library.search("lighthouse seed:1")) == []
    assert ids(library.search("city scheduler:normal -lisbon")) == [A3]


def test_a_format_filter_finds_what_a_word_has_in_that_format_and_nothing_else(catalog: Catalog) -> None:
    # format: and scheduler: narrow the search in the index (its facets column): a common word in a format
    # nothing has, or few have, is not checked match by match; the answers are those of the column filters
    formats = {A1: "PNG", A2: "JPEG", A3: "WEBP"}
    catalog.apply([browsable(f"e{i}", f"{ROOT}/{i}.x", asset, format=fmt, at=T0 + i)
                   for i, (asset, fmt) in enumerate(formats.items())] + [
        indexed(A1, event_id="e0", scheduler="karras", positive="cat in the rain"),
        indexed(A2, event_id="e1", at=T0 + 31, positive="a cat, png on a jpeg"),
        indexed(A3, event_id="e2", at=T0 + 32, scheduler="sgm_uniform", positive="cat"),
    ])
    assert ids(catalog.search("cat format:jpg")) == ids(catalog.search("cat format:.JPEG")) == [A2]
    assert ids(catalog.search("cat format:webp scheduler:sgm_u")) == [A3]
    assert catalog.search("cat format:gif") == [] and catalog.search("format:gif") == []
    assert ids(catalog.search("format:webp")) == [A3]
    assert ids(catalog.search("scheduler:karras")) == ids(catalog.search('cat scheduler:"KARRAS"')) == [A1]
    assert catalog.search('scheduler:"karr"') == [] and catalog.search("scheduler:uniform") == []
    assert set(ids(catalog.search("cat -format:png"))) == {A2, A3}
    # the facets are not text: free words and text fields never find them
    assert ids(catalog.search("png")) == ids(catalog.search("jpeg")) == [A2]
    assert catalog.search("fmtpng") == [] and catalog.search("karras") == [] and catalog.search("uniform") == []


def test_a_format_known_after_indexing_is_found_by_its_filter(catalog: Catalog) -> None:
    catalog.apply([indexed(A1, positive="a fox")])  # tier 2's event first: the format is not known yet
    assert catalog.search("fox format:png") == [] and ids(catalog.search("fox")) == [A1]
    catalog.apply([browsable("e1", f"{ROOT}/fox.png")])
    assert ids(catalog.search("fox format:png")) == ids(catalog.search("format:png")) == [A1]
    check_index(catalog.path)


def test_filters_only_list_newest_first_and_respect_limit(library: Catalog) -> None:
    assert ids(library.search("format:png")) == [A3, A2, A1]
    assert ids(library.search("format:png", limit=2)) == [A3, A2]
    rows = library.search("format:png")
    assert rows[0]["rank"] is None and rows[0]["snippet"].startswith("neon fox")


def test_photo_snippets_come_from_captions(library: Catalog) -> None:
    [row] = library.search("lisbon")
    assert "«Lisbon»" in row["snippet"]


def test_ranking_prefers_more_and_denser_matches(catalog: Catalog) -> None:
    catalog.apply([browsable(f"e{i}", f"{ROOT}/{i}.png", f"{i:02d}" * 32) for i in range(3)] + [
        indexed("00" * 32, event_id="e0", positive="a cat " + "and other things " * 30),
        indexed("01" * 32, event_id="e1", positive="cat, cat, a cat portrait"),
        indexed("02" * 32, event_id="e2", positive="a dog", model="cat-diffusion"),
    ])
    assert ids(catalog.search("cat "))[0] == "01" * 32
    assert ids(catalog.search("cat "))[-1] == "00" * 32


def test_broad_queries_rank_only_the_newest_window(catalog: Catalog, monkeypatch) -> None:
    monkeypatch.setattr(search_query, "RANK_WINDOW", 3)
    events = [browsable(f"e{i}", f"{ROOT}/{i}.png", f"{i:02d}" * 32) for i in range(8)]
    events += [indexed(f"{i:02d}" * 32, event_id=f"e{i}", at=T0 + 100 + i,
                       positive="cat " * (8 - i) + "portrait", seed=i) for i in range(8)]
    catalog.apply(events)
    # The densest "cat" prompts are the oldest; only the 3 newest matches are ranked.
    assert ids(catalog.search("cat ", limit=2)) == ["05" * 32, "06" * 32]
    # Filters apply inside the window: seed 1's asset is old, yet found.
    assert ids(catalog.search("cat seed:1")) == ["01" * 32]
    # A limit above the window widens it.
    assert len(catalog.search("cat ", limit=8)) == 8


def test_search_on_a_readonly_handle(library: Catalog, make_catalog) -> None:
    reader = make_catalog(readonly=True)
    assert ids(reader.search("lighthouse")) == [A1]


WEIRD = [
    '"', '""', '"""', "'", "''", "(", ")", "()", "(((", "*", "**", "a*b", "*a", ":", "::", "a:", ":a", "-", "--",
    "-*", '-"', "^", "^a", "+a", "a+b", "{", "}", "{a b}: c", "a : b", "NEAR", "NEAR(a b)", "NEAR(a b, 2)",
    "AND", "OR", "NOT", "a AND", "OR b", "NOT NOT", "a OR b", "a NOT b", "col:a", "model:(", 'model:"',
    'model:"a', "seed:", "seed:x", "seed:99999999999999999999999", "seed:18446744073709551615", "format:",
    "format:'", "scheduler:%", "scheduler:_", "scheduler:\\", "'; DROP TABLE metadata; --",
    "1; SELECT * FROM sqlite_master", "\" OR 1=1 --", "a' OR '1'='1", "%", "_", "\\", "\\\"", "\0", "a\0b",
    "\udcff", "caf\udce9", "é", "ß", "ǅ", "İstanbul", "中文", "日本語のテキスト", "한국어", "العربية", "עברית",
    "🎉", "🎉🎉 cat", "👩‍👩‍👧", "🏳️‍🌈", "\u200b", "\ufeff", "\t\n\r", " " * 50, "a" * 1000, "a" * 1001,
    "x" * 200 + "*", "lighthouse*" * 5, '"golden hour"*', '"a" "b" "c"', "-lighthouse", "-(", "prompt:-",
    "negative:^", "file:*.png", "file:../../etc/passwd", "camera:\"\"", "lora:{x}", "generator:NEAR",
    "model:AND", "model:OR model:NOT", "ESCAPE", "LIKE", "MATCH", "rank:1", "rowid:1", "bm25(", "snippet(",
    # every statement shape with hostile words in it: ranked, ranked with filters, seed-driven, filters only
    '"a"" OR x" format:png -")"', "(x seed:1 -NEAR(", "-( format:' scheduler:%_\\", '-"" -* -🎉 format:png',
    'café* -"golden hour"* sampler:"dpmpp 2m" lora:(x) camera:"" file:x.png',
]


def _fuzz(rng: random.Random) -> str:
    pieces = ['"', "(", ")", "*", ":", "-", "^", "+", "{", "}", "'", ";", "\\", "%", "_", "\0", " ", " ", " ",
              "AND", "OR", "NOT", "NEAR", "model:", "seed:", "file:", "camera:", "sampler:", "lora:", "format:",
              "scheduler:", "prompt:", "negative:", "generator:", "cat", "golden", "light", "é", "🎉", "中",
              "\udcff", "1", "18446744073709551616", "-1", "x:"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))


def test_any_input_works_or_raises_bad_query_never_an_sqlite_error(library: Catalog) -> None:
    rng = random.Random(20240601)
    queries = WEIRD + [_fuzz(rng) for _ in range(1500)]
    worked = refused = 0
    for query in queries:
        for limit in (1, 50):
            try:
                rows = library.search(query, limit=limit)
            except BadQuery as exc:
                assert str(exc)
                assert exc.__cause__ is None, f"{query!r} reached SQLite and failed there: {exc.__cause__}"
                refused += 1
            else:
                assert len(rows) <= limit and json.dumps(rows)
                worked += 1
    assert worked > 1000 and refused > 100  # both paths are really exercised


def test_bad_query_from_the_catalog_is_typed(library: Catalog) -> None:
    with pytest.raises(BadQuery, match="unknown field"):
        library.search("colour:red")


# -- reparse ---------------------------------------------------------------------------------------


def test_parser_versions_and_assets_needing_reparse(library: Catalog) -> None:
    library.apply([indexed(A2, event_id="e2", parser=2, at=T0 + 90, **PHOTO)])
    library.apply([browsable("e6", f"{ROOT}/gone.png", "d4" * 32),
                   indexed("d4" * 32, event_id="e6", at=T0 + 40),
                   browsable("e7", f"{ROOT}/gone.png", "e5" * 32, at=T0 + 99)])  # d4's only path now holds e5
    assert library.parser_versions() == {1: 3, 2: 1}
    rows = library.assets_needing_reparse(2)
    assert [r["asset_id"] for r in rows] == sorted([A1, A3])  # d4 has no file left to read
    first = rows[0]
    assert first == {"asset_id": A1, "parser_version": 1, "metadata_path": f"metadata/a1/{A1}.v1.json",
                     "path": f"{ROOT}/ComfyUI_00012_.png", "size": 1500, "mtime_ns": 7, "batch_id": "b1",
                     "source": "scan", "lane": "batch"}
    assert [r["asset_id"] for r in library.assets_needing_reparse(2, limit=1)] == [A1]
    assert library.assets_needing_reparse(1) == []
    assert len(library.assets_needing_reparse(3)) == 3


# -- migration -------------------------------------------------------------------------------------

# The version-1 schema, as catalog.py created it before tier 2 (copied, so later edits cannot change it).
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS assets (
    asset_id      TEXT PRIMARY KEY,
    size          INTEGER,          -- NULL while only a failure has named the asset
    format        TEXT,
    width         INTEGER,
    height        INTEGER,
    thumbnails    TEXT NOT NULL DEFAULT '{}',
    first_seen_at REAL NOT NULL,
    browsable_at  REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS asset_tiers (
    asset_id TEXT NOT NULL, tier INTEGER NOT NULL, state TEXT NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (asset_id, tier)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS locations (       -- only paths that became browsable: what a rescan may skip
    path TEXT PRIMARY KEY, asset_id TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    batch_id TEXT NOT NULL, source TEXT NOT NULL, display_name TEXT,
    first_seen_at REAL NOT NULL, last_seen_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS locations_by_asset ON locations (asset_id);
CREATE TABLE IF NOT EXISTS failures (         -- the latest failure per path and tier
    path TEXT NOT NULL, tier INTEGER NOT NULL, asset_id TEXT, batch_id TEXT NOT NULL, event_id TEXT NOT NULL,
    error_class TEXT NOT NULL, error_code TEXT NOT NULL, reason TEXT NOT NULL, outcome TEXT NOT NULL,
    attempts INTEGER NOT NULL, failed_at REAL NOT NULL,
    PRIMARY KEY (path, tier)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS failures_by_asset ON failures (asset_id);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY, lane TEXT NOT NULL, root TEXT,
    scanned_total INTEGER NOT NULL DEFAULT 0,      -- the scanner's running count: MAX of reports
    skipped_unchanged INTEGER NOT NULL DEFAULT 0, skipped_other INTEGER NOT NULL DEFAULT 0,
    scan_complete INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL, updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batches_by_start ON batches (started_at);
CREATE TABLE IF NOT EXISTS batch_files (       -- one row per file (event id) and tier: idempotent counting
    batch_id TEXT NOT NULL, event_id TEXT NOT NULL, tier INTEGER NOT NULL, path TEXT NOT NULL,
    asset_id TEXT, state TEXT NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (batch_id, event_id, tier)
) WITHOUT ROWID;
"""


@pytest.fixture
def v1_catalog(tmp_path: Path) -> Path:
    """A version-1 catalog with one browsable asset and a batch, written with the v1 DDL by hand."""
    path = tmp_path / "v1.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA + "PRAGMA user_version = 1;")
    db.executescript(f"""
        INSERT INTO assets VALUES ('{A1}', 1500, 'PNG', 1024, 768, '{{}}', {T0 + 9}, {T0 + 10});
        INSERT INTO asset_tiers VALUES ('{A1}', 1, 'done', {T0 + 10});
        INSERT INTO locations VALUES ('{ROOT}/old.png', '{A1}', 1500, 7, 'b1', 'scan', NULL, {T0 + 9}, {T0 + 9});
        INSERT INTO batches VALUES ('b1', 'batch', '{ROOT}', 1, 0, 0, 1, {T0}, {T0 + 10});
        INSERT INTO batch_files VALUES ('b1', 'e1', 1, '{ROOT}/old.png', '{A1}', 'done', {T0 + 10});
    """)
    db.close()
    return path


def test_a_version_1_catalog_is_migrated_and_keeps_its_rows(v1_catalog: Path) -> None:
    with Catalog(v1_catalog) as cat:
        asset = cat.asset(A1)
        assert (asset["tier1_state"], asset["metadata"], asset["locations"][0]["path"]) == (
            "browsable", None, f"{ROOT}/old.png")
        assert cat.progress("b1", 1, now=T0 + 20).done == 1
        cat.apply([indexed(A1, event_id="e1", path=f"{ROOT}/old.png", **COMFY)])
        assert ids(cat.search("lighthouse file:old")) == [A1]
        assert cat.progress("b1", 2, now=T0 + 40).done == 1
    db = sqlite3.connect(v1_catalog)
    assert db.execute("PRAGMA user_version").fetchone()[0] == CATALOG_VERSION == 10
    db.close()
    check_index(v1_catalog)
    with Catalog(v1_catalog) as again:  # reopening a migrated catalog is a no-op
        assert again.parser_versions() == {1: 1}


def test_a_version_7_catalog_indexes_its_models_once_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v7.sqlite"
    db = sqlite3.connect(path)
    db.executescript(" ".join(_MIGRATIONS[v] for v in range(7)) + "PRAGMA user_version = 7;")
    db.execute("INSERT INTO metadata (doc_id, asset_id, parser_version, model, positive, metadata_path, indexed_at) "
               "VALUES (1, ?, 2, 'juggernautXL_v9.safetensors', 'a lighthouse', 'm.json', ?)", (A1, T0))
    db.commit()
    db.close()
    with Catalog(path) as cat:
        assert ids(cat.search("model:juggernaut")) == ids(cat.search("lighthouse")) == [A1]
        assert cat.search("lighthouse")[0]["model"] == "juggernautXL_v9.safetensors"  # the main one, shown
        cat.apply([indexed(A1, parser=3, generator="comfyui", model="base.safetensors",
                           models=["base.safetensors", "refiner.safetensors"], positive="a harbour")])
        assert ids(cat.search("model:refiner")) == [A1] and cat.search("model:juggernaut") == []
    check_index(path)


def test_a_version_8_catalog_filters_by_format_and_scheduler_in_the_index_once_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v8.sqlite"
    db = sqlite3.connect(path)
    db.executescript(" ".join(_MIGRATIONS[v] for v in range(8)) + "PRAGMA user_version = 8;")
    db.executescript(f"""
        INSERT INTO assets (asset_id, format, first_seen_at) VALUES ('{A1}', 'PNG', {T0}), ('{A2}', 'JPEG', {T0});
        INSERT INTO metadata (doc_id, asset_id, parser_version, scheduler, positive, metadata_path, indexed_at)
        VALUES (1, '{A1}', 3, 'karras', 'a lighthouse', 'm1.json', {T0}),
               (2, '{A2}', 3, NULL, 'a lighthouse', 'm2.json', {T0});
    """)
    db.close()
    with Catalog(path) as cat:
        assert ids(cat.search("lighthouse format:jpg")) == ids(cat.search("format:jpg")) == [A2]
        assert ids(cat.search("lighthouse scheduler:karr")) == ids(cat.search("format:png")) == [A1]
        assert cat.search("format:gif") == []
    check_index(path)
    db = sqlite3.connect(path)
    assert dict(db.execute("SELECT asset_id, facets FROM metadata")) == {
        A1: search_query.facets_text("PNG", "karras"), A2: search_query.facets_text("JPEG", None)}
    db.close()


@pytest.mark.parametrize("reverse", [False, True], ids=["in order", "newer first"])
def test_the_same_bytes_uploaded_again_under_another_name_are_found_by_each(make_catalog, reverse: bool) -> None:
    # one stored file (content-addressed) for both: its location kept the first name, and `file:kitty` found
    # nothing however often kitty.png was uploaded; then it kept the newest, and `file:cat` found nothing
    stored = f"/up/originals/{A1[:2]}/{A1}.png"
    uploads = [browsable("u1", stored, at=T0 + 10, display_name="cat.png"),
               browsable("u2", stored, at=T0 + 50, display_name="kitty.png"),
               browsable("s1", stored, at=T0 + 60)]  # seen again with no name (a reconcile): the name stays
    cat = make_catalog()
    cat.apply([indexed(A1, positive="a cat")])
    for event in reversed(uploads) if reverse else uploads:
        cat.apply([event])
    assert ids(cat.search("file:kitty")) == ids(cat.search("file:cat")) == [A1]
    assert [loc["display_name"] for loc in cat.asset(A1)["locations"]] == ["kitty.png"]  # the newest, shown


def test_a_version_9_catalog_keeps_its_upload_names_searchable_once_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v9.sqlite"
    db = sqlite3.connect(path)
    db.create_function("damflow_facets", 2, search_query.facets_text)
    db.executescript(" ".join(_MIGRATIONS[v] for v in range(9)) + "PRAGMA user_version = 9;")
    stored = f"/up/originals/{A1[:2]}/{A1}.png"
    db.executescript(f"""
        INSERT INTO locations VALUES ('{stored}', '{A1}', 1, 1, 'b', 'upload', 'kitty.png', {T0}, {T0});
        INSERT INTO metadata (doc_id, asset_id, parser_version, positive, file_names, metadata_path, indexed_at)
        VALUES (1, '{A1}', 3, 'a cat', '{A1}.png
kitty.png', 'm.json', {T0});
    """)
    db.close()
    with Catalog(path) as cat:
        cat.apply([browsable("u3", stored, at=T0 + 50, display_name="tabby.png")])
        assert ids(cat.search("file:kitty")) == ids(cat.search("file:tabby")) == [A1]
    check_index(path)


def test_the_search_names_the_columns_the_index_has(tmp_path: Path) -> None:
    # the index is made by the migration steps, the search from FTS_COLUMNS: a change of one without the other
    # (a new step that makes the index again) would search columns the index does not have
    Catalog(tmp_path / "fresh.sqlite").close()
    db = sqlite3.connect(tmp_path / "fresh.sqlite")
    try:
        columns = tuple(row[1] for row in db.execute("PRAGMA table_info(metadata_fts)"))
    finally:
        db.close()
    assert columns == search_query.FTS_COLUMNS


def test_a_version_1_catalog_opened_readonly_asks_for_the_upgrade(v1_catalog: Path) -> None:
    with pytest.raises(CatalogUnavailable, match="predates.*upgrade"):
        Catalog(v1_catalog, readonly=True)


@pytest.mark.parametrize(("old_state", "old_attempts", "late"), [
    # a row from before version 7 has no chain start: the next step of its chain, which carries the start (here
    # earlier than the row's own time, from a worker whose clock is behind), comes after it
    ("retrying", 2, dict(outcome="dead_lettered", attempts=3, at=T0 + 25, first=T0 + 20)),
    # it takes the attempts its path's failure row kept: a late attempt 1 sent before the upgrade too
    # (redelivered, or on another partition, being keyed by path before hashing) does not put it back in flight
    ("dead_lettered", 3, dict(outcome="retrying", attempts=1, at=T0 + 20, chain_known=False)),
])
def test_a_chain_begun_before_the_upgrade_ends_in_its_last_step_after_it(
    v1_catalog: Path, old_state: str, old_attempts: int, late: dict
) -> None:
    db = sqlite3.connect(v1_catalog)
    db.executescript(f"""
        INSERT INTO failures VALUES ('{ROOT}/b.png', 1, '{A2}', 'b1', 'e2', 'Timeout', 'timeout', 'slow',
                                     '{old_state}', {old_attempts}, {T0 + 30});
        INSERT INTO batch_files VALUES ('b1', 'e2', 1, '{ROOT}/b.png', '{A2}', '{old_state}', {T0 + 30});
        INSERT INTO asset_tiers VALUES ('{A2}', 1, '{old_state}', {T0 + 30});
    """)
    db.close()
    with Catalog(v1_catalog) as cat:
        cat.apply([failed("e2", f"{ROOT}/b.png", asset_id=A2, **late)])
        assert cat.asset(A2)["tier1_state"] == "dead_lettered"
        assert [(f["outcome"], f["attempts"]) for f in cat.asset(A2)["failures"]] == [("dead_lettered", 3)]
        assert (cat.progress("b1", 1).retrying, cat.progress("b1", 1).dead_lettered) == (0, 1)


@pytest.mark.parametrize("catalog", ["old", "new"])
def test_two_first_openers_of_a_catalog_both_open_it(tmp_path: Path, catalog: str) -> None:
    # both read the old version, then each ran the steps: the second failed on a table or column made twice;
    # and, old or new, both switch it to WAL: SQLite refused one of them at once ("database is locked")
    import threading

    for trial in range(10):
        path = tmp_path / f"{catalog}-{trial}.sqlite"
        if catalog == "old":
            db = sqlite3.connect(path)
            db.executescript(V1_SCHEMA + "PRAGMA user_version = 1;")
            db.close()
        barrier, errors = threading.Barrier(2), []

        def open_it() -> None:
            barrier.wait()
            try:
                Catalog(path).close()
            except Exception as exc:  # noqa: BLE001 — what the test looks for
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []


def test_a_fresh_catalog_has_the_same_schema_as_a_migrated_one(v1_catalog: Path, tmp_path: Path) -> None:
    Catalog(v1_catalog).close()
    Catalog(tmp_path / "fresh.sqlite").close()

    def schema(path: Path) -> list[tuple]:
        db = sqlite3.connect(path)
        try:
            return db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
        finally:
            db.close()

    assert schema(v1_catalog) == schema(tmp_path / "fresh.sqlite")


# -- views -----------------------------------------------------------------------------------------


def test_render_search_lists_each_match_with_its_snippet(library: Catalog) -> None:
    text = render_search(library.search("café"))
    lines = text.splitlines()
    assert lines[0] == "2 matches, best first:"
    assert lines[1].split()[:4] == ["ASSET", "IMAGE", "GENERATOR", "MODEL"]
    assert any(line.strip().startswith(A3[:12]) and "a1111" in line and str(2 ** 64 - 1) in line for line in lines)
    assert any("«café»" in line for line in lines) and any("«Café»" in line for line in lines)
    assert render_search([]) == "no matches"


def test_render_asset_shows_tier2_metadata(library: Catalog) -> None:
    text = render_asset(library.asset(A1))
    assert "metadata    comfyui (parser v1, indexed" in text
    assert "  model     juggernautXL_v9Rundiffusionphoto2.safetensors" in text
    assert "  also      sd_xl_refiner_1.0.safetensors" in text  # the other models it names
    assert "  sampling  seed 123456789 · steps 30 · cfg 7 · denoise 1 · sampler dpmpp_2m_sde (karras)" in text
    assert "  prompt    a lighthouse on a cliff" in text and "  negative  blurry, watermark" in text
    assert "  loras     add_detail" in text
    photo = render_asset(library.asset(A2))
    assert "no generation parameters" in photo
    assert "  camera    Canon · Canon EOS R5 · RF24-70mm F2.8 L IS USM" in photo
    assert "  gps       38.71390, -9.13940" in photo and "  taken     2024:06:01 18:30:00" in photo
    library.apply([browsable("e5", f"{ROOT}/plain.png", "d4" * 32)])
    assert "metadata" not in render_asset(library.asset("d4" * 32))


def test_enrichment_sets_tier3_state_and_keeps_the_latest_scores(tmp_path) -> None:
    from schemas import AssetEnriched

    catalog = Catalog(tmp_path / "c.sqlite")

    def enriched(score: float, at: float) -> AssetEnriched:
        return AssetEnriched(event_id="e1", batch_id="b1", lane="batch", source="scan", asset_id="ab" * 32,
                             path="/x.png", quality={"score": score}, enriched_at=at)

    newer, older = enriched(0.9, 20.0), enriched(0.1, 10.0)
    catalog.apply([newer])
    catalog.apply([older, newer])  # a late older event and a replay change nothing
    asset = catalog.asset("ab" * 32)
    assert asset["tier3_state"] == "enriched" and asset["quality"] == {"score": 0.9}
    assert catalog.progress("b1", 3).done == 1


def test_an_asset_the_cost_gate_kept_out_of_tier3_is_settled_without_scores(tmp_path) -> None:
    from schemas import AssetEnriched

    catalog = Catalog(tmp_path / "c.sqlite")
    skipped = AssetEnriched(event_id="e1", batch_id="b1", lane="batch", source="scan", asset_id="ab" * 32,
                            path="/x.png", enriched_at=5.0, skipped="duplicate")
    catalog.apply([skipped])
    asset = catalog.asset("ab" * 32)
    assert asset["tier3_state"] == "enriched" and asset["quality"] is None
    assert catalog.progress("b1", 3).done == 1

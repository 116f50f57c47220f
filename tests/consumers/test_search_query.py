"""The search language: parsing, prefixes, validation, and SQL that never carries user text."""

from __future__ import annotations

import pytest

from consumers import search_query
from consumers.search_query import BadQuery, Term, compile_search, parse
from streams.errors import PermanentError


def test_words_phrases_and_fields() -> None:
    assert parse('golden "misty harbor" model:juggernaut ') == [
        Term("golden"), Term("misty harbor", quoted=True), Term("juggernaut", "model", prefix=True)]


def test_quoted_field_value_is_an_exact_phrase() -> None:
    assert parse('model:"sd xl base" x') == [Term("sd xl base", "model", quoted=True), Term("x")]


def test_field_names_ignore_case() -> None:
    assert parse("Model:flux Seed:7 ")[:2] == [Term("flux", "model", prefix=True), Term("7", "seed")]


def test_exclusion_of_words_phrases_and_fields() -> None:
    assert parse('cat -dog -"bad hands" -model:sd15 -seed:3') == [
        Term("cat"), Term("dog", negated=True), Term("bad hands", quoted=True, negated=True),
        Term("sd15", "model", prefix=True, negated=True), Term("3", "seed", negated=True)]


def test_a_term_given_twice_is_matched_once() -> None:
    assert parse("a* cat a* -dog cat -dog ") == [Term("a", prefix=True), Term("cat"), Term("dog", negated=True)]
    assert parse("cat cat") == [Term("cat"), Term("cat", prefix=True)]  # the last is a prefix: another term


def test_a_lone_dash_is_not_an_exclusion() -> None:
    assert parse("cat - dog ") == [Term("cat"), Term("dog")]  # "-" alone has no word: dropped


# -- prefixes ----------------------------------------------------------------------------------------


def test_explicit_star_is_a_prefix_anywhere() -> None:
    assert parse('light* "golden ho"* cat ') == [
        Term("light", prefix=True), Term("golden ho", quoted=True, prefix=True), Term("cat")]


def test_last_free_word_is_a_prefix_unless_the_query_ends_with_a_space() -> None:
    assert parse("golden ho")[-1] == Term("ho", prefix=True)
    assert parse("golden ho ")[-1] == Term("ho")
    assert parse("golden h")[-1] == Term("h")  # one character is too short to mean anything as a prefix
    assert parse('golden "ho"')[-1] == Term("ho", quoted=True)  # quoted: exactly that
    assert parse("golden -ho")[-1] == Term("ho", negated=True)  # an exclusion is never widened


def test_unquoted_text_field_values_match_as_prefixes() -> None:
    assert parse("model:jugg cat ")[0] == Term("jugg", "model", prefix=True)
    assert parse("model:x cat ")[0] == Term("x", "model")
    assert parse("scheduler:kar cat ")[0] == Term("kar", "scheduler")  # column field: prefix is in its SQL


# -- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "message"), [
    ("", "nothing to search for"),
    ("   \t\n", "nothing to search for"),
    ("🎉 ✨", "need letters or digits"),
    ('"" ()', "need letters or digits"),
    ("*", "need letters or digits"),
    ("masterpiece:1.2", "unknown field 'masterpiece:'.*quotes"),
    ("http://example.com", "unknown field 'http:'"),
    ("model:", "model: needs a value"),
    ("model: sdxl", "model: needs a value"),
    ('model:""', "model: needs a value"),
    ("model:***", "model: needs a value"),
    ("model:&&", "model: needs letters or digits"),
    ("seed:abc", "seed: takes a whole number"),
    ("seed:-1", "seed: takes a whole number"),
    ("seed:1.5", "seed: takes a whole number"),
    (f"seed:{2 ** 64}", "seed: takes a whole number"),
    ("x" * 1001, "too long"),
    (" ".join(f"w{i}" for i in range(33)), "too many terms"),
])
def test_unusable_queries_say_why(query: str, message: str) -> None:
    with pytest.raises(BadQuery, match=message):
        compile_search(query)


def test_bad_query_is_a_permanent_typed_error() -> None:
    with pytest.raises(PermanentError) as info:
        parse("nope:x")
    assert isinstance(info.value, BadQuery) and not info.value.retriable and info.value.code == "bad_query"


@pytest.mark.parametrize("limit", [0, -1, 10_001, 2.5, True, "50"])
def test_limit_must_be_sensible(limit) -> None:
    with pytest.raises(BadQuery, match="limit"):
        compile_search("cat", limit=limit)


def test_wordless_free_terms_are_dropped_not_matched_as_nothing() -> None:
    # An emoji next to a word must not turn the query into "match nothing" (FTS5's empty phrase matches no row).
    assert parse("🎉 cat & ") == [Term("cat")]


def test_seed_is_normalised_and_quoted_seed_works() -> None:
    assert parse('seed:+007 seed:"42"') == [Term("7", "seed"), Term("42", "seed", quoted=True)]


def test_nul_and_lone_surrogates_are_neutralised() -> None:
    assert parse("cat\0dog ") == [Term("cat"), Term("dog")]
    assert parse("caf\udce9 ") == [Term("caf\ufffd")]


def test_unclosed_quote_runs_to_the_end() -> None:
    assert parse('cat "golden hour') == [Term("cat"), Term("golden hour", quoted=True)]


# -- SQL ---------------------------------------------------------------------------------------------


SHAPES = {
    "ranked": "lighthouse model:flux format:png -fog",
    "seed": "lighthouse seed:18446744073709551615",
    "filters": "format:jpg scheduler:karras -fog",
}


@pytest.mark.parametrize("query", SHAPES.values(), ids=SHAPES.keys())
def test_user_text_travels_as_parameters_only(query: str) -> None:
    sql, params = compile_search(query)
    for word in ("lighthouse", "flux", "png", "fog", "karras", "jpg", "JPEG", "1844674407"):
        assert word not in sql
    assert sql.count("?") == len(params)


def test_phrases_are_fts5_strings_with_quotes_doubled() -> None:
    sql, params = compile_search('say "a ""b"" c" NEAR(x) AND y OR ^z {col}:w ')
    match = params[0]
    assert '"say"' in match and '"NEAR(x)"' in match and '"AND"' in match and '"^z"' in match
    assert '"a "' in match  # the inner quote ends the phrase: `a ` then `b` ...


def test_free_words_skip_the_negative_prompt_and_fields_pick_their_column() -> None:
    _, params = compile_search("cat negative:blurry prompt:dog ")
    match = params[0]
    assert match.startswith("{positive models loras sampler generator file_names camera_text photo_text} : ")
    assert '{negative} : "blurry" *' in match and '{positive} : "dog" *' in match


def test_seed_filter_drives_from_the_seed_index_with_the_stored_value() -> None:
    sql, params = compile_search(f"cat seed:{2 ** 64 - 1}")
    assert "CROSS JOIN metadata_fts" in sql
    assert -1 in params  # the upper half of the unsigned range is stored two's-complement


def test_broad_queries_rank_a_window_of_the_newest_matches(monkeypatch) -> None:
    monkeypatch.setattr(search_query, "RANK_WINDOW", 300)
    sql, params = compile_search("cat", limit=20)
    assert "ORDER BY w.rowid DESC LIMIT 1 OFFSET ?" in sql and params[-2:] == [299, 20]
    _, params = compile_search("cat", limit=500)  # a larger page widens the window
    assert params[-2:] == [499, 500]


def test_format_aliases() -> None:
    _, params = compile_search("format:jpg")
    assert params[:2] == ['{facets} : "fmtjpeg"', "JPEG"]
    _, params = compile_search("format:.webp")
    assert params[:2] == ['{facets} : "fmtwebp"', "WEBP"]


def test_scheduler_like_pattern_escapes_wildcards() -> None:
    _, params = compile_search("scheduler:sgm_un%")
    assert params[1] == "sgm\\_un\\%%"


@pytest.mark.parametrize(("query", "facets"), [
    # each narrows in the index: the scheduler at the column's start (its words a prefix, unless quoted), the
    # format as one word
    ("cat format:jpg", ['{facets} : "fmtjpeg"']),
    ("cat scheduler:dpmpp_2m", ['{facets} : ^"dpmpp_2m" *']),
    ('cat scheduler:"Karras" format:PNG', ['{facets} : ^"Karras"', '{facets} : "fmtpng"']),
    # none where it would not narrow, or cost more than it saves: the column filter alone decides
    ("cat -format:png -scheduler:karras", []),
    ("cat scheduler:k", []),  # a one-letter prefix merges every word it starts
    ("cat scheduler:_ format:...", []),
    (f"cat seed:{2 ** 64 - 1} format:png", []),  # the seed's own index narrows more
])
def test_column_filters_narrow_in_the_facets_column(query: str, facets: list[str]) -> None:
    _, params = compile_search(query)
    found = [p for p in params if isinstance(p, str) and "{facets}" in p]
    assert all(f in found[0] for f in facets) if facets else found == []


def test_a_facet_phrase_doubles_the_quotes_of_its_value() -> None:
    assert search_query._facet(Term('say "x"', "scheduler", quoted=True)) == '{facets} : ^"say ""x"""'


def test_facets_text_puts_the_scheduler_first_and_the_format_in_one_word() -> None:
    assert search_query.facets_text("JPEG", "dpmpp_2m") == "dpmpp_2m fmtjpeg"
    assert search_query.facets_text(None, None).split() == []

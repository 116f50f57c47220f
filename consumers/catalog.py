"""The catalog: a SQLite projection of the ``assets`` topic, plus the scanner's batch totals.

Broker-free on purpose: the catalog sink feeds decoded events to :meth:`Catalog.apply`, publishes what
:meth:`Catalog.progress` returns, and only then commits offsets. The scanner and the CLI open the same file
read-only while the sink writes; WAL lets them see every commit without blocking the writer.

Delivery is at-least-once, and one file's events travel on different partitions (failures keyed by path,
successes by asset id), so every write here is idempotent *and* order-independent:

* first-sight times are the ``MIN`` of what was seen, running totals the ``MAX``, completion is sticky;
* a (file, tier) state never leaves ``done`` once reached: a late failure of an attempt whose retry already
  succeeded changes nothing. Among failure outcomes the later one wins, by ``(chain_at, replays, attempts,
  time)``: the retry chain that began later (its first failure's time, carried from attempt to attempt), then
  the later step in it. Within one chain the order never depends on the workers' clocks, which may disagree by
  more than a retry's backoff: attempt 1's ``retrying`` cannot outrank attempt 3's ``dead_lettered`` and keep a
  batch in flight. One key for every comparison keeps the order transitive, so any delivery order agrees. A
  failure whose chain start is unknown (written before version 7, or sent by an older worker) has 0: it ranks
  below every known chain and, among its kind, by step.

States, in ``batch_files`` and ``asset_tiers`` alike: ``done``, ``retrying``, ``failed``, ``dead_lettered``.
``failed`` and ``dead_lettered`` are both final and are counted *apart*, so every file of a batch is in exactly
one of done / failed / dead-lettered / in flight. ``retrying`` counts as in flight: the file will be tried again.

Tier 2 (``AssetIndexed``) lands in ``metadata``, one row per asset: the row of the highest ``(parser_version,
indexed_at)`` wins, so a replay or an older parser's late event never overwrites a newer result. ``metadata_fts``
is an external-content FTS5 index over it, kept in step by triggers; :meth:`Catalog.search` queries it through
:mod:`consumers.search_query`. The index's row id is a function of the winning event (its ``indexed_at``, then
the asset id), not of arrival order: the catalog's rows, not only its answers, do not depend on delivery order,
and row id order is indexing order, which lets a search take the newest matches without sorting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from agents.atomic_write import sync_to_disk
from consumers.search_query import SEED_RANGE, BadQuery, compile_search, facets_text
from schemas.codec import claimed, encode
from schemas.events import AssetBrowsable, AssetEnriched, AssetFailed, AssetIndexed, BatchScanned, Event, ProgressEvent
from streams.errors import PermanentError

#: Bumped when the tables change, with a step in ``_MIGRATIONS``; a catalog written by newer code is refused
#: rather than misread. 1: tier-1 projection; 2: tier-2 ``metadata`` and its full-text index; 3: tier-3
#: ``enrichments``; 4: ``batch_tallies``; 5: ``held_events``; 6: ``batches.first_tier``; 7: failure states
#: ordered by their retry chain and step in it (``chain_at``, ``replays``, ``attempts``); 8: ``metadata.models``
#: indexed in the place of ``model``, ``failures.display_name``; 9: ``metadata.facets`` indexed (format and
#: scheduler as words); 10: ``upload_names``, ``batches.lost_total``.
CATALOG_VERSION = 10
#: What "done" is called per tier when shown to people.
DONE_NAMES = {1: "browsable", 2: "indexed", 3: "enriched"}
TIERS = tuple(DONE_NAMES)
#: Shortest hex prefix accepted for an asset id, so a typo rarely matches something by chance.
MIN_PREFIX = 6

DONE, RETRYING, FAILED, DEAD_LETTERED = "done", "retrying", "failed", "dead_lettered"
#: ``status()``'s count, per tier after the first, of assets an earlier tier's failure keeps from it
FAILED_EARLIER = "failed_earlier"
#: The state shown for an asset that only failed and whose content no file holds any more: see ``_SUPERSEDED``
SUPERSEDED = "superseded"
_HEX = re.compile(r"[0-9a-f]+")

_SCHEMA = """
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


def _fts_index(columns: tuple[str, ...]) -> str:
    """The full-text index of ``metadata`` over ``columns`` (external content: it reads them from the table), and the
    triggers that keep it in step with the table. Part of the v2, v8 and v9 steps: a change here is a new step, with
    an index made again, never an edit (catalogs already past a step keep what it made)."""
    names = ", ".join(columns)
    new, old = ", ".join(f"new.{c}" for c in columns), ", ".join(f"old.{c}" for c in columns)
    changed = " OR ".join(f"old.{c} IS NOT new.{c}" for c in columns)
    return f"""
CREATE VIRTUAL TABLE IF NOT EXISTS metadata_fts USING fts5 (
    {names},
    content = 'metadata', content_rowid = 'doc_id',
    tokenize = 'unicode61 remove_diacritics 2', prefix = '2 3'
);
CREATE TRIGGER IF NOT EXISTS metadata_fts_insert AFTER INSERT ON metadata BEGIN
    INSERT INTO metadata_fts (rowid, {names}) VALUES (new.doc_id, {new});
END;
CREATE TRIGGER IF NOT EXISTS metadata_fts_delete AFTER DELETE ON metadata BEGIN
    INSERT INTO metadata_fts (metadata_fts, rowid, {names}) VALUES ('delete', old.doc_id, {old});
END;
CREATE TRIGGER IF NOT EXISTS metadata_fts_update AFTER UPDATE ON metadata
WHEN old.doc_id IS NOT new.doc_id OR {changed} BEGIN
    INSERT INTO metadata_fts (metadata_fts, rowid, {names}) VALUES ('delete', old.doc_id, {old});
    INSERT INTO metadata_fts (rowid, {names}) VALUES (new.doc_id, {new});
END;
"""


# Version 2: tier 2. ``asset_id`` is the key (UNIQUE; upserts conflict on it); ``doc_id`` is the rowid alias the
# external-content index needs — an explicit INTEGER PRIMARY KEY, because VACUUM may renumber a hidden rowid —
# ordered by indexing time (see ``Catalog._doc_id``).
_SCHEMA_V2 = f"""
CREATE TABLE IF NOT EXISTS metadata (
    doc_id INTEGER PRIMARY KEY, asset_id TEXT NOT NULL UNIQUE, parser_version INTEGER NOT NULL,
    generator TEXT, model TEXT, loras TEXT NOT NULL DEFAULT '[]', vae TEXT, seed INTEGER, steps INTEGER, cfg REAL,
    sampler TEXT, scheduler TEXT, denoise REAL, positive TEXT, negative TEXT, camera TEXT NOT NULL DEFAULT '{{}}',
    camera_make TEXT, camera_model TEXT, lens TEXT, datetime_original TEXT, gps_lat REAL, gps_lon REAL,
    metadata_path TEXT NOT NULL, indexed_at REAL NOT NULL,
    -- indexed only: basenames of the asset's locations; camera make/model/lens; captions, keywords, artist
    file_names TEXT NOT NULL DEFAULT '', camera_text TEXT NOT NULL DEFAULT '', photo_text TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS metadata_by_seed ON metadata (seed);
CREATE INDEX IF NOT EXISTS metadata_by_parser ON metadata (parser_version, asset_id);
{_fts_index(("positive", "negative", "model", "loras", "sampler", "generator", "file_names", "camera_text",
             "photo_text"))}
"""
_SCHEMA_V3 = """
CREATE TABLE enrichments (
    asset_id    TEXT PRIMARY KEY,
    quality     TEXT NOT NULL,          -- JSON: brightness, contrast, sharpness, saturation, score (0..1)
    score       REAL,
    enriched_at REAL NOT NULL
);
CREATE INDEX enrichments_score ON enrichments (score);
"""

# Version 4: a batch's files counted per tier and state as their rows change (by trigger), so a progress report
# is a lookup, not a scan of the batch: the sink reports after every write, which made a big import's progress
# cost grow with the square of its size (a 5000-file import: 12 s of the sink's CPU). Tier 0 counts the batch's
# distinct files. Rows that reach zero are removed, so the counts are a function of ``batch_files`` alone, as
# order-independent as it is. The index answers the latest ``done`` per tier.
_SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS batch_tallies (
    batch_id TEXT NOT NULL, tier INTEGER NOT NULL, state TEXT NOT NULL, files INTEGER NOT NULL,
    PRIMARY KEY (batch_id, tier, state)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batch_files_by_state ON batch_files (batch_id, tier, state, updated_at);
CREATE TRIGGER IF NOT EXISTS batch_files_tally_insert AFTER INSERT ON batch_files BEGIN
    INSERT INTO batch_tallies VALUES (new.batch_id, new.tier, new.state, 1)
    ON CONFLICT (batch_id, tier, state) DO UPDATE SET files = files + 1;
    INSERT INTO batch_tallies SELECT new.batch_id, 0, 'seen', 1 WHERE NOT EXISTS (
        SELECT 1 FROM batch_files WHERE batch_id = new.batch_id AND event_id = new.event_id AND tier <> new.tier)
    ON CONFLICT (batch_id, tier, state) DO UPDATE SET files = files + 1;
END;
CREATE TRIGGER IF NOT EXISTS batch_files_tally_update AFTER UPDATE OF state ON batch_files
WHEN old.state <> new.state BEGIN
    UPDATE batch_tallies SET files = files - 1
    WHERE batch_id = old.batch_id AND tier = old.tier AND state = old.state;
    DELETE FROM batch_tallies WHERE batch_id = old.batch_id AND tier = old.tier AND state = old.state AND files = 0;
    INSERT INTO batch_tallies VALUES (new.batch_id, new.tier, new.state, 1)
    ON CONFLICT (batch_id, tier, state) DO UPDATE SET files = files + 1;
END;
INSERT OR IGNORE INTO batch_tallies
    SELECT batch_id, tier, state, COUNT(*) FROM batch_files GROUP BY batch_id, tier, state;
INSERT OR IGNORE INTO batch_tallies
    SELECT batch_id, 0, 'seen', COUNT(DISTINCT event_id) FROM batch_files GROUP BY batch_id;
"""

# Version 5: events the catalog could not hold (see ``Catalog.hold``), kept whole until a later sink start
# applies them: keyed by the event's encoded bytes' hash, so a redelivery holds it once.
_SCHEMA_V5 = """
CREATE TABLE IF NOT EXISTS held_events (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, event_type TEXT NOT NULL, batch_id TEXT, event_id TEXT,
    error TEXT NOT NULL, first_held_at REAL NOT NULL, held_at REAL NOT NULL
);
"""

# v6: the tier a batch's files enter at (``damflow reprocess`` starts at tier 2: nothing of it passes tier 1).
_SCHEMA_V6 = """
ALTER TABLE batches ADD COLUMN first_tier INTEGER NOT NULL DEFAULT 1;
"""

# v7: a failure state's retry chain and step in it, so that the later step wins whatever the workers' clocks say
# (see the module's docstring). Done rows keep 0: done never gives way. A failure row from before has an unknown
# chain (0: the next step of its chain, which carries its start, comes after it) and the attempts its path's
# failure row kept (a late attempt 1 sent before the upgrade stays below a dead letter from before it).
_SCHEMA_V7 = """
ALTER TABLE batch_files ADD COLUMN chain_at REAL NOT NULL DEFAULT 0;
ALTER TABLE batch_files ADD COLUMN replays INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batch_files ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE asset_tiers ADD COLUMN chain_at REAL NOT NULL DEFAULT 0;
ALTER TABLE asset_tiers ADD COLUMN replays INTEGER NOT NULL DEFAULT 0;
ALTER TABLE asset_tiers ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE failures ADD COLUMN chain_at REAL NOT NULL DEFAULT 0;
ALTER TABLE failures ADD COLUMN replays INTEGER NOT NULL DEFAULT 0;
UPDATE batch_files SET attempts = COALESCE((
    SELECT f.attempts FROM failures f
    WHERE f.event_id = batch_files.event_id AND f.batch_id = batch_files.batch_id AND f.tier = batch_files.tier), 1)
WHERE state <> 'done';
UPDATE asset_tiers SET attempts = COALESCE((
    SELECT f.attempts FROM failures f WHERE f.asset_id = asset_tiers.asset_id AND f.tier = asset_tiers.tier
    ORDER BY f.failed_at DESC LIMIT 1), 1)
WHERE state <> 'done';
"""

# v8: ``models``, every model the generation names (a refiner's, a hires fix's, a detailer's), one per line,
# indexed in the place of the main one (``model``, still what is shown): the index is made again over the new
# columns, and an asset indexed before has its main model there. And a failure's display name (an upload's), for
# a reconcile to send a lost tier-1 retry with. (``FTS_COLUMNS`` must name the index's columns: see the tests.)
_SCHEMA_V8 = f"""
ALTER TABLE failures ADD COLUMN display_name TEXT;
DROP TRIGGER metadata_fts_insert;
DROP TRIGGER metadata_fts_delete;
DROP TRIGGER metadata_fts_update;
DROP TABLE metadata_fts;
ALTER TABLE metadata ADD COLUMN models TEXT NOT NULL DEFAULT '';
UPDATE metadata SET models = COALESCE(model, '');
{_fts_index(("positive", "negative", "models", "loras", "sampler", "generator", "file_names", "camera_text",
             "photo_text"))}
INSERT INTO metadata_fts (metadata_fts) VALUES ('rebuild');
"""

# v9: ``facets``, the asset's format and scheduler as words (``search_query.facets_text``, a function of the
# catalog's connection: ``_FACETS``), indexed so that ``format:`` and ``scheduler:`` narrow a search in the index
# rather than being checked on every match of its words; filled from the rows, the index made again.
_SCHEMA_V9 = f"""
DROP TRIGGER metadata_fts_insert;
DROP TRIGGER metadata_fts_delete;
DROP TRIGGER metadata_fts_update;
DROP TABLE metadata_fts;
ALTER TABLE metadata ADD COLUMN facets TEXT NOT NULL DEFAULT '';
UPDATE metadata SET facets = damflow_facets((SELECT a.format FROM assets a WHERE a.asset_id = metadata.asset_id),
                                            scheduler);
{_fts_index(("positive", "negative", "models", "loras", "sampler", "generator", "file_names", "camera_text",
             "photo_text", "facets"))}
INSERT INTO metadata_fts (metadata_fts) VALUES ('rebuild');
"""

# v10: ``upload_names``, every name a stored upload was sent under (the same bytes sent again under another name
# share its content-addressed path, whose location keeps only the newest name): all of them are ``file:`` words;
# ``batches.lost_total``, files of a batch lost with a broker (``BatchScanned.lost``).
_SCHEMA_V10 = """
CREATE TABLE IF NOT EXISTS upload_names (path TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (path, name))
    WITHOUT ROWID;
INSERT OR IGNORE INTO upload_names SELECT path, display_name FROM locations WHERE display_name IS NOT NULL;
ALTER TABLE batches ADD COLUMN lost_total INTEGER NOT NULL DEFAULT 0;
"""

#: Assets that only failed and whose content no file holds any more: no location, and every failure that named
#: them is of a file done since in that tier under other content (fixed on disk and its dead letter replayed, or
#: changed before its retry). Their failed state is history: shown as ``superseded``, counted neither as failed
#: nor as pending (``status`` said "1 dead-lettered" with no letter left to replay, for good).
_SUPERSEDED = f"""
SELECT DISTINCT t.asset_id FROM asset_tiers t
WHERE t.state <> '{DONE}'
  AND NOT EXISTS (SELECT 1 FROM locations l WHERE l.asset_id = t.asset_id)
  AND EXISTS (SELECT 1 FROM failures f WHERE f.asset_id = t.asset_id)
  AND NOT EXISTS (SELECT 1 FROM failures f LEFT JOIN batch_files b
                  ON b.batch_id = f.batch_id AND b.event_id = f.event_id AND b.tier = f.tier
                  WHERE f.asset_id = t.asset_id
                    AND (b.state IS NOT '{DONE}' OR b.asset_id IS NULL OR b.asset_id = t.asset_id))
"""

#: ``_MIGRATIONS[v]`` takes a catalog from version ``v`` to ``v + 1`` (0 is an empty file).
_MIGRATIONS = {0: _SCHEMA, 1: _SCHEMA_V2, 2: _SCHEMA_V3, 3: _SCHEMA_V4, 4: _SCHEMA_V5, 5: _SCHEMA_V6,
               6: _SCHEMA_V7, 7: _SCHEMA_V8, 8: _SCHEMA_V9, 9: _SCHEMA_V10}
#: The SQL function the writer's connection has for ``search_query.facets_text``.
_FACETS = "damflow_facets"


def _newer_wins(table: str, newer: str, cols: tuple[str, ...]) -> str:
    """``SET`` clauses taking each column from the incoming row only when ``newer`` holds for it."""
    return ",\n    ".join(f"{c} = CASE WHEN {newer} THEN excluded.{c} ELSE {table}.{c} END" for c in cols)


def _newer_known(table: str, newer: str, cols: tuple[str, ...]) -> str:
    """``SET`` clauses taking each column from the winning row (the incoming one when ``newer`` holds) where it
    knows the value, else from the other: what only one of them learnt is kept."""
    return ",\n    ".join(f"{c} = CASE WHEN {newer} THEN COALESCE(excluded.{c}, {table}.{c}) "
                           f"ELSE COALESCE({table}.{c}, excluded.{c}) END" for c in cols)


#: What orders two failure outcomes of a row (with its time column last): see the module's docstring.
_CHAIN = ("chain_at", "replays", "attempts")


def _later_failure(table: str, at: str) -> str:
    """Whether the incoming failure of ``table``'s row comes after the stored one: the later retry chain, then
    the later step in it, then the later time ``at``. Within one chain, that is its step whatever the workers'
    clocks say; one key for every comparison keeps the order transitive."""
    key = (*_CHAIN, at)
    return f"(({', '.join(f'excluded.{c}' for c in key)}) >= ({', '.join(f'{table}.{c}' for c in key)}))"


def _state_upsert(table: str, key: tuple[str, ...], extra: tuple[str, ...] = (), fill: tuple[str, ...] = ()) -> str:
    """An upsert of a (file or asset, tier) state: ``done`` is sticky, otherwise the later failure wins (see
    :func:`_later_failure`); the row keeps the winner's chain and step.

    ``extra`` columns follow the winner; ``fill`` columns are only ever filled in, never cleared (a failure
    before hashing does not know the asset id that a success later brings).
    """
    wins = f"({table}.state <> 'done' AND (excluded.state = 'done' OR {_later_failure(table, 'updated_at')}))"
    cols = (*key, *extra, *fill, *_CHAIN, "state", "updated_at")
    sets = [_newer_wins(table, wins, (*extra, *_CHAIN, "state"))]
    # Done twice (a duplicate, or the same bytes again): it has been done since the earlier time.
    sets.append(f"updated_at = CASE WHEN {table}.state = 'done' AND excluded.state = 'done' "
                f"THEN MIN({table}.updated_at, excluded.updated_at) "
                f"WHEN {wins} THEN excluded.updated_at ELSE {table}.updated_at END")
    if fill:  # the winner's, where it knows it: a losing step's (another content hashed) does not stay
        sets.append(_newer_known(table, wins, fill))
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})\n"
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET\n    " + ",\n    ".join(sets))


#: The chain of a done row: done never gives way, so it is never compared.
_NO_CHAIN = (0.0, 0, 0)
_UPSERT_BATCH_FILE = _state_upsert("batch_files", ("batch_id", "event_id", "tier"), ("path",), ("asset_id",))
_UPSERT_ASSET_TIER = _state_upsert("asset_tiers", ("asset_id", "tier"))

_UPSERT_ASSET = """
INSERT INTO assets (asset_id, size, format, width, height, thumbnails, first_seen_at, browsable_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (asset_id) DO UPDATE SET
    size = excluded.size, format = excluded.format, width = excluded.width, height = excluded.height,
    thumbnails = excluded.thumbnails,
    first_seen_at = MIN(assets.first_seen_at, excluded.first_seen_at),
    browsable_at = MIN(COALESCE(assets.browsable_at, excluded.browsable_at), excluded.browsable_at)
"""
_STUB_ASSET = """
INSERT INTO assets (asset_id, first_seen_at) VALUES (?, ?)
ON CONFLICT (asset_id) DO UPDATE SET first_seen_at = MIN(assets.first_seen_at, excluded.first_seen_at)
"""
# The content at a path is whatever was seen there last; a replay of older content does not win it back. So is
# its name: the same bytes uploaded again under another name (one stored file) are found by the newer name.
_UPSERT_LOCATION = f"""
INSERT INTO locations (path, asset_id, size, mtime_ns, batch_id, source, display_name, first_seen_at, last_seen_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (path) DO UPDATE SET
    {_newer_wins("locations", "excluded.last_seen_at >= locations.last_seen_at",
                 ("asset_id", "size", "mtime_ns", "batch_id", "source"))},
    {_newer_known("locations", "excluded.last_seen_at >= locations.last_seen_at", ("display_name",))},
    first_seen_at = MIN(locations.first_seen_at, excluded.first_seen_at),
    last_seen_at = MAX(locations.last_seen_at, excluded.last_seen_at)
"""
# A path keeps its latest failure per tier (e.g. "retrying" at attempt 1 gives way to "dead_lettered" at 3).
_UPSERT_FAILURE = f"""
INSERT INTO failures (path, tier, asset_id, batch_id, event_id, error_class, error_code, reason, outcome,
                      chain_at, replays, attempts, failed_at, display_name)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (path, tier) DO UPDATE SET
    -- all of the winner's: another event's failure of the path starts its count again
    {_newer_wins("failures", _later_failure("failures", "failed_at"),
                 ("batch_id", "event_id", "error_class", "error_code", "reason", "outcome", *_CHAIN, "failed_at"))},
    {_newer_known("failures", _later_failure("failures", "failed_at"), ("asset_id", "display_name"))}
"""
_TOUCH_BATCH = """
INSERT INTO batches (batch_id, lane, started_at, updated_at) VALUES (?, ?, ?, ?)
ON CONFLICT (batch_id) DO UPDATE SET
    started_at = MIN(batches.started_at, excluded.started_at),
    updated_at = MAX(batches.updated_at, excluded.updated_at)
"""
_UPSERT_SCAN = """
INSERT INTO batches (batch_id, lane, root, scanned_total, skipped_unchanged, skipped_other, scan_complete,
                     started_at, updated_at, first_tier, lost_total)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (batch_id) DO UPDATE SET
    lane = excluded.lane, root = excluded.root, first_tier = excluded.first_tier,
    scanned_total = MAX(batches.scanned_total, excluded.scanned_total),
    lost_total = MAX(batches.lost_total, excluded.lost_total),
    skipped_unchanged = MAX(batches.skipped_unchanged, excluded.skipped_unchanged),
    skipped_other = MAX(batches.skipped_other, excluded.skipped_other),
    scan_complete = MAX(batches.scan_complete, excluded.scan_complete),
    started_at = MIN(batches.started_at, excluded.started_at),
    updated_at = MAX(batches.updated_at, excluded.updated_at)
"""
_METADATA_COLS = ("parser_version", "generator", "model", "loras", "vae", "seed", "steps", "cfg", "sampler",
                  "scheduler", "denoise", "positive", "negative", "camera", "camera_make", "camera_model", "lens",
                  "datetime_original", "gps_lat", "gps_lon", "metadata_path", "indexed_at", "camera_text",
                  "photo_text", "models", "file_names", "facets")
# The newest parser's result wins, then the later run of it; an equal key is a replay and changes nothing.
# The winner brings its ``doc_id`` (the update trigger moves the index row with it).
_UPSERT_METADATA = f"""
INSERT INTO metadata (doc_id, asset_id, {", ".join(_METADATA_COLS)})
VALUES ({", ".join("?" * (len(_METADATA_COLS) + 2))})
ON CONFLICT (asset_id) DO UPDATE SET
    doc_id = excluded.doc_id, {", ".join(f"{c} = excluded.{c}" for c in _METADATA_COLS)}
WHERE (excluded.parser_version, excluded.indexed_at) > (metadata.parser_version, metadata.indexed_at)
"""
# Seeds are unsigned 64-bit (ComfyUI draws them from [0, 2**64)); SQLite integers are signed, so the upper half
# is stored two's-complement and read back unsigned. A seed outside that range is kept only in the document.
_INT64_MAX = (1 << 63) - 1
# File times (``st_mtime_ns``: signed nanoseconds since 1970) pass SQLite's signed 64 bits in 2262, and a file
# dated later overflowed its write. They are kept as 64 bits from 1901-12-13 (32-bit time_t's first second, as
# XFS's 64-bit timestamps): until 2262 as they are, later ones two's-complement below that start, until 2486 —
# every time ext4 and XFS can hold. A time outside is clamped to the nearer end (see ``mtime_to_db``).
MTIME_NS_MIN = -(1 << 31) * 1_000_000_000
MTIME_NS_MAX = MTIME_NS_MIN + (1 << 64) - 1
#: ``doc_id`` = indexing time in ms (42 bits: until the year 2109) above 20 bits of the asset id.
_DOC_ID_HASH_BITS = 20
_DOC_ID_TIME_MAX = (1 << 42) - 1


class CatalogError(PermanentError):
    """The catalog cannot do what was asked (read-only handle written to, newer schema)."""

    code = "catalog"


class CatalogUnavailable(CatalogError):
    """There is no catalog to read yet (nothing has been ingested into this data directory)."""

    code = "catalog_unavailable"


class AmbiguousId(CatalogError):
    """An asset id prefix matches more than one asset, or is too short to be trusted."""

    code = "ambiguous_id"


@dataclass
class _Tally:
    """Per-tier state counts of one batch, read once and shared by every tier's figures."""

    seen: int = 0
    states: dict[int, Counter[str]] = field(default_factory=dict)
    last_done: dict[int, float] = field(default_factory=dict)


#: How long a first opener keeps trying to switch the catalog to WAL while another opener holds it.
_WAL_PATIENCE_S = 5.0


def _sync_wal(path: Path) -> None:
    """Sync the catalog's write-ahead log to disk (every frame in it, whichever commit wrote it), and its name in
    its directory. SQLite keeps the log beside the database file a link leads to. No log: every frame was
    checkpointed into the database, synced."""
    real = Path(os.path.realpath(path))
    wal = real.with_name(f"{real.name}-wal")
    try:
        sync_to_disk(wal)
    except FileNotFoundError:
        return
    sync_to_disk(wal.parent, os.O_DIRECTORY)


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch the catalog to WAL (a no-op when it is already). Two first openers of a catalog not yet in WAL (a
    new one, or one from before) contend for the lock the switch needs, and SQLite answers one of them "database
    is locked" at once, without its busy timeout (waiting could deadlock both): that one tries again shortly."""
    deadline = time.monotonic() + _WAL_PATIENCE_S
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)  # a retry's backoff: the other opener is switching it, and takes milliseconds
        pause = min(pause * 2, 0.1)


class Catalog:
    """The SQLite catalog. One writer per file; any number of ``readonly=True`` handles beside it.

    Not safe for concurrent use from several threads at once; one thread at a time (e.g. an executor) is fine.
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.is_file():
                raise CatalogUnavailable("no catalog yet", path=str(self.path))
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            _use_wal(self._db)
            # FULL: a commit survives a power loss too (NORMAL may roll the last ones back), and the sink commits
            # the events' offsets after it: with NORMAL, a crash of the machine could lose rows for good.
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.create_function(_FACETS, 2, facets_text, deterministic=True)  # the writer's statements use it
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.row_factory = sqlite3.Row
        #: Rows may have been committed without a sync (``apply(durable=False)``, by this handle or by one before
        #: it that did not close) that no sync has covered yet: the next synced apply syncs the log.
        self._unsynced = not readonly
        try:
            self._check_schema()
        except BaseException:
            self._db.close()
            raise

    def _check_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > CATALOG_VERSION:
            raise CatalogError(f"catalog schema {version} is newer than supported {CATALOG_VERSION}",
                               path=str(self.path))
        if version == CATALOG_VERSION:
            return
        if self.readonly:
            if version == 0:
                raise CatalogUnavailable("catalog not initialised yet", path=str(self.path))
            raise CatalogUnavailable(f"catalog schema {version} predates {CATALOG_VERSION}: start `damflow up` "
                                     "(or `damflow catalog`) once to upgrade it", path=str(self.path))
        steps = " ".join(_MIGRATIONS[v] for v in range(version, CATALOG_VERSION))
        try:
            self._db.executescript(f"BEGIN IMMEDIATE; {steps} PRAGMA user_version = {CATALOG_VERSION}; COMMIT;")
        except sqlite3.OperationalError:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            # two first openers: the other one upgraded it meanwhile (a column added twice fails the second)
            now_at = self._db.execute("PRAGMA user_version").fetchone()[0]
            if now_at > CATALOG_VERSION:
                raise CatalogError(f"catalog schema {now_at} is newer than supported {CATALOG_VERSION}",
                                   path=str(self.path)) from None
            if now_at != CATALOG_VERSION:
                raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------------

    def apply(self, events: Iterable[Event], *, durable: bool = True) -> set[str]:
        """Project a batch of events in one transaction; return the ids of the batches they touched.

        Idempotent and order-independent (see the module doc); event types the catalog does not
        project are ignored. ``durable=False`` commits without waiting for the disk (``synchronous = NORMAL``
        for this transaction): for events that will be applied again with a synced commit anyway, as the sink
        does with every event on ``assets`` before it commits their offsets. In WAL mode such a commit survives a
        crash of the process, and the next synced apply syncs it to disk (also when that apply itself writes
        nothing); a power loss before that takes back only what is still to be applied again.
        """
        if self.readonly:
            raise CatalogError("catalog opened read-only", path=str(self.path))
        if durable:
            if self._unsynced:  # FULL again, should restoring it after an unsynced apply have failed
                self._db.execute("PRAGMA synchronous = FULL")
            touched = self._project(events)
            if self._unsynced:  # what the unsynced commits wrote goes to disk now, whether or not this one wrote a
                _sync_wal(self.path)  # page: an event applied again may change nothing, and then nothing is synced
                self._unsynced = False
            return touched
        self._unsynced = True  # before anything can commit unsynced
        self._db.execute("PRAGMA synchronous = NORMAL")
        try:
            return self._project(events)
        finally:
            with contextlib.suppress(sqlite3.Error):  # a rollback that failed: nothing may commit unsynced later
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            self._db.execute("PRAGMA synchronous = FULL")

    def _project(self, events: Iterable[Event]) -> set[str]:
        """:meth:`apply`'s transaction."""
        touched: set[str] = set()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for event in events:
                if isinstance(event, AssetBrowsable):
                    self._browsable(event)
                elif isinstance(event, AssetIndexed):
                    self._indexed(event)
                elif isinstance(event, AssetEnriched):
                    self._enriched(event)
                elif isinstance(event, AssetFailed):
                    self._failed(event)
                elif isinstance(event, BatchScanned):
                    db.execute(_UPSERT_SCAN, (
                        event.batch_id, event.lane, event.root, event.found, event.skipped_unchanged,
                        event.skipped_other, int(event.complete), event.started_at, event.scanned_at,
                        event.first_tier, event.lost,
                    ))
                else:
                    continue
                touched.add(event.batch_id)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return touched

    def hold(self, event: Event, error: BaseException) -> None:
        """Keep an event :meth:`apply` refused, whole, with why: it is not lost, ``damflow status`` counts it,
        and :meth:`held` gives it back to be tried again (the sink does at every start, so a fixed bug or a
        widened column lets it in)."""
        self._hold(encode(event), type(event).__name__, getattr(event, "batch_id", None),
                   getattr(event, "event_id", None), error)

    def hold_unreadable(self, value: bytes, error: BaseException) -> None:
        """Keep a record no event could be read from (:meth:`hold`, for bytes): written by a newer version, or
        by a bug that published what it cannot read back. Tried again, like the others, at every sink start."""
        says = claimed(value)
        self._hold(value, f"unreadable {says.get('type', 'record')}", says.get("batch_id"), says.get("event_id"),
                   error)

    def _hold(self, value: bytes, kind: str, batch_id: str | None, event_id: str | None,
              error: BaseException) -> None:
        at = time.time()
        self._db.execute(  # one statement: committed on its own
            "INSERT INTO held_events VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
            " error = excluded.error, held_at = excluded.held_at",
            (hashlib.blake2b(value, digest_size=16).hexdigest(), value, kind, batch_id, event_id,
             repr(error)[:4000], at, at))

    def held(self) -> list[tuple[str, bytes]]:
        """The held events, oldest first: ``(key, encoded event)``."""
        return [(k, bytes(v)) for k, v in
                self._db.execute("SELECT key, value FROM held_events ORDER BY first_held_at, key")]

    def release(self, keys: Iterable[str]) -> None:
        """Forget held events (once they went in)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM held_events WHERE key = ?", ((k,) for k in keys))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _browsable(self, e: AssetBrowsable) -> None:
        db = self._db
        db.execute(_TOUCH_BATCH, (e.batch_id, e.lane, e.discovered_at, e.browsable_at))
        # Thumbnails merge, and are stored sorted, so the result does not depend on delivery order.
        row = db.execute("SELECT thumbnails FROM assets WHERE asset_id = ?", (e.asset_id,)).fetchone()
        thumbnails = {**(json.loads(row[0]) if row else {}), **e.thumbnails}
        db.execute(_UPSERT_ASSET, (e.asset_id, e.size, e.format, e.width, e.height,
                                   json.dumps(thumbnails, sort_keys=True), e.discovered_at, e.browsable_at))
        db.execute(_UPSERT_ASSET_TIER, (e.asset_id, 1, *_NO_CHAIN, DONE, e.browsable_at))
        before = db.execute("SELECT asset_id FROM locations WHERE path = ?", (e.path,)).fetchone()
        db.execute(_UPSERT_LOCATION, (e.path, e.asset_id, e.size, mtime_to_db(e.mtime_ns), e.batch_id, e.source,
                                      e.display_name, e.discovered_at, e.discovered_at))
        db.execute(_UPSERT_BATCH_FILE, (e.batch_id, e.event_id, 1, e.path, e.asset_id, *_NO_CHAIN, DONE,
                                        e.browsable_at))
        if e.display_name:
            db.execute("INSERT OR IGNORE INTO upload_names VALUES (?, ?)", (e.path, e.display_name))
        # File names are searchable: the asset that gained the path, and the one whose content it no longer is.
        for asset_id in {e.asset_id, before[0] if before else e.asset_id}:
            self._refresh_file_names(asset_id)
        # and so is the format, which tier 2 may have indexed before it was known (only a change touches the row)
        db.execute(f"UPDATE metadata SET facets = {_FACETS}(?1, scheduler) "
                   f"WHERE asset_id = ?2 AND facets <> {_FACETS}(?1, scheduler)", (e.format, e.asset_id))

    def _later_tier_done(self, e: AssetIndexed | AssetEnriched, tier: int, at: float) -> None:
        """A tier after the first is done for ``e``: its batch, asset (a stub if tier 1 is not in yet), tier state
        and batch-file row. Done beats failures here as in tier 1: a late failure of a retried attempt does not
        undo the result."""
        db = self._db
        db.execute(_TOUCH_BATCH, (e.batch_id, e.lane, at, at))
        db.execute(_STUB_ASSET, (e.asset_id, at))
        db.execute(_UPSERT_ASSET_TIER, (e.asset_id, tier, *_NO_CHAIN, DONE, at))
        db.execute(_UPSERT_BATCH_FILE, (e.batch_id, e.event_id, tier, e.path, e.asset_id, *_NO_CHAIN, DONE, at))

    def _indexed(self, e: AssetIndexed) -> None:
        self._later_tier_done(e, 2, e.indexed_at)
        fmt = self._db.execute("SELECT format FROM assets WHERE asset_id = ?", (e.asset_id,)).fetchone()[0]
        self._db.execute(_UPSERT_METADATA, (self._doc_id(e.asset_id, e.indexed_at), e.asset_id,
                                            *metadata_row(e), self._file_names(e.asset_id),
                                            facets_text(fmt, _clean(e.scheduler))))

    def _enriched(self, e: AssetEnriched) -> None:
        self._later_tier_done(e, 3, e.enriched_at)
        if e.skipped and not e.quality:  # the cost gate kept it out of tier 3: settled, with no scores
            return
        # (a duplicate's skip carries the scores tier 3 gave its content before, if it did)
        # the latest scores win; a replay of an older event changes nothing
        self._db.execute(
            "INSERT INTO enrichments VALUES (?, ?, ?, ?) ON CONFLICT (asset_id) DO UPDATE SET quality = "
            "excluded.quality, score = excluded.score, enriched_at = excluded.enriched_at "
            "WHERE excluded.enriched_at > enrichments.enriched_at",
            (e.asset_id, json.dumps(e.quality, sort_keys=True), e.quality.get("score"), e.enriched_at),
        )

    def _doc_id(self, asset_id: str, indexed_at: float) -> int:
        """The index row id of an event: indexing time (ms), then 20 bits of the asset id.

        Time order lets a search read the newest matches first; the asset bits keep the id a function of the
        event alone, whatever the delivery order — but for two assets indexed in the same millisecond whose ids
        share 20 bits, where the later-applied one takes the next free id.
        """
        try:
            low = int(asset_id[:_DOC_ID_HASH_BITS // 4], 16)
        except ValueError:  # not a hex id (hand-made events): hash it instead
            low = int.from_bytes(hashlib.blake2b(asset_id.encode(), digest_size=4).digest()) >> 12
        ms = min(max(int(indexed_at * 1000), 0), _DOC_ID_TIME_MAX)
        doc_id = ms << _DOC_ID_HASH_BITS | low
        while True:
            row = self._db.execute("SELECT asset_id FROM metadata WHERE doc_id = ?", (doc_id,)).fetchone()
            if row is None or row[0] == asset_id:
                return doc_id
            doc_id += 1

    def _file_names(self, asset_id: str) -> str:
        """Base names of the asset's locations and every name it was uploaded under, sorted: the ``file:`` text of
        the index."""
        names = {name.replace("\\", "/").rsplit("/", 1)[-1] for (name,) in self._db.execute(
            "SELECT path FROM locations WHERE asset_id = ?1 UNION SELECT u.name FROM upload_names u "
            "JOIN locations l ON l.path = u.path WHERE l.asset_id = ?1", (asset_id,))}
        return "\n".join(sorted(_clean(n) for n in names if n))

    def _refresh_file_names(self, asset_id: str) -> None:
        if self._db.execute("SELECT 1 FROM metadata WHERE asset_id = ?", (asset_id,)).fetchone() is None:
            return  # not indexed (yet): indexing reads the locations then
        names = self._file_names(asset_id)
        # Only a real change touches the row, so the index is not rewritten by replays.
        self._db.execute("UPDATE metadata SET file_names = ? WHERE asset_id = ? AND file_names <> ?",
                         (names, asset_id, names))

    def _failed(self, e: AssetFailed) -> None:
        db = self._db
        state = e.outcome  # the outcomes are spelled as the catalog's states: retrying, failed, dead_lettered
        db.execute(_TOUCH_BATCH, (e.batch_id, e.lane, e.failed_at, e.failed_at))
        # its retry chain and the step in it: what orders it among the row's failures
        step = (e.first_failure_at or 0.0, e.replay_count, e.attempts)  # 0: a chain whose start is unknown
        db.execute(_UPSERT_FAILURE, (e.path, e.tier, e.asset_id, e.batch_id, e.event_id, e.error_class,
                                     e.error_code, e.reason, e.outcome, *step, e.failed_at, e.display_name))
        db.execute(_UPSERT_BATCH_FILE, (e.batch_id, e.event_id, e.tier, e.path, e.asset_id, *step, state,
                                        e.failed_at))
        # The asset the file's winning step names takes that step, whatever order the steps came in: also when
        # this event names none (a later attempt that failed before hashing, the file gone: its asset stayed
        # "retrying" for good). An asset only this event names (the file held other bytes then) takes its step.
        won = db.execute("SELECT asset_id, state, chain_at, replays, attempts, updated_at FROM batch_files "
                         "WHERE batch_id = ? AND event_id = ? AND tier = ?",
                         (e.batch_id, e.event_id, e.tier)).fetchone()
        for asset_id in {e.asset_id, won["asset_id"]} - {None}:
            if asset_id == e.asset_id:  # a stub row, so `damflow show ID` explains an asset never browsable
                db.execute(_STUB_ASSET, (asset_id, e.failed_at))
            if asset_id == won["asset_id"] and won["state"] != DONE:
                db.execute(_UPSERT_ASSET_TIER, (asset_id, e.tier, won["chain_at"], won["replays"], won["attempts"],
                                                won["state"], won["updated_at"]))
            else:  # done is sticky; an asset another attempt hashed (the file changed since) keeps this step
                db.execute(_UPSERT_ASSET_TIER, (asset_id, e.tier, *step, state, e.failed_at))

    # -- progress ----------------------------------------------------------------------------------

    def progress(self, batch_id: str, tier: int, *, now: float | None = None) -> ProgressEvent | None:
        """Where ``batch_id`` stands in ``tier``, or ``None`` for a batch the catalog has never seen.

        ``failed`` and ``dead_lettered`` are disjoint final counts; ``in_flight`` = known total − done −
        failed − dead-lettered, so it includes ``retrying``. ``known_total`` for tier 1 is the larger of the
        scanner's count and the files seen; for a later tier it is what the tier before finished as done.
        ``rate`` is done per second since the batch started (until its last done once the tier is finished);
        ``eta_s`` is in-flight / rate — a lower bound while the scan still runs. A file is counted by its
        event id, which later tiers' events carry on from the file's tier-1 event.
        """
        batch = self._batch_row(batch_id)
        if batch is None:
            return None
        figures = self._tier_figures(batch, tier, self._tally(batch_id), time.time() if now is None else now)
        return ProgressEvent(batch_id=batch_id, tier=tier, **figures)

    def _batch_row(self, batch_id: str) -> sqlite3.Row | None:
        return self._db.execute("SELECT * FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()

    def _tally(self, batch_id: str) -> _Tally:
        tally = _Tally()
        db = self._db
        for tier, state, files in db.execute("SELECT tier, state, files FROM batch_tallies WHERE batch_id = ?",
                                             (batch_id,)):
            if tier == 0:
                tally.seen = files
            else:
                tally.states.setdefault(tier, Counter())[state] = files
        for tier, states in tally.states.items():
            if states[DONE]:
                tally.last_done[tier] = db.execute(
                    "SELECT MAX(updated_at) FROM batch_files WHERE batch_id = ? AND tier = ? AND state = ?",
                    (batch_id, tier, DONE)).fetchone()[0]
        return tally

    @staticmethod
    def _tier_figures(batch: sqlite3.Row, tier: int, tally: _Tally, now: float) -> dict[str, Any]:
        """The ProgressEvent fields (less batch id and tier) of one tier; earlier tiers bound later ones. A tier
        before the one the batch's files enter at has nothing to do: finished at 0."""
        first = batch["first_tier"]
        known = max(batch["scanned_total"], tally.seen) if tier >= first else 0
        final = bool(batch["scan_complete"]) or tier < first
        done = failed = dead = retrying = in_flight = lost = 0
        for t in range(first, tier + 1):
            counts = tally.states.get(t, Counter())
            if t > first:  # a later tier gets exactly what the tier before finished as done
                known = max(done, sum(counts.values()))
                final = final and in_flight == 0
            done, failed, dead, retrying = counts[DONE], counts[FAILED], counts[DEAD_LETTERED], counts[RETRYING]
            # never to come (no tier after gets them either); at most what is still missing: a file counted lost
            # may turn up after all (its event held back by the catalog, and applied at the sink's next start)
            lost = min(batch["lost_total"], max(batch["scanned_total"] - tally.seen, 0)) if t == first else 0
            in_flight = max(known - done - failed - dead - lost, 0)
        finished = final and in_flight == 0
        end = tally.last_done.get(tier, now) if finished else now
        elapsed = end - batch["started_at"]
        rate = done / elapsed if done and elapsed > 0 else 0.0
        eta = 0.0 if finished else (in_flight / rate if rate > 0 else None)
        return {"known_total": known, "total_final": final, "done": done, "failed": failed,
                "retrying": retrying, "dead_lettered": dead, "in_flight": in_flight, "lost": lost,
                "rate": rate, "eta_s": eta, "at": now}

    # -- lookups -----------------------------------------------------------------------------------

    def location(self, path: str) -> tuple[int, int, str | None] | None:
        """``(size, mtime_ns, asset_id)`` of a path that became browsable, for the scanner's unchanged check: one
        row by the primary key, asked file by file, so a rescan's memory does not grow with the folder. Failed
        paths are not locations, so a rescan tries them again."""
        row = self._db.execute("SELECT size, mtime_ns, asset_id FROM locations WHERE path = ?", (path,)).fetchone()
        return None if row is None else (row[0], mtime_from_db(row[1]), row[2])

    def asset(self, ref: str) -> dict[str, Any] | None:
        """One asset as JSON-able data, by path (a location, or a file that failed after it was hashed), full id
        or unique id prefix (≥ 6 hex chars).

        Raises :class:`AmbiguousId` for a prefix matching several assets or shorter than 6 characters.
        Shape: ``asset_id, size, format, width, height, thumbnails {name: relative path}, first_seen_at,
        browsable_at, tier1_state…tier3_state (DONE_NAMES value | retrying | failed | dead_lettered | superseded:
        see ``_SUPERSEDED`` | None),
        locations [{path, size, mtime_ns, batch_id, source, display_name, first_seen_at, last_seen_at}],
        failures [{path, tier, event_id, batch_id, error_class, error_code, reason, outcome (failed | retrying |
        dead_lettered | recovered: retried or replayed, then done), attempts, failed_at}], metadata``: ``None`` until tier 2
        has indexed the asset, else ``{parser_version, generator, model, models [str: every model the generation
        names, the main one first], loras [str], vae, seed, steps, cfg,
        sampler, scheduler, denoise, positive, negative, camera {field: text}, camera_make, camera_model, lens,
        datetime_original, gps_lat, gps_lon, metadata_path, indexed_at}``.
        """
        asset_id = self._resolve(ref.strip())
        if asset_id is None:
            return None
        db = self._db
        row = db.execute("SELECT * FROM assets WHERE asset_id = ?", (asset_id,)).fetchone()
        out: dict[str, Any] = dict(row)
        out["thumbnails"] = json.loads(row["thumbnails"])
        states = dict(db.execute("SELECT tier, state FROM asset_tiers WHERE asset_id = ?", (asset_id,)).fetchall())
        superseded = db.execute(f"SELECT 1 FROM ({_SUPERSEDED}) WHERE asset_id = ?", (asset_id,)).fetchone()
        for tier in sorted(set(TIERS) | set(states)):
            state = SUPERSEDED if superseded and states.get(tier) not in (None, DONE) else states.get(tier)
            out[f"tier{tier}_state"] = _shown_state(tier, state)
        out["locations"] = [dict(r) | {"mtime_ns": mtime_from_db(r["mtime_ns"])} for r in db.execute(
            "SELECT path, size, mtime_ns, batch_id, source, display_name, first_seen_at, last_seen_at "
            "FROM locations WHERE asset_id = ? ORDER BY first_seen_at, path", (asset_id,))]
        # A failure names the asset, or (tier 1, before hashing) only a path that later became this asset.
        # A failure whose event is done in that tier since (retried, or dead-lettered and replayed) is recovered.
        out["failures"] = [dict(r) for r in db.execute(
            "SELECT f.path, f.tier, f.event_id, f.batch_id, error_class, error_code, reason, "
            "CASE WHEN b.state = 'done' THEN 'recovered' ELSE f.outcome END AS outcome, "
            "f.attempts, failed_at FROM failures f LEFT JOIN batch_files b "
            "ON b.batch_id = f.batch_id AND b.event_id = f.event_id AND b.tier = f.tier "
            "WHERE f.asset_id = ? OR (f.asset_id IS NULL AND f.path IN "
            "(SELECT path FROM locations WHERE asset_id = ?)) ORDER BY failed_at, f.path, f.tier",
            (asset_id, asset_id))]
        meta = db.execute(f"SELECT {', '.join(_METADATA_SHOWN)} FROM metadata WHERE asset_id = ?",
                          (asset_id,)).fetchone()
        out["metadata"] = None if meta is None else _shown_metadata(meta)
        quality = db.execute("SELECT quality FROM enrichments WHERE asset_id = ?", (asset_id,)).fetchone()
        out["quality"] = json.loads(quality[0]) if quality else None
        return out

    def _resolve(self, ref: str) -> str | None:
        try:
            ref.encode()
        except UnicodeEncodeError:  # a path that is not UTF-8, as Python keeps it: no asset is stored under it
            return None
        row = self._db.execute("SELECT asset_id FROM locations WHERE path = ?", (ref,)).fetchone()
        if row is None:  # a file that failed once hashed is no location, but its failure names the asset
            row = self._db.execute("SELECT asset_id FROM failures WHERE path = ? AND asset_id IS NOT NULL "
                                   "ORDER BY failed_at DESC LIMIT 1", (ref,)).fetchone()
        if row is not None:
            return row[0]
        ref = ref.lower()
        if not _HEX.fullmatch(ref):
            return None
        if len(ref) < MIN_PREFIX:
            raise AmbiguousId(f"id prefix {ref!r} is too short: give at least {MIN_PREFIX} hex characters")
        # Hex ids sort below "g", so the prefix range is [ref, ref + "g").
        ids = [r[0] for r in self._db.execute(
            "SELECT asset_id FROM assets WHERE asset_id >= ? AND asset_id < ? ORDER BY asset_id LIMIT 3",
            (ref, ref + "g"))]
        if len(ids) > 1:
            raise AmbiguousId(f"id prefix {ref!r} matches several assets ({', '.join(i[:12] for i in ids)}, …)")
        return ids[0] if ids else None

    # -- search ------------------------------------------------------------------------------------

    def search(self, query: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """Indexed assets matching ``query`` (the language of :mod:`consumers.search_query`), best first.

        Raises :class:`BadQuery` (a :class:`PermanentError`) for a query that cannot be run, never an SQLite
        error. A query matching more than ``search_query.RANK_WINDOW`` assets is ranked among its newest matches
        that many (the cost of ranking grows with the matches).

        Rows: ``asset_id, path`` (one location: the last seen; None if none is left), ``generator, model, seed,
        sampler, scheduler, steps, cfg, snippet`` (of the prompt — of the captions for a photo — matches in «»),
        ``format, width, height, thumbnails {name: relative path}, rank`` (bm25, lower is better; None when only
        filters were given and rows come newest first).
        """
        sql, params = compile_search(query, limit=limit)
        try:
            rows = self._db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            # The compiler quotes every user word, so this is a bug, not bad input; still, the caller gets the
            # typed error its handling expects rather than a crash. A locked or missing table is not ours to hide.
            if "fts5" not in str(exc):
                raise
            raise BadQuery(f"the search index could not run {query!r}: {exc}") from exc
        out = []
        for row in rows:
            item = dict(row)
            item["seed"] = seed_from_db(item["seed"])
            item["thumbnails"] = json.loads(item["thumbnails"]) if item["thumbnails"] else {}
            out.append(item)
        return out

    def parser_versions(self) -> dict[int, int]:
        """How many indexed assets each tier-2 ``parser_version`` produced."""
        return dict(self._db.execute(
            "SELECT parser_version, COUNT(*) FROM metadata GROUP BY parser_version ORDER BY parser_version"))

    def assets_needing_reparse(self, current_version: int, limit: int | None = None) -> list[dict[str, Any]]:
        """Indexed assets whose ``parser_version`` is older than ``current_version``, for ``reprocess --tier 2``.

        Oldest parser first, then by asset id (stable, so a caller can page with ``limit``). Each row: ``asset_id,
        parser_version, metadata_path, path, size, mtime_ns, batch_id, source, lane`` — one location (the last
        seen) and the batch that brought it there. Assets with no location left (their path now holds other
        bytes) are not listed: there is nothing to read again.
        """
        rows = self._db.execute(
            "SELECT m.asset_id, m.parser_version, m.metadata_path, l.path, l.size, l.mtime_ns, l.batch_id, "
            "l.source, b.lane "
            "FROM metadata m JOIN locations l ON l.path = (SELECT path FROM locations WHERE asset_id = m.asset_id "
            "ORDER BY last_seen_at DESC, path LIMIT 1) LEFT JOIN batches b ON b.batch_id = l.batch_id "
            "WHERE m.parser_version < ? ORDER BY m.parser_version, m.asset_id LIMIT ?",
            (current_version, -1 if limit is None else limit))
        return [dict(r) | {"mtime_ns": mtime_from_db(r["mtime_ns"])} for r in rows]

    def unfinished(self) -> list[dict[str, Any]]:
        """Files of every batch whose work stopped short: for ``damflow reconcile``, which sends each on again.

        A file (a batch's event) is unfinished when no tier of it ended in a failure and either a tier of it is
        ``retrying`` or its last done tier is not the last tier. Its work is then on the broker (in a topic, or
        held for its retry) or was lost with it: the embedded broker keeps events in memory only, so a restart,
        or a stop in the middle of an import, loses them, and nothing else would ever send them again (a new scan
        skips a browsable file as unchanged). Each row: ``batch_id, event_id, lane, root, tier`` — where its work
        resumes: 1 for a file retrying in tier 1 (``FileDiscovered`` again), 3 for one whose tier 2 is done
        (tier 3 again, from the asset's metadata row: ``parser_version, metadata_path``), else 2 (tier 2 reads the
        metadata again, and its cost gate sends tier 3 on) — ``path, asset_id``, the asset's ``size, format,
        width, height`` and a location that holds it now (``location``, ``mtime_ns``, ``display_name`` — for a
        file retrying in tier 1, the name its failure carried;
        ``location`` None when no path holds those bytes any more: nothing is left to read), the batch's
        ``first_tier`` and whether the asset has tier-3 results already (``enriched``: from another of its files).
        Oldest batch first.

        Files the catalog never heard of (a scan's files lost before tier 1 ended for them) are not here: see
        :meth:`unheard`.
        """
        rows = self._db.execute(
            "WITH files AS (SELECT batch_id, event_id, MAX(CASE WHEN state = ? THEN tier END) AS done_to, "
            "MIN(CASE WHEN state = ? THEN tier END) AS retrying_at, MAX(state IN (?, ?)) AS ended "
            "FROM batch_files GROUP BY batch_id, event_id) "
            "SELECT f.batch_id, f.event_id, b.lane, b.root, CASE WHEN f.retrying_at = 1 THEN 1 "
            # tier 2 done (its tier 3 lost, or its retry): tier 3 again, from the metadata row tier 2 left
            "WHEN COALESCE(f.retrying_at, f.done_to + 1) = 3 AND m.metadata_path IS NOT NULL THEN 3 ELSE 2 END "
            "AS tier, "
            "x.path, x.asset_id, a.size, a.format, a.width, a.height, l.path AS location, l.mtime_ns, "
            # a tier-1 retry's file is no location yet: the name its failure carried
            "CASE WHEN f.retrying_at = 1 THEN (SELECT display_name FROM failures WHERE path = x.path AND tier = 1) "
            "ELSE l.display_name END AS display_name, b.first_tier, "
            "EXISTS (SELECT 1 FROM enrichments e WHERE e.asset_id = x.asset_id) "
            "AS enriched, m.parser_version, m.metadata_path FROM files f JOIN batches b ON b.batch_id = f.batch_id "
            "JOIN batch_files x ON x.batch_id = f.batch_id AND x.event_id = f.event_id "
            "AND x.tier = COALESCE(f.retrying_at, f.done_to) "
            "LEFT JOIN assets a ON a.asset_id = x.asset_id LEFT JOIN metadata m ON m.asset_id = x.asset_id "
            # where the bytes are now: the file's own path if it still holds them, else the last place seen
            "LEFT JOIN locations l ON l.path = COALESCE("
            "(SELECT path FROM locations WHERE path = x.path AND asset_id = x.asset_id), "
            "(SELECT path FROM locations WHERE asset_id = x.asset_id ORDER BY last_seen_at DESC, path LIMIT 1)) "
            "WHERE NOT f.ended AND (f.retrying_at IS NOT NULL OR f.done_to < ?) "
            "ORDER BY b.started_at, f.batch_id, f.event_id",
            (DONE, RETRYING, FAILED, DEAD_LETTERED, TIERS[-1]))
        return [dict(r) | {"mtime_ns": mtime_from_db(r["mtime_ns"]) if r["mtime_ns"] is not None else None,
                           "enriched": bool(r["enriched"])} for r in rows]

    def unheard(self) -> list[dict[str, Any]]:
        """Batches with files the catalog never heard of: counted by their scan, with no outcome in any tier (lost
        on the broker before their first tier ended for them, or still on their way). Each row: ``batch_id, lane,
        root, first_tier, started_at, updated_at, files`` (how many). Only the scan knew their paths: ingesting
        ``root`` again sends what is not browsable; a reprocess's (``first_tier`` 2) go again with the next
        ``damflow reprocess``; an upload's are found among the stored originals (:meth:`known_paths`)."""
        rows = self._db.execute(
            "SELECT b.batch_id, b.lane, b.root, b.first_tier, b.started_at, b.updated_at, "
            "b.scanned_total - b.lost_total - COALESCE(t.files, 0) AS files "
            "FROM batches b LEFT JOIN batch_tallies t ON t.batch_id = b.batch_id AND t.tier = 0 AND t.state = 'seen' "
            "WHERE b.scanned_total - b.lost_total > COALESCE(t.files, 0) ORDER BY b.started_at, b.batch_id")
        return [dict(r) for r in rows]

    _SCAN_COLUMNS = "batch_id, lane, root, scanned_total, skipped_unchanged, skipped_other, started_at, first_tier"

    def open_scans(self) -> list[dict[str, Any]]:
        """Batches whose scan never said it was complete: ``batch_id, lane, root, scanned_total, skipped_unchanged,
        skipped_other, started_at, first_tier``."""
        return [dict(r) for r in self._db.execute(
            f"SELECT {self._SCAN_COLUMNS} FROM batches WHERE scan_complete = 0 ORDER BY started_at, batch_id")]

    def scans(self, batch_ids: Iterable[str]) -> list[dict[str, Any]]:
        """What the scans of ``batch_ids`` said (as :meth:`open_scans`), and ``lost_total``, in start order."""
        ids = sorted(set(batch_ids))
        return [dict(r) for r in self._db.execute(
            f"SELECT {self._SCAN_COLUMNS}, lost_total FROM batches WHERE batch_id IN ({', '.join('?' * len(ids))}) "
            "ORDER BY started_at, batch_id", ids)] if ids else []

    def known_paths(self, under: str) -> set[str]:
        """The paths under ``under`` (a folder) the catalog has heard of: browsable there, or failed."""
        start, end = under.rstrip("/") + "/", under.rstrip("/") + "0"  # "0" sorts right after "/"
        return {p for (p,) in self._db.execute(
            "SELECT path FROM locations WHERE path >= ?1 AND path < ?2 "
            "UNION SELECT path FROM failures WHERE path >= ?1 AND path < ?2", (start, end))}

    # -- overview ----------------------------------------------------------------------------------

    def status(self, *, limit: int = 20, now: float | None = None) -> dict[str, Any]:
        """The whole catalog at a glance, JSON-able.

        Shape: ``{at, assets, locations, batch_count, asset_states: {"tier1": {state: n, …, "pending": n}, …},
        batches: [{batch_id, lane, root, scan_complete, scanned_total, skipped_unchanged, skipped_other,
        started_at, updated_at, tiers: {"tier1": {known_total, total_final, done, failed, retrying,
        dead_lettered, in_flight, rate, eta_s, at}, …}}]}`` — batches newest first, at most ``limit``; a batch
        lists tier 1 and every later tier it has outcomes for. A tier after the first counts as ``failed_earlier``,
        not pending, an asset that an earlier tier's failure keeps from it.
        """
        now = time.time() if now is None else now
        counts = self.counts()
        states: dict[int, Counter[str]] = {t: Counter() for t in TIERS}
        superseded = self._scalar(f"SELECT COUNT(*) FROM ({_SUPERSEDED})")
        besides = f"WHERE asset_id NOT IN ({_SUPERSEDED})" if superseded else ""  # (mostly none: a scan spared)
        for tier, state, n in self._db.execute(
                f"SELECT tier, state, COUNT(*) FROM asset_tiers {besides} GROUP BY tier, state"):
            states.setdefault(tier, Counter())[_shown_state(tier, state)] = n
        for tier, n in self._failed_earlier(bool(superseded)).items():  # never to come to this tier: not pending
            states.setdefault(tier, Counter())[FAILED_EARLIER] = n
        for counter in states.values() if superseded else ():  # history, in every tier: not pending either
            counter[SUPERSEDED] = superseded
        asset_states = {}
        for tier, counter in sorted(states.items()):
            asset_states[f"tier{tier}"] = {**counter, "pending": counts["assets"] - sum(counter.values())}
        batches = []
        for batch in self._newest_batches(limit):
            info: dict[str, Any] = {k: batch[k] for k in batch.keys()}
            info["scan_complete"] = bool(batch["scan_complete"])
            info["tiers"] = {f"tier{t}": figures for t, figures in self._batch_tiers(batch, now).items()}
            batches.append(info)
        return {"at": now, "assets": counts["assets"], "locations": counts["locations"],
                "batch_count": counts["batches"], "held_events": counts["held_events"],
                "asset_states": asset_states, "batches": batches}

    def _failed_earlier(self, superseded: bool) -> dict[int, int]:
        """Per tier after the first: assets with no state in it whose earlier tier failed for good (failed or
        dead-lettered), so that none of its work is on its way (a replay of the failure may send it); but for
        ``superseded`` ones, if there are any."""
        out = {}
        besides = f"AND p.asset_id NOT IN ({_SUPERSEDED})" if superseded else ""
        for tier in TIERS[1:]:
            (n,) = self._db.execute(
                "SELECT COUNT(DISTINCT p.asset_id) FROM asset_tiers p WHERE p.tier < ? AND p.state IN (?, ?) "
                f"AND NOT EXISTS (SELECT 1 FROM asset_tiers t WHERE t.asset_id = p.asset_id AND t.tier = ?) {besides}",
                (tier, FAILED, DEAD_LETTERED, tier)).fetchone()
            if n:
                out[tier] = n
        return out

    def progress_now(self, batch_id: str | None = None, *, limit: int = 20,
                     now: float | None = None) -> list[ProgressEvent]:
        """Where batches stand now: one ``ProgressEvent`` per batch and tier (tier 1 and every later tier with
        outcomes, as :meth:`status` lists them), of ``batch_id`` (none for a batch never seen) or else of the
        newest ``limit`` batches, oldest first (as a live stream would have sent them)."""
        now = time.time() if now is None else now
        if batch_id is None:
            batches = self._newest_batches(limit)
        else:
            batches = [row] if (row := self._batch_row(batch_id)) is not None else []
        return [ProgressEvent(batch_id=b["batch_id"], tier=tier, **figures)
                for b in reversed(batches) for tier, figures in self._batch_tiers(b, now).items()]

    def _newest_batches(self, limit: int) -> list[sqlite3.Row]:
        return self._db.execute("SELECT * FROM batches ORDER BY started_at DESC, batch_id LIMIT ?",
                                (limit,)).fetchall()

    def _batch_tiers(self, batch: sqlite3.Row, now: float) -> dict[int, dict[str, Any]]:
        """The progress figures of each tier a batch shows: tier 1, and every later tier with outcomes."""
        tally = self._tally(batch["batch_id"])
        return {t: self._tier_figures(batch, t, tally, now) for t in sorted({1} | set(tally.states))}

    def counts(self) -> dict[str, int]:
        """Row counts (assets include failure-only stubs; ``browsable`` counts tier-1 done, ``indexed`` assets with
        tier-2 metadata), for checks and tests."""
        one = self._scalar
        return {
            "assets": one("SELECT COUNT(*) FROM assets"),
            "browsable": one("SELECT COUNT(*) FROM asset_tiers WHERE tier = 1 AND state = 'done'"),
            "indexed": one("SELECT COUNT(*) FROM metadata"),
            "locations": one("SELECT COUNT(*) FROM locations"),
            "failures": one("SELECT COUNT(*) FROM failures"),
            "batches": one("SELECT COUNT(*) FROM batches"),
            "batch_files": one("SELECT COUNT(*) FROM batch_files"),
            "held_events": one("SELECT COUNT(*) FROM held_events"),
        }

    def dead_lettered_files(self, tiers: Sequence[int] = TIERS) -> int:
        """Files (events) dead-lettered in ``tiers``, in every batch: what the dead-letter topics should explain."""
        marks = ", ".join("?" * len(tiers))
        return self._db.execute(f"SELECT COUNT(*) FROM batch_files WHERE state = ? AND tier IN ({marks})",
                                (DEAD_LETTERED, *tiers)).fetchone()[0]

    def asset_count(self) -> int:
        """Distinct assets (by content), including those only a failure has named."""
        return self._scalar("SELECT COUNT(*) FROM assets")

    def location_count(self) -> int:
        """Distinct browsable paths."""
        return self._scalar("SELECT COUNT(*) FROM locations")

    def _scalar(self, sql: str) -> int:
        return self._db.execute(sql).fetchone()[0]


_METADATA_SHOWN = ("parser_version", "generator", "model", "models", "loras", "vae", "seed", "steps", "cfg", "sampler",
                   "scheduler", "denoise", "positive", "negative", "camera", "camera_make", "camera_model", "lens",
                   "datetime_original", "gps_lat", "gps_lon", "metadata_path", "indexed_at")


def _shown_metadata(row: sqlite3.Row) -> dict[str, Any]:
    meta = dict(row)
    meta["loras"] = json.loads(meta["loras"])
    meta["models"] = [name for name in meta["models"].split("\n") if name]
    meta["camera"] = json.loads(meta["camera"])
    meta["seed"] = seed_from_db(meta["seed"])
    return meta


def _shown_state(tier: int, state: str | None) -> str | None:
    """The stored state as people read it: ``done`` becomes the tier's own word (browsable, indexed, …)."""
    return DONE_NAMES.get(tier, DONE) if state == DONE else state


# -- tier-2 values -------------------------------------------------------------------------------------


def metadata_row(e: AssetIndexed) -> tuple[Any, ...]:
    """The ``metadata`` values of an event, in ``_METADATA_COLS`` order less ``file_names`` (read from locations)
    and ``facets`` (with the asset's format, read from ``assets``).

    Values SQLite cannot hold are made safe rather than refused, since one odd file must not stop the sink:
    text loses lone surrogates, non-finite floats and integers past 64 bits become NULL (the full record stays
    in the document at ``metadata_path``).
    """
    camera = {_clean(k): _clean(v) for k, v in sorted(e.camera.items()) if isinstance(v, str) and v.strip()}
    lat, lon = e.gps if e.gps else (None, None)
    if not (_finite(lat) is not None and _finite(lon) is not None and abs(lat) <= 90 and abs(lon) <= 180):
        lat = lon = None
    camera_text = " ".join(camera[k] for k in ("make", "model", "lens") if k in camera)
    photo_text = "\n".join(camera[k] for k in ("title", "description", "keywords", "artist", "city", "software",
                                                "copyright", "comment") if k in camera)
    return (
        e.parser_version, _clean(e.generator), _clean(e.model),
        json.dumps([_clean(name) for name in e.loras if isinstance(name, str)], ensure_ascii=False),
        _clean(e.vae), seed_to_db(e.seed), _int64(e.steps), _finite(e.cfg), _clean(e.sampler), _clean(e.scheduler),
        _finite(e.denoise), _clean(e.positive), _clean(e.negative), json.dumps(camera, ensure_ascii=False),
        camera.get("make"), camera.get("model"), camera.get("lens"), camera.get("datetime_original"), lat, lon,
        _clean(e.metadata_path), e.indexed_at, camera_text, photo_text,
        # every model, one per line; an event of a parser before 3 names only the main one
        "\n".join((_clean(name) or "").replace("\n", " ") for name in e.models if isinstance(name, str))
        or _clean(e.model) or "",
    )


def seed_to_db(seed: int | None) -> int | None:
    """An unsigned 64-bit seed as SQLite's signed integer (see ``SEED_RANGE``); None outside the range."""
    if seed is None or not 0 <= seed < SEED_RANGE:
        return None
    return seed - SEED_RANGE if seed > _INT64_MAX else seed


def seed_from_db(value: int | None) -> int | None:
    return None if value is None else value % SEED_RANGE


def mtime_to_db(mtime_ns: int) -> int:
    """A file's ``st_mtime_ns`` as SQLite's signed integer (see ``MTIME_NS_MIN``). One outside the range kept is
    clamped to its nearer end: the file is still browsable and its batch finishes (raising held the event back
    for ever), though a rescan then sees it as changed and sends it again."""
    kept = min(max(mtime_ns, MTIME_NS_MIN), MTIME_NS_MAX)
    return kept - (1 << 64) if kept > _INT64_MAX else kept


def mtime_from_db(value: int) -> int:
    """The ``st_mtime_ns`` that :func:`mtime_to_db` stored as ``value``, for the scanner to compare as it is."""
    return value + (1 << 64) if value < MTIME_NS_MIN else value


def _int64(value: int | None) -> int | None:
    return value if value is not None and -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def _finite(value: float | None) -> float | None:
    return value if isinstance(value, int | float) and math.isfinite(value) else None


def _clean(text: str | None) -> str | None:
    """Text SQLite can store: lone surrogates (from undecodable bytes) become U+FFFD."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)

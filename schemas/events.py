"""The events damflow puts on its topics: versioned JSON records, defined once here.

Every record carries ``type`` (the event's name, a past-tense noun) and ``schema`` (its version). A newer
minor change adds optional fields only, so old readers keep working; a change that breaks readers bumps
``SCHEMA_VERSION`` and readers refuse what they cannot understand (see :mod:`schemas.codec`).
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

import msgspec

SCHEMA_VERSION = 1

Lane = Literal["interactive", "batch", "background"]
Source = Literal["scan", "upload", "replay", "reconcile", "reprocess"]


def new_id() -> str:
    """A fresh random identifier for events and batches (32 hex chars)."""
    return uuid.uuid4().hex


def now() -> float:
    """Wall-clock time as epoch seconds, the one time format used in events."""
    return time.time()


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """Base of every event. ``schema`` is the record's version."""

    schema: int = SCHEMA_VERSION


class FileDiscovered(Event, frozen=True, kw_only=True):
    """A file was found by the scanner or received by the upload endpoint; tier-1 work for it.

    Keyed by ``path`` on the tier-1 topics.
    """

    event_id: str
    batch_id: str
    lane: Lane
    source: Source
    path: str
    size: int
    mtime_ns: int
    discovered_at: float
    #: Root folder of the scan that found the file (``None`` for uploads).
    root: str | None = None
    #: Original client-side name of an upload, for display only (never used as a path).
    display_name: str | None = None
    #: How many times this event has been replayed from the dead-letter topic.
    replay_count: int = 0


class AssetBrowsable(Event, frozen=True, kw_only=True):
    """Tier 1 is done: the asset is hashed and has thumbnails. Keyed by ``asset_id`` on ``assets``."""

    event_id: str
    batch_id: str
    lane: Lane
    source: Source
    asset_id: str
    path: str
    size: int
    mtime_ns: int
    format: str
    width: int
    height: int
    #: Thumbnail size name ("256", "1440") -> path relative to the data directory.
    thumbnails: dict[str, str]
    #: True when the thumbnails already existed (the same bytes were seen before).
    deduplicated: bool = False
    discovered_at: float
    browsable_at: float
    #: CPU time spent on this file's tier-1 work, milliseconds.
    work_ms: float = 0.0
    display_name: str | None = None
    #: Which attempt succeeded (1 = the first; more after transient failures and retries).
    attempts: int = 1
    #: As tier 2's input: how many times it was replayed from tier 2's dead-letter topic.
    replay_count: int = 0


class AssetIndexed(Event, frozen=True, kw_only=True):
    """Tier 2 is done: metadata read and normalised, ready for search. Keyed by ``asset_id`` on ``assets``
    (and on ``t3.background`` when the cost gate lets it through to tier 3).

    The searchable summary travels here; everything read (raw chunks, EXIF/IPTC/XMP, ComfyUI graphs) is in the
    JSON document at ``metadata_path`` (relative to the data directory), so messages stay small.
    """

    event_id: str
    batch_id: str
    lane: Lane
    source: Source
    asset_id: str
    path: str
    #: ``agents.metadata.model.PARSER_VERSION`` of the extractor that produced this.
    parser_version: int
    metadata_path: str
    #: "comfyui", "a1111", ... or None when the file carries no generation parameters.
    generator: str | None = None
    model: str | None = None
    #: Every model the generation names, the main one (``model``) first: a refiner's, a hires fix's, a detailer's.
    models: list[str] = []
    loras: list[str] = []
    vae: str | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    denoise: float | None = None
    positive: str | None = None
    negative: str | None = None
    #: Camera fields: make, model, lens, datetime_original, software, artist, description, keywords ...
    camera: dict[str, str] = {}
    gps: tuple[float, float] | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    warnings: list[str] = []
    indexed_at: float
    attempts: int = 1
    #: As tier 3's input: how many times it was replayed from tier 3's dead-letter topic.
    replay_count: int = 0


class AssetEnriched(Event, frozen=True, kw_only=True):
    """Tier-3 work done for an asset (background lane). Keyed by ``asset_id`` on ``assets``.

    ``quality`` holds image-quality scores; later enrichments (embeddings, creative sessions) add their fields.
    """

    event_id: str
    batch_id: str
    lane: Lane
    source: Source
    asset_id: str
    path: str
    quality: dict[str, float] = {}
    enriched_at: float
    attempts: int = 1
    #: Why tier 3 left this asset alone, when the cost gate kept it out (``disabled``, ``duplicate``, ``small``):
    #: sent by tier 2 in place of tier 3's work, so the asset's tier 3 is settled and its batch's tier-3 progress
    #: can finish. ``None`` when tier 3 did the work.
    skipped: str | None = None


class AssetFailed(Event, frozen=True, kw_only=True):
    """A tier could not process a file. Keyed by ``asset_id`` when known, else by ``path``."""

    event_id: str
    batch_id: str
    lane: Lane
    source: Source
    tier: int
    path: str
    asset_id: str | None = None
    error_class: str
    error_code: str
    reason: str
    retriable: bool
    #: Where the failure ends: "retrying" (will be tried again) or "dead_lettered" (needs a person).
    outcome: Literal["failed", "retrying", "dead_lettered"] = "failed"
    attempts: int = 1
    #: When this retry chain first failed (attempt 1's time, carried to each retry; None: not known), and the
    #: failed record's ``replay_count`` (a replay starts a new chain): with ``attempts``, they order a file's
    #: outcomes in the catalog, the steps of one chain whatever the workers' clocks say.
    first_failure_at: float | None = None
    replay_count: int = 0
    failed_at: float
    #: The failed record's display name (an upload's client-side name): a retry the broker lost is sent again by
    #: ``damflow reconcile`` from the catalog, which keeps it from here.
    display_name: str | None = None


class BatchScanned(Event, frozen=True, kw_only=True):
    """The scanner's running account of a batch: how many files it has published so far.

    Sent on ``progress`` as the scan goes, so progress can show a total before the scan ends;
    ``complete`` is true on the last one. Keyed by ``batch_id``. Uploads and ``damflow reprocess`` send one,
    complete, once their files are published, so their batches finish too.
    """

    batch_id: str
    lane: Lane
    root: str
    found: int
    skipped_unchanged: int = 0
    skipped_other: int = 0
    complete: bool = False
    #: True while the scanner waits for the workers to catch up (backpressure), false once it goes on.
    paused: bool = False
    started_at: float
    scanned_at: float
    #: The tier the batch's files enter at: 1 for a scan or an upload, 2 for ``damflow reprocess``.
    first_tier: int = 1
    #: Files of the batch given up as lost with a broker: published, never heard of by the catalog, and no longer
    #: anywhere (sent by the reconcile of a ``damflow up`` starting a new embedded broker). Counted in neither
    #: done nor in flight; ingesting the folder again sends them.
    lost: int = 0


class ProgressEvent(Event, frozen=True, kw_only=True):
    """Where a batch stands in one tier; published by the catalog on ``progress``, keyed by ``batch_id``."""

    batch_id: str
    tier: int
    known_total: int
    #: True once the scan has finished, so ``known_total`` will not grow any more.
    total_final: bool
    done: int
    failed: int = 0
    retrying: int = 0
    dead_lettered: int = 0
    in_flight: int = 0
    #: Files of the batch lost with a broker (see ``BatchScanned.lost``): in its first tier only.
    lost: int = 0
    #: Files per second over the batch so far.
    rate: float = 0.0
    #: Estimated seconds to finish, ``None`` while unknown.
    eta_s: float | None = None
    at: float


class DeadLetter(Event, frozen=True, kw_only=True):
    """The envelope of a message that could not be processed, with everything needed to diagnose it."""

    original_topic: str
    original_partition: int
    original_offset: int
    original_timestamp_ms: int | None = None
    #: The original key; its first characters when ``key_truncated`` (the whole one is on the source topic).
    original_key: str | None = None
    key_truncated: bool = False
    #: The original message value, base64 when it was not valid UTF-8 (see ``payload_encoding``). Cut to its
    #: first bytes (base64) when the whole would not fit in one message: see ``payload_truncated``.
    original_payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    #: True when ``original_payload`` holds only the first bytes of the value; the whole value is still readable
    #: at ``received_topic``/``original_partition``/``original_offset`` while the broker retains it.
    payload_truncated: bool = False
    #: The value's size in bytes.
    original_size: int | None = None
    #: The topic the message was read from (a retry topic after retries; ``original_topic`` names its lane).
    received_topic: str | None = None
    consumer_group: str
    error_class: str
    error_code: str
    error_message: str
    cause: str | None = None
    traceback: str | None = None
    attempts: int = 1
    first_failure_at: float
    last_failure_at: float
    worker_host: str
    worker_version: str
    library_versions: dict[str, str] = {}
    tier: int
    file_path: str | None = None
    file_hash: str | None = None
    file_size: int | None = None
    replay_count: int = 0
    batch_id: str | None = None


AnyEvent = (
    FileDiscovered | AssetBrowsable | AssetIndexed | AssetEnriched | AssetFailed | BatchScanned | ProgressEvent
    | DeadLetter
)

"""Reconcile: send on again the work the catalog shows as started but not finished.

The embedded broker keeps events in memory only. A restart, or a stop in the middle of an import, loses the events
still on it — tier-2 and tier-3 work for files already browsable, retries held by the retrier — and nothing would
send them again: a new scan skips a browsable file as unchanged. ``damflow up`` (and ``run``) on the embedded
broker therefore reconcile as they start, when the broker is new and empty; ``damflow reconcile`` does it by hand
(after an external broker lost data, say).

Each unfinished file (see :meth:`consumers.catalog.Catalog.unfinished`) goes on from where it stopped, under its
own batch and event ids, so its batch's progress finishes: a file retrying in tier 1 as ``FileDiscovered`` on
``t1.<lane>``; one whose tier 2 is done as tier 2 left it for tier 3 (through the same cost gate); any other as
``AssetBrowsable`` (rebuilt from the catalog: its thumbnails exist) on ``t2.<lane>``, whose cost gate sends tier 3
on. Every effect is keyed by asset id, so a file whose work was in fact still on its way is worked on twice and
changes nothing. Files a scan counted that the catalog never heard of have no path
here; they are reported, and ingesting their folder again sends them. An upload's have one: the original it
stored (the bytes outlive the broker's events), sent on again under its batch (see :func:`_uploads`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import msgspec

from agents.atomic_write import read_note
from agents.tier2 import cost_gate
from consumers.catalog import Catalog
from schemas import AssetBrowsable, AssetEnriched, AssetIndexed, BatchScanned, FileDiscovered, encode, new_id, now
from streams.kafka import check_delivered, producer
from streams.logs import get
from streams.settings import Settings
from streams.topics import Topics
from streams.upload import BATCH_NOTE

log = get(__name__)


#: What a reconcile sends for a file: the event its next tier takes, or the ``AssetEnriched`` tier 2's cost gate
#: sends in tier 3's place; and the close of a batch it makes for uploads no batch explains.
Resumed = FileDiscovered | AssetBrowsable | AssetIndexed | AssetEnriched | BatchScanned
#: How far outside an upload batch's start and close a stored original's modification time may lie and still be
#: taken for one of its files (it is written between the two).
_UPLOAD_SLACK_S = 2.0


@dataclass
class Plan:
    """What a reconcile sends (``events``: topic, key, event) and what it cannot (``lost``, ``unheard``)."""

    events: list[tuple[str, bytes, Resumed]] = field(default_factory=list)
    #: Unfinished files whose bytes no path holds any more: nothing is left to read.
    lost: list[dict[str, Any]] = field(default_factory=list)
    #: Batches with files only their scan knew (``Catalog.unheard``), less the uploads found among the originals.
    unheard: list[dict[str, Any]] = field(default_factory=list)
    #: Of ``events``, the uploads the catalog never heard of, sent on from their stored originals.
    uploads: int = 0
    #: Batches whose scan was cut short with the broker, closed with what it had found (``broker_new``).
    cut_short: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        files = [e for _, _, e in self.events if not isinstance(e, BatchScanned)]
        by_tier = {f"tier{t}": sum(1 for e in files if _tier(e) == t) for t in (1, 2, 3)}
        return {"resumed": len(files), **by_tier, "uploads": self.uploads, "batches": len({e.batch_id for e in files}),
                "gone": [{"batch_id": r["batch_id"], "event_id": r["event_id"], "path": r["path"]}
                         for r in self.lost],
                "unheard": self.unheard,
                "cut_short": [{k: b[k] for k in ("batch_id", "root", "scanned_total")} for b in self.cut_short]}


def _tier(event: Resumed) -> int:
    return 1 if isinstance(event, FileDiscovered) else 2 if isinstance(event, AssetBrowsable) else 3


def plan(settings: Settings, topics: Topics, *, broker_new: bool = False) -> Plan:
    """Read the catalog and build what to send; sends nothing. An absent catalog: nothing to do.

    ``broker_new``: no scan can be going on, and nothing the catalog has not heard of is on its way (the broker
    is new: ``damflow up`` starting its embedded one, whose port a scanner of the last one cannot find). A scan
    still open was then cut short with the broker: it is closed with what it had found, as a scan stopped by
    Ctrl-C closes itself (reported in ``cut_short``: ingesting its folder again sends the rest); and a batch's
    files the catalog never heard of (``unheard``, less the uploads found again) are lost (``BatchScanned.lost``).
    Either batch can then finish, rather than show "scanning", or files in flight, for ever."""
    out = Plan()
    if not settings.catalog_path.exists():
        return out
    at = now()
    with Catalog(settings.catalog_path, readonly=True) as catalog:
        rows, out.unheard = catalog.unfinished(), catalog.unheard()
        if broker_new:  # (else an upload's events may still be on their way: it would go twice, counted twice)
            _after_broker_loss(catalog, settings, topics, out, at)
    for row in rows:
        lane = row["lane"] if row["lane"] in ("interactive", "batch") else "batch"
        if row["tier"] == 1:
            event = _discovered(row, lane, at)
            out.events.append((topics.tier1(lane), event.path.encode(), event))
        elif row["location"] is None or not row["asset_id"]:
            out.lost.append(row)
        elif row["tier"] == 3:
            out.events.append(_tier3(settings, topics, row, lane, at))
        else:
            event = _browsable(row, lane, at)
            out.events.append((topics.tier2(lane), event.asset_id.encode(), event))
    return out


def _after_broker_loss(catalog: Catalog, settings: Settings, topics: Topics, out: Plan, at: float) -> None:
    """What only a new broker allows (see :func:`plan`): the uploads found again, and the batches the last one left
    open closed: a scan cut short, or files lost (what is still unheard once the uploads are found)."""
    uploads, out.unheard = _uploads(settings, topics, catalog.known_paths(str(settings.originals_dir)),
                                    out.unheard, at)
    out.events += uploads
    out.uploads = sum(1 for _, _, e in uploads if isinstance(e, FileDiscovered))
    open_scans = catalog.open_scans()
    out.cut_short = [b for b in open_scans if b["root"]]  # (an upload's or reprocess's lost close: closed, unnamed)
    lost = {b["batch_id"]: b["files"] for b in out.unheard}
    for b in catalog.scans({*lost, *(c["batch_id"] for c in open_scans)}):
        out.events.append((topics.progress, b["batch_id"].encode(), BatchScanned(
            batch_id=b["batch_id"], lane=b["lane"] if b["lane"] in ("interactive", "batch") else "batch",
            root=b["root"] or "", found=b["scanned_total"], skipped_unchanged=b["skipped_unchanged"],
            skipped_other=b["skipped_other"], complete=True, started_at=b["started_at"], scanned_at=at,
            first_tier=b["first_tier"], lost=b["lost_total"] + lost.get(b["batch_id"], 0))))


def _uploads(settings: Settings, topics: Topics, known: set[str], unheard: list[dict[str, Any]],
             at: float) -> tuple[list[tuple[str, bytes, Resumed]], list[dict[str, Any]]]:
    """Uploads the catalog never heard of (answered, their events then lost with the broker), from the originals
    they stored: each goes on again as a ``FileDiscovered`` of the upload batch noted on it (``BATCH_NOTE``; where
    no note is kept, the one whose time it falls in), so that batch finishes; originals no batch the catalog knows
    explains (its close was lost too) go as a batch of their own. Returns the events, and ``unheard`` less what
    they explain."""
    originals: list[tuple[float, str, os.stat_result, str | None]] = []
    for path in settings.originals_dir.glob("*/*"):
        name = str(path)
        if path.name.startswith(".") or name in known:  # (a write in progress, or heard of)
            continue
        try:
            st = path.stat()
        except OSError:
            continue
        noted = read_note(path, BATCH_NOTE)
        originals.append((st.st_mtime, name, st, noted.decode("utf-8", "replace") if noted else None))
    if not originals:
        return [], unheard
    batches = {b["batch_id"]: dict(b) for b in unheard if b["batch_id"].startswith("upload-") and not b["root"]}

    def batch_of(mtime: float, noted: str | None) -> dict[str, Any] | None:
        """The batch noted on the original; where no note is kept, the one whose time it falls in."""
        if noted is not None:
            batch = batches.get(noted)
            return batch if batch is not None and batch["files"] > 0 else None
        return next((b for b in batches.values() if b["files"] > 0
                     and b["started_at"] - _UPLOAD_SLACK_S <= mtime <= b["updated_at"] + _UPLOAD_SLACK_S), None)

    events: list[tuple[str, bytes, Resumed]] = []
    alone: list[FileDiscovered] = []
    for mtime, name, st, noted in sorted(originals):
        batch = batch_of(mtime, noted)
        event = FileDiscovered(event_id=new_id(), batch_id=batch["batch_id"] if batch else "", lane="interactive",
                               source="reconcile", path=name, size=st.st_size, mtime_ns=st.st_mtime_ns,
                               discovered_at=at)
        if batch is None:
            alone.append(event)
            continue
        batch["files"] -= 1
        events.append((topics.tier1("interactive"), name.encode(), event))
    if alone:
        batch_id = f"upload-{new_id()}"
        events.append((topics.progress, batch_id.encode(), BatchScanned(
            batch_id=batch_id, lane="interactive", root="", found=len(alone), complete=True, started_at=at,
            scanned_at=at)))
        events += [(topics.tier1("interactive"), e.path.encode(), msgspec.structs.replace(e, batch_id=batch_id))
                   for e in alone]
    left = {b["batch_id"]: b["files"] for b in batches.values()}
    still = [b | {"files": left.get(b["batch_id"], b["files"])} for b in unheard]
    return events, [b for b in still if b["files"] > 0]


def _tier3(settings: Settings, topics: Topics, row: dict[str, Any], lane: str,
           at: float) -> tuple[str, bytes, AssetIndexed | AssetEnriched]:
    """Tier 3 again, for a file whose tier 2 is done, through tier 2's cost gate as tier 2 applied it: to
    ``t3.background`` as tier 2's ``AssetIndexed`` (tier 3 needs its ids and path), or, for a file the gate keeps
    out, the ``AssetEnriched`` saying why that tier 2 would have sent to ``assets``. (Sent to tier 2 again, every
    file that a stopped ``damflow run`` left short of tier 3 queued ahead of the next run's own tier 2.)"""
    browsable = _browsable(row, lane, at)
    key = row["asset_id"].encode()
    skipped = cost_gate(settings, browsable)
    if skipped:
        return topics.assets, key, AssetEnriched(
            event_id=row["event_id"], batch_id=row["batch_id"], lane=lane, source="reconcile",
            asset_id=row["asset_id"], path=row["location"], enriched_at=at, skipped=skipped)
    return topics.t3_background, key, AssetIndexed(
        event_id=row["event_id"], batch_id=row["batch_id"], lane=lane, source="reconcile", asset_id=row["asset_id"],
        path=row["location"], parser_version=row["parser_version"], metadata_path=row["metadata_path"],
        indexed_at=at)


def _discovered(row: dict[str, Any], lane: str, at: float) -> FileDiscovered:
    """Tier 1 again for a file whose retry was lost: as it is now (a file gone or changed meets tier 1's checks,
    which record what they find)."""
    try:
        st = os.stat(row["path"])
        size, mtime_ns = st.st_size, st.st_mtime_ns
    except (OSError, ValueError):  # gone, unreadable, a name the OS refuses: tier 1 records it as such
        size, mtime_ns = 0, 0
    return FileDiscovered(event_id=row["event_id"], batch_id=row["batch_id"], lane=lane, source="reconcile",
                          path=row["path"], size=size, mtime_ns=mtime_ns, discovered_at=at, root=row["root"],
                          display_name=row["display_name"])


def _browsable(row: dict[str, Any], lane: str, at: float) -> AssetBrowsable:
    """Tier 2 again (and through its cost gate tier 3), from the catalog's record of tier 1. A duplicate for the
    gate as the original was one: a reprocess's file (tier 2 again, its tier 3 left as it is) and an asset whose
    tier 3 another of its files did already. Not otherwise: the gate must not keep from tier 3 an asset whose
    tier 3 was lost."""
    return AssetBrowsable(
        event_id=row["event_id"], batch_id=row["batch_id"], lane=lane, source="reconcile",
        asset_id=row["asset_id"], path=row["location"], size=row["size"] or 0, mtime_ns=row["mtime_ns"] or 0,
        format=row["format"] or "", width=row["width"] or 0, height=row["height"] or 0, thumbnails={},
        deduplicated=bool(row["enriched"]) or row["first_tier"] == 2,
        discovered_at=at, browsable_at=at, display_name=row["display_name"],
    )


async def send(bootstrap: str, work: Plan, *, compression: str | None) -> None:
    """Publish the plan's events, each acked by the broker before this returns; :class:`BrokerError` if the broker
    refused any (a flush does not say: each send's own delivery does)."""
    if not work.events:
        return
    async with producer(bootstrap, linger_ms=5, compression=compression) as prod:
        sent = [await prod.send(topic, encode(event), key=key) for topic, key, event in work.events]
        await prod.flush()
        await check_delivered(sent, "events sent on")


async def reconcile(settings: Settings, topics: Topics, bootstrap: str, *, dry_run: bool = False,
                    broker_new: bool = False) -> dict[str, Any]:
    """Plan and (unless ``dry_run``) send; returns the plan's summary, logged too."""
    work = plan(settings, topics, broker_new=broker_new)
    if not dry_run:
        await send(bootstrap, work, compression=settings.compression_type)
    summary = work.summary()
    if not dry_run and (work.events or work.lost or work.unheard):  # (a dry run's caller shows the summary)
        log.info("reconciled", resumed=summary["resumed"], batches=summary["batches"], uploads=work.uploads,
                 gone=len(work.lost), unheard_files=sum(b["files"] for b in work.unheard))
    for b in work.cut_short:
        log.warning("scan_cut_short", batch_id=b["batch_id"], root=b["root"], found=b["scanned_total"],
                    hint="its scan stopped with the broker: ingest its folder again for the rest")
    return summary

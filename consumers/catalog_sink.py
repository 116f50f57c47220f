"""The catalog sink: consumes ``assets`` (and the scanner's ``BatchScanned`` on ``progress``), writes the SQLite
catalog, then publishes each touched batch's ``ProgressEvent`` — so progress is always what the catalog shows.

One writer owns the SQLite file, so this runs once per data directory (in ``damflow up`` or ``damflow catalog``),
in its own consumer group. Offsets are committed only after the catalog commit and the progress sends: a crash
replays events, and :meth:`Catalog.apply` is idempotent, so a replay changes nothing. An event that decodes but
that the catalog cannot hold (a number too large for SQLite, say, or a bug of the catalog's own) is held whole
in the catalog (:meth:`Catalog.hold`, counted by ``damflow status``) and the rest of its batch goes in: one bad
event never stops the catalog, and none is lost — every start of the sink tries the held ones again, so once the
cause is mended they go in. A record no event can be read from is held the same way (its producer may be a newer
version, or may have published what it cannot read back). A progress event the broker did not take fails the run
(nothing is committed), and ``damflow up`` starts the sink again.

The HTTP endpoint of the same process hands it the outcome of each ``?wait=1`` upload (:meth:`CatalogSink.
apply_now`) before answering, so an upload answered browsable can be looked up at once: read from ``assets``, it
would reach the catalog only with the sink's next fetch, which waits to gather an import's results (about 220 ms
later, measured on an idle ``damflow up``). The sink reads the same event from ``assets`` afterwards (or, should
the worker not have published it, the one its record's redo publishes: the same, or, from a worker started since,
the same asset and thumbnails stamped anew) and applies it again, synced. The sink's catalog writes run on one
thread of its own, one after another.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from consumers.catalog import Catalog
from consumers.progress import ending
from schemas import (
    AssetBrowsable, AssetEnriched, AssetFailed, AssetIndexed, BatchScanned, Event, ProgressEvent, decode, encode,
)
from schemas.codec import claimed
from streams.errors import SchemaError
from streams.kafka import group_consumer, producer, set_fetch_pace
from streams.logs import get
from streams.settings import Settings
from streams.topics import Topics

log = get(__name__)

_APPLIED = (AssetBrowsable, AssetIndexed, AssetEnriched, AssetFailed, BatchScanned)
_APPLIED_NAMES = {t.__name__ for t in _APPLIED}
#: Tiers whose progress the sink reports.
REPORTED_TIERS = (1, 2, 3)
#: What applying an event the catalog cannot hold raises (as opposed to a fault of the database itself, such as
#: ``sqlite3.OperationalError``, which fails the run so that it is tried again).
_UNFIT = (OverflowError, ValueError, TypeError, sqlite3.IntegrityError, sqlite3.InterfaceError)


def _apply(catalog: Catalog, events: list[Event], *,
           durable: bool = True) -> tuple[set[str], list[tuple[Event, BaseException]]]:
    """Apply ``events`` in one transaction or, when the catalog cannot hold one of them, one by one: the batches
    touched, and each event the catalog refused with why."""
    try:
        return catalog.apply(events, durable=durable), []
    except _UNFIT:
        pass
    touched: set[str] = set()
    refused: list[tuple[Event, BaseException]] = []
    for event in events:
        try:
            touched |= catalog.apply([event], durable=durable)
        except _UNFIT as exc:
            refused.append((event, exc))
    return touched, refused


class FetchPace:
    """How the sink fetches: gathering an import's results (``sink_fetch_max_wait_ms``, ``sink_fetch_min_bytes``),
    or promptly while a batch is about to finish a tier (see ``Settings.sink_prompt_eta_s``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Until when (``time.monotonic()``) to fetch promptly.
        self.prompt_until = 0.0

    def after_write(self, progress: list[ProgressEvent], now: float) -> None:
        within = self.settings.sink_prompt_eta_s
        if any(ending(p, within) for p in progress):
            self.prompt_until = now + 2 * within

    def wait_and_min_bytes(self, now: float) -> tuple[int, int]:
        s = self.settings
        if now < self.prompt_until:
            return s.sink_prompt_fetch_max_wait_ms, 1
        return s.sink_fetch_max_wait_ms, s.sink_fetch_min_bytes

    def apply(self, consumer: AIOKafkaConsumer, now: float) -> None:
        """Set the consumer's next fetches (the one already on its way keeps its own, hence the early trigger)."""
        set_fetch_pace(consumer, *self.wait_and_min_bytes(now))


async def commit_passed_over(consumer: AIOKafkaConsumer) -> None:
    """Commit the offsets of records that needed nothing written. A commit the broker refuses (the group
    rebalancing meanwhile, say) is not the sink's failure: those records are read again, and need nothing."""
    try:
        await consumer.commit()
    except KafkaError as exc:
        log.info("catalog_sink_commit_deferred", error=repr(exc))


class CatalogSink:
    """setup / write(batch) / close, as a small sink class (STYLE.md §8)."""

    def __init__(self, settings: Settings, topics: Topics, bootstrap: str) -> None:
        self.settings = settings
        self.topics = topics
        self.bootstrap = bootstrap
        self.ready = asyncio.Event()
        self.pace = FetchPace(settings)
        #: The catalog while :meth:`run` has it open; used only on ``_thread``.
        self._catalog: Catalog | None = None
        # SQLite work off the event loop (this process also serves HTTP uploads), one call at a time
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog")

    async def _on_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def apply_now(self, events: list[Event], timeout: float) -> bool:
        """Write ``events`` (outcomes on their way to ``assets``, or there) into the catalog now, ahead of the sink.
        False when they were not all written within ``timeout`` seconds (the write goes on meanwhile): the sink
        is not running, the catalog refused one (the others go in), or the sink's thread is busy or stuck on the
        disk. They come the usual way then (held, if need be): nothing is lost, and the caller goes on.

        The commit does not wait for the disk: the sink reads these events from ``assets`` (or their records'
        redos) and applies them again, synced, before it commits their offsets (see :meth:`Catalog.apply`), so the
        caller is answered a sync sooner (measured under an import: 1.7 ms at p50, 7.7 ms at p99, for the whole
        call)."""

        def apply() -> bool:
            catalog = self._catalog
            if catalog is None:
                return False
            _touched, refused = _apply(catalog, events, durable=False)
            return not refused

        try:
            return await asyncio.wait_for(asyncio.shield(self._on_thread(apply)), timeout)
        except TimeoutError:
            log.warning("catalog_apply_now_late", events=len(events), timeout_s=timeout)
            return False
        except Exception as exc:  # noqa: BLE001 — the sink's own reading of the events decides what becomes of them
            log.warning("catalog_apply_now_failed", events=len(events), error=repr(exc))
            return False

    def write(self, catalog: Catalog, events: list[Event],
              unreadable: Sequence[tuple[bytes, BaseException]] = ()) -> list[ProgressEvent]:
        """Apply a batch of decoded events and hold the ``unreadable`` records; return the progress of every batch
        the events touched."""
        for value, exc in unreadable:
            catalog.hold_unreadable(value, exc)
        touched, refused = _apply(catalog, events)
        for event, exc in refused:
            catalog.hold(event, exc)
            log.error("catalog_event_held", event_type=type(event).__name__,
                      batch_id=getattr(event, "batch_id", None), event_id=getattr(event, "event_id", None),
                      error=repr(exc))
        return self._progress(catalog, touched)

    def release_held(self, catalog: Catalog) -> list[ProgressEvent]:
        """Try the events the catalog held back again; those that go in now are released. Returns the progress
        of every batch they touched."""
        held: dict[int, str] = {}  # id(event) -> its key
        events: list[Event] = []
        for key, value in catalog.held():
            try:
                event = decode(value)
            except SchemaError as exc:  # held by a version whose events this one cannot read: kept
                log.warning("catalog_event_still_held", key=key, error=repr(exc))
                continue
            held[id(event)] = key
            events.append(event)
        if not events:
            return []
        try:
            touched, refused = _apply(catalog, events)
        except Exception as exc:  # noqa: BLE001 — whatever it is, they stay held; the sink goes on consuming
            log.error("catalog_held_retry_failed", held=len(events), error=repr(exc))
            return []
        for event, exc in refused:
            log.warning("catalog_event_still_held", key=held[id(event)], error=repr(exc))
        kept = {id(event) for event, _ in refused}
        released = [held[id(event)] for event in events if id(event) not in kept]
        catalog.release(released)
        log.info("catalog_events_released", released=len(released), still_held=len(kept))
        return self._progress(catalog, touched)

    @staticmethod
    def _progress(catalog: Catalog, touched: set[str]) -> list[ProgressEvent]:
        out = []
        for batch_id in sorted(touched):
            for tier in REPORTED_TIERS:
                progress = catalog.progress(batch_id, tier)
                if progress is not None:
                    out.append(progress)
        return out

    async def run(self) -> None:
        """Consume until cancelled."""
        consumer = group_consumer(self.settings, self.bootstrap, f"{self.settings.group_id}-catalog",
                                  self.topics.assets, self.topics.progress)
        catalog = Catalog(self.settings.catalog_path)
        self._catalog = catalog
        try:
            await consumer.start()
            async with producer(self.bootstrap, compression=self.settings.compression_type) as prod:

                async def report(progress: list[ProgressEvent]) -> None:
                    sent = [await prod.send(self.topics.progress, encode(p), key=p.batch_id.encode())
                            for p in progress]
                    await asyncio.gather(*sent)  # raises if the broker did not take one: then nothing is committed

                self.ready.set()
                await report(await self._on_thread(self.release_held, catalog))
                passed_over = False  # records read since the last commit that needed nothing written
                while True:
                    self.pace.apply(consumer, time.monotonic())
                    batches = await consumer.getmany(timeout_ms=200, max_records=1000)
                    if not batches:
                        if passed_over:  # a quiet moment: their offsets too (read again, they cost nothing)
                            passed_over = False
                            await commit_passed_over(consumer)
                        continue
                    events, unreadable = self.read_records([r for records in batches.values() for r in records])
                    if not events and not unreadable:
                        # nothing the catalog applies (the progress events this sink publishes come back to it
                        # on ``progress``, one fetch after each write): no write, and the commit waits for the next
                        # one, or a quiet moment. Committed each time, they were half the sink's commits.
                        passed_over = True
                        continue
                    progress = await self._on_thread(self.write, catalog, events, unreadable)
                    self.pace.after_write(progress, time.monotonic())
                    await report(progress)
                    await consumer.commit()
                    passed_over = False
        except KafkaError as exc:
            log.error("catalog_sink_failed", error=repr(exc))
            raise
        finally:
            self.ready.clear()
            self._catalog = None
            self._thread.submit(catalog.close)  # after whatever the thread is doing with it
            await consumer.stop()

    @staticmethod
    def read_records(records) -> tuple[list[Event], list[tuple[bytes, BaseException]]]:
        """The events the catalog applies, and the records no event could be read from (with why).

        An unreadable record is held, not dropped: its producer may have published something it cannot read
        back (a tier that succeeded leaves no dead letter behind), or be a newer version."""
        events: list[Event] = []
        unreadable: list[tuple[bytes, BaseException]] = []
        for rec in records:
            try:
                event = decode(rec.value)
            except SchemaError as exc:
                kind = claimed(rec.value).get("type")  # a newer version's progress tick, say
                if kind is not None and kind not in _APPLIED_NAMES:  # what the catalog would not apply anyway
                    log.warning("catalog_record_skipped", topic=rec.topic, offset=rec.offset, type=kind,
                                error=str(exc))
                    continue
                log.error("catalog_record_unreadable", topic=rec.topic, offset=rec.offset, error=str(exc))
                if rec.value:  # an empty record holds nothing to keep
                    unreadable.append((bytes(rec.value), exc))
                continue
            if isinstance(event, _APPLIED):
                events.append(event)
        return events, unreadable

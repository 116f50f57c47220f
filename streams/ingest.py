"""What ``damflow ingest`` and ``damflow upload`` do, as functions the CLI, tests and benchmarks share."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumers.progress import FollowPace, ProgressBar, follow
from schemas import AssetBrowsable, AssetFailed, ProgressEvent, decode, new_id, now
from streams.errors import BrokerError, DamflowError, SchemaError, WaitTimedOut
from streams.express import ExpressClient, ExpressRequest
from streams.kafka import producer, tail
from streams.logs import get
from streams.scanner import CLOSE_PATIENCE_S, printable, scan
from streams.settings import Settings
from streams.topics import Topics
from streams.upload import close_batch, display_name, publish_upload, store_original, upload_event

log = get(__name__)


@dataclass
class IngestResult:
    batch_id: str
    root: str
    found: int
    skipped_unchanged: int
    skipped_other: int
    progress: ProgressEvent | None = None
    #: When the ingest started (epoch seconds) and how long it took: until everything found was published,
    #: or with ``wait`` until the awaited tier finished.
    started_at: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


async def ingest_folder(
    settings: Settings, topics: Topics, bootstrap: str, folder: Path, *, wait: bool = False,
    lane: str = "batch", timeout: float | None = None, bar: ProgressBar | None = None,
    batch_id: str | None = None, tier: int = 1,
) -> IngestResult:
    """Scan ``folder`` as one batch; with ``wait``, follow its progress events until ``tier`` is finished
    (1: browsable, 2: searchable, 3: enriched).

    The scan and the wait run side by side, so ``timeout`` holds while the scan is still walking (backpressure
    stops it for as long as no worker takes the lane's backlog). A wait that ends first (its ``timeout``, a
    broker gone) stops the scan, which closes the batch with the files published so far (see
    :func:`streams.scanner.scan`), and raises :class:`WaitTimedOut` for a timeout, saying which it was."""
    batch_id = batch_id or new_id()
    started, t0 = time.time(), time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        follower = None
        if wait:  # position on `progress` before publishing, so no event of this batch can be missed
            watcher = await stack.enter_async_context(
                tail(bootstrap, topics.progress, settings, fetch_max_wait_ms=settings.sink_fetch_max_wait_ms)
            )
            pace = FollowPace(settings.sink_fetch_max_wait_ms, settings.sink_prompt_fetch_max_wait_ms,
                              settings.sink_prompt_eta_s)
            follower = asyncio.create_task(follow(watcher, batch_id, tier=tier, bar=bar, timeout=timeout,
                                                  pace=pace))
        prod = await stack.enter_async_context(producer(bootstrap, linger_ms=5, compression=settings.compression_type))
        scanning = asyncio.create_task(scan(settings, topics, bootstrap, prod, folder, lane=lane,
                                            batch_id=batch_id))
        tasks = {scanning, follower} - {None}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if follower is not None and follower.done() and follower.exception() is not None \
                    and not scanning.done():  # the wait is over, so is the scan: its batch closed with what it sent
                scanning.cancel()
                await asyncio.wait({scanning})
                error = follower.exception()
                if isinstance(error, TimeoutError):
                    raise WaitTimedOut(f"timed out waiting for batch {batch_id} while its folder was still being "
                                       "scanned: the scan stopped there and the batch was closed with the files "
                                       "published so far, which go on (follow them with `damflow status` or GET "
                                       f"/progress?batch={batch_id}); ingest the folder again for the rest",
                                       scan_stopped=True) from error
                raise error
            result = await scanning  # its error first: a scan that failed is why the wait cannot end
            try:
                last = await follower if follower else None
            except TimeoutError as exc:
                raise WaitTimedOut(f"timed out waiting for batch {batch_id}, which goes on (follow it with "
                                   f"`damflow status` or GET /progress?batch={batch_id})") from exc
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)  # a cancelled scan closes its batch while the producer is still open
    return IngestResult(result.batch_id, result.root, result.found, result.skipped_unchanged,
                        result.skipped_other, last, started_at=started,
                        seconds=round(time.perf_counter() - t0, 3))


@dataclass
class UploadResult:
    file: str
    asset_id: str
    event_id: str
    #: published, browsable, failed (tier 1 failed it), pending (no outcome within the timeout), rejected (the
    #: file was refused: ``reason``), not_published (the broker failed on it or an earlier file: ``reason``)
    state: str = "published"
    ms_to_browsable: float | None = None
    reason: str | None = None
    #: How the outcome came back: ``express`` (from the worker, see streams.express) or ``assets`` (read there).
    via: str | None = None
    #: The batch of one ``upload`` call (its progress on ``progress``, its row in ``damflow status``).
    batch_id: str = ""


class Outcome(NamedTuple):
    """A final tier-1 outcome for a waiting upload, when it was read (``time.perf_counter()``), and how."""

    event: AssetBrowsable | AssetFailed
    read_at: float
    via: str


async def upload_files(
    settings: Settings, topics: Topics, bootstrap: str, files: list[Path], *, wait: bool = False,
    timeout: float = 60.0,
) -> list[UploadResult]:
    """Store each file content-addressed and publish it on the interactive lane, one after the other;
    with ``wait``, each returns once its asset is browsable (or failed), timed from the publish.

    A broker that fails part-way ends the publishing, not the report: the file it did not take and the files
    after it get a ``not_published`` row saying why (the ones before keep theirs), and the batch is still
    closed with the files published, if the broker takes that (within ``CLOSE_PATIENCE_S``)."""
    batch_id, opened = f"upload-{new_id()}", now()
    out: list[UploadResult] = []
    broken: str | None = None  # why the broker took no more
    async with contextlib.AsyncExitStack() as stack:
        watcher = None
        if wait:
            watcher = OutcomeWatcher(await stack.enter_async_context(
                tail(bootstrap, topics.assets, settings, fetch_max_wait_ms=settings.waiter_fetch_max_wait_ms)),
                express_patience_s=settings.express_patience_s)
            reader = asyncio.create_task(watcher.run())
            stack.callback(reader.cancel)
        prod = await stack.enter_async_context(producer(bootstrap, compression=settings.compression_type))
        express = ExpressClient(settings) if settings.express else None
        for src in files:
            if broken is not None:
                out.append(UploadResult(str(src), "", "", state="not_published", batch_id=batch_id,
                                        reason=f"not tried: the broker failed on an earlier file ({broken})"))
                continue
            try:
                stored = await asyncio.to_thread(store_original, settings, src)  # a copy and a sync to disk
            except DamflowError as exc:  # not an image, gone, unreadable: this file is refused, not the rest
                out.append(UploadResult(str(src), "", "", state="rejected", reason=str(exc), batch_id=batch_id))
                continue
            event = upload_event(stored, batch_id=batch_id, display_name=display_name(src.name))
            # registered before publishing: none missed
            outcome = await watcher.expect(event.event_id, wake=express is None) if watcher else None
            t0 = time.perf_counter()
            try:
                record = await publish_upload(prod, topics, event)
            except (KafkaError, BrokerError) as exc:  # its original is stored: sending it again costs no copy
                broken = repr(exc)
                log.warning("upload_not_published", batch_id=batch_id, path=printable(str(src)), error=broken)
                if watcher is not None:
                    watcher.forget(event.event_id)
                out.append(UploadResult(str(src), stored.asset_id, "", state="not_published", batch_id=batch_id,
                                        reason=f"the broker did not take it: {broken}"))
                continue
            await follow_published(express, watcher, record, event.event_id, timeout)
            row = UploadResult(str(src), stored.asset_id, event.event_id, batch_id=batch_id)
            if outcome is not None:
                try:
                    result, read_at, row.via = await asyncio.wait_for(outcome, timeout)
                except TimeoutError:  # published, its outcome still to come: reported as such, as over HTTP
                    row.state = "pending"
                    watcher.forget(event.event_id)  # type: ignore[union-attr]
                else:
                    row.ms_to_browsable = round((read_at - t0) * 1000, 1)
                    row.state = "browsable" if isinstance(result, AssetBrowsable) else "failed"
                    row.reason = result.reason if isinstance(result, AssetFailed) else None
            out.append(row)
        published = sum(1 for row in out if row.event_id)
        if published:  # the batch is complete: its progress can finish
            try:
                async with asyncio.timeout(CLOSE_PATIENCE_S):
                    await (await close_batch(prod, topics, batch_id, published, opened))
            except (KafkaError, BrokerError, TimeoutError) as exc:  # its files are published all the same
                log.warning("upload_batch_unclosed", batch_id=batch_id, published=published, error=repr(exc))
    return out


async def follow_published(express: ExpressClient | None, watcher: OutcomeWatcher | None,
                           request: ExpressRequest, event_id: str, timeout: float) -> None:
    """After an upload is published, by express: its outcome for the ``watcher`` (which registered ``event_id``
    before the publish) when somebody waits, else the record handed to its worker all the same, so the work
    starts now rather than at the worker's next fetch."""
    if express is None:
        return
    if watcher is not None:
        watcher.ask_express(express, request, event_id, timeout)
    else:
        await express.hand_over(request)


def final_outcome(event: object) -> bool:
    """A tier-1 result that will not change any more: browsable, or failed without a retry to come."""
    return isinstance(event, AssetBrowsable) or (
        isinstance(event, AssetFailed) and event.tier == 1 and event.outcome != "retrying")


class _Waiter(NamedTuple):
    future: asyncio.Future
    #: When it registered (epoch ms): its outcome cannot be stamped much earlier.
    since_ms: int


class OutcomeWatcher:
    """One long-lived reader of ``assets`` that hands each final tier-1 outcome to whoever waits for it.

    Register with :meth:`expect` *before* publishing the event, so nothing published afterwards can be missed —
    and no consumer has to be set up per upload. While nobody waits, the reader's partitions are paused: a
    reader that must answer within milliseconds polls the broker often, and during an import that polling
    would take CPU from the work. The first :meth:`expect` after a quiet spell (or, for an upload that asked
    its worker by express, the failed ask) resumes the reader where it stopped — the events published meanwhile
    are skimmed (not decoded) while the upload is still being worked on; re-positioning instead would cost
    round trips to the broker, slow when an import floods it — or, after a long spell (``reseek_after_s``), at
    the first record stamped since the oldest waiter registered, less ``clock_skew_s`` (for a worker whose
    clock runs behind): a waiter registers before its upload is published, so nothing stamped earlier can be
    its outcome, and a long backlog would delay the answer.
    """

    def __init__(self, consumer: AIOKafkaConsumer, *, reseek_after_s: float = 30.0,
                 clock_skew_s: float = 5.0, skip_timeout_s: float = 5.0, express_patience_s: float = 1.0) -> None:
        self._consumer = consumer
        self._waiting: dict[str, _Waiter] = {}
        self._waking = asyncio.Lock()
        self._asking: set[asyncio.Task] = set()
        self.reseek_after_s = reseek_after_s
        self.clock_skew_s = clock_skew_s
        self.skip_timeout_s = skip_timeout_s
        self.express_patience_s = express_patience_s
        self._paused_at = time.monotonic()
        self._consumer.pause(*self._consumer.assignment())

    async def expect(self, event_id: str, *, wake: bool = True) -> asyncio.Future:
        """A future for the event's :class:`Outcome`.

        ``wake=False`` registers without resuming the reader: for an upload whose outcome should come by
        express (:meth:`ask_express`), which resumes it only if that fails.
        """
        waiter = self._waiting.get(event_id)
        if waiter is None:
            waiter = self._waiting[event_id] = _Waiter(asyncio.get_running_loop().create_future(),
                                                       int(time.time() * 1000))
            if wake:
                try:
                    await self._wake()
                except BaseException:  # (cancelled) the caller never gets the future: nobody would forget it
                    self._take(event_id)
                    raise
        return waiter.future

    def ask_express(self, express: ExpressClient, request: ExpressRequest, event_id: str, timeout: float) -> None:
        """Ask the worker that owns the published ``request`` for its outcome directly, and settle the future
        :meth:`expect` gave for ``event_id`` with it. Without an answer within ``express_patience_s`` the outcome
        is read from ``assets`` as well, whichever comes first: a worker that froze, or lost the partition to
        another worker, never answers, and the other's outcome was read only once ``timeout`` had passed. Without
        an answer within ``timeout``, or with one not final yet (a retry is coming) or for another record, it is
        read from ``assets`` after all, so nothing is missed: a caller may wait longer than ``timeout`` (for the
        several files of one request)."""

        async def ask() -> None:
            asking = asyncio.ensure_future(express.outcome(request, timeout))
            try:
                if not (await asyncio.wait({asking}, timeout=min(self.express_patience_s, timeout)))[0]:
                    await self._wake()  # a slow answer: both ways now, whichever settles the waiter first
                    waiter = self._waiting.get(event_id)
                    if waiter is None:
                        return
                    await asyncio.wait({asking, waiter.future}, return_when=asyncio.FIRST_COMPLETED)
                    if not asking.done():  # read from assets meanwhile
                        return
                outcome = asking.result()
            except TimeoutError:  # the worker has it and is still at it
                outcome = None
            finally:
                asking.cancel()
            waiter = self._waiting.get(event_id)
            if waiter is None or waiter.future.done():
                return
            fut = waiter.future
            if outcome is not None and final_outcome(outcome) and outcome.event_id == event_id:
                self._take(event_id)
                fut.set_result(Outcome(outcome, time.perf_counter(), "express"))
            else:
                await self._wake()

        task = asyncio.create_task(ask(), name=f"express-{event_id}")
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    def forget(self, event_id: str) -> None:
        self._take(event_id)

    def _take(self, event_id: str) -> asyncio.Future | None:
        waiter = self._waiting.pop(event_id, None)
        return waiter.future if waiter is not None else None

    @property
    def paused(self) -> bool:
        return bool(self._consumer.paused())

    async def _wake(self) -> None:
        """Resume the reader; after a long spell, first skip what no waiter can need (see the class). A broker
        that does not answer the skip within ``skip_timeout_s`` leaves the reader where it stopped: slower,
        nothing missed."""
        async with self._waking:
            paused = list(self._consumer.paused())
            if not paused:
                return
            try:
                if self._waiting and time.monotonic() - self._paused_at > self.reseek_after_s:
                    since = min(w.since_ms for w in self._waiting.values()) - int(self.clock_skew_s * 1000)
                    try:
                        await asyncio.wait_for(self._skip_to(paused, since), self.skip_timeout_s)
                    except (KafkaError, OSError, TimeoutError) as exc:
                        log.warning("outcome_reader_skip_failed", error=repr(exc))
            finally:
                self._consumer.resume(*paused)

    async def _skip_to(self, partitions: list[TopicPartition], since_ms: int) -> None:
        """Move each partition forward to its first record stamped ``since_ms`` or later, or to its end where
        there is none yet. The ends are asked for first: what the time lookup did not find came after them."""
        ends = await self._consumer.end_offsets(partitions)
        found = await self._consumer.offsets_for_times({tp: since_ms for tp in partitions})
        for tp in partitions:
            hit = found.get(tp)
            # none found: Kafka answers None, the embedded broker offset 0 with timestamp -1
            target = hit.offset if hit is not None and hit.timestamp >= since_ms else ends[tp]
            if target > await self._consumer.position(tp):
                self._consumer.seek(tp, target)

    async def run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=500)
            # skim other uploads' events without decoding them: after a quiet spell the reader goes through
            # everything published meanwhile (event ids are random hex, so a miss is certain; an id answered
            # meanwhile only costs a decode)
            needles = [e.encode() for e in self._waiting] if len(self._waiting) <= 8 else None
            for records in batches.values():
                for rec in records:
                    if not self._waiting:
                        break
                    value = rec.value or b""
                    if needles is not None and not any(n in value for n in needles):
                        continue
                    try:
                        event = decode(value)
                    except SchemaError:
                        continue
                    if final_outcome(event):
                        fut = self._take(event.event_id)
                        if fut is not None and not fut.done():
                            fut.set_result(Outcome(event, time.perf_counter(), "assets"))
            if not self._waiting and not self._waking.locked() and not self._consumer.paused():
                self._consumer.pause(*self._consumer.assignment())
                self._paused_at = time.monotonic()

"""Tier 1 — make an asset browsable: BLAKE3 content hash + thumbnails, in the CPU pool.

One agent per lane on its own topic, each with its own bounded concurrency and its own CPU pool, under the lane
governor (:mod:`agents.lanes`): interactive work is never queued behind the batch lane's files. The work itself is
the pure function :func:`agents.browse.browse_file`; this module only schedules it and publishes what it found:
``AssetBrowsable`` on ``assets`` (for the catalog) and on ``t2.<lane>`` (work for tier 2).
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict

import faust

from agents.browse import browse_file
from agents.handling import EventHandler, Work
from agents.lanes import LaneGovernor, LanePools, lane_agent, level_of
from schemas import AssetBrowsable, FileDiscovered, encode, now
from streams.errors import CorruptImage, SourceInFlux
from streams.express import (
    ExpressEvent, ExpressRequest, ExpressServer, OnceLedger, answer_early, tell_early, told_early,
)
from streams.logs import get
from streams.settings import Settings
from streams.topics import LANES, Topics

log = get(__name__)


#: How long a stopping worker lets the results of records already answered by express reach the broker.
_FINISH_ON_STOP_S = 5.0
#: How many outcomes told by express but not published a worker keeps for their records' redos.
_UNPUBLISHED_KEPT = 1000


def _changed_since_found(record: FileDiscovered) -> bool:
    """Whether the file is not as the scan found it (size, modification time): a file being written by a writer
    that pauses between writes (a slow copy, a download) held still while tier 1 read it, and the part written so
    far was dead-lettered as a corrupt image. Asked of a first attempt only: a corrupt file changed since its
    scan is a corrupt image on the next."""
    try:
        st = os.stat(record.path)
    except OSError:
        return False  # gone or unreadable: the decode's own failure says so
    return record.mtime_ns != 0 and (st.st_size, st.st_mtime_ns) != (record.size, record.mtime_ns)


def register(app: faust.App, settings: Settings, topics: Topics, pools: LanePools, governor: LaneGovernor) -> None:
    """Attach the tier-1 agents (one per lane) to ``app``."""
    handler = EventHandler(app, topics, settings, tier=1)
    tier2 = {lane: app.topic(topics.tier2(lane)) for lane in LANES}
    data_dir = str(settings.data_path)

    # Outcomes an express run told its caller but could not publish (the broker refused them), by event id. The
    # record's redo publishes the outcome told rather than working the file again: what is published is what the
    # caller was told, and the pool is spared. (Working it again would find the thumbnails made for this event:
    # no duplicate, where the file system keeps the maker's note; see agents.browse.)
    unpublished: OrderedDict[str, AssetBrowsable] = OrderedDict()

    async def browse(record: FileDiscovered, attempt: int) -> AssetBrowsable:
        # kept until published: the redo's own send may be refused too (the broker still away), and the next redo
        # must still publish what the caller was told
        told = unpublished.get(record.event_id)
        if told is not None and told.path == record.path:
            browsable = told
        else:
            told = None
            try:
                result = await pools.for_lane(record.lane).run(
                    browse_file, record.path, data_dir,
                    sizes=settings.thumbnail_sizes, quality=settings.thumbnail_quality,
                    max_pixels=settings.max_image_pixels, max_file_bytes=settings.max_file_bytes,
                    faults=settings.fault_injection, event_id=record.event_id, reads=record.path,
                    read_bytes=record.size, level=level_of(1, record.lane), tier=1,
                )
            except CorruptImage as exc:
                if attempt == 1 and _changed_since_found(record):
                    raise SourceInFlux("the file does not decode, and it changed since it was found (still being "
                                       "written?): it is read again later", path=record.path) from exc
                raise
            browsable = AssetBrowsable(
                event_id=record.event_id, batch_id=record.batch_id, lane=record.lane, source=record.source,
                # the size and modification time of what was read: a file changed since it was scanned (fixed,
                # then replayed) kept the scan's mtime, and every later ingest sent it again as changed
                asset_id=result.asset_id, path=record.path, size=result.size,
                mtime_ns=record.mtime_ns if result.mtime_ns is None else result.mtime_ns,
                format=result.format, width=result.width, height=result.height,
                # a retry may find the thumbnails its own earlier attempt made: no duplicate of anything else, and
                # tier 3 would skip it as one; enriching a true duplicate once more costs only the work. (A first
                # attempt finding them made for this event, by a worker that died before publishing, is not one
                # either: browse_file tells by the maker's mark.)
                thumbnails=dict(result.thumbnails), deduplicated=result.deduplicated and attempt == 1,
                discovered_at=record.discovered_at, browsable_at=now(), work_ms=result.work_ms,
                display_name=record.display_name, attempts=attempt,
            )
            tell_early(browsable)  # an upload's caller is answered now: its results follow (see _serve_express)
        lane = record.lane if record.lane in tier2 else "batch"
        try:
            await handler.emit(browsable, browsable.asset_id, tier2[lane])
        except Exception:
            if told_early():  # the redo publishes what the caller was told
                unpublished[record.event_id] = browsable
                while len(unpublished) > _UNPUBLISHED_KEPT:
                    unpublished.popitem(last=False)
            raise
        if told is not None:
            unpublished.pop(record.event_id, None)
        log.debug("browsable", asset_id=browsable.asset_id, work_ms=round(browsable.work_ms, 1))
        return browsable

    # an urgent upload's record may also come by express (streams.express): one ledger runs it once
    once = OnceLedger() if settings.express else None
    lanes = {
        "interactive": (topics.t1_interactive, settings.tier1_interactive_concurrency, None, once),
        "batch": (topics.t1_batch, settings.batch_concurrency, settings.batch_buffer, None),
    }
    for lane, (topic_name, concurrency, buffer, ledger) in lanes.items():
        topic = app.topic(topic_name, partitions=settings.partitions, maxsize=buffer)
        app.agent(topic, name=f"tier1-{lane}", concurrency=concurrency)(
            lane_agent(handler, governor, lane, browse, once=ledger))
    if once is not None:
        _serve_express(app, settings, topics, governor, handler, browse, once)


def _serve_express(app: faust.App, settings: Settings, topics: Topics, governor: LaneGovernor,
                   handler: EventHandler, browse: Work, once: OnceLedger) -> ExpressServer:
    """Take urgent uploads' records by express too, for the ``t1.interactive`` partitions this worker owns.

    A browsable record is answered as soon as its thumbnails are made, while its results are still on their way to
    the broker (an import's results are ahead of them there: about 4 ms at p50, measured under an import). The
    caller writes the catalog row itself, and the results stay the fetched copy's concern: its offset commits only
    once they are acked (the ledger's outcome), and should publishing them fail, that copy publishes them (see
    ``unpublished`` in :func:`register`; :func:`streams.express.answer_early`). A failed record is answered once
    its failure is recorded, as before."""
    finishing: set[asyncio.Task] = set()  # records answered whose results are still being published

    async def work(request: ExpressRequest) -> object:
        with governor.working(1, "interactive"):
            return await once.run(request.identity, lambda: handler.process(ExpressEvent.of(request), browse))

    async def serve(request: ExpressRequest) -> bytes | None:
        outcome = await answer_early(lambda: work(request), finishing)
        return encode(outcome) if outcome is not None else None

    server = ExpressServer(settings, topics.t1_interactive, serve,
                           concurrency=settings.tier1_interactive_concurrency)

    def announce() -> None:
        server.publish({tp.partition for tp in app.consumer.assignment() if tp.topic == topics.t1_interactive})

    @app.task
    async def _start_express() -> None:
        await server.start()
        announce()

    @app.on_partitions_revoked.connect
    async def _revoked(sender, revoked, **_kw) -> None:  # noqa: ARG001
        server.publish(set())  # until the new assignment is known, ring nobody here

    @app.on_partitions_assigned.connect
    async def _assigned(sender, assigned, **_kw) -> None:  # noqa: ARG001
        announce()

    @app.on_before_shutdown.connect
    async def _stop_express(sender, **_kw) -> None:  # noqa: ARG001
        await server.stop()  # records in work by express are dropped: their fetched copies stay uncommitted
        if finishing:  # answered records' results are a few acks from the broker: let them get there
            await asyncio.wait(set(finishing), timeout=_FINISH_ON_STOP_S)
        for task in list(finishing):  # those still not there are dropped too: their fetched copies redo them
            task.cancel()

    app.express = server  # type: ignore[attr-defined]  # the worker removes its registration on the way out
    return server

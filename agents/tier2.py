"""Tier 2 — make an asset searchable: read and normalise its metadata, in the CPU pool.

Consumes the ``AssetBrowsable`` events tier 1 sends to ``t2.<lane>`` (one agent per lane, interactive first, as in
tier 1), runs :func:`agents.index.index_file`, and publishes ``AssetIndexed`` on ``assets`` (for the catalog and
its full-text index) and, when the cost gate lets it through, on ``t3.background`` (work for tier 3); when the
gate keeps it out, an ``AssetEnriched`` saying why (``skipped``) settles its tier 3 right away.
"""

from __future__ import annotations

import faust

from agents.handling import EventHandler
from agents.index import index_file
from agents.metadata.model import PARSER_VERSION
from agents.lanes import LaneGovernor, LanePools, lane_agent, level_of
from agents.quality import remembered_scores
from schemas import AssetBrowsable, AssetEnriched, AssetIndexed, now
from streams.logs import get
from streams.settings import Settings
from streams.topics import Topics

log = get(__name__)


def cost_gate(settings: Settings, record: AssetBrowsable) -> str | None:
    """Why tier 3's background work is not worth spending on this asset, or ``None`` when it is."""
    if not settings.tier3_enabled:
        return "disabled"
    if settings.tier3_skip_duplicates and record.deduplicated:
        return "duplicate"
    if record.width * record.height < settings.tier3_min_pixels:
        return "small"
    return None


def register(app: faust.App, settings: Settings, topics: Topics, pools: LanePools, governor: LaneGovernor) -> None:
    """Attach the tier-2 agents (one per lane) to ``app``."""
    handler = EventHandler(app, topics, settings, tier=2, expected=AssetBrowsable)
    tier3 = app.topic(topics.t3_background)
    data_dir, thumbs_dir = str(settings.data_path), str(settings.thumbs_dir)

    async def index(record: AssetBrowsable, attempt: int) -> None:
        seen = (record.size, record.mtime_ns) if record.mtime_ns else None  # 0: not known
        result = await pools.for_lane(record.lane).run(index_file, record.path, record.asset_id, data_dir, seen,
                                                        reads=record.path, read_bytes=record.size,
                                                        level=level_of(2, record.lane), tier=2)
        indexed = AssetIndexed(
            event_id=record.event_id, batch_id=record.batch_id, lane=record.lane, source=record.source,
            asset_id=record.asset_id, path=record.path, parser_version=PARSER_VERSION,
            metadata_path=result.metadata_path, indexed_at=now(), attempts=attempt, **result.summary,
        )
        skipped = cost_gate(settings, record)
        await handler.emit(indexed, record.asset_id, *([] if skipped else [tier3]))
        if skipped:
            # a duplicate's content was scored before: its scores go with it, for a catalog whose copy of them was
            # lost with a broker (tier 3 done, its result never read)
            scores = remembered_scores(thumbs_dir, record.asset_id) if skipped == "duplicate" else None
            await handler.emit(AssetEnriched(
                event_id=record.event_id, batch_id=record.batch_id, lane=record.lane, source=record.source,
                asset_id=record.asset_id, path=record.path, enriched_at=now(), skipped=skipped,
                quality=scores or {},
            ), record.asset_id)
        log.debug("indexed", asset_id=record.asset_id, generator=indexed.generator, work_ms=round(result.work_ms, 1))

    lanes = {
        "interactive": (settings.tier2_interactive_concurrency, None),
        "batch": (settings.tier2_batch_concurrency, settings.batch_buffer),
    }
    for lane, (concurrency, buffer) in lanes.items():
        topic = app.topic(topics.tier2(lane), partitions=settings.partitions, maxsize=buffer)
        app.agent(topic, name=f"tier2-{lane}", concurrency=concurrency)(lane_agent(handler, governor, lane, index))

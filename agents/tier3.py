"""Tier 3 — background enrichment: runs only while tiers 1 and 2 have nothing waiting (see :mod:`agents.lanes`).

Consumes the ``AssetIndexed`` events the cost gate let through to ``t3.background`` and publishes
``AssetEnriched`` on ``assets``. Today it computes quality scores (:mod:`agents.quality`); embeddings and
creative-session clustering join here.
"""

from __future__ import annotations

import faust

from agents.handling import EventHandler
from agents.lanes import LaneGovernor, LanePools, lane_agent, level_of
from agents.quality import quality_scores, remember_scores
from schemas import AssetEnriched, AssetIndexed, now
from streams.settings import Settings
from streams.topics import Topics


def register(app: faust.App, settings: Settings, topics: Topics, pools: LanePools, governor: LaneGovernor) -> None:
    handler = EventHandler(app, topics, settings, tier=3, expected=AssetIndexed)
    thumbs_dir = str(settings.thumbs_dir)

    async def enrich(record: AssetIndexed, attempt: int) -> None:
        # the source and how tier 1 made the thumbnail: it is made again if it was lost or damaged since
        quality = await pools.background.run(
            quality_scores, thumbs_dir, record.asset_id, source=record.path, sizes=settings.thumbnail_sizes,
            quality=settings.thumbnail_quality, max_pixels=settings.max_image_pixels,
            level=level_of(3, "background"))  # after any tier-1 or tier-2 calls waiting for the batch pool
        remember_scores(thumbs_dir, record.asset_id, quality)  # what tells a later copy's tier 1 it is a duplicate
        await handler.emit(AssetEnriched(
            event_id=record.event_id, batch_id=record.batch_id, lane=record.lane, source=record.source,
            asset_id=record.asset_id, path=record.path, quality=quality, enriched_at=now(), attempts=attempt,
        ), record.asset_id)

    topic = app.topic(topics.t3_background, partitions=settings.partitions, maxsize=settings.batch_buffer)
    app.agent(topic, name="tier3-background", concurrency=settings.tier3_batch_concurrency)(
        lane_agent(handler, governor, "background", enrich))

"""Versioned re-parse: send assets indexed by an older tier-2 parser through tier 2 again, without tier 1.

Each asset gets an ``AssetBrowsable`` on ``t2.batch`` rebuilt from the catalog (its thumbnails already exist),
in a batch of its own with ``source="reprocess"``, so progress and the catalog count it like any tier-2 work.
"""

from __future__ import annotations

from schemas import AssetBrowsable, encode, new_id, now
from streams.kafka import check_delivered, producer
from streams.settings import Settings
from streams.topics import Topics
from streams.upload import close_batch


async def reprocess_tier2(settings: Settings, topics: Topics, bootstrap: str, rows: list[dict]) -> dict:
    batch_id, started = f"reprocess-{new_id()}", now()
    sent = []
    async with producer(bootstrap, linger_ms=5, compression=settings.compression_type) as prod:
        for row in rows:
            at = now()
            event = AssetBrowsable(
                event_id=new_id(), batch_id=batch_id, lane="batch", source="reprocess", asset_id=row["asset_id"],
                path=row["path"], size=row.get("size") or 0, mtime_ns=row.get("mtime_ns") or 0,
                format=row.get("format") or "", width=row.get("width") or 0, height=row.get("height") or 0,
                thumbnails={}, deduplicated=True, discovered_at=at, browsable_at=at,
            )
            sent.append(await prod.send(topics.t2_batch, encode(event), key=row["asset_id"].encode()))
        await prod.flush()
        await check_delivered(sent, "assets sent to tier 2")
        # a batch that enters at tier 2, complete: its progress finishes (tier 1 has nothing of it)
        await (await close_batch(prod, topics, batch_id, len(rows), started, lane="batch", first_tier=2))
    return {"batch_id": batch_id, "published": len(rows)}

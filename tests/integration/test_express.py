"""Express delivery on the real pipeline: an upload's outcome comes straight from its worker, the work runs once
though the record also arrives by the broker, failures are recorded once, and without a worker to ring the
outcome still comes, read from ``assets``."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiokafka import TopicPartition

from schemas import AssetBrowsable, AssetFailed, decode
from streams.express import registry_dir
from streams.kafka import LagProbe, tail
from streams.supervisor import Stack
from tests.images import make_png, write_truncated
from tests.integration.test_http import http_app

pytestmark = pytest.mark.integration


async def upload(http: aiohttp.ClientSession, url: str, body: bytes) -> dict:
    async with http.post(f"{url}/upload", params={"wait": "1", "timeout": "45"}, data=body,
                         headers={"Content-Type": "image/png"}) as resp:
        [row] = (await resp.json())["uploads"]
        return row


async def settled(stack: Stack, timeout: float = 60.0) -> None:
    """Every record on ``t1.interactive`` consumed and committed by the workers: the fetched copies too."""
    async with LagProbe(stack.bootstrap, stack.settings.group_id, stack.topics.t1_interactive) as probe:
        deadline = time.monotonic() + timeout
        while (lag := await probe.lag()) > 0:
            assert time.monotonic() < deadline, f"t1.interactive lag stayed at {lag}"
            await asyncio.sleep(0.05)  # the workers commit every half second


async def everything_on(stack: Stack, topic: str) -> list[object]:
    """Every event on ``topic`` so far, read from the beginning up to the end offsets of now."""
    async with tail(stack.bootstrap, topic, stack.settings, from_beginning=True) as consumer:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(tps)
        events = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                events += [decode(r.value) for r in records]
        return events


async def test_uploads_come_back_by_express_and_are_worked_on_once(stack: Stack, tmp_path: Path) -> None:
    registrations = list(registry_dir(stack.settings).glob("*.json"))
    assert len(registrations) == 1  # the worker announced the interactive partitions it owns
    bodies = [make_png(tmp_path / f"u{i}.png", size=(320, 200), seed=40 + i).read_bytes() for i in range(4)]
    bad = write_truncated(tmp_path / "bad.png", make_png(tmp_path / "whole.png", size=(640, 480), seed=49))
    async with aiohttp.ClientSession() as http:
        rows = [await upload(http, stack.http_url, body) for body in bodies]
        broken = await upload(http, stack.http_url, bad.read_bytes())
        # an upload that does not wait is handed over all the same (and answered with 202 at once)
        async with http.post(f"{stack.http_url}/upload", data=make_png(tmp_path / "n.png", size=(320, 200),
                             seed=48).read_bytes(), headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 202
            [unwaited] = (await resp.json())["uploads"]
    assert [(r["state"], r["via"]) for r in rows] == [("browsable", "express")] * 4
    assert all(r["ms_to_browsable"] > 0 for r in rows)
    for r in rows:  # where the time went, for the client to see
        t = r["timing"]
        assert t["received_at"] <= t["discovered_at"] <= t["published_at"] <= t["browsable_at"]
        assert 0 < t["work_ms"] <= r["ms_to_browsable"]
    # a file that cannot be decoded: its failure comes back the same way, recorded as for any file
    assert (broken["state"], broken["via"]) == ("failed", "express") and broken["reason"]

    await settled(stack)  # the broker's copies were fetched too, and committed
    outcomes = Counter(e.event_id for e in await everything_on(stack, stack.topics.assets)
                       if isinstance(e, AssetBrowsable) or (isinstance(e, AssetFailed) and e.tier == 1))
    for row in [*rows, broken, unwaited]:
        assert outcomes[row["event_id"]] == 1, row  # one piece of work per upload, not one per copy
    letters = await everything_on(stack, stack.topics.dlq(1))
    assert len(letters) == 1 and letters[0].file_path.endswith(".png")


async def test_without_a_worker_to_ring_the_outcome_is_read_from_assets(make_settings, tmp_path: Path) -> None:
    # workers that do not take express records (another host, an older version): nobody registers
    async with Stack(make_settings(express=False)) as stack:
        assert not list(registry_dir(stack.settings).glob("*.json"))
        body = make_png(tmp_path / "u.png", size=(320, 200), seed=60).read_bytes()
        async with http_app(stack.settings.model_copy(update={"express": True}), stack.topics,
                            stack.bootstrap) as http:
            async with http.post("/upload", params={"wait": "1", "timeout": "45"}, data=body,
                                 headers={"Content-Type": "image/png"}) as resp:
                [row] = (await resp.json())["uploads"]
    assert (row["state"], row["via"]) == ("browsable", "assets")


async def test_upload_wait_reports_every_file_even_when_one_is_refused_and_outcomes_time_out(
    make_settings, tmp_path: Path
) -> None:
    from streams.ingest import upload_files

    files = [make_png(tmp_path / "a.png", size=(32, 32), seed=61), tmp_path / "notes.txt",
             make_png(tmp_path / "b.png", size=(32, 32), seed=62)]
    files[1].write_text("not an image")
    async with Stack(make_settings(), workers=0) as stack:  # nobody works on them: no outcome comes
        rows = await upload_files(stack.settings, stack.topics, stack.bootstrap, files, wait=True, timeout=0.5)
    assert [(r.file, r.state) for r in rows] == [(str(files[0]), "pending"), (str(files[1]), "rejected"),
                                                 (str(files[2]), "pending")]
    assert rows[0].event_id and rows[2].event_id and "not a recognised image" in rows[1].reason

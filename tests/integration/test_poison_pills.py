"""Undecodable messages on the tier-1 topics become dead letters; the worker keeps serving."""

from __future__ import annotations

import base64
import random

import pytest

from schemas import DeadLetter, decode
from consumers.dlq import read_back, read_letters
from streams.ingest import upload_files
from streams.kafka import producer, tail
from streams.supervisor import Stack
from tests.images import make_png

pytestmark = pytest.mark.integration


async def test_random_bytes_go_to_the_dlq_and_the_worker_keeps_running(stack: Stack, tmp_path) -> None:
    rng = random.Random(7)
    pills = [rng.randbytes(rng.randrange(1, 400)) for _ in range(200)]
    pills[0] = b""  # an empty value too
    pills[1] = b'{"type": "FileDiscovered", "schema": 1}'  # valid JSON, invalid event
    async with producer(stack.bootstrap, compression=None, linger_ms=5) as prod:
        for i, pill in enumerate(pills):
            topic = stack.topics.t1_batch if i % 2 else stack.topics.t1_interactive
            await prod.send(topic, pill, key=f"pill-{i}".encode())
        await prod.flush()

    # the worker still serves: a real upload after the pills becomes browsable
    [row] = await upload_files(stack.settings, stack.topics, stack.bootstrap,
                               [make_png(tmp_path / "after.png", size=(64, 64), seed=2)], wait=True, timeout=60)
    assert row.state == "browsable"
    assert all(proc.returncode is None for proc in stack.workers) and stack.worker_restarts == 0

    letters: list[DeadLetter] = []
    async with tail(stack.bootstrap, stack.topics.dlq(1), stack.settings, from_beginning=True) as dlq:
        while len(letters) < len(pills):
            batches = await dlq.getmany(timeout_ms=5000)
            assert batches, f"only {len(letters)} dead letters"
            letters += [decode(r.value, DeadLetter) for rs in batches.values() for r in rs]
    assert len(letters) == len(pills)
    assert {letter.error_class for letter in letters} == {"SchemaError"}
    by_key = {letter.original_key: letter for letter in letters}
    # the original bytes are kept exactly (base64 when not UTF-8), so nothing is lost
    for i, pill in enumerate(pills):
        letter = by_key[f"pill-{i}"]
        raw = base64.b64decode(letter.original_payload) if letter.payload_encoding == "base64" else \
            letter.original_payload.encode()
        assert raw == pill
        assert letter.original_topic in {stack.topics.t1_batch, stack.topics.t1_interactive}
        assert letter.consumer_group == stack.settings.group_id and letter.worker_host


@pytest.mark.parametrize(("key", "pill"), [
    (b"big-pill", b"\x01" * 900_000),  # fits in a message; not in one with its envelope, as text (5.4 MB) or base64
    (b"k" * 200_000, b"\x01" * 780_000),  # the key too would go twice: as the letter's key and in its envelope
])
async def test_a_pill_too_large_to_dead_letter_whole_keeps_its_head_and_is_read_back_whole(
        stack: Stack, key: bytes, pill: bytes) -> None:
    async with producer(stack.bootstrap, compression=None) as prod:
        await (await prod.send(stack.topics.t1_batch, pill, key=key))
    async with tail(stack.bootstrap, stack.topics.dlq(1), stack.settings, from_beginning=True) as dlq:
        letter = None
        while letter is None:
            batches = await dlq.getmany(timeout_ms=10_000)
            assert batches, "the large pill was never dead-lettered"
            letter = next((decode(r.value, DeadLetter) for rs in batches.values() for r in rs
                           if decode(r.value, DeadLetter).original_key == key.decode()[:4096]), None)
    assert letter.payload_truncated and letter.original_size == len(pill)
    assert letter.key_truncated == (len(key) > 4096)
    assert letter.received_topic == stack.topics.t1_batch and letter.error_class == "SchemaError"
    assert pill.startswith(base64.b64decode(letter.original_payload))

    [found] = [x for x in await read_letters(stack.bootstrap, stack.topics, tiers=(1,))
               if x.envelope and x.envelope.original_key == key.decode()[:4096]]
    assert found.original_value()[0] is None  # only part of it is in the letter
    await read_back(stack.bootstrap, [found])
    assert found.original_value() == (pill, "") and found.fetched_key == key


async def test_an_unreadable_record_that_names_its_file_is_counted_so_its_batch_finishes(stack: Stack) -> None:
    # e.g. a newer scanner's schema during an upgrade: dead-lettered, but its file had no outcome, and its
    # batch stayed in flight for ever
    import json
    import time

    from schemas import BatchScanned, encode
    from tests.integration.conftest import catalog_of, wait_until

    newer = {"type": "FileDiscovered", "schema": 99, "event_id": "e-newer", "batch_id": "b-newer",
             "lane": "batch", "source": "scan", "path": "/imports/newer.png", "size": 1, "mtime_ns": 1}
    async with producer(stack.bootstrap, compression=None) as prod:
        await prod.send_and_wait(stack.topics.t1_batch, json.dumps(newer).encode(), key=b"/imports/newer.png")
        await prod.send_and_wait(stack.topics.progress, encode(BatchScanned(
            batch_id="b-newer", lane="batch", root="/imports", found=1, complete=True, started_at=time.time(),
            scanned_at=time.time())), key=b"b-newer")

    def finished():
        with catalog_of(stack.settings) as catalog:
            p = catalog.progress("b-newer", 1)
        return p if p and p.total_final and p.in_flight == 0 else None

    p = await wait_until(finished, 30, "the batch to finish")
    assert (p.known_total, p.dead_lettered, p.done) == (1, 1, 0)

"""Undecodable messages on the tier-1 topics become dead letters; the worker keeps serving."""

from __future__ import annotations

import base64
import random

import pytest

from schemas import DeadLetter, decode
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
    async with producer(stack.bootstrap, linger_ms=5) as prod:
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

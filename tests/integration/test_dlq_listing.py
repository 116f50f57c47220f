"""Listing the dead letters reads every one, also where the embedded broker's end offsets read short."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaProducer

from consumers.dlq import read_letters
from streams.kafka import ensure_topics
from streams.settings import settings_env
from streams.topics import topics_for

pytestmark = pytest.mark.integration


async def test_letters_sent_together_as_the_last_batch_are_all_listed(make_settings) -> None:
    # The embedded broker answers a partition's end offset with its last record batch's first offset + 1, and a
    # worker's producer puts the letters of files failing together in one batch: a listing that stopped at the
    # end offset it was told would miss all but the first of them (`damflow dlq list`, replay).
    settings = make_settings(partitions=1)
    topics = topics_for(settings)
    await ensure_topics(settings.broker_url, topics.all(), settings.partitions)
    async with AIOKafkaProducer(bootstrap_servers=settings.broker_url, linger_ms=0) as prod:
        await prod.send_and_wait(topics.dlq(1), b"alone", partition=0)
        together = prod.create_batch()
        for n in range(5):
            assert together.append(key=None, value=f"together-{n}".encode(), timestamp=None) is not None
        await (await prod.send_batch(together, topics.dlq(1), partition=0))

    letters = await read_letters(settings.broker_url, topics, tiers=(1,))
    assert [x.offset for x in letters] == list(range(6))
    assert all(x.envelope is None for x in letters)  # not letters at all: listed, with why they cannot be read


def test_dlq_show_of_a_letter_and_an_id_no_letter_has_shows_the_one_and_names_the_other(make_settings) -> None:
    # the unknown id was dropped silently, exit 0, where `replay` and `purge` say "no such letter", exit 1
    settings = make_settings(partitions=1)
    topics = topics_for(settings)

    async def one_letter() -> None:
        await ensure_topics(settings.broker_url, topics.all(), settings.partitions)
        async with AIOKafkaProducer(bootstrap_servers=settings.broker_url) as prod:
            await prod.send_and_wait(topics.dlq(1), b"not an envelope", partition=0)

    asyncio.run(one_letter())
    env = dict(os.environ) | settings_env(settings) | {"DAMFLOW_LOG_LEVEL": "warn"}
    shown = subprocess.run([sys.executable, "-m", "streams.cli", "dlq", "show", "1:0:0", "1:0:99"], env=env,
                           capture_output=True, text=True, timeout=60)
    [letter] = json.loads(shown.stdout)
    assert letter["id"] == "1:0:0" and letter["envelope"] is None  # no envelope: its own bytes, to look into
    assert (base64.b64decode(letter["raw_start"]), letter["raw_size"]) == (b"not an envelope", 15)
    assert shown.returncode == 1 and shown.stderr.strip() == "damflow dlq: no dead letter 1:0:99"

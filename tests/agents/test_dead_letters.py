"""A dead letter always fits in one message: a value too large once escaped keeps its first bytes and its size;
and every tier's record can be dead-lettered, its failure accounted."""

from __future__ import annotations

import asyncio
import base64
import types

import pytest

from agents.handling import EventHandler
from streams.dead_letters import with_payload as _with_payload
from schemas import AssetFailed, AssetIndexed, DeadLetter, FileDiscovered, decode, encode
from streams.errors import DamflowError, PermanentError, TransientError
from streams.settings import Settings
from streams.topics import topics_for

BUDGET = 100_000


def envelope() -> DeadLetter:
    return DeadLetter(original_topic="damflow.t1.batch", original_partition=0, original_offset=3, original_payload="",
                      consumer_group="g", error_class="SchemaError", error_code="schema", error_message="m",
                      first_failure_at=1.0, last_failure_at=1.0, worker_host="h", worker_version="0", tier=1)


@pytest.mark.parametrize(("raw", "encoding"), [
    (b'{"type": "x"}', "utf-8"),
    (b"\xff\x00" * 100, "base64"),  # not UTF-8
    (b"\x01" * 30_000, "base64"),  # six times longer as JSON escapes: over the budget as text, not as base64
])
def test_a_value_that_fits_is_kept_whole(raw: bytes, encoding: str) -> None:
    letter = decode(_with_payload(envelope(), raw, BUDGET), DeadLetter)
    assert not letter.payload_truncated and letter.payload_encoding == encoding
    kept = base64.b64decode(letter.original_payload) if encoding == "base64" else letter.original_payload.encode()
    assert kept == raw


@pytest.mark.parametrize("raw", [
    b"\x01" * 90_000,  # 90 kB of control characters: six times that as JSON escapes
    bytes(range(256)) * 500,  # 128 kB, not UTF-8
])
def test_a_value_too_large_keeps_its_first_bytes_within_the_budget(raw: bytes) -> None:
    value = _with_payload(envelope(), raw, BUDGET)
    assert len(value) <= BUDGET
    letter = decode(value, DeadLetter)
    assert letter.payload_truncated and letter.payload_encoding == "base64"
    head = base64.b64decode(letter.original_payload)
    assert raw.startswith(head) and len(head) > BUDGET // 2


class _Topic:
    """A topic that keeps what is sent to it (no broker: this is the handler's bookkeeping alone)."""

    def __init__(self, sent: list, name: str) -> None:
        self.sent, self.name = sent, name

    async def send(self, key=None, value=None, headers=None) -> asyncio.Future:
        self.sent.append((self.name, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def _fail(settings: Settings, tier: int, record: AssetIndexed | FileDiscovered, topic: str,
                error: DamflowError) -> tuple[AssetFailed | None, list]:
    """``record``, fetched from ``topic``, failing with ``error`` in the tier's handler (``expected`` as the tier's
    agents give it); what the handler returned and what it sent, (topic, value) each."""
    sent: list = []
    app = types.SimpleNamespace(topic=lambda name, **_kw: _Topic(sent, name),
                                conf=types.SimpleNamespace(producer_max_request_size=1 << 20))
    handler = EventHandler(app, topics_for(settings), settings, tier=tier, expected=type(record))
    message = types.SimpleNamespace(topic=topic, partition=0, offset=3, key=b"k", headers=[], timestamp=1.0,
                                    value=encode(record))

    async def work(_record, _attempt):
        raise error

    return await handler.process(types.SimpleNamespace(value=encode(record), message=message), work), sent


@pytest.mark.parametrize(("error", "max_attempts"), [
    (PermanentError("thumbnail source gone"), 3),
    (TransientError("disk busy"), 1),  # transient, but its last attempt
], ids=["permanent", "transient-on-its-last-attempt"])
async def test_a_tier3_failure_for_good_is_dead_lettered_and_accounted(error: DamflowError, max_attempts: int) -> None:
    # tier 3's records (AssetIndexed) have no size: reading one in the failure handler raised there, so the
    # letter and the AssetFailed were both lost and the batch's tier-3 progress never finished
    record = AssetIndexed(event_id="e1", batch_id="b1", lane="batch", source="scan", asset_id="ab" * 32,
                          path="/r/a.png", parser_version=1, metadata_path="m.json", indexed_at=1.0)
    topics = topics_for(Settings())
    failed, sent = await _fail(Settings(max_attempts=max_attempts), 3, record, topics.t3_background, error)

    assert isinstance(failed, AssetFailed)
    assert (failed.outcome, failed.tier, failed.batch_id, failed.path) == ("dead_lettered", 3, "b1", "/r/a.png")
    assert [name for name, _ in sent] == [topics.dlq(3), topics.assets]
    dead = decode(sent[0][1], DeadLetter)
    assert (dead.tier, dead.file_path, dead.file_hash, dead.file_size) == (3, "/r/a.png", "ab" * 32, None)
    assert decode(sent[1][1], AssetFailed) == failed


async def test_an_uploads_failure_carries_its_display_name() -> None:
    # reconcile sends a tier-1 retry the broker lost again from the catalog, which keeps the name from here: it
    # was sent without one, and the upload's client-side name was lost
    record = FileDiscovered(event_id="e1", batch_id="b1", lane="interactive", source="upload",
                            path="/d/originals/ab/ab.png", size=10, mtime_ns=1, discovered_at=1.0,
                            display_name="Neon Fox.png")
    topics = topics_for(Settings())
    failed, sent = await _fail(Settings(max_attempts=3), 1, record, topics.t1_interactive, TransientError("disk busy"))

    assert isinstance(failed, AssetFailed) and failed.outcome == "retrying"
    assert failed.display_name == "Neon Fox.png" and decode(sent[-1][1], AssetFailed) == failed

"""Events round-trip as versioned JSON; anything else decodes to a typed SchemaError."""

from __future__ import annotations

import json

import pytest

from schemas import (
    SCHEMA_VERSION, AssetBrowsable, AssetFailed, BatchScanned, DeadLetter, FileDiscovered, ProgressEvent, decode,
    encode, to_dict,
)
from streams.errors import SchemaError


def discovered(**kw) -> FileDiscovered:
    base = dict(event_id="e1", batch_id="b1", lane="batch", source="scan", path="/p/a.png", size=10,
                mtime_ns=5, discovered_at=1.5)
    return FileDiscovered(**(base | kw))


def test_round_trip_keeps_every_field_and_names_type_and_version() -> None:
    event = discovered(root="/p", replay_count=2)
    raw = encode(event)
    data = json.loads(raw)
    assert data["type"] == "FileDiscovered" and data["schema"] == SCHEMA_VERSION
    assert decode(raw) == event
    assert decode(raw, FileDiscovered) == event


@pytest.mark.parametrize("event", [
    AssetBrowsable(event_id="e", batch_id="b", lane="interactive", source="upload", asset_id="ab" * 32, path="/x",
                   size=1, mtime_ns=1, format="PNG", width=2, height=3, thumbnails={"256": "thumbs/ab/x.256.webp"},
                   discovered_at=1.0, browsable_at=2.0),
    AssetFailed(event_id="e", batch_id="b", lane="batch", source="scan", tier=1, path="/x", error_class="CorruptImage",
                error_code="corrupt_image", reason="truncated", retriable=False, failed_at=1.0),
    BatchScanned(batch_id="b", lane="batch", root="/r", found=3, started_at=1.0, scanned_at=2.0),
    ProgressEvent(batch_id="b", tier=1, known_total=3, total_final=True, done=3, at=1.0),
    DeadLetter(original_topic="t", original_partition=0, original_offset=7, original_payload="{}",
               consumer_group="g", error_class="SchemaError", error_code="schema", error_message="bad",
               first_failure_at=1.0, last_failure_at=1.0, worker_host="h", worker_version="0", tier=1),
])
def test_every_event_type_round_trips(event) -> None:
    assert decode(encode(event)) == event
    assert to_dict(event)["type"] == type(event).__name__


@pytest.mark.parametrize("raw, fragment", [
    (b"", "empty"),
    (None, "empty"),
    (b"\xff\xfe garbage", "undecodable"),
    (b"[1, 2]", "undecodable"),
    (b'{"type": "Nope", "schema": 1}', "undecodable"),
    (b'{"type": "FileDiscovered", "schema": 1}', "missing required field"),
    (b'{"type": "FileDiscovered", "schema": 1, "event_id": 5}', "undecodable"),
])
def test_bad_payloads_raise_schema_error(raw, fragment) -> None:
    with pytest.raises(SchemaError, match=fragment):
        decode(raw)


def test_wrong_event_type_for_topic_is_rejected() -> None:
    progress = ProgressEvent(batch_id="b", tier=1, known_total=1, total_final=True, done=1, at=1.0)
    with pytest.raises(SchemaError):
        decode(encode(progress), FileDiscovered)


def test_newer_schema_version_is_refused_not_misread() -> None:
    data = json.loads(encode(discovered()))
    data["schema"] = SCHEMA_VERSION + 1
    with pytest.raises(SchemaError, match="newer"):
        decode(json.dumps(data).encode())


def test_unknown_extra_fields_from_a_newer_minor_version_are_ignored() -> None:
    data = json.loads(encode(discovered()))
    data["added_later"] = {"x": 1}
    assert decode(json.dumps(data).encode()) == discovered()


def test_schema_error_is_permanent() -> None:
    assert SchemaError.retriable is False

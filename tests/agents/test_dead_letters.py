"""A dead letter always fits in one message: a value too large once escaped keeps its first bytes and its size."""

from __future__ import annotations

import base64

import pytest

from agents.handling import _with_payload
from schemas import DeadLetter, decode

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

"""Dead letters, made one way wherever a message is given up: a tier's event handler (``agents.handling``) and the
retrier (``streams.retrier``).

- :func:`letter`: the ``DeadLetter`` envelope of a message, with its raw value (within a budget), the error, its
  traceback and where it was read, as the key, value and headers to send on ``t<tier>.dlq``;
- :func:`failure`: the ``AssetFailed`` that tells the catalog what became of the file, so its batch can finish;
- :func:`failure_of_unreadable`: the same for a message that cannot be read but still names its file.
"""

from __future__ import annotations

import base64
import platform
import socket
import traceback
from dataclasses import dataclass
from importlib import metadata
from typing import Literal, get_args

import msgspec

from schemas import AssetBrowsable, AssetFailed, AssetIndexed, DeadLetter, FileDiscovered, encode, now
from schemas.codec import claimed
from schemas.events import Lane, Source
from streams.errors import DamflowError
from streams.retries import FailureHistory

_HOST = socket.gethostname()
_TRACEBACK_LIMIT = 4000
MESSAGE_LIMIT = 4000
#: A key longer than this is cut in the envelope and not the letter's key (damflow's, paths and ids, are shorter).
_KEY_LIMIT = 4096
#: Room kept in a dead letter's message for the broker's record and batch framing and the headers.
FRAMING = 16 * 1024

#: What a tier's agents consume: tier 1 ``FileDiscovered``, tier 2 the ``AssetBrowsable`` of tier 1, tier 3 the
#: ``AssetIndexed`` of tier 2.
Record = FileDiscovered | AssetBrowsable | AssetIndexed


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


LIBRARY_VERSIONS = {
    d: _version(d) for d in ("damflow", "faust-streaming", "aiokafka", "Pillow", "blake3", "pyexiv2", "pebble")
} | {"python": platform.python_version()}


def classify(exc: BaseException) -> tuple[str, bool]:
    """(error code, retriable) of any exception; unknown exceptions are bugs: permanent until fixed."""
    if isinstance(exc, DamflowError):
        return exc.code, exc.retriable
    return "unexpected", False


@dataclass(frozen=True)
class Received:
    """A message as it was read: where from, and its raw key and value."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes


def with_payload(letter: DeadLetter, raw: bytes, budget: int) -> bytes:
    """The encoded letter holding ``raw``: as UTF-8 text when it is, else (or when escaping it would pass
    ``budget`` bytes: JSON escapes make control characters six times longer) in base64; and when even that would
    pass the budget, its first bytes in base64, marked truncated."""
    try:
        value = encode(msgspec.structs.replace(letter, original_payload=raw.decode("utf-8")))
        if len(value) <= budget:
            return value
    except UnicodeDecodeError:
        pass
    room = budget - len(encode(letter)) - 64  # what the envelope takes without the payload, and its quotes
    whole = len(raw) <= room // 4 * 3
    head = raw if whole else raw[: max(room, 0) // 4 * 3]
    return encode(msgspec.structs.replace(
        letter, original_payload=base64.b64encode(head).decode("ascii"), payload_encoding="base64",
        payload_truncated=not whole,
    ))


def letter(
    msg: Received, exc: BaseException, history: FailureHistory, *, tier: int, group: str, budget: int,
    record: Record | None = None, asset_id: str | None = None, size: int | None = None,
) -> tuple[bytes | None, bytes, dict[str, bytes]]:
    """The dead letter of ``msg`` given up for ``exc``: (key, value, headers) to send on ``t<tier>.dlq``; the value
    at most ``budget`` bytes (its payload cut to fit, see :func:`with_payload`)."""
    key_text = msg.key.decode("utf-8", "replace") if msg.key is not None else None
    code, _ = classify(exc)
    at = now()
    envelope = DeadLetter(
        original_topic=history.source_topic or msg.topic, original_partition=msg.partition,
        original_offset=msg.offset, original_timestamp_ms=msg.timestamp_ms,
        original_key=key_text[:_KEY_LIMIT] if key_text is not None else None,
        key_truncated=key_text is not None and len(key_text) > _KEY_LIMIT,
        original_payload="", original_size=len(msg.value), received_topic=msg.topic, consumer_group=group,
        error_class=type(exc).__name__, error_code=code, error_message=str(exc)[:MESSAGE_LIMIT],
        cause=repr(exc.__cause__)[:MESSAGE_LIMIT] if exc.__cause__ else None,
        traceback="".join(traceback.format_exception(exc))[-_TRACEBACK_LIMIT:],
        attempts=max(history.attempts, 1), first_failure_at=history.first_failure_at or at, last_failure_at=at,
        worker_host=_HOST, worker_version=LIBRARY_VERSIONS["damflow"], library_versions=LIBRARY_VERSIONS,
        tier=tier, file_path=record.path if record else None, file_hash=asset_id,
        # tier 3's records (``AssetIndexed``) carry no size: reading it here lost the letter and its outcome
        file_size=size if size is not None else getattr(record, "size", None),
        replay_count=getattr(record, "replay_count", 0), batch_id=record.batch_id if record else None,
    )
    # a key too long to keep goes neither in the envelope nor as the letter's key: it stays on the source topic
    letter_key = None if envelope.key_truncated else msg.key
    value = with_payload(envelope, msg.value, budget - len(letter_key or b""))
    headers = {
        "damflow-error-class": envelope.error_class, "damflow-error-code": code,
        "damflow-error-message": envelope.error_message[:500], "damflow-original-topic": envelope.original_topic,
        "damflow-original-partition": str(msg.partition), "damflow-original-offset": str(msg.offset),
        "damflow-tier": str(tier), "damflow-attempts": str(envelope.attempts),
        "damflow-replay-count": str(envelope.replay_count), "damflow-worker-host": _HOST,
        "damflow-original-size": str(len(msg.value)),
        "damflow-batch-id": envelope.batch_id or "", "damflow-file-path": (envelope.file_path or "")[:500],
    }
    return letter_key, value, {k: v.encode() for k, v in headers.items()}


def failure(
    record: Record, exc: BaseException, history: FailureHistory, *, tier: int,
    outcome: Literal["retrying", "dead_lettered"], asset_id: str | None, at: float,
) -> AssetFailed:
    """The ``AssetFailed`` of ``record``'s file, whose attempt failed with ``exc`` (``history`` counting it)."""
    code, retriable = classify(exc)
    name = getattr(record, "display_name", None)
    return AssetFailed(
        event_id=record.event_id, batch_id=record.batch_id, lane=record.lane, source=record.source,
        tier=tier, path=record.path, asset_id=asset_id, error_class=type(exc).__name__,
        error_code=code, reason=str(exc)[:MESSAGE_LIMIT], retriable=retriable, outcome=outcome,
        attempts=history.attempts, first_failure_at=history.first_failure_at,
        replay_count=getattr(record, "replay_count", 0), failed_at=at,
        # cut like the reason: a foreign producer's name of megabytes made the failure too large to send
        display_name=name[:MESSAGE_LIMIT] if name else None,
    )


def failure_of_unreadable(raw: bytes | None, exc: DamflowError, history: FailureHistory, *,
                          tier: int) -> AssetFailed | None:
    """The ``AssetFailed`` of a dead-lettered message that cannot be read but still names its file (a newer
    producer's schema during an upgrade, say): without it the file had no outcome and its batch stayed in flight
    for ever. A message that names no file has no batch to be counted in: ``None``."""
    said = claimed(raw)
    event_id, batch_id, path = said.get("event_id"), said.get("batch_id"), said.get("path")
    if not (event_id and batch_id and path) or max(len(event_id), len(batch_id)) > 256 or len(path) > 4096:
        return None
    asset_id = said.get("asset_id")
    return AssetFailed(
        event_id=event_id, batch_id=batch_id, tier=tier, path=path,
        lane=said["lane"] if said.get("lane") in get_args(Lane) else "batch",  # type: ignore[arg-type]
        source=said["source"] if said.get("source") in get_args(Source) else "scan",  # type: ignore[arg-type]
        asset_id=asset_id if asset_id and len(asset_id) <= 256 else None, error_class=type(exc).__name__,
        error_code=exc.code, reason=str(exc)[:MESSAGE_LIMIT], retriable=False, outcome="dead_lettered",
        attempts=history.attempts, first_failure_at=history.first_failure_at,
        failed_at=now(),  # replay count 0: what such a record claims (`claimed`) is its text fields only
    )

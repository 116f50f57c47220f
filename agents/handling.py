"""The per-event wrapper every agent uses: decode, bind log context, run the work, classify and route failures.

An agent stays a thin loop (``async for event in stream: await handler.process(event, work)``); this module is
the one place that knows what happens when work fails. Decoding is done here, not by faust's serializer: a
malformed message must become a dead letter, not an exception inside the stream that kills the worker.
"""

from __future__ import annotations

import base64
import platform
import socket
import traceback
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import faust
import structlog

from schemas import AssetFailed, DeadLetter, Event, FileDiscovered, decode, encode, now
from streams.errors import DamflowError
from streams.logs import get
from streams.topics import Topics

log = get(__name__)

_HOST = socket.gethostname()
_TRACEBACK_LIMIT = 4000


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


LIBRARY_VERSIONS = {
    d: _version(d) for d in ("damflow", "faust-streaming", "aiokafka", "Pillow", "blake3", "pyexiv2")
} | {"python": platform.python_version()}


def classify(exc: BaseException) -> tuple[str, bool]:
    """(error code, retriable) of any exception; unknown exceptions are bugs: permanent until fixed."""
    if isinstance(exc, DamflowError):
        return exc.code, exc.retriable
    return "unexpected", False


class EventHandler:
    """Runs one tier's work for each event of its topics and turns every failure into recorded events."""

    def __init__(self, app: faust.App, topics: Topics, *, tier: int, group: str) -> None:
        self.tier = tier
        self.group = group
        self.assets = app.topic(topics.assets)
        self._dlq = app.topic(topics.dlq(tier))

    async def process(
        self, event: faust.EventT, work: Callable[[FileDiscovered], Awaitable[Any]]
    ) -> None:
        try:
            record = decode(event.value, FileDiscovered)
        except DamflowError as exc:
            log.error("poison_pill", tier=self.tier, topic=event.message.topic, error=str(exc))
            await self._dead_letter(event, exc, None)
            return
        with structlog.contextvars.bound_contextvars(
            batch_id=record.batch_id, tier=self.tier, lane=record.lane, path=record.path
        ):
            try:
                await work(record)
            except Exception as exc:  # every failure is recorded, never lost, never fatal to the worker
                await self._fail(event, record, exc)

    async def emit(self, result: Event, key: str) -> None:
        """Publish a result on ``assets`` and wait for the broker's ack (offsets commit after effects)."""
        fut = await self.assets.send(key=key.encode(), value=encode(result))
        await fut

    async def _fail(self, event: faust.EventT, record: FileDiscovered, exc: BaseException) -> None:
        code, retriable = classify(exc)
        asset_id = getattr(exc, "asset_id", None)
        log.warning("work_failed", error_class=type(exc).__name__, code=code, reason=str(exc), asset_id=asset_id)
        failed = AssetFailed(
            event_id=record.event_id, batch_id=record.batch_id, lane=record.lane, source=record.source,
            tier=self.tier, path=record.path, asset_id=asset_id, error_class=type(exc).__name__,
            error_code=code, reason=str(exc), retriable=retriable, outcome="dead_lettered",
            attempts=1, failed_at=now(),
        )
        await self._dead_letter(event, exc, record, asset_id=asset_id, size=getattr(exc, "size", None))
        await self.emit(failed, asset_id or record.path)

    async def _dead_letter(
        self, event: faust.EventT, exc: BaseException, record: FileDiscovered | None,
        *, asset_id: str | None = None, size: int | None = None,
    ) -> None:
        msg = event.message
        raw: bytes = event.value if isinstance(event.value, bytes | bytearray) else b""
        try:
            payload, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        code, _ = classify(exc)
        at = now()
        letter = DeadLetter(
            original_topic=msg.topic, original_partition=msg.partition, original_offset=msg.offset,
            original_timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
            original_key=msg.key.decode("utf-8", "replace") if isinstance(msg.key, bytes) else None,
            original_payload=payload, payload_encoding=encoding, consumer_group=self.group,
            error_class=type(exc).__name__, error_code=code, error_message=str(exc),
            cause=repr(exc.__cause__) if exc.__cause__ else None,
            traceback="".join(traceback.format_exception(exc))[-_TRACEBACK_LIMIT:],
            first_failure_at=at, last_failure_at=at, worker_host=_HOST,
            worker_version=LIBRARY_VERSIONS["damflow"], library_versions=LIBRARY_VERSIONS, tier=self.tier,
            file_path=record.path if record else None, file_hash=asset_id,
            file_size=size if size is not None else (record.size if record else None),
            replay_count=record.replay_count if record else 0, batch_id=record.batch_id if record else None,
        )
        headers = {
            "damflow-error-class": letter.error_class, "damflow-error-code": code,
            "damflow-error-message": letter.error_message[:500], "damflow-original-topic": msg.topic,
            "damflow-original-partition": str(msg.partition), "damflow-original-offset": str(msg.offset),
            "damflow-tier": str(self.tier), "damflow-attempts": str(letter.attempts),
            "damflow-replay-count": str(letter.replay_count),
        }
        fut = await self._dlq.send(
            key=msg.key if isinstance(msg.key, bytes) else None, value=encode(letter),
            headers={k: v.encode() for k, v in headers.items()},
        )
        await fut

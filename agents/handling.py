"""The per-event wrapper every agent uses: decode, bind log context, run the work, classify and route failures.

An agent stays a thin loop (``agents.lanes.lane_agent``: ``await handler.process(event, work)`` per event, acked
once that returns); this module is the one place that knows what happens when work fails:

- undecodable message (poison pill) -> dead letter at once, raw bytes kept (+ ``AssetFailed(dead_lettered)``
  when it still names its file, so its batch can finish);
- permanent error, or transient error on the last attempt -> dead letter + ``AssetFailed(dead_lettered)``;
- transient error with attempts left -> ``t<tier>.retry.<n>`` with a due time + ``AssetFailed(retrying)``;
- the broker refusing the work's results for now (:meth:`EventHandler.emit`) -> raised on, not recorded: the work
  succeeded, and the agent works the event again once the broker is back (``agents.lanes.lane_agent``).

Decoding is done here, not by faust's serializer: a malformed message must become a dead letter, not an exception
inside the stream that kills the worker. Results and failures are awaited until the broker acks them, so the
offset commits only after the effects.
"""

from __future__ import annotations

import asyncio
import base64
import platform
import socket
import traceback
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any, get_args

import faust
import msgspec
import structlog

from schemas import AssetBrowsable, AssetFailed, AssetIndexed, DeadLetter, Event, FileDiscovered, decode, encode, now
from schemas.codec import claimed
from schemas.events import Lane, Source
from streams.errors import DamflowError
from streams.express import told_early
from streams.kafka import passes
from streams.logs import get
from streams.retries import FailureHistory, backoff_s
from streams.settings import Settings
from streams.topics import Topics

log = get(__name__)

_HOST = socket.gethostname()
_TRACEBACK_LIMIT = 4000
_MESSAGE_LIMIT = 4000
#: A key longer than this is cut in the envelope and not the letter's key (damflow's, paths and ids, are shorter).
_KEY_LIMIT = 4096
#: Room kept in a dead letter's message for the broker's record and batch framing and the headers.
_FRAMING = 16 * 1024

#: What an agent consumes: tier 1 takes ``FileDiscovered``, tier 2 the ``AssetBrowsable`` tier 1 produced.
Record = FileDiscovered | AssetBrowsable | AssetIndexed
#: The work an agent runs per event: the decoded record and the number of this attempt (1 = first).
Work = Callable[[Any, int], Awaitable[Any]]
#: Set (true) on the error of a send of results the broker refused for now (see :meth:`EventHandler.emit`).
RESULTS_REFUSED = "damflow_results_refused"


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


def _with_payload(letter: DeadLetter, raw: bytes, budget: int) -> bytes:
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


class EventHandler:
    """Runs one tier's work for each event of its topics and turns every failure into recorded events."""

    def __init__(
        self, app: faust.App, topics: Topics, settings: Settings, *, tier: int,
        expected: type[Record] = FileDiscovered,
    ) -> None:
        self.tier = tier
        self.expected = expected
        self.settings = settings
        self.topics = topics
        self.group = settings.group_id
        self.assets = app.topic(topics.assets)
        self._dlq = app.topic(topics.dlq(tier))
        self._retry = {n: app.topic(topics.retry(tier, n)) for n in range(1, settings.max_attempts)}
        #: The most a dead letter may weigh: what the producer sends in one request, less the framing.
        self._letter_budget = app.conf.producer_max_request_size - _FRAMING

    async def process(self, event: faust.EventT, work: Work) -> Any:
        """Run ``work`` for one event; returns what the work returned (tier 1: the ``AssetBrowsable`` it
        published), the ``AssetFailed`` published for a failure, or ``None`` for a poison pill."""
        history = FailureHistory.from_headers(event.message.headers)
        try:
            record = decode(event.value, self.expected)
        except DamflowError as exc:
            log.error("poison_pill", tier=self.tier, topic=event.message.topic, error=str(exc))
            history = history.failed_again(event.message.topic, now())  # this attempt's count and the chain's start
            await self._dead_letter(event, exc, None, history)
            return await self._account_unreadable(event, exc, history)
        with structlog.contextvars.bound_contextvars(
            batch_id=record.batch_id, tier=self.tier, lane=record.lane, path=record.path
        ):
            try:
                return await work(record, history.attempts + 1)
            except Exception as exc:  # every failure is recorded, never lost, never fatal to the worker
                if told_early():  # its express caller has its outcome: the fetched copy finishes the work
                    log.warning("work_failed_after_answer", error_class=type(exc).__name__, reason=str(exc))
                    raise
                if getattr(exc, RESULTS_REFUSED, False):
                    # the work succeeded, only its results did not reach the broker (away for now): not the file's
                    # failure to retry or dead-letter; the agent works the event again (idempotent) once it is back
                    raise
                return await self._fail(event, record, exc, history)

    async def emit(self, result: Event, key: str, *also: faust.TopicT) -> None:
        """Publish a result on ``assets`` (and on ``also``, e.g. the next tier's topic), all in flight together,
        and wait until the broker has acked every one: the offset may commit only after the effects.

        A refusal that may pass by itself (:func:`streams.kafka.passes`: the broker away or busy) raises as it is,
        marked ``RESULTS_REFUSED``: :meth:`process` then knows it from the same error raised by the work itself,
        which is the file's failure to classify."""
        value, raw_key = encode(result), key.encode()
        try:
            sends = [await topic.send(key=raw_key, value=value) for topic in (self.assets, *also)]
            await asyncio.gather(*sends)
        except Exception as exc:
            if passes(exc):
                setattr(exc, RESULTS_REFUSED, True)
            raise

    async def _fail(
        self, event: faust.EventT, record: Record, exc: BaseException, history: FailureHistory
    ) -> AssetFailed:
        code, retriable = classify(exc)
        at = now()
        history = history.failed_again(event.message.topic, at)
        asset_id = getattr(exc, "asset_id", None) or getattr(record, "asset_id", None)
        attempts = history.attempts
        retry = retriable and attempts < self.settings.max_attempts
        log.warning("work_failed", error_class=type(exc).__name__, code=code, reason=str(exc), asset_id=asset_id,
                    attempts=attempts, outcome="retrying" if retry else "dead_lettered")
        if retry:
            due = at + backoff_s(attempts, self.settings)
            history = FailureHistory(attempts, history.first_failure_at, history.source_topic, due)
            msg = event.message
            await (await self._retry[attempts].send(
                key=msg.key, value=event.value,
                headers=history.headers(error_class=type(exc).__name__, error_message=str(exc)),
            ))
        else:
            await self._dead_letter(event, exc, record, history, asset_id=asset_id, size=getattr(exc, "size", None))
        failed = AssetFailed(
            event_id=record.event_id, batch_id=record.batch_id, lane=record.lane, source=record.source,
            tier=self.tier, path=record.path, asset_id=asset_id, error_class=type(exc).__name__,
            error_code=code, reason=str(exc)[:_MESSAGE_LIMIT], retriable=retriable,
            outcome="retrying" if retry else "dead_lettered", attempts=attempts,
            first_failure_at=history.first_failure_at, replay_count=getattr(record, "replay_count", 0), failed_at=at,
            display_name=getattr(record, "display_name", None),
        )
        await self.emit(failed, asset_id or record.path)
        return failed

    async def _account_unreadable(self, event: faust.EventT, exc: DamflowError,
                                  history: FailureHistory) -> AssetFailed | None:
        """The ``AssetFailed`` of a dead-lettered record that cannot be read but still names its file (a newer
        producer's schema during an upgrade, say): without it the file had no outcome and its batch stayed in
        flight for ever. A record that names no file has no batch to be counted in: ``None``."""
        said = claimed(event.value if isinstance(event.value, bytes | bytearray) else None)
        event_id, batch_id, path = said.get("event_id"), said.get("batch_id"), said.get("path")
        if not (event_id and batch_id and path) or max(len(event_id), len(batch_id)) > 256 or len(path) > 4096:
            return None
        asset_id = said.get("asset_id")
        failed = AssetFailed(
            event_id=event_id, batch_id=batch_id, tier=self.tier, path=path,
            lane=said["lane"] if said.get("lane") in get_args(Lane) else "batch",  # type: ignore[arg-type]
            source=said["source"] if said.get("source") in get_args(Source) else "scan",  # type: ignore[arg-type]
            asset_id=asset_id if asset_id and len(asset_id) <= 256 else None, error_class=type(exc).__name__,
            error_code=exc.code, reason=str(exc)[:_MESSAGE_LIMIT], retriable=False, outcome="dead_lettered",
            attempts=history.attempts, first_failure_at=history.first_failure_at,
            failed_at=now(),  # replay count 0: what such a record claims (`claimed`) is its text fields only
        )
        await self.emit(failed, failed.asset_id or path)
        return failed

    async def _dead_letter(
        self, event: faust.EventT, exc: BaseException, record: Record | None, history: FailureHistory,
        *, asset_id: str | None = None, size: int | None = None,
    ) -> None:
        msg = event.message
        raw: bytes = bytes(event.value) if isinstance(event.value, bytes | bytearray) else b""
        key: bytes | None = msg.key if isinstance(msg.key, bytes) else None
        key_text = key.decode("utf-8", "replace") if key is not None else None
        code, _ = classify(exc)
        at = now()
        letter = DeadLetter(
            original_topic=history.source_topic or msg.topic, original_partition=msg.partition,
            original_offset=msg.offset,
            original_timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
            original_key=key_text[:_KEY_LIMIT] if key_text is not None else None,
            key_truncated=key_text is not None and len(key_text) > _KEY_LIMIT,
            original_payload="", original_size=len(raw), received_topic=msg.topic, consumer_group=self.group,
            error_class=type(exc).__name__, error_code=code, error_message=str(exc)[:_MESSAGE_LIMIT],
            cause=repr(exc.__cause__)[:_MESSAGE_LIMIT] if exc.__cause__ else None,
            traceback="".join(traceback.format_exception(exc))[-_TRACEBACK_LIMIT:],
            attempts=max(history.attempts, 1), first_failure_at=history.first_failure_at or at, last_failure_at=at,
            worker_host=_HOST, worker_version=LIBRARY_VERSIONS["damflow"], library_versions=LIBRARY_VERSIONS,
            tier=self.tier, file_path=record.path if record else None, file_hash=asset_id,
            # tier 3's records (``AssetIndexed``) carry no size: reading it here lost the letter and its outcome
            file_size=size if size is not None else getattr(record, "size", None),
            replay_count=getattr(record, "replay_count", 0), batch_id=record.batch_id if record else None,
        )
        # a key too long to keep goes neither in the envelope nor as the letter's key: it stays on the source topic
        letter_key = None if letter.key_truncated else key
        value = _with_payload(letter, raw, self._letter_budget - len(letter_key or b""))
        headers = {
            "damflow-error-class": letter.error_class, "damflow-error-code": code,
            "damflow-error-message": letter.error_message[:500], "damflow-original-topic": letter.original_topic,
            "damflow-original-partition": str(msg.partition), "damflow-original-offset": str(msg.offset),
            "damflow-tier": str(self.tier), "damflow-attempts": str(letter.attempts),
            "damflow-replay-count": str(letter.replay_count), "damflow-worker-host": _HOST,
            "damflow-original-size": str(len(raw)),
            "damflow-batch-id": letter.batch_id or "", "damflow-file-path": (letter.file_path or "")[:500],
        }
        await (await self._dlq.send(
            key=letter_key, value=value,
            headers={k: v.encode() for k, v in headers.items()},
        ))

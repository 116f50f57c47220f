"""The HTTP interface of ``damflow up``: uploads, asset lookup, thumbnails, live progress (SSE) and a dashboard.

Routes::

    POST /upload              multipart (one or more ``file`` fields) or a raw image body (``?name=``);
                              ``?wait=1[&timeout=S]`` answers once each asset is browsable (or failed)
                              and, under ``damflow up``, normally in the catalog too (``GET /assets/{id}``
                              finds it; not while the catalog sink restarts or is held up by its disk)
    GET  /assets/{id}         the catalog's view of one asset (full id or unique prefix)
    GET  /thumbs/{size}/{id}  a thumbnail file (content-addressed, immutable)
    GET  /progress            Server-Sent Events: where the batch (``?batch=``; else the newest batches)
                              stands now, then every ``ProgressEvent`` as it comes
    GET  /healthz             ``{"ok": true}``: this process serves
    GET  /readyz              200 once the pipeline behind it takes work at full speed (workers in the group,
                              catalog sink, retrier, broker), else 503; either way ``{"ready": ..., <part>: ...}``
    GET  /                    the live dashboard (one self-contained page reading /progress)

An upload body is streamed to a temp file whose name this module makes up, under the data directory; the size
limit holds while streaming, the bytes are sniffed (never the name or the declared type), and only then stored
content-addressed and published on the interactive lane. Every request's files are received and checked before
the first is published, so a refused request publishes nothing; the temp files go whatever the outcome. Without
an upload token, an upload a browser sends for a page of another origin is refused (403, see ``_check_origin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import re
import socket
import sqlite3
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import HttpVersion11, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from yarl import URL

from agents.thumbnails import thumbnail_path
from consumers.catalog import AmbiguousId, Catalog, CatalogError, CatalogUnavailable
from consumers.catalog_sink import CatalogSink
from schemas import AssetBrowsable, ProgressEvent, decode, encode, new_id, now
from streams.errors import (
    ConfigError, DamflowError, PermanentError, SchemaError, StorageUnavailable, UploadNotAnImage, UploadRejected,
    UploadTooLarge,
)
from streams.express import ExpressClient
from streams.ingest import OutcomeWatcher, follow_published
from streams.kafka import tail
from streams.logs import get
from streams.settings import Settings
from streams.topics import Topics
from streams.upload import (
    Spool, close_batch, display_name, make_durable, publish_upload, spool_dir, upload_event,
)

log = get(__name__)

#: Bytes read from the socket at a time, and gathered before one write to the temp file (off the loop).
READ_BYTES = 256 * 1024
#: Temp files older than this at startup were left by a process that died mid-upload.
STALE_SPOOL_S = 3600.0

_SETTINGS = web.AppKey("settings", Settings)
_TOPICS = web.AppKey("topics", Topics)
_BOOTSTRAP = web.AppKey("bootstrap", str)
_PRODUCER = web.AppKey("producer", AIOKafkaProducer)
_STOPPING = web.AppKey("stopping", asyncio.Event)
_STREAMS = web.AppKey("sse_clients", list)
_OUTCOMES = web.AppKey("outcomes", OutcomeWatcher)
_EXPRESS = web.AppKey("express", ExpressClient)  # None when Settings.express is off
_CATALOG = web.AppKey("catalog", CatalogSink)  # the catalog sink of this process; None without one
_READINESS = web.AppKey("readiness", Callable)  # () -> {part: runs now}, from the stack serving this app; or None

_HEX = re.compile(r"[0-9a-f]+")
_FULL_ID = re.compile(r"[0-9a-f]{64}")
_TRUE = {"1", "true", "yes", "on"}


# -- refusals ----------------------------------------------------------------------------------------------


class Refused(PermanentError):
    """A request refused as it stands; ``status`` is the HTTP answer, the message goes back as ``error``."""

    status = 400
    code = "bad_request"


class Unauthorized(Refused):
    status = 401
    code = "unauthorized"


class Forbidden(Refused):
    status = 403
    code = "cross_origin"


class NotFound(Refused):
    status = 404
    code = "not_found"


class TooLarge(Refused):
    status = 413
    code = "too_large"


class NotAnImage(Refused):
    status = 415
    code = "unsupported_media_type"


class BodyTimeout(Refused):
    status = 408
    code = "request_timeout"


class CannotStore(Refused):
    retriable = True
    status = 503
    code = "storage_unavailable"


class Busy(Refused):
    retriable = True
    status = 503
    code = "busy"


_REFUSALS: dict[type[UploadRejected], type[Refused]] = {UploadTooLarge: TooLarge, UploadNotAnImage: NotAnImage}


def _error(status: int, message: str, code: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "code": code, **extra}, status=status)


def _refusal(exc: Refused) -> web.Response:
    response = _error(exc.status, exc.message, exc.code)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="damflow"'
    return response


@web.middleware
async def _answer_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error becomes a JSON answer; one structured log line per request."""
    t0 = time.perf_counter()
    try:
        response = await handler(request)
    except Refused as exc:
        response = _refusal(exc)
    except AmbiguousId as exc:
        response = _error(400, exc.message, exc.code)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, exc.reason, "http")
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except (KafkaError, DamflowError) as exc:
        retriable = isinstance(exc, KafkaError) or exc.retriable
        log.error("http_failed", method=request.method, path=request.path, error=repr(exc))
        response = _error(503 if retriable else 500, str(exc), getattr(exc, "code", "broker"))
    except asyncio.CancelledError:
        raise
    except ConnectionError as exc:  # the client went away (mid-body: Ctrl-C, a closed tab): nobody to answer
        log.info("http_client_gone", method=request.method, path=request.path, peer=request.remote, error=repr(exc))
        response = _error(499, "the client closed the connection", "client_gone")  # never sent: logged only
    except Exception as exc:
        log.exception("http_crashed", method=request.method, path=request.path)
        response = _error(500, f"internal error: {type(exc).__name__}", "internal")
    level = log.info if response.status >= 400 or request.method != "GET" else log.debug
    level("http_request", method=request.method, path=request.path, status=response.status,
          ms=round((time.perf_counter() - t0) * 1000, 1), peer=request.remote)
    return response


# -- uploads -----------------------------------------------------------------------------------------------


async def _raw_chunk(request: web.Request, idle_s: float) -> bytes:
    """The next bytes of a raw body, as soon as any arrive (the urgent path: no task per read); a client whose
    body brings no byte for ``idle_s`` is cut off."""
    try:
        async with asyncio.timeout(idle_s):
            return await request.content.read(READ_BYTES)
    except TimeoutError:
        raise BodyTimeout(f"no byte of the body for {idle_s:g} s") from None


async def _read_within(read: Any, request: web.Request, idle_s: float) -> Any:
    """What ``read()`` gives of a multipart body; a client whose body brings no byte for ``idle_s`` is cut off.

    Idle is judged by the bytes arriving, not by each read: a multipart read may wait for more than one arrival
    (it looks ahead for the boundary), and a slow but steady client must not be cut off for that.
    """
    task = asyncio.ensure_future(read())
    loop = asyncio.get_running_loop()
    arrived, since = request.content.total_bytes, loop.time()
    try:
        while True:  # looked at 8 times per limit: a client silent for the limit is cut off within 1/8 more
            done, _ = await asyncio.wait({task}, timeout=max(min(idle_s / 8, since + idle_s - loop.time()), 0.01))
            if done:
                return task.result()
            if request.content.total_bytes != arrived:
                arrived, since = request.content.total_bytes, loop.time()
            elif loop.time() - since >= idle_s:
                raise BodyTimeout(f"no byte of the body for {idle_s:g} s")
    finally:
        if not task.done():
            task.cancel()


async def _receive(request: web.Request, settings: Settings, spools: list[Spool]) -> None:
    """Stream the request's file(s) into ``spools`` (appended as they are opened, so the caller cleans up)."""
    directory = spool_dir(settings)
    limit, idle = settings.upload_max_bytes, settings.http_body_idle_timeout_s
    ctype = request.content_type
    if ctype.startswith("multipart/"):
        max_files = settings.upload_max_files
        try:
            reader = await request.multipart()
            while (part := await _read_within(reader.next, request, idle)) is not None:
                if isinstance(part, MultipartReader):
                    raise Refused("nested multipart bodies are not accepted")
                if part.name != "file":  # drained, under the same idle limit as a file
                    while await _read_within(lambda: part.read_chunk(READ_BYTES), request, idle):
                        pass
                    continue
                if len(spools) >= max_files:
                    raise Refused(f"at most {max_files} files per request")
                # aiohttp's client percent-encodes file names in Content-Disposition; browsers send them raw
                spool = Spool(directory, limit, display_name(unquote(part.filename or "")))
                spools.append(spool)
                while chunk := await _read_within(lambda: part.read_chunk(READ_BYTES), request, idle):
                    spool.write(chunk)
                spool.finish()
        except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as exc:
            raise Refused(f"malformed multipart body: {exc}") from exc
        if not spools:
            raise Refused("no `file` field in the multipart body")
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        spool = Spool(directory, limit, display_name(request.query.get("name")))
        spools.append(spool)
        while chunk := await _raw_chunk(request, idle):
            spool.write(chunk)
        spool.finish()
    else:
        # curl --data-binary sends application/x-www-form-urlencoded unless told: say what to send instead
        raise NotAnImage(f"a raw body is taken as image/* or application/octet-stream, not {ctype} (with curl: "
                         "-H 'Content-Type: image/png'); or send multipart/form-data `file` fields")


def _check_token(request: web.Request, settings: Settings) -> None:
    token = settings.upload_token.get_secret_value() if settings.upload_token else ""
    if not token:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # aiohttp keeps header bytes that are not UTF-8 as surrogate escapes: compared as the bytes that came
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, token.encode()):
        raise Unauthorized("a valid bearer token is required")


def _check_origin(request: web.Request, settings: Settings) -> None:
    """Without a token, refuse an upload that a browser sends for a page of another origin.

    A cross-site HTML form may POST multipart to any address, ``127.0.0.1`` included, with no preflight: any web
    page open in a browser on this machine could push files into a local ``damflow up``. Browsers name the page's
    origin in ``Origin``; clients that are not browsers (curl, scripts, ``damflow upload``) send none and are not
    affected, nor is a page served here. With a token set, such a form cannot send it: nothing to check."""
    if settings.upload_token and settings.upload_token.get_secret_value():
        return
    origin = request.headers.get("Origin")
    if origin is None:
        return
    own = f"{request.scheme}://{request.host}"
    key = _origin_key(origin)
    if key is None or key != _origin_key(own):
        raise Forbidden(f"an upload from a page of another origin ({origin}) is refused: this server is {own}. "
                        "Upload from a client that sends no Origin, or set DAMFLOW_UPLOAD_TOKEN and send it")


def _origin_key(origin: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of an origin, the port made explicit; None for one that names no host (``null``,
    sent by sandboxed pages and local files)."""
    try:
        url = URL(origin.strip())
        if not url.is_absolute() or not url.host:  # yarl decodes the host when asked: a bad IDNA label raises
            return None
        return url.scheme.lower(), url.host.lower(), url.port
    except ValueError:  # UnicodeError included
        return None


def _wait_params(request: web.Request, settings: Settings) -> tuple[bool, float]:
    wait = request.query.get("wait", "").lower() in _TRUE
    try:
        timeout = float(request.query.get("timeout", settings.http_wait_timeout_s))
    except ValueError:
        raise Refused("timeout must be a number of seconds") from None
    if not 0 < timeout <= settings.http_wait_timeout_max_s:  # what the range is, for a client to mend its call
        raise Refused(f"timeout must be above 0 and at most {settings.http_wait_timeout_max_s:g} s "
                      f"(DAMFLOW_HTTP_WAIT_TIMEOUT_MAX_S), not {request.query.get('timeout')}")
    return wait, timeout


def _before_the_body(request: web.Request, settings: Settings) -> tuple[bool, float]:
    """What refuses an upload before a byte of its body is read (a ``Refused`` raised): the token, the origin,
    the wait's parameters, a raw body's declared length over the limit; else the wait's parameters."""
    _check_token(request, settings)
    _check_origin(request, settings)
    wait, timeout = _wait_params(request, settings)
    ctype, limit = request.content_type, settings.upload_max_bytes
    raw = ctype.startswith("image/") or ctype == "application/octet-stream"
    if raw and request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"upload of {request.content_length} bytes exceeds the limit of {limit} bytes")
    return wait, timeout


async def _expect_upload(request: web.Request) -> web.StreamResponse | None:
    """A client that asks before it sends the body (``Expect: 100-continue``: curl does for large ones) is told
    "100 Continue" only if nothing refuses the upload before its body: aiohttp's own answer invited a client
    with no token, or with a body over the limit, to send all of it first (hundreds of MB) to be refused."""
    try:
        _before_the_body(request, request.app[_SETTINGS])
    except Refused as exc:
        log.info("upload_refused", peer=request.remote, reason=exc.message, status=exc.status, expect=True)
        return _refusal(exc)
    # what aiohttp's own handler does (and its docs' example of one that checks first)
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11:
        if expect.lower() != "100-continue":
            return _error(417, f"unknown Expect: {expect}", "expectation_failed")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the body of the answer has not begun
    return None


async def upload(request: web.Request) -> web.Response:
    app = request.app
    settings = app[_SETTINGS]
    wait, timeout = _before_the_body(request, settings)
    batch_id, opened = f"upload-{new_id()}", now()  # it starts as its body comes (its first file is stored then)
    ulog = log.bind(batch_id=batch_id, peer=request.remote)
    spools: list[Spool] = []
    try:
        try:
            await _receive(request, settings, spools)
            refusal = None
        except Refused as exc:
            refusal = exc
        except UploadRejected as exc:  # what the spool refused, as an HTTP answer
            refusal = _REFUSALS.get(type(exc), Refused)(exc.message)
        except StorageUnavailable as exc:  # the spool's disk (full, read-only): as when storing, try again later
            refusal = CannotStore(exc.message)
        if refusal is not None:
            ulog.info("upload_refused", status=refusal.status, reason=refusal.message)
            raise refusal
        return await _accept(app, spools, batch_id, opened, wait, timeout, ulog)
    finally:
        for spool in spools:
            spool.discard()


def _settled(task: asyncio.Future) -> None:
    """Take a background task's outcome: one that ends after its request did is not reported as never read."""
    if not task.cancelled():
        task.exception()


async def _accept(app: web.Application, spools: list[Spool], batch_id: str, opened: float, wait: bool,
                  timeout: float, ulog: Any) -> web.Response:
    """Store and publish every received file; with ``wait``, follow ``assets`` until each has its outcome."""
    settings, topics = app[_SETTINGS], app[_TOPICS]
    rows: list[dict[str, Any]] = []
    started: dict[str, float] = {}  # event id -> when it was published
    stamps: dict[str, dict[str, float]] = {}  # event id -> when its bytes were in, and when the broker had it
    pending: dict[str, asyncio.Future] = {}
    watcher, express = app[_OUTCOMES], app[_EXPRESS]
    syncs: dict[str, asyncio.Future] = {}  # event id -> its file's sync to disk, while published and worked on
    try:
        for spool in spools:
            # hashed and sniffed while it streamed in: storing is a rename, no second read or copy of the bytes
            stored = spool.store(settings)
            event = upload_event(stored, batch_id=batch_id, display_name=spool.name)
            if settings.upload_fsync:
                syncs[event.event_id] = sync = asyncio.ensure_future(asyncio.to_thread(make_durable, stored))
                sync.add_done_callback(_settled)  # whichever way this ends, its outcome is taken
            if wait:  # registered before publishing, so the outcome cannot be missed
                pending[event.event_id] = await watcher.expect(event.event_id, wake=express is None)
            started[event.event_id] = time.perf_counter()
            record = await publish_upload(app[_PRODUCER], topics, event)
            stamps[event.event_id] = {"received_at": spool.received_at, "published_at": now()}
            await follow_published(express, watcher if wait else None, record, event.event_id, timeout)
            rows.append({"asset_id": stored.asset_id, "event_id": event.event_id, "batch_id": batch_id,
                         "name": spool.name, "size": stored.size, "format": stored.format})
            ulog.info("upload_published", asset_id=stored.asset_id, event_id=event.event_id,
                      size=stored.size, format=stored.format)
        await asyncio.gather(*syncs.values())  # on disk before any answer: an answered upload survives power loss
    except (KafkaError, DamflowError, OSError) as exc:
        # a file is listed as taken only once it is on disk: one whose sync failed is for its client to send again
        unsynced = {e for e, ok in zip(syncs, await asyncio.gather(*syncs.values(), return_exceptions=True),
                                       strict=True) if isinstance(ok, BaseException)}
        taken = [row for row in rows if row["event_id"] not in unsynced]
        for event_id in pending:
            watcher.forget(event_id)
        # What was published and stored stays so (and is listed); the rest was not: the client may retry it.
        ulog.error("upload_failed", error=repr(exc), published=len(rows), taken=len(taken), received=len(spools))
        if rows:  # the batch counts every file published: each has its outcome, even one whose sync failed
            await _closed(await _close(app, batch_id, len(rows), opened, ulog), ulog)
        retriable = isinstance(exc, KafkaError | OSError) or getattr(exc, "retriable", False)
        code = exc.code if isinstance(exc, StorageUnavailable) else "upload_failed"  # as while receiving
        return _error(503 if retriable else 500, f"upload failed after {len(taken)} of {len(spools)} files: "
                      f"{exc}", code, uploads=taken)
    closing = await _close(app, batch_id, len(rows), opened, ulog)  # after the files: it delays none of them
    if not wait:
        await _closed(closing, ulog)
        return web.json_response({"uploads": rows}, status=202)
    try:
        if pending:
            await asyncio.wait(pending.values(), timeout=timeout)
    finally:  # also when the request is cancelled: a waiter left behind would keep the reader polling
        for event_id, fut in pending.items():
            if not fut.done():
                watcher.forget(event_id)
    finished = {event_id: fut.result() for event_id, fut in pending.items() if fut.done()}
    # into the catalog before the answer, so that what is answered browsable can be looked up at once
    sink = app[_CATALOG]
    if finished and sink is not None and await sink.apply_now([o.event for o in finished.values()],
                                                              settings.http_catalog_write_timeout_s):
        applied_at = time.perf_counter()
        finished = {e: o._replace(read_at=applied_at) for e, o in finished.items()}
    outcomes = {event_id: (event, round((read_at - started[event_id]) * 1000, 1), via)
                for event_id, (event, read_at, via) in finished.items()}
    for row in rows:
        outcome = outcomes.get(row["event_id"])
        if outcome is None:
            row.update(state="pending", ms_to_browsable=None)
            continue
        event, ms, via = outcome
        browsable = isinstance(event, AssetBrowsable)
        row.update(state="browsable" if browsable else "failed", ms_to_browsable=ms if browsable else None,
                   via=via)
        if browsable:  # where the time went (epoch s): received, stored, published, browsable; and the work itself
            row["timing"] = {**stamps[row["event_id"]], "discovered_at": event.discovered_at,
                             "browsable_at": event.browsable_at, "work_ms": round(event.work_ms, 1)}
        else:
            row["reason"] = event.reason
        ulog.info("upload_outcome", asset_id=row["asset_id"], state=row["state"], ms=ms, via=via)
    done = all(row["state"] != "pending" for row in rows)
    await _closed(closing, ulog)
    return web.json_response({"uploads": rows}, status=200 if done else 202)


async def _close(app: web.Application, batch_id: str, published: int, opened: float,
                 ulog: Any) -> asyncio.Future | None:
    """Send the upload batch's closing count (see :func:`streams.upload.close_batch`); None if it could not go."""
    try:
        return await close_batch(app[_PRODUCER], app[_TOPICS], batch_id, published, opened)
    except KafkaError as exc:
        ulog.warning("upload_batch_not_closed", error=repr(exc))
        return None


async def _closed(closing: asyncio.Future | None, ulog: Any) -> None:
    """Wait for the closing count's delivery. One the broker did not take leaves the batch's progress open (its
    files are published all the same): logged, not the request's failure."""
    if closing is None:
        return
    try:
        await closing
    except KafkaError as exc:
        ulog.warning("upload_batch_not_closed", error=repr(exc))


# -- lookups -----------------------------------------------------------------------------------------------


def _lookup(settings: Settings, ref: str) -> dict[str, Any] | None:
    try:
        with Catalog(settings.catalog_path, readonly=True) as catalog:
            return catalog.asset(ref)
    except CatalogUnavailable:
        return None


async def asset(request: web.Request) -> web.Response:
    ref = request.match_info["id"].lower()
    if not _HEX.fullmatch(ref) or len(ref) > 64:
        raise Refused("an asset id is hex (the full id or a unique prefix)")
    found = await asyncio.to_thread(_lookup, request.app[_SETTINGS], ref)
    if found is None:
        raise NotFound(f"no asset {ref}")
    log.debug("asset_served", asset_id=found["asset_id"])
    return web.json_response(found)


async def thumbnail(request: web.Request) -> web.FileResponse:
    settings = request.app[_SETTINGS]
    asset_id, size = request.match_info["id"].lower(), request.match_info["size"]
    if not _FULL_ID.fullmatch(asset_id):
        raise Refused("a thumbnail is addressed by the full asset id (64 hex characters)")
    if size not in {str(n) for n in settings.thumbnail_sizes}:
        raise NotFound(f"no thumbnail size {size}; sizes: {', '.join(map(str, settings.thumbnail_sizes))}")
    path = thumbnail_path(settings.thumbs_dir, asset_id, int(size))
    if not path.is_file():
        raise NotFound(f"no {size}-px thumbnail of {asset_id}")
    # Content-addressed: the bytes behind this URL never change.
    return web.FileResponse(path, headers={"Content-Type": "image/webp",
                                           "Cache-Control": "public, max-age=31536000, immutable"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """Whether work sent now is taken at full speed: an orchestrator's readiness probe, or a back-end waiting
    before it starts an import (until the workers have joined the group, the first file waits for them).

    Not ready is not refusing: an upload sent meanwhile is stored and queued durably, and done once the parts
    are back. An orchestrator that takes a not-ready process out of rotation (one worker restarting is enough)
    should do so only after a few failed probes. Without a stack behind the app (``readiness`` not given) only
    the HTTP side is judged."""
    check = request.app[_READINESS]
    parts: dict[str, bool] = dict(check()) if check is not None else {}
    parts["http"] = not request.app[_STOPPING].is_set()
    ready = all(parts.values())
    return web.json_response({"ready": ready, **parts}, status=200 if ready else 503)


# -- live progress -----------------------------------------------------------------------------------------


async def progress(request: web.Request) -> web.StreamResponse:
    """``ProgressEvent``s as Server-Sent Events, from a tail opened per connection and closed when it goes."""
    app = request.app
    settings, topics = app[_SETTINGS], app[_TOPICS]
    batch = request.query.get("batch") or None
    clients = app[_STREAMS]
    if len(clients) >= settings.http_max_sse_clients:
        raise Busy("too many live progress streams open")
    heartbeat, patience = settings.http_sse_heartbeat_s, settings.http_sse_write_timeout_s
    slog = log.bind(batch_id=batch, peer=request.remote)
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":  # the headers a stream would have: no tail opened, no body, no place held
        return web.Response(headers=headers)
    response = web.StreamResponse(headers=headers)
    clients.append(response)
    try:
        async with tail(app[_BOOTSTRAP], topics.progress, settings,
                        fetch_max_wait_ms=settings.sink_fetch_max_wait_ms) as consumer:
            # Positioned before the headers go out: a client that has the response sees every later event.
            await response.prepare(request)
            await response.write(b"retry: 2000\n: connected\n\n")
            slog.info("progress_stream_open")
            try:
                sender = _Sender(response, patience)
                sent = await _send_progress_now(sender, app[_SETTINGS], batch)
                sent += await _stream_progress(request, sender, consumer, batch, heartbeat)
            except ClientStalled:
                slog.warning("progress_stream_dropped", reason=f"client took nothing for {patience:g} s")
                _drop(request)
                return response
            except (KafkaError, DamflowError) as exc:
                # The headers are out: end the stream (EventSource reconnects) rather than answer again.
                slog.warning("progress_stream_failed", error=repr(exc))
                return response
            slog.info("progress_stream_closed", sent=sent)
    except ConnectionError:
        slog.info("progress_stream_gone")
    finally:
        clients.remove(response)
    return response


class ClientStalled(Exception):
    """A live progress client stopped taking bytes."""


class _Sender:
    """Writes to an event stream; a client that takes nothing for ``patience`` seconds raises ``ClientStalled``
    (a write waits while the socket's buffers are full, so a client that never reads would hold its place)."""

    def __init__(self, response: web.StreamResponse, patience: float) -> None:
        self.response, self.patience = response, patience

    async def write(self, data: bytes) -> None:
        try:
            async with asyncio.timeout(self.patience):
                await self.response.write(data)
        except TimeoutError:
            raise ClientStalled from None


async def _send_progress_now(response: _Sender, settings: Settings, batch: str | None) -> int:
    """Where the followed batch (or, for the dashboard, the newest batches) stands now, as the catalog holds it:
    a client that connects after a batch's last event (a small upload is done in a blink), or reconnects after a
    gap, is not left waiting for events that already went. Events the catalog publishes from now on follow it
    (the tail was positioned first), so the last one a client gets is the latest."""
    events = await asyncio.to_thread(_progress_now, settings, batch)
    for event in events:
        await response.write(b"event: progress\ndata: " + encode(event) + b"\n\n")
    return len(events)


def _progress_now(settings: Settings, batch: str | None) -> list[ProgressEvent]:
    try:
        with Catalog(settings.catalog_path, readonly=True) as catalog:
            return catalog.progress_now(batch)
    except CatalogUnavailable:
        return []  # no catalog yet: nothing to tell
    except (CatalogError, sqlite3.Error) as exc:  # the stream goes on: the events still come
        log.warning("progress_snapshot_failed", batch_id=batch, error=repr(exc))
        return []


async def _stream_progress(request: web.Request, response: _Sender, consumer: AIOKafkaConsumer,
                           batch: str | None, heartbeat: float) -> int:
    loop = asyncio.get_running_loop()
    stopping = request.app[_STOPPING]
    key = batch.encode() if batch else None
    beat = loop.time() + heartbeat
    sent = 0
    while not stopping.is_set() and not _gone(request):
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            for rec in records:
                if key is not None and rec.key != key:
                    continue
                try:
                    event = decode(rec.value)
                except SchemaError:
                    continue
                if isinstance(event, ProgressEvent) and (batch is None or event.batch_id == batch):
                    await response.write(b"event: progress\ndata: " + encode(event) + b"\n\n")
                    sent += 1
        if loop.time() >= beat:
            await response.write(b": heartbeat\n\n")
            beat = loop.time() + heartbeat
    return sent


def _drop(request: web.Request) -> None:
    """Reset the connection now: what the client has not read is not worth delivering. (``close()`` would wait
    for the buffered bytes to drain, which a stalled client never lets happen: socket and buffers would stay.)"""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, no FIN-WAIT
    transport.abort()


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(text=DASHBOARD_HTML, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


# -- app and runner ----------------------------------------------------------------------------------------


def create_app(settings: Settings, topics: Topics, bootstrap: str, producer: AIOKafkaProducer, *,
               catalog: CatalogSink | None = None,
               readiness: Callable[[], dict[str, bool]] | None = None) -> web.Application:
    """The aiohttp application; ``producer`` is started and stopped by the caller. ``catalog``: the catalog
    sink running beside it (``damflow up``), which writes an upload's outcome before it is answered;
    ``readiness``: which parts of the pipeline behind it run now (``GET /readyz``)."""
    app = web.Application(middlewares=[_answer_errors])
    app[_SETTINGS] = settings
    app[_TOPICS] = topics
    app[_BOOTSTRAP] = bootstrap
    app[_PRODUCER] = producer
    app[_EXPRESS] = ExpressClient(settings) if settings.express else None  # type: ignore[assignment]
    app[_CATALOG] = catalog  # type: ignore[assignment]
    app[_READINESS] = readiness  # type: ignore[assignment]
    app[_STOPPING] = asyncio.Event()
    app[_STREAMS] = []
    app.router.add_post("/upload", upload, expect_handler=_expect_upload)
    app.router.add_get("/assets/{id}", asset)
    app.router.add_get("/thumbs/{size}/{id}", thumbnail)
    app.router.add_get("/progress", progress)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", dashboard)
    app.on_startup.append(_prepare_spool)
    app.cleanup_ctx.append(_watch_outcomes)
    app.on_shutdown.append(_stop_streams)
    return app


async def _watch_outcomes(app: web.Application):
    """One reader of ``assets`` for every ``?wait=1`` upload (see :class:`streams.ingest.OutcomeWatcher`)."""
    settings = app[_SETTINGS]
    async with tail(app[_BOOTSTRAP], app[_TOPICS].assets, settings,
                    fetch_max_wait_ms=settings.waiter_fetch_max_wait_ms) as consumer:
        watcher = app[_OUTCOMES] = OutcomeWatcher(consumer, express_patience_s=settings.express_patience_s)
        task = asyncio.create_task(watcher.run(), name="upload-outcomes")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _prepare_spool(app: web.Application) -> None:
    """Create the spool directory and sweep temp files a crashed process left behind."""
    directory = spool_dir(app[_SETTINGS])
    directory.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - STALE_SPOOL_S
    for leftover in directory.glob("upload-*.part"):
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
                log.info("upload_spool_swept", file=leftover.name)


async def _stop_streams(app: web.Application) -> None:
    app[_STOPPING].set()  # live progress streams end within one poll, so shutdown does not wait for clients


async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> web.AppRunner:
    """Start serving ``app``; returns the started runner (``await runner.cleanup()`` stops it).

    ``port`` 0 picks a free port: see :func:`bound_port`.
    """
    runner = web.AppRunner(app, access_log=None,
                           shutdown_timeout=app[_SETTINGS].http_shutdown_timeout_s)
    try:
        # a startup step that fails (the spool directory) after one that started (the outcome watcher's
        # consumer) is undone by the cleanup below
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:  # said as what to change, not as "[Errno 98] ..." alone
            raise ConfigError(f"http {host}:{port}: address already in use (another `damflow up`?): set "
                              "DAMFLOW_HTTP_PORT to a free port, or 0 for any") from exc
        raise
    except BaseException:
        await runner.cleanup()
        raise
    log.info("http_ready", host=host, port=bound_port(runner))
    return runner


def live_streams(app: web.Application) -> int:
    """How many progress streams are open now (each holds a consumer on the broker)."""
    return len(app[_STREAMS])


def bound_port(runner: web.AppRunner) -> int:
    """The port a started runner listens on (the one picked when it was asked for port 0)."""
    return runner.addresses[0][1]


DASHBOARD_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>damflow</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222}h1{font-size:1.3rem;margin:0 0 .3rem}
#state{color:#888;margin:0 0 1rem}table{border-collapse:collapse;min-width:40rem}
th,td{padding:.3rem .8rem;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}
th{font-weight:600;color:#555}td:first-child,th:first-child{text-align:left;font-family:monospace}
tr.done td{color:#2a7a2a}.bad{color:#b22}
</style></head><body>
<h1>damflow</h1><p id="state">connecting&hellip;</p>
<table><thead><tr><th>batch</th><th>tier</th><th>done / total</th><th>failed</th><th>retrying</th>
<th>in flight</th><th>rate</th><th>ETA</th></tr></thead><tbody id="rows"></tbody></table>
<script>
"use strict";
const body = document.getElementById("rows"), state = document.getElementById("state"), rows = new Map();
const finished = p => p.total_final && p.done + p.failed + p.dead_lettered + (p.lost || 0) >= p.known_total;
function eta(p) {
  if (finished(p)) return "done";
  if (p.eta_s == null) return "--";
  const s = Math.round(p.eta_s);
  return s >= 60 ? Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s" : s + "s";
}
function row(p) {
  const key = p.batch_id + "/" + p.tier;
  let tr = rows.get(key);
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.batch = p.batch_id;
    for (let i = 0; i < 8; i++) tr.appendChild(document.createElement("td"));
    const same = [...body.children].filter(r => r.dataset.batch === p.batch_id);
    if (same.length) same[same.length - 1].after(tr); else body.prepend(tr);
    rows.set(key, tr);
  }
  return tr;
}
function show(p) {
  const tr = row(p), failed = p.failed + p.dead_lettered;
  const cells = [p.batch_id.slice(0, 16), "tier " + p.tier,
    p.done + " / " + p.known_total + (p.total_final ? "" : "+"), failed, p.retrying, p.in_flight,
    p.rate.toFixed(1) + "/s", eta(p)];
  cells.forEach((v, i) => { tr.children[i].textContent = v; });
  tr.children[3].className = failed ? "bad" : "";
  tr.className = finished(p) ? "done" : "";
}
const source = new EventSource("progress" + location.search);
source.addEventListener("progress", e => show(JSON.parse(e.data)));
source.onopen = () => { state.textContent = "live"; };
source.onerror = () => { state.textContent = "reconnecting\\u2026"; };
</script></body></html>
"""

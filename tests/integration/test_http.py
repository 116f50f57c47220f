"""The HTTP interface against the real embedded broker: uploads end to end, lookups, thumbnails, the SSE progress
stream and the dashboard; and every refusal (401, 400, 413, 415) leaving no temp file and publishing nothing."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from PIL import Image
from pydantic import SecretStr

from agents.hashing import hash_bytes
from schemas import FileDiscovered, ProgressEvent, decode, encode, new_id
from streams.errors import StorageUnavailable
from streams.http import bound_port, create_app, live_streams, serve
from streams.ingest import ingest_folder
from streams.kafka import ensure_topics, producer, tail
from streams.settings import Settings
from streams.supervisor import Stack
from streams.topics import Topics, topics_for
from streams.upload import spool_dir
from tests.images import make_jpeg, make_png
from tests.integration.conftest import catalog_of, wait_until

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def http_app(settings: Settings, topics: Topics, bootstrap: str) -> AsyncIterator[aiohttp.ClientSession]:
    """The app on a free port with its own producer; yields a client session rooted at it."""
    async with producer(bootstrap, compression=None) as prod:
        app = create_app(settings, topics, bootstrap, prod)
        runner = await serve(app, "127.0.0.1", 0)
        try:
            base = f"http://127.0.0.1:{bound_port(runner)}"
            async with aiohttp.ClientSession(base, timeout=aiohttp.ClientTimeout(total=60)) as session:
                session.app = app  # type: ignore[attr-defined]
                session.base = base  # type: ignore[attr-defined]
                yield session
        finally:
            await runner.cleanup()


@pytest.fixture
async def bare(make_settings: Callable[..., Settings], broker: str) -> Callable:
    """An app on the shared broker with its topics but no workers: for the refusals, which never reach them."""

    def start(**overrides) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientSession]:
        settings = make_settings(**overrides)
        topics = topics_for(settings)

        @contextlib.asynccontextmanager
        async def run() -> AsyncIterator[aiohttp.ClientSession]:
            await ensure_topics(broker, topics.all(), settings.partitions)
            async with http_app(settings, topics, broker) as session:
                session.settings = settings  # type: ignore[attr-defined]
                session.topics = topics  # type: ignore[attr-defined]
                session.bootstrap = broker  # type: ignore[attr-defined]
                yield session

        return run()

    return start


def form(*files: tuple[str, bytes], **fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        data.add_field(name, value)
    for filename, content in files:
        data.add_field("file", content, filename=filename, content_type="application/octet-stream")
    return data


def leftovers(settings: Settings) -> list[Path]:
    """Temp files of the upload spool, and anything at all in the originals store."""
    spooled = list(spool_dir(settings).glob("*")) if spool_dir(settings).exists() else []
    stored = [p for p in settings.originals_dir.rglob("*") if p.is_file()] if settings.originals_dir.exists() else []
    return spooled + stored


def asset_in_catalog(settings: Settings, asset_id: str) -> dict | None:
    if not settings.catalog_path.exists():
        return None
    with catalog_of(settings) as catalog:
        return catalog.asset(asset_id)


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` of each Server-Sent Event; comments (``: ...``) come through as ``("comment", text)``."""
    event, data = "message", []
    while line := await response.content.readline():
        text = line.decode().rstrip("\r\n")
        if not text:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif text.startswith(":"):
            yield "comment", text[1:].strip()
        elif text.startswith("event:"):
            event = text[6:].strip()
        elif text.startswith("data:"):
            data.append(text[5:].strip())


# -- the pipeline end to end ---------------------------------------------------------------------------------


async def test_uploads_become_browsable_and_are_served_back(stack: Stack, tmp_path: Path) -> None:
    s = stack.settings
    png = make_png(tmp_path / "a.png", size=(600, 400), seed=11).read_bytes()
    jpeg = make_jpeg(tmp_path / "b.jpg", size=(320, 240), seed=12).read_bytes()
    async with http_app(s, stack.topics, stack.bootstrap) as http:
        # multipart, two files, one named to escape the data directory
        async with http.post("/upload?wait=1&timeout=45",
                             data=form(("../../etc/evil.png", png), ("C:\\tmp\\b.jpg", jpeg))) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        first, second = body["uploads"]
        assert first["state"] == second["state"] == "browsable"
        assert first["ms_to_browsable"] > 0 and second["ms_to_browsable"] > 0
        assert (first["name"], first["format"], first["size"]) == ("evil.png", "PNG", len(png))
        assert (second["name"], second["format"]) == ("b.jpg", "JPEG")
        assert first["batch_id"] == second["batch_id"] and first["batch_id"].startswith("upload-")
        asset_id = first["asset_id"]
        # hashed while it streamed in: the same id tier 1 computes from the stored bytes
        assert asset_id == hash_bytes(png) and second["asset_id"] == hash_bytes(jpeg)

        # stored content-addressed; no trace of the client's name or path on disk
        stored = s.originals_dir / asset_id[:2] / f"{asset_id}.png"
        assert stored.read_bytes() == png
        assert not [p for p in tmp_path.rglob("*") if "evil" in p.name or p.name == "etc"]
        assert not list(spool_dir(s).iterdir())

        # the catalog row, through the API: full id, unique prefix; unknown and malformed ids refused
        await wait_until(lambda: asset_in_catalog(s, asset_id), what="upload in the catalog")
        async with http.get(f"/assets/{asset_id}") as resp:
            assert resp.status == 200
            row = await resp.json()
        assert row["asset_id"] == asset_id and row["tier1_state"] == "browsable"
        assert (row["width"], row["height"], row["format"]) == (600, 400, "PNG")
        [location] = row["locations"]
        assert location["display_name"] == "evil.png" and location["source"] == "upload"
        assert location["path"] == str(stored)
        async with http.get(f"/assets/{asset_id[:12].upper()}") as resp:
            assert resp.status == 200 and (await resp.json())["asset_id"] == asset_id
        async with http.get(f"/assets/{'0' * 64}") as resp:
            assert resp.status == 404 and "error" in await resp.json()
        for bad in ("abc", "not-hex", "..%2F..%2Fetc"):
            async with http.get(f"/assets/{bad}") as resp:
                assert resp.status in (400, 404) and "error" in await resp.json(), bad

        # the thumbnail, and nothing beside it
        async with http.get(f"/thumbs/256/{asset_id}") as resp:
            assert resp.status == 200 and resp.content_type == "image/webp"
            thumb = Image.open(io.BytesIO(await resp.read()))
        assert thumb.format == "WEBP" and thumb.width == 256
        async with http.get(f"/thumbs/1440/{asset_id}") as resp:
            assert resp.status == 404  # the source is smaller than 1440 px: no preview
        for size, ref in (("256", asset_id[:12]), ("256", "..%2F..%2Fcatalog.sqlite"), ("abc", asset_id),
                          ("%C2%B2", asset_id), ("9" * 5000, asset_id), ("0256", asset_id)):
            async with http.get(f"/thumbs/{size}/{ref}") as resp:
                assert resp.status in (400, 404), (size, ref)

        # a raw body, named by the query
        raw = make_png(tmp_path / "c.png", size=(90, 70), seed=13).read_bytes()
        async with http.post("/upload", params={"wait": "1", "name": "../raw.png"}, data=raw,
                             headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 200
            [up] = (await resp.json())["uploads"]
        assert up["state"] == "browsable" and up["name"] == "raw.png" and up["size"] == len(raw)
        assert (s.originals_dir / up["asset_id"][:2] / f"{up['asset_id']}.png").read_bytes() == raw
        assert not list(spool_dir(s).iterdir())


async def test_an_upload_answered_browsable_can_be_looked_up_at_once(stack: Stack, tmp_path: Path) -> None:
    # damflow up's own endpoint, beside its catalog sink: the answer waits for the catalog, not only the worker
    # (the sink alone gathers results for up to a quarter of a second before it writes them)
    bodies = [make_png(tmp_path / f"n{i}.png", size=(160, 120), seed=70 + i).read_bytes() for i in range(3)]
    async with aiohttp.ClientSession(stack.http_url) as http:
        for one, two in ((bodies[0], None), (bodies[1], bodies[2])):  # one file, then two in one request
            files = [("a.png", one)] + ([("b.png", two)] if two else [])
            async with http.post("/upload?wait=1&timeout=45", data=form(*files)) as resp:
                rows = (await resp.json())["uploads"]
            assert [r["state"] for r in rows] == ["browsable"] * len(files)
            for row in rows:
                async with http.get(f"/assets/{row['asset_id']}") as resp:
                    assert resp.status == 200, f"answered browsable, then {resp.status} from the catalog"
                    found = await resp.json()
                assert found["tier1_state"] == "browsable"
                assert found["locations"][0]["display_name"] == row["name"]


async def test_a_batch_of_uploads_finishes_in_progress(stack: Stack, tmp_path: Path) -> None:
    # uploads sent no closing count, as the scanner does: their batches never finished (progress, `status`, the
    # dashboard and an SSE client following one showed them open for ever)
    from consumers.progress import follow
    from streams.ingest import upload_files

    s = stack.settings
    bodies = [make_png(tmp_path / f"f{i}.png", size=(96, 64), seed=90 + i).read_bytes() for i in range(3)]
    async with aiohttp.ClientSession(stack.http_url) as http:
        async with http.post("/upload?wait=1&timeout=45", data=form(("a.png", bodies[0]), ("b.png", bodies[1]))) as r:
            waited = (await r.json())["uploads"][0]["batch_id"]
        async with http.post("/upload", data=form(("c.png", bodies[2]))) as r:
            assert r.status == 202
            unwaited = (await r.json())["uploads"][0]["batch_id"]
    [cli] = await upload_files(s, stack.topics, stack.bootstrap, [make_png(tmp_path / "d.png", seed=94)])
    assert cli.batch_id.startswith("upload-")
    for batch, files in ((waited, 2), (unwaited, 1), (cli.batch_id, 1)):
        async with tail(stack.bootstrap, stack.topics.progress, s, from_beginning=True) as progress:
            last = await follow(progress, batch, tier=1, timeout=30)
        assert (last.known_total, last.done, last.total_final) == (files, files, True)


async def test_progress_stream_delivers_the_batch_as_it_is_ingested(stack: Stack, tmp_path: Path) -> None:
    s = stack.settings
    folder = tmp_path / "shoot"
    folder.mkdir()
    for i in range(3):
        make_png(folder / f"img{i}.png", size=(120, 80), seed=i)
    batch_id = new_id()
    async with http_app(s, stack.topics, stack.bootstrap) as http:
        async with http.get("/progress", params={"batch": batch_id}) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            # The headers arrive once the stream is positioned: everything published from now on is seen.
            await ingest_folder(s, stack.topics, stack.bootstrap, folder, batch_id=batch_id)
            seen = []
            async with asyncio.timeout(45):
                async for event, data in sse_events(resp):
                    if event != "progress":
                        continue
                    p = json.loads(data)
                    seen.append(p)
                    if p["tier"] == 1 and p["total_final"] and p["done"] == 3:
                        break
            assert live_streams(http.app) == 1
        # the client went: its stream (and the consumer behind it) closes
        await wait_until(lambda: live_streams(http.app) == 0, timeout=10, what="the stream to close")
    assert {p["batch_id"] for p in seen} == {batch_id}  # the filter holds
    assert all(p["type"] == "ProgressEvent" for p in seen)
    last = seen[-1]
    assert last["known_total"] == 3 and last["failed"] == 0 and last["eta_s"] == 0.0


async def test_a_progress_client_is_told_first_where_its_batch_stands(bare: Callable) -> None:
    """A client that connects after a batch's last event (a small upload is done before its client can connect
    to follow it) learns where it stands from the catalog, then gets what comes; a dashboard, the newest batches."""
    from consumers.catalog import Catalog
    from tests.consumers.test_catalog import T0, browsable, scanned

    async def first_events(http: aiohttp.ClientSession, query: str, count: int) -> list[dict]:
        async with http.get(f"/progress{query}") as resp, asyncio.timeout(10):
            seen = []
            async for event, data in sse_events(resp):
                if event == "progress":
                    seen.append(json.loads(data))
                    if len(seen) == count:
                        return seen
                elif event == "comment" and data == "connected" and count == 0:
                    return seen
        raise AssertionError("the stream ended")

    async with bare(http_sse_heartbeat_s=0.2) as http:
        assert await first_events(http, "?batch=b1", 0) == []  # no catalog yet: the stream opens all the same
        with Catalog(http.settings.catalog_path) as catalog:
            catalog.apply([scanned(2, complete=True), browsable("e1", "/data/a.png"),
                           browsable("e2", "/data/b.png", "b2" * 32, at=T0 + 11),
                           scanned(1, complete=True, batch="b0", started=T0 - 60)])
        [p] = await first_events(http, "?batch=b1", 1)
        assert (p["batch_id"], p["tier"], p["done"], p["known_total"], p["total_final"]) == ("b1", 1, 2, 2, True)
        newest = await first_events(http, "", 2)  # the dashboard: oldest first, so the newest ends on top
        assert [(p["batch_id"], p["tier"]) for p in newest] == [("b0", 1), ("b1", 1)]
        async with http.get("/progress?batch=nope") as resp, asyncio.timeout(10):  # unknown: heartbeats only
            events = [e async for e, _ in _until_heartbeat(sse_events(resp))]
        assert "progress" not in events


async def _until_heartbeat(events: AsyncIterator[tuple[str, str]]) -> AsyncIterator[tuple[str, str]]:
    async for event, data in events:
        yield event, data
        if event == "comment" and data == "heartbeat":
            return


# -- refusals: no workers needed -----------------------------------------------------------------------------


async def test_a_client_that_asks_before_sending_is_refused_before_it_sends(bare: Callable, tmp_path: Path) -> None:
    # `Expect: 100-continue` (curl's, for a large body) was answered "100 Continue" before any check: a client
    # without the token, or with a body over the limit, was invited to send all of it only to be refused
    png = make_png(tmp_path / "a.png", size=(32, 32), seed=8).read_bytes()

    async def ask(http: aiohttp.ClientSession, length: int, token: str | None = None) -> tuple[bool, bytes]:
        """Whether the client was invited to send its body, and the status line of the answer."""
        host, port = http.base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        writer.write(f"POST /upload HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n{auth}"
                     f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode())
        await writer.drain()
        first = await asyncio.wait_for(reader.readline(), 10)
        invited = first.startswith(b"HTTP/1.1 100")
        if invited:  # the body goes, and the answer follows it
            await reader.readline()
            writer.write(png)
            await writer.drain()
            first = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        return invited, first.split(b" ")[1]

    async with bare(upload_max_bytes=10_000, upload_token=SecretStr("s3cret-token")) as http:
        assert await ask(http, 999_999_999, "s3cret-token") == (False, b"413")
        assert await ask(http, len(png)) == (False, b"401")
        assert leftovers(http.settings) == []  # nothing of the refused ones
        assert await ask(http, len(png), "s3cret-token") == (True, b"202")


async def test_an_expectation_other_than_100_continue_is_a_json_417(bare: Callable) -> None:
    async with bare() as http:
        host, port = http.base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"POST /upload HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
                     "Content-Length: 10\r\nExpect: 200-ok\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        writer.close()
    assert head.startswith(b"HTTP/1.1 417") and b"application/json" in head  # was text/plain, unlike every other
    assert json.loads(body) == {"error": "unknown Expect: 200-ok", "code": "expectation_failed"}


async def test_a_body_over_the_limit_is_413_and_leaves_nothing(bare: Callable, tmp_path: Path) -> None:
    big = make_png(tmp_path / "big.png", size=(400, 400), seed=1).read_bytes()  # noise: ~300 KB
    assert len(big) > 100_000
    async with bare(upload_max_bytes=100_000) as http:
        async with http.post("/upload", data=big, headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 413
            assert "100000" in (await resp.json())["error"]

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while streaming
            for i in range(0, len(big), 16_384):
                yield big[i : i + 16_384]

        async with http.post("/upload", data=chunked(), headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 413
        small = make_png(tmp_path / "small.png", size=(20, 20), seed=2).read_bytes()
        async with http.post("/upload", data=form(("small.png", small), ("big.png", big))) as resp:
            assert resp.status == 413 and (await resp.json())["code"] == "too_large"
        assert leftovers(http.settings) == []  # the small file received first went too, unpublished
        async with http.get("/healthz") as resp:  # still serving
            assert await resp.json() == {"ok": True}


async def test_what_is_not_an_image_is_415(bare: Callable, tmp_path: Path) -> None:
    text = b"#!/bin/sh\necho not an image at all, despite the name and the declared type\n" * 20
    async with bare() as http:
        async with http.post("/upload", data=text, headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 415 and "error" in await resp.json()
        async with http.post("/upload", data=form(("photo.png", text))) as resp:
            assert resp.status == 415
        async with http.post("/upload", data=b"\x89PNG", headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 415  # shorter than any signature
        async with http.post("/upload", data=b"hello", headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 415
        assert leftovers(http.settings) == []


async def test_a_raw_image_sent_as_curl_sends_it_by_default_is_told_what_to_add(bare: Callable, tmp_path: Path) -> None:
    # `curl --data-binary @a.png URL` declares application/x-www-form-urlencoded: the answer said "send
    # multipart/form-data or an image body", which is what the client had sent
    png = make_png(tmp_path / "a.png", size=(20, 20)).read_bytes()
    async with bare() as http:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        async with http.post("/upload", data=png, headers=headers) as resp:
            assert resp.status == 415
            error = (await resp.json())["error"]
        assert "image/*" in error and "application/octet-stream" in error and "Content-Type: image/png" in error
        assert leftovers(http.settings) == []


async def test_bad_requests_are_400(bare: Callable, tmp_path: Path) -> None:
    png = make_png(tmp_path / "a.png", size=(20, 20)).read_bytes()
    async with bare() as http:
        async with http.post("/upload", data=b"", headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "empty file"
        async with http.post("/upload", data=form(note="no file here")) as resp:
            assert resp.status == 400 and "file" in (await resp.json())["error"]
        async with http.post("/upload", data=form(("empty.png", b""))) as resp:
            assert resp.status == 400
        garbage = b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n" + png[:40]
        async with http.post("/upload", data=garbage,
                             headers={"Content-Type": "multipart/form-data; boundary=XYZ"}) as resp:
            assert resp.status == 400 and "malformed" in (await resp.json())["error"]
        async with http.post("/upload", data=png, headers={"Content-Type": "multipart/form-data"}) as resp:
            assert resp.status == 400  # no boundary
        async with http.post("/upload?wait=1&timeout=soon", data=png,
                             headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 400
        async with http.post("/upload?wait=1&timeout=9999", data=png, headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 400  # it said "timeout out of range", not what the range is
            assert "at most 300 s" in (await resp.json())["error"]
        async with http.get("/upload") as resp:
            assert resp.status == 405 and "error" in await resp.json()
        assert leftovers(http.settings) == []


async def test_the_token_is_required_when_set(bare: Callable, tmp_path: Path) -> None:
    png = make_png(tmp_path / "a.png", size=(32, 32), seed=7).read_bytes()
    raw = {"Content-Type": "image/png"}
    async with bare(upload_token=SecretStr("s3cret-token")) as http:
        settings, topics = http.settings, http.topics
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
            async with http.post("/upload", data=png, headers=raw | headers) as resp:
                assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        # header bytes that are not UTF-8: refused like any wrong token, not an internal error
        reader, writer = await asyncio.open_connection("127.0.0.1", int(http.base.rsplit(":", 1)[1]))
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
                     b"Content-Type: image/png\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 401")
        writer.close()
        assert leftovers(settings) == []

        async with tail(settings.broker_url, topics.t1_interactive, settings) as lane:
            async with http.post("/upload", params={"name": "a.png"}, data=png,
                                 headers=raw | {"Authorization": "Bearer s3cret-token"}) as resp:
                assert resp.status == 202
                [up] = (await resp.json())["uploads"]
            async with asyncio.timeout(20):
                while not (batches := await lane.getmany(timeout_ms=500)):
                    pass
    [[record]] = batches.values()
    event = decode(record.value)
    assert isinstance(event, FileDiscovered)
    assert (event.event_id, event.lane, event.source, event.display_name) == (up["event_id"], "interactive",
                                                                              "upload", "a.png")
    assert event.path == str(settings.originals_dir / up["asset_id"][:2] / f"{up['asset_id']}.png")
    assert os.path.exists(event.path) and not list(spool_dir(settings).iterdir())


async def test_without_a_token_an_upload_from_a_page_of_another_origin_is_403(bare: Callable, tmp_path: Path) -> None:
    # a cross-site HTML form posts multipart with no preflight: any page open in a browser could upload here
    png = make_png(tmp_path / "a.png", size=(32, 32), seed=8).read_bytes()
    async with bare() as http:
        for origin in ("http://evil.example", "http://evil.example:" + http.base.rsplit(":", 1)[1], "null",
                       "https://" + http.base.split("://", 1)[1],
                       "http://xn--zz.example"):  # a host yarl cannot decode (IDNA): was a 500 and a traceback
            async with http.post("/upload", data=form(("a.png", png)), headers={"Origin": origin}) as resp:
                answer = await resp.json()
                assert resp.status == 403 and answer["code"] == "cross_origin", (origin, answer)
                assert origin in answer["error"] and "DAMFLOW_UPLOAD_TOKEN" in answer["error"]
        assert leftovers(http.settings) == []
        # a page served here (its own origin, however its host is spelled), and a client that sends no Origin
        for headers in ({"Origin": http.base}, {"Origin": http.base.upper()}, {}):
            async with http.post("/upload", data=form(("a.png", png)), headers=headers) as resp:
                assert resp.status == 202, (headers, await resp.text())
    async with bare(upload_token=SecretStr("s3cret-token")) as http:  # a form cannot send the token: not checked
        async with http.post("/upload", data=form(("a.png", png)),
                             headers={"Origin": "http://evil.example", "Authorization": "Bearer s3cret-token"}) as resp:
            assert resp.status == 202


async def test_a_server_that_cannot_start_leaves_nothing_running(make_settings: Callable[..., Settings],
                                                                  broker: str) -> None:
    # its spool directory cannot be made (a file is in its place) after the outcome watcher started: the
    # watcher's task and consumer were left running
    settings = make_settings()
    await ensure_topics(broker, topics_for(settings).all(), settings.partitions)
    spool_dir(settings).parent.mkdir(parents=True, exist_ok=True)
    spool_dir(settings).write_text("in the way")
    before = {t for t in asyncio.all_tasks() if not t.done()}
    async with producer(broker, compression=None) as prod:
        with pytest.raises(OSError):
            await serve(create_app(settings, topics_for(settings), broker, prod), "127.0.0.1", 0)
    left = {t for t in asyncio.all_tasks() if not t.done()} - before - {asyncio.current_task()}
    assert [t.get_name() for t in left] == []


async def test_wait_gives_up_at_its_timeout_and_keeps_the_upload(bare: Callable, tmp_path: Path) -> None:
    png = make_png(tmp_path / "a.png", size=(32, 32), seed=8).read_bytes()
    async with bare() as http:  # no workers: the upload cannot become browsable
        resp = await http.post("/upload?wait=1&timeout=0.5", data=png, headers={"Content-Type": "image/png"})
        assert resp.status == 202
        [up] = (await resp.json())["uploads"]
    assert up["state"] == "pending" and up["ms_to_browsable"] is None
    assert (http.settings.originals_dir / up["asset_id"][:2] / f"{up['asset_id']}.png").read_bytes() == png


async def test_a_large_body_is_streamed_to_the_store_intact(bare: Callable) -> None:
    # a PNG signature and random bytes: an image by its first bytes, several spool flushes long
    body = b"\x89PNG\r\n\x1a\n" + os.urandom(5 * 1024 * 1024 + 12_345)

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 100_000):
            yield body[i : i + 100_000]

    async with bare(upload_max_bytes=len(body)) as http:  # exactly at the limit is allowed
        resp = await http.post("/upload", data=chunked(), headers={"Content-Type": "application/octet-stream"})
        assert resp.status == 202
        [up] = (await resp.json())["uploads"]
    assert up["size"] == len(body) and up["name"] is None
    assert (http.settings.originals_dir / up["asset_id"][:2] / f"{up['asset_id']}.png").read_bytes() == body
    assert not list(spool_dir(http.settings).iterdir())


async def test_shutdown_ends_open_progress_streams(bare: Callable) -> None:
    async with aiohttp.ClientSession() as client:
        async with bare() as http:
            resp = await client.get(f"{http.base}/progress")
            assert resp.status == 200 and live_streams(http.app) == 1
            t0 = time.monotonic()
        # leaving the app's context ran runner.cleanup(): the open stream was ended, not waited out
        assert time.monotonic() - t0 < 3 and live_streams(http.app) == 0
        async with asyncio.timeout(10):
            rest = await resp.content.read()
        assert rest.startswith(b"retry:")
        resp.release()


async def test_dashboard_and_health(bare: Callable) -> None:
    async with bare() as http:
        async with http.get("/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            page = await resp.text()
        assert "EventSource" in page and "<script" in page and "src=" not in page  # self-contained
        async with http.get("/healthz") as resp:
            assert resp.status == 200 and await resp.json() == {"ok": True}
        async with http.get("/nowhere") as resp:
            assert resp.status == 404 and "error" in await resp.json()


# -- clients that stall ----------------------------------------------------------------------------------------


async def raw_connection(http: aiohttp.ClientSession, rcvbuf: int | None = None):
    """A plain socket to the app, for clients that misbehave; ``rcvbuf`` makes its receive window small."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(http.base.rsplit(":", 1)[1])))
    return await asyncio.open_connection(sock=sock)


@pytest.mark.parametrize("shape", ["raw", "multipart"])
async def test_an_upload_body_that_stops_coming_is_408_and_leaves_nothing(bare: Callable, tmp_path: Path,
                                                                          shape: str) -> None:
    png = make_png(tmp_path / "a.png", size=(64, 64), seed=3).read_bytes()
    if shape == "raw":
        head, body = b"Content-Type: image/png\r\n", png
    else:
        head = b"Content-Type: multipart/form-data; boundary=XyZ\r\n"
        body = (b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                b"Content-Type: image/png\r\n\r\n" + png)
    async with bare(http_body_idle_timeout_s=0.5) as http:
        reader, writer = await raw_connection(http)
        try:  # announces more than it sends, then goes quiet with the connection open
            writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\n" + head
                         + f"Content-Length: {len(body) + 10_000}\r\n\r\n".encode() + body[:2000])
            async with asyncio.timeout(30):
                status = await reader.readline()
                answer = await reader.read()  # until the server closes the connection
        finally:
            writer.close()
        assert status.split()[1] == b"408", status
        assert b"request_timeout" in answer
        assert not leftovers(http.settings)


async def test_a_progress_client_that_stops_reading_is_dropped_and_frees_its_place(bare: Callable) -> None:
    async with bare(http_sse_write_timeout_s=0.5, http_max_sse_clients=1) as http:
        reader, writer = await raw_connection(http, rcvbuf=4096)
        try:
            writer.write(b"GET /progress HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await reader.readline()).split()[1] == b"200"
            await wait_until(lambda: live_streams(http.app) == 1, 10, "the stream to open")
            async with http.get("/progress") as resp:
                assert resp.status == 503  # its one place is taken
            # large progress events, far more than the sockets' buffers hold, and the client reads none of them
            big = ProgressEvent(batch_id="b" * 400_000, tier=1, known_total=1, total_final=True, done=0, at=1.0)
            async with producer(http.bootstrap, compression=None) as prod:
                for _ in range(20):
                    await prod.send(http.topics.progress, encode(big), key=b"b")
            await wait_until(lambda: live_streams(http.app) == 0, 30, "the stalled stream to be dropped")
            # and its connection is reset at once, not left to drain what the client never reads
            with pytest.raises(ConnectionResetError):
                async with asyncio.timeout(10):
                    while await reader.read(1 << 20):
                        pass
        finally:
            writer.close()
        async with http.get("/progress") as resp:  # its place is free again
            assert resp.status == 200


async def test_a_head_request_for_progress_is_answered_with_headers_only(bare: Callable) -> None:
    """HEAD (a probe checking the endpoint) gets the stream's headers and the end of the answer, not a stream: no
    tail is opened for it, and no event bytes follow the headers, which would corrupt a kept-alive connection."""
    async with bare() as http:
        reader, writer = await raw_connection(http)
        try:
            writer.write(b"HEAD /progress?batch=b1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            async with asyncio.timeout(10):
                answer = await reader.read()  # until the server closes the connection: the answer is over
        finally:
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split()[1] == b"200" and b"text/event-stream" in head and body == b""
        assert live_streams(http.app) == 0


async def test_a_full_disk_while_receiving_is_503_and_leaves_nothing(bare: Callable, tmp_path: Path,
                                                                     monkeypatch) -> None:
    from tests.streams.test_upload_store import spool_on_a_full_disk

    png = make_png(tmp_path / "a.png", size=(32, 32), seed=4).read_bytes()
    async with bare() as http:
        spool_on_a_full_disk(monkeypatch, tmp_path)
        async with http.post("/upload", data=png, headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 503 and (await resp.json())["code"] == "storage_unavailable"
        assert leftovers(http.settings) == []


async def test_an_upload_is_answered_only_once_it_is_on_disk_and_a_failed_sync_is_503(
    bare: Callable, tmp_path: Path, monkeypatch
) -> None:
    import streams.http

    synced: list[str] = []
    broken = {"disk": False}

    def make_durable(stored) -> None:  # the sync runs while the upload is published: the answer waits for it
        if broken["disk"]:
            raise StorageUnavailable("cannot store uploads now: Input/output error")
        synced.append(stored.asset_id)

    monkeypatch.setattr(streams.http, "make_durable", make_durable)
    png = make_png(tmp_path / "a.png", size=(32, 32), seed=5).read_bytes()
    async with bare() as http:
        async with http.post("/upload", data=png, headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 202
            [up] = (await resp.json())["uploads"]
        assert synced == [up["asset_id"]]
        broken["disk"] = True
        async with http.post("/upload", data=png, headers={"Content-Type": "image/png"}) as resp:
            body = await resp.json()
        # the client is told to send it again: a file not on disk is not listed as taken, though published
        assert (resp.status, body["code"], body["uploads"]) == (503, "storage_unavailable", [])
    async with bare(upload_fsync=False) as http:
        async with http.post("/upload", data=png, headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 202
    assert synced == [up["asset_id"]]  # not synced again


async def test_a_slow_but_steady_body_is_not_cut_off(bare: Callable, tmp_path: Path) -> None:
    png = make_png(tmp_path / "a.png", size=(64, 64), seed=5).read_bytes()
    note = b"n" * 4000
    body = [b'--XyZ\r\nContent-Disposition: form-data; name="note"\r\n\r\n'] + \
        [note[i:i + 500] for i in range(0, len(note), 500)] + \
        [b'\r\n--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
         b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--XyZ--\r\n"]
    async with bare(http_body_idle_timeout_s=0.5) as http:
        reader, writer = await raw_connection(http)
        try:
            writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                         b"Content-Type: multipart/form-data; boundary=XyZ\r\n"
                         + f"Content-Length: {sum(map(len, body))}\r\n\r\n".encode())
            for piece in body:  # a part that takes 2.4 s in all, a piece every 0.3 s: never idle for 0.5 s
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.3)  # the pace of a slow client, not synchronisation
            async with asyncio.timeout(30):
                status = await reader.readline()
        finally:
            writer.close()
    assert status.split()[1] == b"202", status

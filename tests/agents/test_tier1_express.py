"""Tier 1's express path without a broker: the agents as `agents.tier1.register` wires them, on a stand-in app whose
topics keep what is sent to them (the broker's part is the integration tests')."""

from __future__ import annotations

import asyncio
import contextlib
import types
from pathlib import Path

import pytest

from agents import tier1
from agents.browse import Browsed
from schemas import AssetBrowsable, FileDiscovered, decode, encode
from streams.express import ExpressRequest
from streams.retries import FailureHistory
from streams.settings import Settings
from streams.topics import Topics, topics_for


class _Topic:
    def __init__(self, app: _App, name: str) -> None:
        self.app, self.name = app, name

    async def send(self, key=None, value=None, headers=None) -> asyncio.Future:
        self.app.sent.append((self.name, value))
        done = asyncio.get_running_loop().create_future()
        if self.name.endswith("assets") and self.app.refuse_assets:
            self.app.refuse_assets -= 1
            done.set_exception(ConnectionError("broker away"))
        else:
            done.set_result(None)
        return done


class _App:
    """What `tier1.register` uses of a faust app."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.refuse_assets = 0
        self.agents: dict[str, object] = {}
        self.conf = types.SimpleNamespace(producer_max_request_size=1 << 20)
        self.consumer = types.SimpleNamespace(assignment=set)
        signal = types.SimpleNamespace(connect=lambda fn: fn)
        self.on_partitions_revoked = self.on_partitions_assigned = self.on_before_shutdown = signal

    def topic(self, name: str, **_kw) -> _Topic:
        return _Topic(self, name)

    def agent(self, topic: _Topic, *, name: str, concurrency: int):
        def attach(fn):
            self.agents[name] = fn
            return fn

        return attach

    def task(self, fn):
        return fn


class _Pool:
    """Makes thumbnails once: a second run for the same file finds them made (deduplicated), as browse_file does."""

    def __init__(self, made: bool = False) -> None:
        self.runs, self.made = 0, made
        self.event_ids: list[str | None] = []

    async def run(self, fn, path, data_dir, **kw) -> Browsed:
        self.runs += 1
        self.event_ids.append(kw.get("event_id"))
        return Browsed(asset_id="a1" * 32, size=9, format="PNG", width=640, height=480,
                       thumbnails={"256": "thumbs/a1/x.256.webp"}, deduplicated=self.made or self.runs > 1,
                       work_ms=30.0)


class _Governor:
    @contextlib.contextmanager
    def working(self, *_args):
        yield


class _Fetched:
    """The broker's copy of the record, as the interactive agent's stream hands it over."""

    def __init__(self, request: ExpressRequest, headers: dict[str, bytes] | None = None) -> None:
        self.value = request.value
        self.message = types.SimpleNamespace(topic=request.topic, partition=request.partition,
                                             offset=request.offset, value=request.value, key=request.key,
                                             headers=list((headers or {}).items()), timestamp=1.0)
        self.acked = asyncio.Event()

    def ack(self) -> None:
        self.acked.set()

    def noack(self):
        return self

    async def events(self):
        yield self


def _registered(tmp_path: Path, *, express: bool, pool: _Pool | None = None) -> tuple[_App, _Pool, Topics]:
    """Tier 1's agents registered on the stand-ins: (app, pool, topics)."""
    settings = Settings(data_dir=tmp_path, express=express)
    topics = topics_for(settings)
    app, chosen = _App(), pool or _Pool()
    tier1.register(app, settings, topics, types.SimpleNamespace(for_lane=lambda lane: chosen),  # type: ignore[arg-type]
                   _Governor())
    return app, chosen, topics


def _upload(tmp_path: Path) -> FileDiscovered:
    return FileDiscovered(event_id="e1", batch_id="upload-1", lane="interactive", source="upload",
                          path=str(tmp_path / "originals/a1/x.png"), size=9, mtime_ns=1, discovered_at=1.0)


def _scanned(tmp_path: Path) -> FileDiscovered:
    return FileDiscovered(event_id="e1", batch_id="b1", lane="batch", source="scan", path=str(tmp_path / "a.png"),
                          size=9, mtime_ns=1, discovered_at=1.0)


def _published(app: _App, topics: Topics) -> list:
    """The events sent to ``assets``, in order."""
    return [decode(value) for name, value in app.sent if name == topics.assets]


def _failures_recorded(app: _App) -> list[str]:
    """The retry and dead-letter topics anything was sent to."""
    return [name for name, _ in app.sent if ".dlq" in name or ".retry." in name]


@pytest.fixture
def quick_redos(monkeypatch) -> None:
    """The agent's redos after a broker refusal come at once."""
    from agents import lanes

    monkeypatch.setattr(lanes, "_AGAIN_S", (0.001, 0.002))


async def test_an_upload_answered_by_express_whose_results_the_broker_refused_is_published_as_answered(
    tmp_path: Path,
) -> None:
    # the redo used to work the file again: its thumbnails made, it was called a duplicate, and tier 3 skipped it
    app, pool, topics = _registered(tmp_path, express=True)
    record = _upload(tmp_path)
    request = ExpressRequest(topics.t1_interactive, 0, 5, encode(record), b"k")

    app.refuse_assets = 1
    answered = decode(await app.express._serve(request))  # type: ignore[attr-defined]
    assert isinstance(answered, AssetBrowsable) and not answered.deduplicated

    fetched = _Fetched(request)
    await asyncio.wait_for(app.agents["tier1-interactive"](fetched), 10)
    assert fetched.acked.is_set()
    assert pool.runs == 1  # worked on once
    assert pool.event_ids == ["e1"]  # named: a redo on a worker started since finds the thumbnails made for it
    published = _published(app, topics)
    assert published[-1] == answered  # what the caller was told, as it was told
    assert not _failures_recorded(app)


async def test_a_retry_that_finds_the_thumbnails_made_is_not_called_a_duplicate(tmp_path: Path) -> None:
    # its own earlier attempt may have made them (it failed after that): tier 3 must not skip it as a duplicate
    app, pool, topics = _registered(tmp_path, express=False, pool=_Pool(made=True))
    record = _scanned(tmp_path)
    request = ExpressRequest(topics.t1_batch, 0, 5, encode(record), b"k")
    for attempt_headers in ({}, FailureHistory(attempts=1, first_failure_at=1.0).headers()):
        await asyncio.wait_for(app.agents["tier1-batch"](_Fetched(request, attempt_headers)), 10)
    first, retry = _published(app, topics)
    assert first.deduplicated  # a first attempt finding them made: the content was browsed before
    assert not retry.deduplicated and retry.attempts == 2


async def test_an_upload_whose_told_outcome_the_broker_refuses_again_on_its_redo_is_published_as_answered(
    tmp_path: Path, quick_redos: None,
) -> None:
    # the redo took the told outcome out of keeping before sending it: refused once more, it was lost, and the
    # refusal (a broker blip) dead-lettered a file its caller was told is browsable
    app, pool, topics = _registered(tmp_path, express=True)
    record = _upload(tmp_path)
    request = ExpressRequest(topics.t1_interactive, 0, 5, encode(record), b"k")

    app.refuse_assets = 2  # the express run's send and the redo's first send
    answered = decode(await app.express._serve(request))  # type: ignore[attr-defined]
    assert isinstance(answered, AssetBrowsable)
    fetched = _Fetched(request)
    await asyncio.wait_for(app.agents["tier1-interactive"](fetched), 10)

    assert fetched.acked.is_set() and app.refuse_assets == 0
    published = _published(app, topics)
    assert len(published) == 3 and all(p == answered for p in published)  # the told outcome, sent until taken
    assert pool.runs == 1
    assert not _failures_recorded(app)


async def test_a_file_whose_results_the_broker_refuses_for_now_is_worked_again_not_dead_lettered(
    tmp_path: Path, quick_redos: None,
) -> None:
    # the refusal was classified as the file's own (unexpected, permanent) failure: dead-lettered, its work done
    app, pool, topics = _registered(tmp_path, express=False)
    record = _scanned(tmp_path)
    fetched = _Fetched(ExpressRequest(topics.t1_batch, 0, 5, encode(record), b"k"))

    app.refuse_assets = 2
    await asyncio.wait_for(app.agents["tier1-batch"](fetched), 10)

    assert fetched.acked.is_set() and pool.runs == 3  # worked again until its results were taken
    published = _published(app, topics)
    assert [type(p) for p in published] == [AssetBrowsable] * 3 and published[-1].attempts == 1
    assert not _failures_recorded(app)

"""Failure isolation on the real broker: retries with backoff, dead letters, isolated decoding, replay."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from schemas import AssetBrowsable, AssetFailed, DeadLetter, decode
from streams.ingest import ingest_folder
from streams.kafka import tail
from streams.supervisor import Stack
from tests.agents.test_thumbnails import BROKEN
from tests.images import make_png
from tests.integration.conftest import catalog_of, wait_until

pytestmark = pytest.mark.integration

FAST_RETRY = dict(retry_backoff_s=0.2, retry_jitter=0.1, fault_injection=True)


async def read_topic(stack: Stack, topic: str, until: int, timeout_ms: int = 5000) -> list:
    """Everything on ``topic`` from the start, once at least ``until`` records are there."""
    out = []
    async with tail(stack.bootstrap, topic, stack.settings, from_beginning=True) as consumer:
        while len(out) < until:
            batches = await consumer.getmany(timeout_ms=timeout_ms)
            if not batches:
                break
            out += [decode(r.value) for rs in batches.values() for r in rs]
    return out


@pytest.fixture
async def fault_stack(make_settings) -> Stack:
    async with Stack(make_settings(**FAST_RETRY, max_attempts=3, decode_timeout_s=3.0)) as s:
        yield s


async def test_transient_failure_succeeds_on_retry_with_its_attempt_count(fault_stack: Stack, tmp_path: Path):
    folder = tmp_path / "flaky"
    folder.mkdir()
    flaky = make_png(folder / "flaky.png", size=(120, 90), seed=1)
    (folder / "flaky.png.transient").write_text("2")  # the first two attempts fail transiently
    make_png(folder / "steady.png", size=(120, 90), seed=2)
    s = fault_stack.settings

    result = await ingest_folder(s, fault_stack.topics, fault_stack.bootstrap, folder, wait=True, timeout=60)

    assert result.progress.done == 2 and result.progress.dead_lettered == 0
    events = await read_topic(fault_stack, fault_stack.topics.assets, until=4)
    flaky_events = [e for e in events if e.path == os.path.realpath(flaky)]
    retrying = sorted((e for e in flaky_events if isinstance(e, AssetFailed)), key=lambda e: e.attempts)
    browsable = [e for e in flaky_events if isinstance(e, AssetBrowsable)]
    assert [(e.outcome, e.attempts, e.retriable) for e in retrying] == [("retrying", 1, True), ("retrying", 2, True)]
    # the chain's start travels with its retries: what orders its steps in the catalog, whatever the clocks
    assert [e.first_failure_at for e in retrying] == [retrying[0].failed_at] * 2
    assert [e.attempts for e in browsable] == [3]
    assert fault_stack.retrier.forwarded >= 1
    with catalog_of(s) as catalog:
        assert catalog.asset(os.path.realpath(flaky))["tier1_state"] == "browsable"


async def test_a_crashing_or_hanging_decoder_costs_that_one_file_only(fault_stack: Stack, tmp_path: Path):
    folder = tmp_path / "hostile"
    folder.mkdir()
    for i in range(6):
        make_png(folder / f"ok{i}.png", size=(200, 150), seed=10 + i)
    make_png(folder / "boom__crash__.png", size=(64, 64), seed=30)
    make_png(folder / "stuck__hang__.png", size=(64, 64), seed=31)
    s = fault_stack.settings

    result = await ingest_folder(s, fault_stack.topics, fault_stack.bootstrap, folder, wait=True, timeout=120)

    p = result.progress
    assert p.done == 6 and p.dead_lettered == 2
    assert all(proc.returncode is None for proc in fault_stack.workers)  # the worker itself survived
    assert fault_stack.worker_restarts == 0
    letters = [e for e in await read_topic(fault_stack, fault_stack.topics.dlq(1), until=2)
               if isinstance(e, DeadLetter)]
    by_name = {Path(e.file_path).name: e for e in letters}
    assert by_name["boom__crash__.png"].error_class == "DecoderCrashed"
    assert by_name["stuck__hang__.png"].error_class == "DecoderTimeout"
    # transient decoder failures are retried, then dead-lettered after the last attempt
    assert {e.attempts for e in letters} == {s.max_attempts}
    assert all(e.first_failure_at < e.last_failure_at for e in letters)


async def test_broken_corpus_files_are_dead_lettered_permanently_and_the_rest_completes(
    make_settings, corpus: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(corpus / "broken", folder)
    make_png(folder / "a-good-one.png", size=(100, 100), seed=3)
    undecodable = {Path(name).name for name, error in BROKEN.items() if error is not None}
    async with Stack(make_settings(**FAST_RETRY)) as stack:
        s = stack.settings
        result = await ingest_folder(s, stack.topics, stack.bootstrap, folder, wait=True, timeout=180)
        letters = [e for e in await read_topic(stack, stack.topics.dlq(1), until=len(undecodable))
                   if isinstance(e, DeadLetter)]
    p = result.progress
    assert p.known_total == len(BROKEN) + 1
    assert p.dead_lettered == len(undecodable) and p.done == p.known_total - len(undecodable)
    assert {Path(e.file_path).name for e in letters} == undecodable
    for e in letters:
        assert e.attempts == 1, f"{e.file_path}: permanent failures are not retried"
        assert e.error_class in {"CorruptImage", "UnsupportedFormat", "DecompressionBomb"}
        assert e.error_message and e.traceback
    with catalog_of(s) as catalog:
        assert catalog.asset(os.path.realpath(folder / "a-good-one.png"))["tier1_state"] == "browsable"


def damflow(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


async def test_dlq_replay_completes_a_fixed_asset_and_replaying_twice_changes_nothing(
    fault_stack: Stack, tmp_path: Path
) -> None:
    folder = tmp_path / "fixable"
    folder.mkdir()
    good_bytes = make_png(tmp_path / "source.png", size=(150, 100), seed=4).read_bytes()
    target = folder / "later.png"
    target.write_bytes(good_bytes[:200])  # truncated: a permanent failure for now
    s = fault_stack.settings
    env = dict(os.environ, DAMFLOW_BROKER_URL=fault_stack.bootstrap, DAMFLOW_DATA_DIR=str(s.data_path),
               DAMFLOW_TOPIC_PREFIX=s.topic_prefix, DAMFLOW_GROUP_ID=s.group_id)

    first = await ingest_folder(s, fault_stack.topics, fault_stack.bootstrap, folder, wait=True, timeout=60)
    assert first.progress.dead_lettered == 1

    listed = json.loads(damflow("dlq", "list", "--tier", "1", "--json", env=env).stdout)
    assert [(r["error_class"], r["status"], r["path"]) for r in listed] == [
        ("CorruptImage", "pending", os.path.realpath(target))]
    letter_id = listed[0]["id"]
    shown = json.loads(damflow("dlq", "show", letter_id, env=env).stdout)[0]
    assert shown["envelope"]["original_topic"] == fault_stack.topics.t1_batch
    assert "truncated" in shown["envelope"]["error_message"] or shown["envelope"]["error_code"] == "corrupt_image"

    dry = json.loads(damflow("dlq", "replay", "--dry-run", "--json", env=env).stdout)
    assert dry[0]["result"].startswith("would replay")

    target.write_bytes(good_bytes)  # the cause is fixed
    async with tail(fault_stack.bootstrap, fault_stack.topics.assets, s) as assets:
        replayed = json.loads(damflow("dlq", "replay", "--json", env=env).stdout)
        assert [r["result"].split(" to ")[0] for r in replayed] == ["replayed"]
        while True:
            records = [decode(r.value) for rs in (await assets.getmany(timeout_ms=10000)).values() for r in rs]
            assert records, "replayed event never processed"
            done = [e for e in records if isinstance(e, AssetBrowsable)]
            if done:
                break
    original = json.loads(shown["envelope"]["original_payload"])
    assert done[0].source == "replay" and done[0].event_id == original["event_id"]

    again = json.loads(damflow("dlq", "replay", "--json", env=env).stdout)
    assert again == []  # nothing pending any more
    again_by_id = json.loads(damflow("dlq", "replay", letter_id, "--json", env=env).stdout)
    assert again_by_id[0]["result"] == "skipped: already replayed"
    for action in ("replay", "purge"):  # an id no letter has was "nothing to do", exit 0: a script could not tell
        wrong = damflow("dlq", action, letter_id, "1:0:999999", "--json", env=env)
        assert wrong.returncode == 1 and json.loads(wrong.stdout)[-1] == {"id": "1:0:999999",
                                                                          "result": "no such letter"}
    assert json.loads(damflow("dlq", "list", "--json", env=env).stdout) == []
    asset = await wait_until(lambda: _browsable(s, os.path.realpath(target)), what="replayed asset in catalog")
    assert asset["locations"][0]["path"] == os.path.realpath(target)
    with catalog_of(s) as catalog:
        assert catalog.counts()["locations"] == 1
        batch = catalog.progress(first.batch_id, 1)
    assert (batch.done, batch.dead_lettered, batch.known_total) == (1, 0, 1)  # the same file, counted once


async def test_a_replay_that_fails_again_says_which_replay_it_was(fault_stack: Stack, tmp_path: Path) -> None:
    # the failure of a replayed event carries its replay count, which (with its attempt) orders the event's
    # outcomes in the catalog whatever the workers' clocks say
    folder = tmp_path / "still-broken"
    folder.mkdir()
    target = folder / "cut.png"
    target.write_bytes(make_png(tmp_path / "source.png", size=(150, 100), seed=5).read_bytes()[:200])
    s = fault_stack.settings
    env = dict(os.environ, DAMFLOW_BROKER_URL=fault_stack.bootstrap, DAMFLOW_DATA_DIR=str(s.data_path),
               DAMFLOW_TOPIC_PREFIX=s.topic_prefix, DAMFLOW_GROUP_ID=s.group_id)
    first = await ingest_folder(s, fault_stack.topics, fault_stack.bootstrap, folder, wait=True, timeout=60)
    assert first.progress.dead_lettered == 1
    async with tail(fault_stack.bootstrap, fault_stack.topics.assets, s) as assets:
        replayed = json.loads(damflow("dlq", "replay", "--json", env=env).stdout)
        assert [r["result"].split(" to ")[0] for r in replayed] == ["replayed"]
        failures: list[AssetFailed] = []
        while not failures:
            records = [decode(r.value) for rs in (await assets.getmany(timeout_ms=10000)).values() for r in rs]
            assert records, "replayed event never processed"
            failures = [e for e in records if isinstance(e, AssetFailed)]
    [again] = failures
    assert (again.outcome, again.replay_count, again.attempts) == ("dead_lettered", 1, 1)
    assert again.first_failure_at == again.failed_at  # a replay's chain begins with it
    letters = json.loads(damflow("dlq", "list", "--json", env=env).stdout)
    assert [r["replay_count"] for r in letters] == [1]
    with catalog_of(s) as catalog:
        batch = catalog.progress(first.batch_id, 1)
    assert (batch.dead_lettered, batch.in_flight) == (1, 0)


def _browsable(settings, path: str) -> dict | None:
    with catalog_of(settings) as catalog:
        asset = catalog.asset(path)
    return asset if asset and asset["tier1_state"] == "browsable" else None


@pytest.fixture
async def holding_stack(make_settings) -> Stack:
    """Fault injection with a decode time limit no held file reaches: a hold lasts as long as the test takes to
    get there, which on a slow machine may be longer than ``fault_stack``'s 3 s (the held work would then time
    out, be retried and held again, and end dead-lettered)."""
    async with Stack(make_settings(**FAST_RETRY, decode_timeout_s=600.0)) as s:
        yield s


async def test_work_cut_short_by_a_worker_stopping_is_done_by_its_successor(holding_stack: Stack, tmp_path: Path):
    fault_stack = holding_stack
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        make_png(folder / f"{i}.png", size=(64, 64), seed=i)
    hold = folder / "1.png.hold"  # the work on 1.png is in progress until this goes
    hold.touch()
    s = fault_stack.settings
    ingest = asyncio.create_task(ingest_folder(s, fault_stack.topics, fault_stack.bootstrap, folder, wait=True,
                                               timeout=120))
    with catalog_of(s) as catalog:
        await wait_until(lambda: catalog.counts()["browsable"] == 2, what="the two files not held")
    [worker] = fault_stack.workers
    worker.send_signal(signal.SIGTERM)  # a graceful stop, with 1.png in progress
    await worker.wait()
    hold.unlink()
    result = await ingest  # the supervisor's new worker gets the partition and the file again
    assert fault_stack.worker_restarts == 1
    assert result.progress.done == 3

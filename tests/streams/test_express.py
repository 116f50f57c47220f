"""Express delivery without a broker: the once-ledger, and the worker's socket seen from the publisher's side."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import structlog.testing

from schemas import encode
from streams.express import (
    ExpressClient, ExpressEvent, ExpressRequest, ExpressServer, OnceLedger, answer_early, record_key, registry_dir,
    same_user, tell_early,
)
from streams.settings import Settings
from tests.consumers.test_catalog import browsable

TOPIC = "damflow.t1.interactive"


def request(offset: int = 7, partition: int = 1, topic: str = TOPIC) -> ExpressRequest:
    return ExpressRequest(topic, partition, offset, b'{"event": 1}', b"key", 1_700_000_000_000, [("h", b"v")])


# -- the ledger: whichever copy comes first does the work, the other gets its outcome -------------------------


async def test_two_copies_of_a_record_run_the_work_once_and_both_get_its_outcome() -> None:
    ledger, runs, release = OnceLedger(), [], asyncio.Event()

    async def work() -> str:
        runs.append(1)
        await release.wait()
        return "outcome"

    first = asyncio.create_task(ledger.run(("t", 0, 5), work))
    await asyncio.sleep(0)  # the first copy has started its work
    second = asyncio.create_task(ledger.run(("t", 0, 5), work))
    await asyncio.sleep(0)
    assert not second.done()  # it waits for the first copy's outcome, not for its own run
    release.set()
    assert await first == await second == "outcome"
    assert runs == [1]
    assert len(ledger) == 0  # both copies seen: forgotten


async def test_a_copy_arriving_after_the_work_is_done_gets_the_outcome_without_running_it() -> None:
    ledger, runs = OnceLedger(), []

    async def work() -> str:
        runs.append(1)
        return "done"

    assert await ledger.run(("t", 0, 1), work) == "done"
    assert len(ledger) == 1  # the other copy is still to come
    assert await ledger.run(("t", 0, 1), work) == "done"
    assert runs == [1] and len(ledger) == 0
    # another record is another piece of work
    assert await ledger.run(("t", 0, 2), work) == "done"
    assert runs == [1, 1]


async def test_when_the_copy_doing_the_work_is_cancelled_the_waiting_copy_does_it() -> None:
    ledger, started = OnceLedger(), asyncio.Event()

    async def stuck() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    async def work() -> str:
        return "by the second copy"

    first = asyncio.create_task(ledger.run(("t", 0, 9), stuck))
    await started.wait()
    second = asyncio.create_task(ledger.run(("t", 0, 9), work))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == "by the second copy"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_the_ledger_forgets_old_and_surplus_entries() -> None:
    async def work() -> str:
        return "x"

    ledger = OnceLedger(ttl_s=0.0)
    for offset in range(5):
        await ledger.run(("t", 0, offset), work)
    assert len(ledger) == 1  # each new record expired the finished ones before it
    bounded = OnceLedger(max_entries=3)
    for offset in range(10):
        await bounded.run(("t", 0, offset), work)
    assert len(bounded) == 3


async def test_a_full_ledger_keeps_a_record_still_in_work_so_its_other_copy_does_not_run_it_again() -> None:
    # the oldest entry was forgotten when the ledger was full, in work or not: the record's fetched copy then
    # found no entry and worked on it a second time
    ledger, runs, started, release = OnceLedger(max_entries=2), [], asyncio.Event(), asyncio.Event()

    async def work_a() -> str:
        runs.append("a")
        started.set()
        await release.wait()
        return "A"

    express_copy = asyncio.create_task(ledger.run(("t", 0, 1, 1), work_a))
    await started.wait()
    for offset in (2, 3):  # other records, whose express copies went nowhere: only their fetched copies came
        assert await ledger.run(("t", 0, offset, offset), lambda o=offset: asyncio.sleep(0, result=o)) == offset
    assert len(ledger) == 2  # full: the finished record 2 made room for 3, the one in work stayed
    fetched_copy = asyncio.create_task(ledger.run(("t", 0, 1, 1), work_a))
    release.set()
    assert await asyncio.gather(express_copy, fetched_copy) == ["A", "A"]
    assert runs == ["a"]
    assert len(ledger) == 1  # both copies of record 1 seen: forgotten; record 3 waits for its other copy


# -- answering early: the outcome as soon as the work has it, its publishing after ---------------------------


async def test_the_outcome_is_answered_when_told_and_the_work_goes_on_to_its_end() -> None:
    finishing: set[asyncio.Task] = set()
    published, release = [], asyncio.Event()

    async def work() -> str:
        tell_early("browsable")
        await release.wait()  # its results on their way to the broker
        published.append(1)
        return "browsable"

    assert await asyncio.wait_for(answer_early(work, finishing), 5) == "browsable"
    assert published == [] and len(finishing) == 1  # answered before the publishing ended, which goes on
    release.set()
    await asyncio.gather(*finishing)
    assert published == [1] and not finishing


async def test_work_that_tells_nothing_is_answered_with_what_it_returns_or_raises() -> None:
    async def failed() -> str:
        return "failed, recorded"

    async def broken() -> str:
        raise RuntimeError("could not even record its failure")

    finishing: set[asyncio.Task] = set()
    assert await answer_early(failed, finishing) == "failed, recorded"
    with pytest.raises(RuntimeError):
        await answer_early(broken, finishing)
    assert not finishing
    tell_early("nobody waits")  # outside express work: nothing happens


async def test_work_that_fails_after_telling_is_logged_and_work_not_yet_told_is_cancelled_with_its_caller() -> None:
    finishing: set[asyncio.Task] = set()
    release = asyncio.Event()

    async def publish_fails() -> str:
        tell_early("browsable")
        await release.wait()
        raise ConnectionError("broker away")

    assert await answer_early(publish_fails, finishing) == "browsable"
    [task] = finishing
    with structlog.testing.capture_logs() as logs:
        release.set()
        with pytest.raises(ConnectionError):
            await task
        await asyncio.sleep(0)  # its done-callback has run
    assert not finishing
    assert [(e["event"], e["error"]) for e in logs] == [
        ("express_work_failed_after_answer", "ConnectionError('broker away')")]

    async def refused_at_once() -> str:  # told, then failed before it ever yielded (a send refused at once)
        tell_early("browsable")
        raise ValueError("message too large")

    with structlog.testing.capture_logs() as logs:
        assert await answer_early(refused_at_once, finishing) == "browsable"  # the answer stands
    assert not finishing and [e["event"] for e in logs] == ["express_work_failed_after_answer"]

    started, stopped = asyncio.Event(), asyncio.Event()

    async def long_work() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        return "never"

    caller = asyncio.create_task(answer_early(long_work, finishing))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(stopped.wait(), 5)  # the work was cancelled with its caller
    assert not finishing


def test_an_express_record_reads_like_the_fetched_message() -> None:
    event = ExpressEvent.of(request())
    assert event.value == b'{"event": 1}'
    msg = event.message
    assert (msg.topic, msg.partition, msg.offset, msg.key) == (TOPIC, 1, 7, b"key")
    assert msg.headers == [("h", b"v")] and msg.timestamp == 1_700_000_000.0


# -- the socket: the publisher finds the owner of the partition and gets its outcome ----------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


async def test_the_owner_of_the_partition_answers_with_the_outcome(settings: Settings) -> None:
    seen = []

    async def serve(req: ExpressRequest) -> bytes:
        seen.append(req)
        return encode(browsable("e1", "/u.png"))

    server = ExpressServer(settings, TOPIC, serve)
    await server.start()
    try:
        client = ExpressClient(settings)
        assert await client.outcome(request(), 5) is None  # registered nowhere yet: nobody to ring
        server.publish({0})
        assert await client.outcome(request(partition=1), 5) is None  # partition 1 is somebody else's
        server.publish({0, 1})
        outcome = await client.outcome(request(partition=1), 5)
        assert outcome is not None and outcome.event_id == "e1"
        assert seen == [request(partition=1)]  # the record arrived as published
        assert await client.outcome(request(topic="damflow.t1.batch"), 5) is None  # not an express topic
        assert server.served == 1
    finally:
        await server.stop()
    assert not server.registration.exists()
    assert await ExpressClient(settings).outcome(request(), 5) is None  # gone: nobody to ring


async def test_no_outcome_a_stale_registration_or_a_dropped_connection_mean_fall_back(settings: Settings) -> None:
    client = ExpressClient(settings)
    # a worker that died without removing its registration: the connection is refused
    registry_dir(settings).mkdir(parents=True)
    (registry_dir(settings) / f"{client.host}-ghost.json").write_text(json.dumps(
        {"address": "\0damflow-express-nobody", "host": client.host, "pid": 1, "topic": TOPIC, "partitions": [1]}))
    assert await client.outcome(request(), 5) is None
    (registry_dir(settings) / f"{client.host}-ghost.json").unlink()

    async def nothing(req: ExpressRequest) -> None:
        return None  # e.g. a poison pill: dead-lettered, no tier-1 outcome to give

    async def dies(req: ExpressRequest) -> bytes:
        raise ConnectionResetError("the worker went away mid-way")

    for serve in (nothing, dies):
        server = ExpressServer(settings, TOPIC, serve)
        await server.start()
        server.publish({1})
        try:
            assert await client.outcome(request(), 5) is None
        finally:
            await server.stop()


@contextlib.asynccontextmanager
async def answering(settings: Settings) -> AsyncIterator[ExpressServer]:
    """A worker's express end for partition 1, answering every record with the same browsable outcome."""

    async def serve(req: ExpressRequest) -> bytes:
        return encode(browsable("e1", "/u.png"))

    server = ExpressServer(settings, TOPIC, serve)
    await server.start()
    server.publish({1})
    try:
        yield server
    finally:
        await server.stop()


async def test_a_registration_left_by_a_killed_worker_does_not_hide_the_live_owner(settings: Settings) -> None:
    async with answering(settings):
        client = ExpressClient(settings)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
        # newer than the live one, and claiming the same partition
        killed = registry_dir(settings) / f"{client.host}-killed.json"
        killed.write_text(json.dumps({"address": "\0damflow-express-killed", "host": client.host,
                                      "pid": int(dead.stdout), "topic": TOPIC, "partitions": [1]}))
        outcome = await client.outcome(request(), 5)
        assert outcome is not None and outcome.event_id == "e1"
        assert not killed.exists()  # swept
        # a live but unreachable claimant (a rebalance half-way) is skipped for the next one
        (registry_dir(settings) / f"{client.host}-moving.json").write_text(json.dumps(
            {"address": "\0damflow-express-moving", "host": client.host, "pid": os.getpid(), "topic": TOPIC,
             "partitions": [1]}))
        outcome = await client.outcome(request(), 5)
        assert outcome is not None and outcome.event_id == "e1"


async def test_a_worker_still_at_it_after_the_timeout_times_out(settings: Settings) -> None:
    async def slow(req: ExpressRequest) -> bytes:
        await asyncio.sleep(30)
        return b""

    server = ExpressServer(settings, TOPIC, slow)
    await server.start()
    server.publish({1})
    try:
        with pytest.raises(TimeoutError):
            await ExpressClient(settings).outcome(request(), 0.2)
    finally:
        await server.stop()


async def test_a_stopping_worker_drops_the_records_in_work_and_does_not_wait_for_them(settings: Settings) -> None:
    started, dropped = asyncio.Event(), asyncio.Event()

    async def slow(req: ExpressRequest) -> bytes:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            dropped.set()  # the fetched copy stays uncommitted: the partition's next owner does it
            raise
        return b""

    server = ExpressServer(settings, TOPIC, slow)
    await server.start()
    server.publish({1})
    asking = asyncio.create_task(ExpressClient(settings).outcome(request(), 60))
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(server.stop(), 5)
    assert dropped.is_set()
    assert await asyncio.wait_for(asking, 5) is None  # the publisher falls back to reading the outcome


async def test_a_connection_whose_handler_starts_after_the_stop_is_dropped_unserved(settings: Settings) -> None:
    async def serve(req: ExpressRequest) -> bytes:
        raise AssertionError("served after the stop")

    server = ExpressServer(settings, TOPIC, serve)
    await server.start()
    await server.stop()
    # accepted before the stop, its handler first runs after it (the record already sent)
    ours, theirs = socket.socketpair(socket.AF_UNIX)
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    theirs.sendall(len(frame := msgspec.msgpack.encode(request())).to_bytes(4, "big") + frame)
    await asyncio.wait_for(server._handle(reader, writer), 5)
    assert server.served == 0
    theirs.close()


async def test_a_registration_from_another_host_is_never_rung(settings: Settings) -> None:
    async with answering(settings) as server:
        reg = json.loads(server.registration.read_text())
        server.registration.write_text(json.dumps(reg | {"host": "elsewhere"}))
        assert await ExpressClient(settings).outcome(request(), 5) is None


async def test_a_record_handed_over_reaches_its_worker_without_anyone_waiting(settings: Settings) -> None:
    arrived: asyncio.Queue[ExpressRequest] = asyncio.Queue()

    async def serve(req: ExpressRequest) -> bytes:
        await arrived.put(req)
        return encode(browsable("e1", "/u.png"))  # answered to nobody: the publisher hung up

    client = ExpressClient(settings)
    assert not await client.hand_over(request())  # nobody registered: nobody to hand it to
    server = ExpressServer(settings, TOPIC, serve)
    await server.start()
    server.publish({1})
    try:
        assert await client.hand_over(request())
        assert await asyncio.wait_for(arrived.get(), 5) == request()
        # the worker's end shrugs off the closed connection and serves the next publisher
        assert (await client.outcome(request(offset=8), 5)).event_id == "e1"
    finally:
        await server.stop()


def test_only_the_workers_own_user_is_served() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert same_user(left)  # a peer of this process's user
    assert not same_user(None)  # no socket to ask: refused
    with socket.socket(socket.AF_INET) as tcp:
        assert not same_user(tcp)  # not a Unix socket: no credentials to check


async def test_a_record_at_the_place_of_another_is_worked_on_not_answered_with_the_others_outcome() -> None:
    # the ledger keyed records by place only: after a broker restart (memory storage) a new upload at an offset
    # an old one had held was answered with the old one's outcome and never worked on
    ledger, ran = OnceLedger(), []

    async def work(name: str) -> str:
        ran.append(name)
        return name

    assert await ledger.run(record_key(TOPIC, 1, 5, b"old"), lambda: work("old")) == "old"
    assert await ledger.run(record_key(TOPIC, 1, 5, b"new"), lambda: work("new")) == "new"
    # the old record's other copy (express or fetched) is still answered from the first, not run again
    assert await ledger.run(record_key(TOPIC, 1, 5, b"old"), lambda: work("again")) == "old"
    assert ran == ["old", "new"]

"""The embedded broker and `damflow up` start, stop and leave no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bench.rss import children  # the same /proc walk the benchmarks use
from streams.broker import EmbeddedBroker
from streams.errors import BrokerError
from streams.ingest import ingest_folder
from streams.settings import Settings
from streams.supervisor import Stack
from tests.images import make_png
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration


def _gone(pid: int) -> bool:
    """Exited (a zombie left for init to reap counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in {"Z", "X"}


def _await(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_embedded_broker_listens_on_loopback_and_stops(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "b.log")
    bootstrap = broker.start()
    host, port = bootstrap.split(":")
    assert host == "127.0.0.1"
    pid = broker.process.pid
    socket.create_connection((host, int(port)), timeout=1).close()
    broker.stop()
    assert _gone(pid)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()


def test_the_embedded_broker_serves_on_the_threads_it_is_given_whatever_it_inherits(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    monkeypatch.setenv("TOKIO_WORKER_THREADS", "")  # inherited empty, its runtime refused to start
    threads_seen = {}
    for threads in (1, 0):  # one; its own default (one per core)
        broker = EmbeddedBroker(log_path=tmp_path / f"b{threads}.log", threads=threads)
        broker.start()
        try:
            environ = Path(f"/proc/{broker.pid}/environ").read_bytes().split(b"\0")
            told = [e for e in environ if e.startswith(b"TOKIO_WORKER_THREADS=")]
            assert told == ([b"TOKIO_WORKER_THREADS=1"] if threads else [])
            threads_seen[threads] = len(os.listdir(f"/proc/{broker.pid}/task"))
        finally:
            broker.stop()
    if len(os.sched_getaffinity(0)) > 1:
        assert threads_seen[1] < threads_seen[0]
    assert EmbeddedBroker().threads == Settings().embedded_threads  # unsaid: as `damflow up` runs it


def test_broker_dies_with_a_killed_parent(tmp_path: Path) -> None:
    code = (
        "import sys, time; from streams.broker import EmbeddedBroker\n"
        "b = EmbeddedBroker(); b.start(); print(b.process.pid, flush=True); time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    broker_pid = int(parent.stdout.readline())
    assert not _gone(broker_pid)
    parent.kill()  # SIGKILL: no cleanup code runs in the parent
    parent.wait()
    _await(lambda: _gone(broker_pid), 10, "the orphaned broker to exit")


def _damflow_up(tmp_path: Path) -> subprocess.Popen:
    """`damflow up` in a process of its own, returned once it says it is ready (its banner: broker, worker and
    catalog ready), its stderr still to read."""
    env = dict(os.environ, DAMFLOW_DATA_DIR=str(tmp_path / "data"), DAMFLOW_REBALANCE_TIMEOUT_S="1",
               DAMFLOW_POOL_SIZE="1", DAMFLOW_HTTP_PORT="0")
    up = subprocess.Popen([sys.executable, "-m", "streams.cli", "up"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in up.stderr:  # type: ignore[union-attr]
        if line.startswith("damflow up:"):
            return up
    raise AssertionError(f"damflow up exited early with {up.wait()}")


def test_damflow_up_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    up = _damflow_up(tmp_path)
    try:
        runtime = json.loads((tmp_path / "data" / "run" / "broker.json").read_text())
        assert runtime["pid"] == up.pid
        kids = children(up.pid)
        assert len(kids) >= 2  # broker + worker
        grandchildren = [g for c in kids for g in children(c)]  # the worker's forkserver (and resource tracker)
        pool = [p for g in grandchildren for p in children(g)]  # its CPU pools' processes
        _assert_urgent_work_runs_first(up.pid, kids, pool)
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
        for pid in kids + grandchildren + pool:
            _await(lambda pid=pid: _gone(pid), 15, f"child {pid} to exit")
        assert not (tmp_path / "data" / "run" / "broker.json").exists()
    finally:
        if up.poll() is None:
            up.kill()


def _assert_urgent_work_runs_first(up_pid: int, services: list[int], pool: list[int]) -> None:
    """Interactive pool at the caller's priority, services (supervisor, broker, worker) niced below it in every
    thread, the batch pool in the idle scheduling class (see streams.niceness)."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    for pid in [up_pid, *services]:
        nices = {os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{pid}/task")}
        assert nices == {max(base, 10)}, (pid, nices)
    idle = [p for p in pool if os.sched_getscheduler(p) == os.SCHED_IDLE]
    interactive = [p for p in pool if p not in idle]
    assert len(idle) == 1 and len(interactive) == 1, pool  # DAMFLOW_POOL_SIZE=1, one reserved process
    assert os.getpriority(os.PRIO_PROCESS, interactive[0]) == base


def test_an_embedded_broker_whose_port_is_taken_does_not_pass_for_started(tmp_path: Path) -> None:
    with socket.socket() as squatter:  # another process's listener on the port asked for
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "b.log")
        with pytest.raises(BrokerError, match="did not start"):
            broker.start(timeout=10)
        assert broker.process is None  # nothing left running


async def readyz(stack: Stack) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{stack.http_url}/readyz") as resp:
        return resp.status, await resp.json()


async def test_readyz_answers_ready_only_once_the_workers_have_joined(make_settings) -> None:
    stack = Stack(make_settings())
    starting = asyncio.create_task(stack.start())
    try:
        await wait_until(lambda: stack.http_url or starting.done(), timeout=60, what="the HTTP interface")
        assert stack.http_url, f"the stack ended before serving HTTP: {starting}"
        # HTTP serves before the first worker process is even started: a probe sent now must not pass
        status, early = await readyz(stack)
        assert status == 503 and early["ready"] is False and early["workers"] is False and early["http"] is True
        await starting
        status, body = await readyz(stack)
        assert status == 200 and body == {"ready": True, "started": True, "broker": True, "workers": True,
                                          "catalog_sink": True, "retrier": True, "http": True}
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await stack.stop()


async def test_a_worker_that_dies_is_replaced_and_its_work_done(stack: Stack, tmp_path: Path) -> None:
    assert (await readyz(stack))[0] == 200
    [dead] = stack.workers
    dead.kill()  # SIGKILL: no shutdown code runs
    # until its replacement has joined the group, the stack does not count as ready (a new worker takes seconds)
    await wait_until(lambda: not stack.readiness()["workers"], timeout=30, what="the dead worker's slot to count")
    status, body = await readyz(stack)
    assert status == 503 and body["workers"] is False and body["catalog_sink"] is True
    await wait_until(lambda: stack.worker_restarts == 1, timeout=90, what="a new worker")
    assert (await readyz(stack))[0] == 200
    [worker] = stack.workers
    assert worker is not dead and worker.returncode is None
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        make_png(folder / f"{i}.png", size=(32, 32), seed=i)
    result = await ingest_folder(stack.settings, stack.topics, stack.bootstrap, folder, wait=True, timeout=90)
    assert result.progress is not None and result.progress.done == 3


async def test_stopping_while_a_replacement_worker_starts_leaves_no_worker_running(make_settings) -> None:
    stack = Stack(make_settings())
    await stack.start()
    try:
        [dead] = stack.workers
        dead.kill()
        # the replacement is started, and the stack stops before it is ready
        [starting] = await wait_until(lambda: [p for p in stack.workers if p is not dead], timeout=30,
                                      what="a replacement worker process")
    finally:
        await stack.stop()
    assert starting.returncode is not None and stack.worker_restarts == 0
    assert _gone(starting.pid)


async def test_a_second_pipeline_on_the_same_data_directory_is_refused_and_leaves_the_first_alone(
    make_settings, tmp_path: Path,
) -> None:
    # it started a second catalog sink on the same SQLite file, and on its way out removed the first one's
    # broker record: every other command then answered "no broker"
    from streams.errors import DataDirInUse

    first, second = make_settings(broker_url=None), make_settings(broker_url=None)  # embedded brokers
    assert first.data_path == second.data_path
    async with Stack(first, workers=0, serve_http=False):
        record = first.runtime_file.read_text()
        # `damflow status` says what the embedded broker holds in memory
        env = {**os.environ, "DAMFLOW_DATA_DIR": str(first.data_path)}
        env.pop("DAMFLOW_BROKER_URL", None)
        status = subprocess.run([sys.executable, "-m", "streams.cli", "status", "--json"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["embedded_broker_rss_bytes"] > 1_000_000
        with pytest.raises(DataDirInUse, match=f"pid {os.getpid()}"):
            async with Stack(second, workers=0, serve_http=False):
                pass
        assert first.runtime_file.read_text() == record
        # `damflow catalog` (the catalog's writer, alone) is refused too, with one line
        env = {**os.environ, "DAMFLOW_DATA_DIR": str(first.data_path), "DAMFLOW_BROKER_URL": "127.0.0.1:9"}
        refused = subprocess.run([sys.executable, "-m", "streams.cli", "catalog"], env=env, capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode == 2 and "runs on" in refused.stderr and "Traceback" not in refused.stderr
    async with Stack(second, workers=0, serve_http=False):  # once the first has stopped
        assert second.runtime_file.exists()


async def test_following_a_batch_gives_up_once_the_broker_is_gone(tmp_path: Path, monkeypatch) -> None:
    # aiokafka tries again for ever: `ingest --wait` with no timeout hung for good once `damflow up` stopped
    from consumers import progress
    from streams.kafka import ensure_topics, tail
    from streams.settings import Settings

    monkeypatch.setattr(progress, "BROKER_GONE_S", 1.0)
    monkeypatch.setattr(progress, "PROBE_S", 0.2)
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log")
    bootstrap = broker.start()
    try:
        await ensure_topics(bootstrap, ["gone.progress"], 1)
        async with tail(bootstrap, "gone.progress", Settings(data_dir=tmp_path)) as consumer:
            following = asyncio.ensure_future(progress.follow(consumer, "some-batch"))
            await asyncio.sleep(0.5)
            assert not following.done()  # the broker is there: it waits
            broker.stop()
            with pytest.raises(BrokerError, match="has not answered"):
                await asyncio.wait_for(following, 30)
    finally:
        broker.stop()


def test_a_second_ctrl_c_stops_damflow_up_at_once_and_its_children_with_it(tmp_path: Path) -> None:
    # the first asks for a clean stop; while it runs (up to 15 s for a stuck worker), a second did nothing
    up = _damflow_up(tmp_path)
    try:
        kids = children(up.pid)
        worker = next(pid for pid in kids if "worker" in Path(f"/proc/{pid}/cmdline").read_text())
        os.kill(worker, signal.SIGSTOP)  # a worker that will not stop by itself: the clean stop waits for it
        up.send_signal(signal.SIGINT)  # (sent as soon as the banner says Ctrl-C: it was lost to Python's own
        for line in up.stderr:         # handler then, a KeyboardInterrupt instead of a clean stop)
            if "stack_stopping" in line:
                break
        up.send_signal(signal.SIGINT)
        assert up.wait(10) == 130
        os.kill(worker, signal.SIGCONT)  # (a stopped process cannot act on the signal its parent's death sends,
        assert "stopping now" in up.stderr.read()  # and holds the stderr it shares open)
        for pid in kids:
            _await(lambda pid=pid: _gone(pid), 15, f"child {pid} to exit")
    finally:
        if up.poll() is None:
            up.kill()


async def test_an_http_port_in_use_is_a_one_line_reason_that_names_the_setting(make_settings) -> None:
    """A second program on the port gave `OSError: [Errno 98] ... address already in use` and no hint."""
    from streams.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}: address already in use.*DAMFLOW_HTTP_PORT"):
            async with Stack(make_settings(http_port=port), workers=0):
                pass

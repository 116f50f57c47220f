"""``damflow up``: the whole pipeline on one machine — embedded broker, topics, worker processes, catalog sink,
retrier, and the HTTP interface (uploads, asset lookup, live progress, dashboard).

On a new embedded broker (empty: it keeps events in memory only) the start first sends on again whatever the
catalog shows unfinished (:mod:`streams.reconcile`).

Shutdown runs in reverse: workers first (SIGTERM, they finish and commit), then the sink, then the broker last.
Children are started with a parent-death signal, so even a SIGKILLed supervisor leaves no orphans behind.

A service that fails (the catalog sink or the retrier raising, a worker process exiting) is logged and started
again, with a growing pause between attempts, rather than leaving the pipeline up with a part of it dead: its
consumer group hands it back its uncommitted events, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError

from consumers.catalog import Catalog
from consumers.catalog_sink import CatalogSink
from streams.broker import EmbeddedBroker, clear_runtime, record_runtime
from streams.errors import BrokerError, DamflowError
from streams.kafka import ensure_pipeline_topics, producer
from streams.logs import get
from streams.niceness import lower_priority
from streams.ownership import DataDirLock
from streams.parentage import die_with_parent
from streams.retrier import Retrier
from streams.settings import Settings, settings_env
from streams.topics import topics_for
from streams.worker import READY_LINE

log = get(__name__)

#: Pause before restarting a failed service: doubling from the first to the last, back to the first after a
#: service has run well for ``_HEALTHY_S``.
_RESTART_PAUSES_S = (0.5, 30.0)
_HEALTHY_S = 60.0


class WorkerExited(DamflowError):
    """A worker process ended while the stack was running."""

    code = "worker_exited"


async def keep_running(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run the service ``run()`` until cancelled, starting it again whenever it fails or returns."""
    pause = _RESTART_PAUSES_S[0]
    while True:
        started = time.monotonic()
        try:
            await run()
            log.error("service_stopped", service=name, restart_in_s=pause)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 — whatever ended it, the pipeline needs it back
            log.error("service_failed", service=name, error=repr(exc), restart_in_s=pause, exc_info=True)
        if time.monotonic() - started > _HEALTHY_S:
            pause = _RESTART_PAUSES_S[0]
        await asyncio.sleep(pause)  # a pause before restarting, so a persistent fault does not spin
        pause = min(pause * 2, _RESTART_PAUSES_S[1])


#: How long a stopping worker may take to leave the group and finish what it holds before it is killed.
_WORKER_STOP_S = 15.0


async def _stopped(proc: asyncio.subprocess.Process, within_s: float) -> None:
    try:
        await asyncio.wait_for(proc.wait(), within_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()


class Stack:
    """The running pipeline; ``async with Stack(settings) as stack:`` starts it and stops it cleanly."""

    def __init__(
        self, settings: Settings, *, workers: int = 1, ready_timeout: float = 60.0, serve_http: bool = True
    ) -> None:
        if settings.embedded and workers and "partitions" not in settings.model_fields_set:
            # a new broker each time, whose topics only these workers share: one partition each (settings_env
            # hands the number on to them). Each partition costs the broker CPU on every poll and a record
            # batch per topic per chunk of results, and holds those batches in memory for as long as it runs.
            settings = settings.model_copy(update={"partitions": workers})
        self.settings = settings
        self.topics = topics_for(settings)
        self.n_workers = workers
        self.ready_timeout = ready_timeout
        self.broker: EmbeddedBroker | None = None
        self.bootstrap = ""
        self.workers: list[asyncio.subprocess.Process] = []
        self._tasks: list[asyncio.Task] = []
        self.sink: CatalogSink | None = None
        self.retrier: Retrier | None = None
        self.serve_http = serve_http
        self.http_url = ""
        self._http_runner = None
        self._exit_stack = contextlib.AsyncExitStack()
        #: One task per worker slot, each starting a new worker when its last one exits.
        self._keepers: list[asyncio.Task] = []
        #: Worker processes started again after they exited on their own (for tests and status).
        self.worker_restarts = 0
        #: Worker processes that have joined the group and got partitions, until they exit.
        self._ready_workers: set[asyncio.subprocess.Process] = set()
        self._started = False
        self._owner = DataDirLock(settings)
        #: What the start's reconcile sent on (``streams.reconcile``'s summary), on the embedded broker.
        self.reconciled: dict[str, Any] | None = None

    async def start(self) -> None:
        s = self.settings
        s.data_path.mkdir(parents=True, exist_ok=True)
        self._owner.acquire()  # before anything: a second stack on this data directory is refused here
        # a catalog that cannot be opened (damaged, not a database, newer than this code) fails the start with
        # its reason, rather than as a sink that restarts until the start times out
        await asyncio.to_thread(lambda: Catalog(s.catalog_path).close())
        if s.embedded:
            run_dir = s.runtime_file.parent
            run_dir.mkdir(parents=True, exist_ok=True)
            self.broker = EmbeddedBroker(s.embedded_host, s.embedded_port, log_path=run_dir / "broker.log",
                                         threads=s.embedded_threads)
            self.bootstrap = await asyncio.to_thread(self.broker.start)
            lower_priority(s.service_nice, self.broker.pid)  # type: ignore[arg-type]
            record_runtime(s, self.bootstrap, self.broker.pid)
        else:
            self.bootstrap = s.broker_url.removeprefix("kafka://")  # type: ignore[union-attr]
        await ensure_pipeline_topics(s, self.bootstrap)  # (it waits for the broker to answer)
        log.info("broker_ready", bootstrap=self.bootstrap, embedded=s.embedded)
        if s.embedded:  # a new broker, empty: what the last one held of unfinished work is sent on again
            await self._reconcile()
        self.sink = CatalogSink(s, self.topics, self.bootstrap)
        if self.serve_http:
            await self._start_http()
        self.retrier = Retrier(s, self.topics, self.bootstrap)
        self._tasks.append(asyncio.create_task(keep_running("catalog-sink", self.sink.run), name="catalog-sink"))
        self._tasks.append(asyncio.create_task(keep_running("retrier", self.retrier.run), name="retrier"))
        for _ in range(self.n_workers):
            await self.add_worker()
        await asyncio.wait_for(self.sink.ready.wait(), self.ready_timeout)
        await asyncio.wait_for(self.retrier.ready.wait(), self.ready_timeout)
        self._started = True

    async def _reconcile(self) -> None:
        """Send on the catalog's unfinished work (see :mod:`streams.reconcile`). A failure is logged, not fatal:
        the pipeline is needed either way, and ``damflow reconcile`` does the same by hand."""
        from streams.reconcile import reconcile

        try:
            # the embedded broker is new, on a port of its own unless one is set: no scan of the last one can be
            # going on then (a scanner with a fixed port would find the new one, and go on)
            self.reconciled = await reconcile(self.settings, self.topics, self.bootstrap,
                                              broker_new=self.settings.embedded_port == 0)
        except (KafkaError, DamflowError, OSError, sqlite3.Error) as exc:
            log.error("reconcile_failed", error=repr(exc), hint="run `damflow reconcile` once the stack is up")

    def readiness(self) -> dict[str, bool]:
        """Whether each part the pipeline needs to take work at full speed runs now (``GET /readyz``): false
        while the stack starts, while a worker slot waits for its replacement to join the group, while the
        catalog sink or the retrier restarts, and once the embedded broker has died. (With no worker slots here,
        ``up --workers 0``, the workers run elsewhere and are not judged.)"""
        workers = sum(1 for p in self._ready_workers if p.returncode is None)
        broker = self.broker is None or (self.broker.process is not None and self.broker.process.poll() is None)
        return {
            "started": self._started,
            "broker": broker,
            "workers": workers >= max(self.n_workers, len(self._keepers)),
            "catalog_sink": self.sink is not None and self.sink.ready.is_set(),
            "retrier": self.retrier is not None and self.retrier.ready.is_set(),
        }

    async def _start_http(self) -> None:
        from streams import http

        prod = await self._exit_stack.enter_async_context(
            producer(self.bootstrap, compression=self.settings.compression_type))
        app = http.create_app(self.settings, self.topics, self.bootstrap, prod, catalog=self.sink,
                              readiness=self.readiness)
        self._http_runner = await http.serve(app, self.settings.http_host, self.settings.http_port)
        self.http_url = f"http://{self.settings.http_host}:{http.bound_port(self._http_runner)}"
        log.info("http_ready", url=self.http_url)

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(settings_env(self.settings))
        env["DAMFLOW_DATA_DIR"] = str(self.settings.data_path)
        env["DAMFLOW_BROKER_URL"] = self.bootstrap
        # the stack's own, also where the children's broker URL would choose another (see Settings)
        env["DAMFLOW_SESSION_TIMEOUT_S"] = str(self.settings.session_timeout_s)
        return env

    async def add_worker(self) -> asyncio.subprocess.Process:
        """Start one more worker process and wait until it has joined the group and got partitions; it is
        replaced whenever it exits while the stack runs."""
        proc = await self._start_worker()
        self._keepers.append(asyncio.create_task(keep_running("worker", self._worker_lives(proc)), name="worker"))
        return proc

    def _worker_lives(self, first: asyncio.subprocess.Process) -> Callable[[], Awaitable[None]]:
        """One worker's life after another: the first one given, then a new one each time the last exits (its
        partitions move on to the others meanwhile, and back to the new one)."""
        waiting = [first]

        async def life() -> None:
            if waiting:
                proc = waiting.pop()
            else:
                proc = await self._start_worker()
                self.worker_restarts += 1
            code = await proc.wait()
            self._ready_workers.discard(proc)
            with contextlib.suppress(ValueError):
                self.workers.remove(proc)
            raise WorkerExited(f"worker {proc.pid} exited with {code}")

        return life

    async def _start_worker(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streams.cli", "worker",
            env=self.child_env(), stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        self.workers.append(proc)
        ready = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._watch_stdout(proc, ready)))
        try:
            await asyncio.wait_for(ready, self.ready_timeout)
        except BaseException as exc:  # not ready in time, or the stack stopping meanwhile: it goes
            self.workers.remove(proc)
            if proc.returncode is None:
                proc.kill()
                # reaped here: nobody else waits for a process no longer listed (stop() waits for the listed)
                await asyncio.shield(proc.wait())
            if isinstance(exc, TimeoutError | EOFError):
                raise BrokerError(f"worker {proc.pid} did not become ready: {exc!r}") from exc
            raise
        self._ready_workers.add(proc)
        log.info("worker_ready", pid=proc.pid)
        return proc

    @staticmethod
    async def _watch_stdout(proc: asyncio.subprocess.Process, ready: asyncio.Future) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            text = line.decode(errors="replace").rstrip()
            if text == READY_LINE:
                if not ready.done():
                    ready.set_result(True)
            elif text:
                sys.stdout.write(text + "\n")
        if not ready.done():
            ready.set_exception(EOFError(f"worker exited with {await proc.wait()}"))

    async def stop(self) -> None:
        log.info("stack_stopping", workers=len(self.workers))
        self._started = False
        for keeper in self._keepers:  # first, so that no worker is started while the others stop
            keeper.cancel()
        for keeper in self._keepers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeper
        if self._http_runner is not None:
            await self._http_runner.cleanup()
            self._http_runner = None
        await self._exit_stack.aclose()
        workers = list(self.workers)
        for proc in workers:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        # all at once, under one deadline: one after the other, each stuck worker (frozen, its loop blocked)
        # added its own 15 s to the stop
        await asyncio.gather(*(_stopped(proc, _WORKER_STOP_S) for proc in workers))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
            clear_runtime(self.settings)
        self._owner.release()

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

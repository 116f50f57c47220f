"""The bounded CPU pool a worker runs decode/hash/thumbnail work in, off the event loop, isolated per file.

Processes, not threads: Pillow and BLAKE3 release the GIL only in parts, and a separate process is what lets a
decoder crash, hang or memory blow-up cost one file. :mod:`pebble` supervises each pool process on its own: a
job past its time limit has its process killed and replaced, a process that dies fails only the job it was
running, and the pool keeps its size. Every process runs under an address-space limit (``RLIMIT_AS``), so a
decoder that tries to allocate too much gets a ``MemoryError`` instead of taking the machine down; a pool may
run ``nice``d or in Linux's idle scheduling class, so that its work yields the CPU to more urgent work (see
:mod:`agents.lanes`).
``forkserver`` because the faust worker has threads by the time work is submitted (forking a threaded process is
unsafe); the work module is preloaded so a replacement process is ready at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import resource
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import pebble

from streams.errors import DecoderCrashed, DecoderOutOfMemory, DecoderTimeout, UnportableOutcome
from streams.logs import get

T = TypeVar("T")
#: How often a job's wait checks that its pool still runs (pebble leaves a job it took as it broke unsettled).
POOL_CHECK_S = 1.0
#: How much of an unportable error's message and traceback is kept.
_TOLD_CHARS = 4000
log = get(__name__)


def _init_process(limit_mb: int, nice: int, idle_class: bool = False) -> None:
    # (the process was set to die with the forkserver, and so with the worker, as it was forked: see
    # agents.forkserver_guard)
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    if idle_class and hasattr(os, "SCHED_IDLE"):
        # Linux's idle scheduling class: a core runs this process only when nothing else on it wants to run, so
        # the pipeline's own processes and urgent work never share a core with it (niceness still leaves it a
        # share). Lowering one's own class needs no privilege.
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if limit_mb > 0:
        limit = limit_mb * 1024 * 1024
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _retire(pool: pebble.ProcessPool) -> None:
    """Stop a pool pebble gave up on and reap its processes (joining it blocks: off the event loop)."""
    with contextlib.suppress(Exception):
        pool.stop()
        pool.join(timeout=10)


def _pid(linger_s: float = 0.0) -> int:
    time.sleep(linger_s)  # long enough for the other processes to take the other tasks
    return os.getpid()


def _round_trip_error(obj: Any) -> Exception | None:
    """Why ``obj`` would not come back whole from a pool process (it does not pickle, or does not unpickle:
    pebble then gives the whole pool up, failing every job in it), if it would not."""
    try:
        pickle.loads(pickle.dumps(obj))
    except Exception as why:  # noqa: BLE001 — whatever stops it, it is told as text
        return why
    return None


def portable(exc: BaseException) -> BaseException:
    """``exc``, or when it would not come back whole from a pool process, an :class:`UnportableOutcome` that says
    what it was."""
    if (why := _round_trip_error(exc)) is None:
        return exc
    told = "".join(traceback.format_exception(exc))[-_TOLD_CHARS:]
    return UnportableOutcome(f"{type(exc).__name__}: {str(exc)[:_TOLD_CHARS]} (which could not be sent back "
                             f"from the pool: {why!r})\n{told}")


def unportable_result(fn: Callable[..., Any], result: Any) -> UnportableOutcome | None:
    """Why ``result`` of ``fn`` would not come back whole from a pool process, if it would not."""
    if (why := _round_trip_error(result)) is None:
        return None
    return UnportableOutcome(f"the result of {getattr(fn, '__name__', fn)!s} could not be sent back from the "
                             f"pool: {why!r}")


def outcome_of(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
    """In a pool process: ``(True, result)`` or ``(False, exception)`` of ``fn(*args, **kwargs)``, made portable
    (see :func:`portable`): a result or exception that would not come back whole is an ``UnportableOutcome``."""
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 — handed back to its own caller
        return False, portable(exc)
    why = unportable_result(fn, result)
    return (True, result) if why is None else (False, why)


def run_portably(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """In a pool process: ``fn(*args, **kwargs)``, with what it raises or returns made portable (see
    :func:`outcome_of`), so a bad outcome fails its own job, never the pool."""
    ok, value = outcome_of(fn, *args, **kwargs)
    if not ok:
        raise value from None
    return value


class WorkPool:
    """``await pool.run(fn, *args, **kwargs)`` from the event loop; at most ``size`` jobs run at once."""

    def __init__(
        self, size: int, *, timeout_s: float | None = None, memory_mb: int = 0, nice: int = 0,
        idle_class: bool = False, preload: tuple[str, ...] = ("agents.browse",), freezable: bool = False,
    ) -> None:
        self.size = size
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        #: Whether the processes may be frozen (:meth:`freeze`). pebble's time limit counts wall time, so it would
        #: kill a job frozen past its limit as hung: the pool then keeps the limit itself, counting only the time
        #: not frozen (see :meth:`_outcome`).
        self.freezable = freezable
        self._frozen_total_s = 0.0
        self._frozen_since: float | None = None
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["agents.forkserver_guard", *preload])
        self._initargs = (memory_mb, nice, idle_class)
        self._pool = self._new_pool()
        #: Times a pool pebble gave up on was replaced (for tests and status).
        self.replacements = 0

    def _new_pool(self) -> pebble.ProcessPool:
        return pebble.ProcessPool(max_workers=self.size, initializer=_init_process, initargs=self._initargs,
                                  context=self._ctx)

    def _replace(self, broken: pebble.ProcessPool, why: BaseException) -> None:
        """Put a fresh pool in place of ``broken`` (once, however many callers saw it break).

        pebble gives a whole pool up (``BrokenProcessPool`` for every job, then ``RuntimeError`` for every new
        one) when a process dies before pebble has recorded which job it took — a crashing decoder on a busy
        machine. Without this, one such crash would fail every later file of the worker.
        """
        if self._pool is not broken:
            return
        log.error("pool_replaced", error=repr(why), size=self.size)
        self._pool = self._new_pool()
        self.replacements += 1
        threading.Thread(target=_retire, args=(broken,), name="pool-retire", daemon=True).start()

    def warm(self) -> set[int]:
        """Start every pool process now rather than on the first file (first-asset latency), and wait until each
        has run a task, so its initializer (niceness, scheduling class, memory limit) has run before the first
        file; returns their pids. (A process frozen before then still dies with its worker: the forkserver ties
        it at the fork, see agents.forkserver_guard.)"""
        seen: set[int] = set()
        for _ in range(50):
            futures = [self._pool.schedule(_pid, (0.01,)) for _ in range(self.size * 2)]
            seen |= {f.result() for f in futures}
            if len(seen) >= self.size and set(self.pids()) <= seen:
                break
        else:
            log.warning("pool_warm_incomplete", size=self.size, started=len(seen))
        return seen

    async def run(self, fn: Callable[..., T], *args: Any, reads: str | None = None, read_bytes: int = 0,
                  level: int = 1, tier: int = 0, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a pool process. ``reads`` (the file it reads) and ``read_bytes`` (its size),
        ``level`` (the lane governor's priority level of the work) and ``tier`` are the pool's own keywords, not
        passed on to ``fn``,
        there for callers that do not know which pool they have: a lone call has no call before it to read ahead
        during, and one queue no order to keep (see agents.chunking, agents.priority_pool)."""
        return await self.call(fn, args, kwargs)

    async def call(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], *, timeout_s: float | None = None,
    ) -> T:
        """:meth:`run` with the arguments as they are and a time limit of its own (default: the pool's)."""
        timeout_s = timeout_s or self.timeout_s
        for attempt in (1, 2):
            pool = self._pool
            try:
                future = pool.schedule(run_portably, (fn, *args), kwargs,
                                       timeout=None if self.freezable else timeout_s)
                return await self._outcome(pool, future, timeout_s)
            except RuntimeError as exc:  # BrokenProcessPool is one too
                if not isinstance(exc, BrokenProcessPool) and pool.active:
                    raise  # not the pool's state: the job's own error
                self._replace(pool, exc)
                if attempt == 2:  # broke again: this job is what breaks it
                    raise DecoderCrashed(f"the decoding pool broke while running it: {exc!r}") from exc
                log.warning("pool_job_rerun", error=repr(exc))  # innocent, as a rule: a neighbour crashed
        raise AssertionError("unreachable")

    async def _outcome(self, pool: pebble.ProcessPool, future: Any, timeout_s: float | None) -> Any:
        waiter = asyncio.wrap_future(future)
        started: tuple[float, float] | None = None  # (when the job was seen running, the pool's frozen time then)
        try:
            while True:  # a job pebble took just as it gave the pool up is never settled: check the pool meanwhile
                done, _ = await asyncio.wait({waiter}, timeout=POOL_CHECK_S)
                if done:
                    return waiter.result()
                if not pool.active:
                    future.cancel()
                    raise BrokenProcessPool("the pool stopped with this job still pending")
                if self.freezable and timeout_s:  # the limit pebble does not keep here (to within POOL_CHECK_S)
                    if started is None and future.running():
                        started = (time.monotonic(), self.frozen_s())
                    worked_s = 0.0 if started is None else (
                        time.monotonic() - started[0] - (self.frozen_s() - started[1]))
                    if worked_s > timeout_s:
                        future.cancel()  # pebble stops the process running it, and starts another
                        raise DecoderTimeout(f"no result within {timeout_s:g} s of work (not counting the time "
                                             "frozen); the decoding process was killed")
        except FutureTimeout as exc:
            raise DecoderTimeout(f"no result within {timeout_s:g} s; the decoding process was killed") from exc
        except pebble.ProcessExpired as exc:
            log.warning("pool_process_died", exitcode=exc.exitcode)
            raise DecoderCrashed(f"the decoding process died (exit code {exc.exitcode})") from exc
        except MemoryError as exc:
            raise self.translate(exc) from exc
        finally:
            if not waiter.done():  # the caller was cancelled: so is the job
                waiter.cancel()

    def translate(self, exc: BaseException) -> BaseException:
        """The error a caller gets for ``exc`` raised by its call in a pool process."""
        if isinstance(exc, MemoryError):
            return DecoderOutOfMemory(f"decoding needed more than the {self.memory_mb} MB limit")
        return exc

    def pids(self) -> list[int]:
        """The pool's live process ids (pebble keeps them in its worker manager; empty if that ever moves)."""
        manager = getattr(getattr(self._pool, "_pool_manager", None), "worker_manager", None)
        return list(getattr(manager, "workers", {}) or {})

    def freeze(self, frozen: bool) -> None:
        """Freeze the pool's processes (SIGSTOP) or thaw them (SIGCONT), counting the time they are frozen. A
        frozen job resumes where it was; only a ``freezable`` pool leaves that time out of its time limit."""
        now = time.monotonic()
        if frozen and self._frozen_since is None:
            self._frozen_since = now
        elif not frozen and self._frozen_since is not None:
            self._frozen_total_s += now - self._frozen_since
            self._frozen_since = None
        self.signal_all(signal.SIGSTOP if frozen else signal.SIGCONT)

    def frozen_s(self) -> float:
        """Seconds the pool's processes have been frozen, all told, until now."""
        since = self._frozen_since
        return self._frozen_total_s + (time.monotonic() - since if since is not None else 0.0)

    def signal_all(self, sig: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def shutdown(self) -> None:
        self._pool.close()
        self._pool.join(timeout=10)
        self._pool.stop()

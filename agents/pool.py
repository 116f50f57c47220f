"""The bounded CPU pool a worker runs decode/hash/thumbnail work in, off the event loop.

Processes, not threads: Pillow and BLAKE3 release the GIL only in parts, and a separate process means a
decoder crash costs one file — a broken pool is replaced and the file's failure reported as transient.
``forkserver`` because the faust worker has threads by the time work is submitted; forking a threaded process
is unsafe. The work module is preloaded so a fresh pool process is ready at once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from streams.errors import TransientError
from streams.logs import get

T = TypeVar("T")
log = get(__name__)


class PoolCrashed(TransientError):
    """A pool process died while working (a decoder crash); the pool was replaced."""

    code = "pool_crashed"


def _warm(_: int) -> int:
    return os.getpid()


class WorkPool:
    """A process pool of fixed size; ``await pool.run(fn, *args)`` from the event loop."""

    def __init__(self, size: int, preload: tuple[str, ...] = ("agents.browse",)) -> None:
        self.size = size
        self._preload = preload
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(self._preload))
        return ProcessPoolExecutor(max_workers=self.size, mp_context=ctx)

    def warm(self) -> None:
        """Start every pool process now rather than on the first file (first-asset latency)."""
        list(self._executor.map(_warm, range(self.size)))

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        executor = self._executor
        try:
            if kwargs:
                return await loop.run_in_executor(executor, _call, fn, args, kwargs)
            return await loop.run_in_executor(executor, fn, *args)
        except BrokenProcessPool as exc:
            if self._executor is executor:  # the first to notice replaces it
                log.warning("pool_replaced", reason=str(exc))
                executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._new_executor()
            raise PoolCrashed(f"a pool process died while working: {exc}") from exc

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _call(fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    return fn(*args, **kwargs)

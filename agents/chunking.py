"""Several batch files per pool task: what a file costs the worker besides its own work, paid once per chunk.

Each pool task costs the worker's event loop and pebble's threads a round trip (pickling, pipes, thread
wake-ups), and each finished file its own produce request to the broker. On a small machine that overhead is
CPU taken from the pool itself, so a batch import runs below the machine's compute limit. :class:`ChunkedPool`
gathers the calls that are waiting for a pool slot into one task (at most ``max_chunk`` calls), runs them one
after the other in one pool process, and hands each caller its own result or exception; the results of a chunk
arrive together, so their effects go to the broker together.

Chunks form only under load: a call made while a pool process is free starts at once (the first file of an
import is not held back). While every process is busy, waiting calls gather until they make a full chunk,
which is queued behind the running ones (up to ``queued`` chunks), or until a process frees up and takes
whatever has gathered. So no process idles while a chunk is being formed, and the chunks are as large as the
load allows (dispatching a chunk as soon as any slot is free made every other chunk a chunk of one).

Near the end of a backlog, full chunks would leave one process working through its last chunk while the others
idle: given how many calls are still to come (``backlog``, e.g. the lane's records no agent has started on), a
chunk is at most what is left split evenly across the pool's processes, so they run out of work together.

Calls come at a priority ``level`` (the lane governor's: tier 1's batch lane 1, tier 2's 2, tier 3's 3). A chunk
holds calls of one level, is sized by that level's backlog, and the lowest level waiting goes first: tier-2 files
in flight when an import starts do not queue ahead of its tier-1 files, nor take the queued slot while tier-1
calls wait. Background calls (``idle_only_from``) never take the queued slot at all: they start only on an idle
process, so a new import's first files wait at most for the background chunks already running.

While a chunk's process works on one call, the file the next call reads (``reads=``) is read ahead
(:mod:`agents.readahead`): a chunk of an import from a cold disk waits for the disk once, not once per file.
Once a streak of files bigger than ``drop_after_bytes`` has gone through the pool, each file leaves the page cache
as soon as its call is done: a big import does not flood it (see :meth:`ChunkedPool._dropping`).

With ``max_chunk`` 1 every call is a task of its own, still sent in this order (the lowest level first, background
calls only to an idle process) and still dropped from the page cache past the streak.

Isolation is kept per file: a chunk whose process died or ran past its time limit is run again one call per
task (each taking a slot as any chunk does, ahead of the calls of its level still waiting), so only the file that
crashed or hung fails; the others are worked on again, which is safe because the
work is idempotent (content-addressed outputs), and cheap for those already done (their thumbnails exist). A
chunk's limit is ``CHUNK_LIMITS`` calls' worth of ``timeout_s``, not one per call: a file that hangs held the
files beside it for the whole chunk's worth (eight minutes at the defaults) before they were run alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.pool import WorkPool, outcome_of
from agents.readahead import drop_from_cache, read_ahead
from streams.errors import DecoderCrashed, DecoderTimeout
from streams.logs import get

#: A chunk's time limit, in per-call limits (``timeout_s``): files beside one that hangs wait this long at most.
CHUNK_LIMITS = 2
#: A pause this long with nothing in the pool ends a streak of files read (see ``ChunkedPool._dropping``).
_DROP_STREAK_IDLE_S = 10.0

log = get(__name__)


@dataclass(slots=True)
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: asyncio.Future = field(repr=False)
    #: The file the call reads, if any.
    reads: str | None = None
    #: To be sent in a task of its own: its chunk lost its process (see :meth:`ChunkedPool._run`).
    alone: bool = False
    #: The size of that file, as its event says (0: not known).
    size: int = 0


def run_calls(
    calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]], reads: Sequence[str | None] = (),
    drop: bool = False, ahead: bool = True,
) -> list[tuple[bool, Any]]:
    """In a pool process: run each call in turn; ``(True, result)`` or ``(False, exception)`` per call.
    ``reads[i]``: the file call ``i`` reads (or ``None``), read ahead while the call before it runs (unless not
    ``ahead``), and with ``drop`` dropped from the page cache once the call is done (see :class:`ChunkedPool`)."""
    out: list[tuple[bool, Any]] = []
    for i, (fn, args, kwargs) in enumerate(calls):
        if ahead and i + 1 < len(reads) and reads[i + 1] is not None:
            with contextlib.suppress(Exception):  # a hint: whatever it meets is the next call's own to report
                read_ahead(reads[i + 1])
        # handed back to its own caller, as a lone task would; one outcome that cannot be sent back must not
        # fail the chunk's other calls
        out.append(outcome_of(fn, *args, **kwargs))
        if drop and i < len(reads) and reads[i] is not None:
            drop_from_cache(reads[i])
    return out


def call_then_drop(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], reads: str) -> Any:
    """In a pool process: one call (its outcome raised or returned), then its file dropped from the page cache."""
    try:
        return fn(*args, **kwargs)
    finally:
        drop_from_cache(reads)


class ChunkedPool:
    """``await chunked.run(fn, *args, **kwargs)``, like :meth:`WorkPool.run`, with calls batched into chunks."""

    def __init__(
        self, pool: WorkPool, *, max_chunk: int, queued: int = 1,
        backlog: Callable[[int], int | None] | None = None, read_ahead: bool = True,
        idle_only_from: int | None = None, drop_after_bytes: int = 0,
    ) -> None:
        self.pool = pool
        self.max_chunk = max_chunk
        self.read_ahead = read_ahead
        #: Once this many bytes of files were handed to the pool without a pause (see ``_DROP_STREAK_IDLE_S``),
        #: each file read leaves the page cache as soon as its call is done; 0: never.
        self.drop_after_bytes = drop_after_bytes
        self._streak_bytes = 0
        self._idle_since: float | None = None
        self.slots = pool.size + queued
        #: Calls of this level or a higher one start only on an idle process, never in a queued slot: a chunk
        #: queued in the pool runs before anything sent after it, so a background chunk there would hold back
        #: the first files of an import that starts meanwhile by a whole chunk's work.
        self.idle_only_from = idle_only_from
        #: How many calls of a level are still to come besides those waiting here (``None``, or its answer
        #: ``None``: unknown, plenty).
        self.backlog = backlog
        self._pending: dict[int, list[_Call]] = {}  # by level
        self._in_flight = 0
        #: Calls per chunk sent so far, by chunk size (for tests and metrics).
        self.chunk_sizes: Counter[int] = Counter()

    async def run(self, fn: Callable[..., Any], *args: Any, reads: str | None = None, read_bytes: int = 0,
                  level: int = 1, tier: int = 0, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in a pool process; the pool's own keywords, not passed on to ``fn``: ``reads``,
        the file it reads, to be read ahead, and ``read_bytes`` its size; ``level``, its priority (lower first);
        ``tier`` (the level says)."""
        future = asyncio.get_running_loop().create_future()
        self._pending.setdefault(level, []).append(
            _Call(fn, args, kwargs, future, reads, size=read_bytes))
        self._dispatch()
        return await future

    def _dropping(self, chunk: list[_Call]) -> bool:
        """Count the chunk's bytes into the streak; whether its files are to leave the page cache once read.

        An import reads each file once for tier 1 and, a while later, once for tier 2, which reads a cached file
        for about a third of the CPU of one from the disk (1.4 against 3.5-4.3 ms a 2 MB PNG, measured here): a
        small import's files are kept. A big one's would not stay cached for tier 2 anyway, and would push out
        everything else cached on the machine, making the kernel reclaim under every program: during a
        5000-file import (10 GB) an urgent upload's receive went from 5-7 ms to 14-16 ms at p50 after 6-8 GB
        (bench/priority.py, this 2-core machine), and stayed at 7 ms with each file dropped once worked on."""
        if not self.drop_after_bytes:
            return False
        now = time.monotonic()
        if self._idle_since is not None and now - self._idle_since > _DROP_STREAK_IDLE_S:
            self._streak_bytes = 0  # a pause: what comes now is another import
        self._idle_since = None
        # a call sent again alone (its chunk lost its process) was counted with its chunk
        self._streak_bytes += sum(c.size for c in chunk if not c.alone)
        return self._streak_bytes > self.drop_after_bytes

    def chunk_size(self, level: int = 1) -> int:
        """Calls per chunk of ``level`` now: ``max_chunk``, or near the end of its backlog the remainder split
        across the pool's processes."""
        to_come = self.backlog(level) if self.backlog is not None else None
        if to_come is None:
            return self.max_chunk
        left = len(self._pending.get(level, ())) + to_come
        return max(1, min(self.max_chunk, -(-left // self.pool.size)))

    def _dispatch(self) -> None:
        while waiting := [level for level, calls in self._pending.items() if calls]:
            level = min(waiting)  # the lowest level first; the others wait for it, also for the queued slot
            pending = self._pending[level]
            size = 1 if pending[0].alone else self.chunk_size(level)
            idle_process = self._in_flight < self.pool.size
            full = len(pending) >= size
            may_queue = self.idle_only_from is None or level < self.idle_only_from
            if not (idle_process or (full and may_queue and self._in_flight < self.slots)):
                return
            chunk = [c for c in pending[:size] if not c.future.done()]  # skip cancelled callers
            del pending[:size]
            if not chunk:
                continue
            self._in_flight += 1
            self.chunk_sizes[len(chunk)] += 1
            asyncio.ensure_future(self._run(chunk, level, self._dropping(chunk)))

    async def _run(self, chunk: list[_Call], level: int, drop: bool = False) -> None:
        try:
            if len(chunk) == 1:
                await self._run_alone(chunk[0], drop)
                return
            timeout = self.pool.timeout_s * min(len(chunk), CHUNK_LIMITS) if self.pool.timeout_s else None
            try:
                calls = [(c.fn, c.args, c.kwargs) for c in chunk]
                # the files: to read ahead (``read_ahead``) and to drop (``drop``), each without the other
                reads = [c.reads for c in chunk]
                told = any(reads) and (self.read_ahead or drop)
                outcomes = await self.pool.call(
                    run_calls, (calls, reads, drop, self.read_ahead) if told else (calls,), {}, timeout_s=timeout)
            except (DecoderCrashed, DecoderTimeout) as exc:
                # one of them crashed or hung its process: find out which, one call per task. They go back to the
                # front of their level's queue, each to be sent alone as a slot frees (this one, in a moment): a
                # chunk's worth of tasks sent at once would hold as many processes while counted as one slot
                log.warning("chunk_rerun_alone", calls=len(chunk), error=str(exc))
                for call in chunk:
                    call.alone = True
                level_pending = self._pending.setdefault(level, [])
                level_pending[:0] = chunk
                return
            except Exception as exc:  # the pool itself failed: every caller hears of it
                for call in chunk:
                    _settle(call.future, exc, ok=False)
                return
            for call, (ok, value) in zip(chunk, outcomes, strict=True):
                _settle(call.future, self.pool.translate(value) if not ok else value, ok=ok)
        finally:
            self._in_flight -= 1
            self._dispatch()
            if not self._in_flight and not any(self._pending.values()) and self._idle_since is None:
                self._idle_since = time.monotonic()

    async def _run_alone(self, call: _Call, drop: bool = False) -> None:
        if call.future.done():
            return
        try:
            if drop and call.reads is not None:
                result = await self.pool.call(call_then_drop, (call.fn, call.args, call.kwargs, call.reads), {})
            else:
                result = await self.pool.call(call.fn, call.args, call.kwargs)
        except Exception as exc:
            _settle(call.future, exc, ok=False)
        else:
            _settle(call.future, result, ok=True)


def _settle(future: asyncio.Future, value: Any, *, ok: bool) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):  # the caller went away (cancelled) meanwhile
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

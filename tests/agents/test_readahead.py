"""Reading the next file ahead: the kernel really reads it, nothing about a bad path fails or blocks, and a chunk
asks for each call's file while the call before it runs."""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agents import chunking
from agents.chunking import ChunkedPool, run_calls
from agents.readahead import drop_from_cache, read_ahead

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(os, "posix_fadvise"),
                                reason="posix_fadvise and mincore are Linux's")


def _resident(path: Path) -> float:
    """The share of ``path``'s pages in the page cache (mincore on a mapping that touches none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = (ctypes.c_ubyte * pages)()
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def _cold_file(tmp_path: Path, mb: int) -> Path:
    """A new file of ``mb`` MiB, dropped from the page cache (the test skips where the cache keeps it)."""
    f = tmp_path / f"cold-{mb}.bin"
    f.write_bytes(os.urandom(mb * 1024 * 1024))
    fd = os.open(f, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if _resident(f) > 0.5:
        pytest.skip(f"the page cache keeps {tmp_path} whatever is dropped (tmpfs?): nothing to read ahead")
    return f


@linux_only
def test_a_file_read_ahead_comes_into_the_page_cache(tmp_path: Path) -> None:
    f = _cold_file(tmp_path, 4)
    assert read_ahead(str(f))
    deadline = time.monotonic() + 10
    while (share := _resident(f)) < 0.99 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the page cache: the read happens in the kernel, with no event to await
    assert share >= 0.99


@linux_only
def test_read_ahead_stops_at_the_bytes_asked_for(tmp_path: Path) -> None:
    f = _cold_file(tmp_path, 8)
    assert read_ahead(str(f), nbytes=1024 * 1024)
    time.sleep(0.2)  # nothing to await: the test is that the rest of the file stays out however long it waits
    assert _resident(f) < 0.5


def test_a_bad_path_is_left_to_the_work_that_reads_it(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")  # opening it to read would wait for a writer: it must not
    for path in ("missing.png", "dir", "fifo", "nul\x00byte.png", "lone\ud800surrogate.png"):
        assert read_ahead(str(tmp_path / path)) is False
    assert read_ahead("/dev/zero") is False  # not a regular file: a device is never read ahead


def test_a_bad_file_ahead_fails_only_its_own_call(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    good.write_bytes(b"x")

    def size(path: str) -> int:
        return os.path.getsize(path)

    bad = "nul\x00byte.png"
    out = run_calls([(size, (str(good),), {}), (size, (bad,), {}), (size, (str(good),), {})],
                    [str(good), bad, str(good)])
    assert out[0] == (True, 1) and out[2] == (True, 1)
    assert out[1][0] is False and isinstance(out[1][1], ValueError)  # its own work met it, not its neighbours


def test_a_chunk_reads_each_calls_file_while_the_call_before_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(chunking, "read_ahead", lambda path: seen.append(f"ahead {path}"))

    def work(path: str) -> str:
        seen.append(f"work {path}")
        return path

    calls = [(work, (p,), {}) for p in "abcd"]
    assert run_calls(calls, ["a", "b", None, "d"]) == [(True, p) for p in "abcd"]
    # the first file is read by its own work at once: nothing runs before it to read it ahead during; a call
    # that names no file gets nothing read ahead
    assert seen == ["ahead b", "work a", "work b", "ahead d", "work c", "work d"]


class _InProcessPool:
    """A pool of one process that runs each task here, keeping what it was given."""

    size = 1
    timeout_s = None

    def __init__(self) -> None:
        self.tasks: list[tuple[Any, tuple[Any, ...]]] = []

    async def call(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, timeout_s: float | None = None):
        self.tasks.append((fn, args))
        return fn(*args, **kwargs)

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.call(fn, args, kwargs)

    def translate(self, exc: BaseException) -> BaseException:
        return exc


@pytest.mark.parametrize("enabled", [True, False], ids=["on", "off"])
async def test_chunked_calls_hand_their_files_to_the_chunk(enabled: bool) -> None:
    pool = _InProcessPool()
    chunked = ChunkedPool(pool, max_chunk=4, read_ahead=enabled)  # type: ignore[arg-type]
    first = asyncio.ensure_future(chunked.run(str.upper, "x", reads="/x"))
    rest = [asyncio.ensure_future(chunked.run(str.upper, p, reads=f"/{p}")) for p in "abcd"]
    assert await asyncio.gather(first, *rest) == ["X", "A", "B", "C", "D"]
    chunk = next(args for fn, args in pool.tasks if fn is run_calls)
    assert chunk[1:] == ((["/a", "/b", "/c", "/d"], False, True) if enabled else ())  # (reads, drop, ahead)


def test_the_setting_reaches_the_batch_lanes_chunks(tmp_path: Path) -> None:
    from agents.lanes import LanePools
    from streams.settings import Settings

    for enabled in (True, False):
        pools = LanePools(Settings(data_dir=tmp_path, pool_size=1, read_ahead=enabled),
                          preload=("tests.agents.pool_jobs",))
        try:
            assert pools.for_lane("batch").read_ahead is enabled  # type: ignore[union-attr]
        finally:
            pools.shutdown()


def _warm_file(tmp_path: Path, name: str, mb: int = 2) -> Path:
    f = tmp_path / name
    f.write_bytes(os.urandom(mb * 1024 * 1024))
    fd = os.open(f, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped: written back first, as an import's files long are
    finally:
        os.close(fd)
    f.read_bytes()
    if _resident(f) < 0.99:
        pytest.skip(f"the page cache does not keep {tmp_path}'s files read: nothing to drop")
    return f


def _read(path: str) -> int:
    return len(Path(path).read_bytes())


@linux_only
def test_a_file_dropped_leaves_the_page_cache_and_a_bad_path_is_left_alone(tmp_path: Path) -> None:
    f = _warm_file(tmp_path, "read.bin")
    assert drop_from_cache(str(f)) and _resident(f) < 0.01
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    for path in ("missing.png", "dir", "fifo", "nul\x00byte.png", "lone\ud800surrogate.png"):
        assert drop_from_cache(str(tmp_path / path)) is False
    assert drop_from_cache("/dev/zero") is False


@linux_only
@pytest.mark.parametrize("drop", [True, False])
def test_a_chunk_told_to_drops_each_file_once_its_call_is_done(tmp_path: Path, drop: bool) -> None:
    files = [_warm_file(tmp_path, f"{i}.bin") for i in range(3)]
    out = run_calls([(_read, (str(f),), {}) for f in files], [str(f) for f in files], drop)
    assert out == [(True, 2 * 1024 * 1024)] * 3  # each read its whole file first
    assert [_resident(f) < 0.01 for f in files] == [drop] * 3


@pytest.mark.parametrize("max_chunk", [1, 2])
async def test_files_are_dropped_once_a_streak_passes_its_bytes_and_a_pause_starts_a_new_one(
        monkeypatch: pytest.MonkeyPatch, max_chunk: int) -> None:
    pool = _InProcessPool()
    chunked = ChunkedPool(pool, max_chunk=max_chunk, drop_after_bytes=5000)  # type: ignore[arg-type]

    async def burst(*sizes: int) -> list[bool]:
        pool.tasks.clear()
        await asyncio.gather(*(chunked.run(str.upper, f"f{i}", reads=f"/f{i}", read_bytes=n)
                               for i, n in enumerate(sizes)))
        return [args[2] if fn is run_calls else fn is chunking.call_then_drop for fn, args in pool.tasks]

    # (this pool's one process is free for every call: each goes alone)
    assert await burst(2000, 2000) == [False, False]  # 4000 so far: kept for tier 2
    assert await burst(2000, 2000) == [True, True]  # 6000, 8000 without a pause: dropped
    clock = [time.monotonic() + chunking._DROP_STREAK_IDLE_S + 1]
    monkeypatch.setattr(chunking.time, "monotonic", lambda: clock[0])
    assert await burst(2000) == [False]  # after a pause: another import, counted from nothing
    assert await burst(2000, 2000) == [False, True]  # 4000, 6000
    assert ChunkedPool(pool, max_chunk=2)._dropping([]) is False  # type: ignore[arg-type]  # 0: never


@linux_only
async def test_the_batch_pool_drops_what_it_read_in_chunks_and_alone(tmp_path: Path) -> None:
    """Through the real pool processes, past a streak of one byte."""
    from agents.pool import WorkPool

    pool = WorkPool(1, timeout_s=10, memory_mb=1024)
    try:
        chunked = ChunkedPool(pool, max_chunk=4, drop_after_bytes=1)
        files = [_warm_file(tmp_path, f"{i}.bin") for i in range(5)]
        sizes = await asyncio.gather(*(chunked.run(_read, str(f), reads=str(f), read_bytes=f.stat().st_size)
                                       for f in files))
        assert sizes == [2 * 1024 * 1024] * 5 and chunked.chunk_sizes[1] >= 1 and max(chunked.chunk_sizes) > 1
        assert all(_resident(f) < 0.01 for f in files)  # the first alone, the others in a chunk: all dropped
        kept = _warm_file(tmp_path, "kept.bin")
        await ChunkedPool(pool, max_chunk=4).run(_read, str(kept), reads=str(kept), read_bytes=1 << 30)
        assert _resident(kept) > 0.99  # 0 (the default here): never
    finally:
        pool.shutdown()


@linux_only
async def test_files_are_dropped_also_with_read_ahead_off(tmp_path: Path) -> None:
    """DAMFLOW_READ_AHEAD=false took the calls' files away from the chunks, and with them the dropping: a big
    import flooded the page cache whatever DAMFLOW_DROP_READ_PAGES_AFTER_MB said."""
    from agents.pool import WorkPool

    pool = WorkPool(1, timeout_s=10, memory_mb=1024)
    try:
        chunked = ChunkedPool(pool, max_chunk=4, read_ahead=False, drop_after_bytes=1)
        files = [_warm_file(tmp_path, f"{i}.bin") for i in range(5)]
        sizes = await asyncio.gather(*(chunked.run(_read, str(f), reads=str(f), read_bytes=f.stat().st_size)
                                       for f in files))
        assert sizes == [2 * 1024 * 1024] * 5 and max(chunked.chunk_sizes) > 1
        assert [_resident(f) < 0.01 for f in files] == [True] * 5  # alone and in a chunk
    finally:
        pool.shutdown()


def test_a_chunk_with_read_ahead_off_reads_nothing_ahead_but_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(chunking, "read_ahead", lambda path: asked.append(("ahead", path)))
    monkeypatch.setattr(chunking, "drop_from_cache", lambda path: asked.append(("drop", path)))
    assert run_calls([(str.upper, (p,), {}) for p in "ab"], ["/a", "/b"], True, False) == [(True, "A"), (True, "B")]
    assert asked == [("drop", "/a"), ("drop", "/b")]

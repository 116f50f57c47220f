"""Generated benchmark inputs: N ComfyUI-like 1024x1024 PNGs (~1.5 MB each), cached between runs."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from streams.demo import comfy_like_png

CACHE = Path(os.environ.get("DAMFLOW_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))


def _make(args: tuple[str, int]) -> None:
    path, seed = args
    if not os.path.exists(path):
        comfy_like_png(Path(path), seed)


def generated_pngs(n: int, size: int = 1024) -> Path:
    """A folder with ``n`` distinct PNGs (made once, in parallel, then reused)."""
    folder = CACHE / f"png{size}-{n}"
    return _made(folder, [(str(folder / f"ComfyUI_{i:05d}_.png"), i) for i in range(n)], chunksize=8)


def _made(folder: Path, jobs: list[tuple[str, int]], *, chunksize: int) -> Path:
    """``folder`` with every ``(path, seed)`` of ``jobs`` generated: only the missing ones are made, in parallel."""
    missing = [j for j in jobs if not os.path.exists(j[0])]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor() as pool:
            list(pool.map(_make, missing, chunksize=chunksize))
    return folder


def _variant(args: tuple[str, str, int]) -> None:
    """A copy of a PNG with one extra tEXt chunk after IHDR: same pixels and work, different bytes and hash."""
    src, dst, i = args
    if os.path.exists(dst):
        return
    import struct
    import zlib

    data = Path(src).read_bytes()
    ihdr_end = 8 + 8 + 13 + 4
    body = b"damflow-variant\x00" + str(i).encode()
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    tmp = dst + ".tmp"
    Path(tmp).write_bytes(data[:ihdr_end] + chunk + data[ihdr_end:])
    os.replace(tmp, dst)


def variant_pngs(n: int, base: int = 500) -> Path:
    """``n`` distinct PNGs made from ``base`` generated ones (cheap: no re-encoding)."""
    if n <= base:
        return generated_pngs(n)
    src = sorted(generated_pngs(base).iterdir())
    folder = CACHE / f"variants-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(src[i % base]), str(folder / f"ComfyUI_{i:05d}_.png"), i) for i in range(n)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_variant, jobs, chunksize=32))
    return folder


def in_page_cache(files: list[str], *, keep: bool) -> None:
    """Put ``files`` in the page cache (read through once) or drop them from it (``POSIX_FADV_DONTNEED``), so
    that a run and the compute limit it is set against read their inputs alike: a 5000-file import (10 GB) does
    not fit in this machine's page cache, and a cold read costs a pool process 1-2 ms of kernel time and a wait
    per 2 MB file that a warm one does not."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            if keep:
                while os.read(fd, 1 << 20):
                    pass
            else:
                os.fsync(fd)  # pages not yet written back (the file was just made) cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def urgent_pngs(n: int) -> Path:
    """Distinct files for the urgent uploads (seeds far from the batch's)."""
    folder = CACHE / f"urgent-{n}"
    return _made(folder, [(str(folder / f"urgent_{i:04d}.png"), 100_000 + i) for i in range(n)], chunksize=4)

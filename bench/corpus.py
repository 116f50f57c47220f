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
    jobs = [(str(folder / f"ComfyUI_{i:05d}_.png"), i) for i in range(n)]
    missing = [j for j in jobs if not os.path.exists(j[0])]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor() as pool:
            list(pool.map(_make, missing, chunksize=8))
    return folder

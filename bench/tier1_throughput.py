"""Tier-1 throughput: damflow on the embedded broker vs the compute limit, in the same run.

The compute limit is a bare process pool (one process per core) doing exactly the per-file tier-1 work
(``agents.browse.browse_file``: BLAKE3 + thumbnails) with no broker, no events, no catalog. damflow's figure is
the whole pipeline: scan -> t1.batch -> worker -> assets -> catalog -> progress, timed from the start of the
ingest until the catalog reports the batch browsable, as a user of ``damflow ingest --wait`` sees it.

    python bench/tier1_throughput.py [--files 500]

Prints a table and one JSON line (prefixed ``BENCH_JSON``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.browse import browse_file  # noqa: E402
from agents.readahead import read_ahead  # noqa: E402
from bench.corpus import generated_pngs, in_page_cache  # noqa: E402
from schemas import AssetBrowsable, decode  # noqa: E402
from streams.ingest import ingest_folder  # noqa: E402
from streams.kafka import tail  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.supervisor import Stack  # noqa: E402


def compute_limit(files: list[str], data_dir: Path, workers: int, settings: Settings) -> float:
    """Files per second of a bare process pool doing the same per-file work, each task reading ahead the file its
    process most likely takes next, as damflow's chunks do."""
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_noop, range(workers)))  # processes started before the clock, as damflow's pool is
        t0 = time.perf_counter()
        kwargs = dict(sizes=settings.thumbnail_sizes, quality=settings.thumbnail_quality,
                      max_pixels=settings.max_image_pixels, max_file_bytes=settings.max_file_bytes)
        ahead = files[workers:] + [None] * workers  # the file each task's process most likely takes next
        futures = [pool.submit(_work, f, nxt, str(data_dir), **kwargs) for f, nxt in zip(files, ahead, strict=True)]
        for fut in futures:
            fut.result()
        return len(files) / (time.perf_counter() - t0)


def _work(path: str, ahead: str | None, data_dir: str, **kwargs) -> object:
    """One file's tier-1 work, having asked the kernel for the next file, as damflow's chunks do
    (agents.readahead): the limit reads cold inputs no worse than damflow does; and naming an event, as tier 1
    does (its thumbnails carry it)."""
    if ahead is not None:
        read_ahead(ahead)
    return browse_file(path, data_dir, event_id=f"limit-{os.path.basename(path)}", **kwargs)


def _noop(_: int) -> None:
    return None


async def damflow_run(folder: Path, data_dir: Path, n: int) -> dict:
    settings = Settings(data_dir=data_dir, log_level="warn")
    async with Stack(settings) as stack:
        async with tail(stack.bootstrap, stack.topics.assets, settings) as assets:
            t0 = time.perf_counter()
            first = asyncio.create_task(_first_browsable(assets))
            result = await ingest_folder(settings, stack.topics, stack.bootstrap, folder, wait=True, timeout=900)
            elapsed = time.perf_counter() - t0
            first_asset_s = await first - t0
    p = result.progress
    return {"files_per_s": n / elapsed, "seconds": elapsed, "first_asset_s": first_asset_s,
            "done": p.done if p else 0, "failed": (p.failed + p.dead_lettered) if p else 0}


async def _first_browsable(consumer) -> float:
    """perf_counter time at which the first AssetBrowsable arrives on `assets`."""
    while True:
        for records in (await consumer.getmany(timeout_ms=100)).values():
            if any(isinstance(decode(r.value), AssetBrowsable) for r in records):
                return time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=500)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    folder = generated_pngs(args.files)
    files = sorted(str(p) for p in folder.iterdir())
    in_page_cache(files, keep=True)  # the limit and the import both read them warm
    with tempfile.TemporaryDirectory(prefix="damflow-bench-") as tmp:
        limit = compute_limit(files, Path(tmp) / "limit", cores, Settings())
        shutil.rmtree(Path(tmp) / "limit")
        run = asyncio.run(damflow_run(folder, Path(tmp) / "damflow", len(files)))
    ratio = run["files_per_s"] / limit
    rows = [("compute limit (bare process pool)", limit, 1.0), ("damflow tier 1 (scan→browsable in catalog)",
            run["files_per_s"], ratio)]
    print(f"\ntier-1 throughput, {len(files)} generated 1024x1024 PNGs, {cores} cores")
    print(f"{'':45s} {'files/s':>9s} {'× limit':>8s}")
    for name, rate, r in rows:
        print(f"{name:45s} {rate:9.1f} {r:8.2f}")
    first = run["first_asset_s"]
    print(f"damflow: {run['done']} browsable, {run['failed']} failed in {run['seconds']:.1f} s; "
          f"first asset browsable {first:.3f} s after the ingest started")
    print("BENCH_JSON " + json.dumps({
        "bench": "tier1_throughput", "files": len(files), "cores": cores, "compute_limit_fps": round(limit, 2),
        "damflow_fps": round(run["files_per_s"], 2), "ratio": round(ratio, 3),
        "first_asset_s": round(first, 3), "done": run["done"],
        "failed": run["failed"],
    }))


if __name__ == "__main__":
    main()

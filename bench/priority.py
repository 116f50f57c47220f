"""Priority benchmark: urgent uploads during a big import, damflow's lanes vs a FIFO baseline, in one command.

    python bench/priority.py [--files 500] [--big 5000] [--interval 0.5] [--workers 1]

Runs, on this machine, one after the other:
1. the compute limit: a bare process pool (one process per core) doing the tier-1 work for the import's files,
   measured before and after every import (each import's throughput is set against the mean of the two: this
   machine's speed drifts within minutes);
2. damflow (`damflow up` in its own process, on the embedded broker), priority lanes: an import of ``--files``
   generated 1024x1024 PNGs (``damflow ingest --wait``, in its own process as an operator runs it) while an
   urgent upload is POSTed to the HTTP endpoint (``/upload?wait=1``, the real upload path) every
   ``--interval`` seconds, from the import's first browsable file until its end (one upload before the import,
   not counted, opens the client's connection as a DAM back-end's pool would have it open);
3. damflow, FIFO baseline: the same, but each urgent file joins the batch lane (``t1.batch``) behind the import;
4. (``--big``) the priority run again with a ``--big``-file import, for memory: peak RSS per process must stay
   flat from the small to the big import, because backpressure pauses the scanner.

Each import and its limit read their inputs alike: the small imports' files warm (read once before the first
measurement), the big import's cold (dropped from the page cache before it, as 10 GB would not stay there; its
limit is measured on every n-th of its own files, dropped from the cache first too).

Reports time to browsable of the urgent files (p50/p95/p99: for damflow the upload's HTTP round trip, as the
client saw it; for the FIFO baseline from publish to the ``AssetBrowsable`` stamp) and where it went by stage,
batch throughput against the compute limit (and beside it, with the urgent files worked on during the import
counted too: the same machine did that work), first-asset latency, the CPU seconds each process used during the
import and the peak RSS of every process; prints a table and one ``BENCH_JSON`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp
import msgspec
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.browse import browse_file  # noqa: E402
from bench.corpus import generated_pngs, in_page_cache, urgent_pngs, variant_pngs  # noqa: E402
from bench.rss import cpu_seconds, cpu_used, machine_seconds, process_cpu_seconds, snapshot  # noqa: E402
from bench.tier1_throughput import compute_limit  # noqa: E402
from streams.kafka import partitions_of, producer  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.broker import free_port, resolve_bootstrap  # noqa: E402
from streams.topics import topics_for  # noqa: E402
from streams.upload import store_original, upload_event  # noqa: E402
from schemas import encode  # noqa: E402


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


FIFO_URGENT = "fifo-urgent"  # batch id of the FIFO baseline's urgent files


class CatalogProbe:
    """Reads what the benchmark needs from the catalog (SQLite, read-only): not a second reader of `assets`, which
    on the embedded broker would cost as much as the catalog sink's own reading (a fetch there costs more the
    longer the topic is) and so take CPU from the pipeline it measures."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str, *params: object) -> list[tuple]:
        if not self.path.exists():
            return []
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)) as db:
                return db.execute(sql, params).fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []

    def first_browsable(self, batch_id: str | None = None) -> float | None:
        """When the first file of ``batch_id`` (default: of any import) became browsable (epoch s)."""
        where = "batch_id = ?" if batch_id else "batch_id NOT LIKE 'upload-%' AND batch_id != ?"
        rows = self.query(f"SELECT MIN(updated_at) FROM batch_files WHERE tier = 1 AND state = 'done' AND {where}",
                          batch_id or FIFO_URGENT)
        return rows[0][0] if rows else None

    def last_browsable(self, batch_id: str) -> float | None:
        """When the last file of ``batch_id`` became browsable (epoch s, the worker's stamp)."""
        rows = self.query("SELECT MAX(updated_at) FROM batch_files WHERE tier = 1 AND state = 'done' AND batch_id = ?",
                          batch_id)
        return rows[0][0] if rows else None

    def browsable_at(self, batch_id: str) -> dict[str, float]:
        return dict(self.query("SELECT event_id, updated_at FROM batch_files WHERE batch_id = ? AND tier = 1 "
                               "AND state = 'done'", batch_id))

    async def import_running(self) -> None:
        """Returns once the import's first file is browsable."""
        while self.first_browsable() is None:
            await asyncio.sleep(0.02)  # polling the catalog file: it has no change notification


class Up:
    """`damflow up` as its own process, as in production: the benchmark client and scanner live outside it."""

    def __init__(self, data_dir: Path, workers: int = 1) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.settings = Settings(data_dir=data_dir, log_level="warn", http_port=self.port)
        self.topics = topics_for(self.settings)
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "up.log"
        env = dict(os.environ, DAMFLOW_DATA_DIR=str(data_dir), DAMFLOW_HTTP_PORT=str(self.port),
                   DAMFLOW_LOG_LEVEL="warn")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "up", "--workers", str(workers)],
                                         env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while "damflow up:" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"damflow up did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)  # polling a child's log for its banner
        self.bootstrap = resolve_bootstrap(self.settings)

    def client_env(self) -> dict[str, str]:
        """The environment of a client process (`damflow ingest`) of this `damflow up`."""
        return dict(os.environ, DAMFLOW_DATA_DIR=str(self.settings.data_path), DAMFLOW_BROKER_URL=self.bootstrap,
                    DAMFLOW_LOG_LEVEL="warn")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)


async def run_import(folder: Path, urgent: list[Path], *, mode: str, interval: float, data_dir: Path,
                     workers: int = 1) -> dict:
    up = Up(data_dir, workers)
    try:
        return await _run_import(up, folder, urgent, mode=mode, interval=interval)
    finally:
        up.stop()


async def _run_import(stack: Up, folder: Path, urgent: list[Path], *, mode: str, interval: float) -> dict:
    settings = stack.settings
    n = sum(1 for _ in folder.iterdir())
    catalog = CatalogProbe(settings.catalog_path)
    published: dict[str, float] = {}  # event id -> when it was sent (epoch s)
    http_ms: dict[str, float] = {}  # event id -> the upload's round trip, as the client saw it
    timing: dict[str, dict] = {}  # event id -> the upload's stamps, from the reply
    submitted = 0
    async with aiohttp.ClientSession() as http, \
            producer(stack.bootstrap, compression=settings.compression_type) as prod:
        if mode == "priority":  # the client's connection open and warm, as a DAM back-end's would be
            async with http.post(f"{stack.http_url}/upload", params={"wait": "1"},
                                 data=urgent[-1].read_bytes(), headers={"Content-Type": "image/png"}) as resp:
                assert resp.status == 200, await resp.text()
        cpu0 = cpu_seconds(stack.proc.pid), _rusage()
        # the import as an operator runs it: `damflow ingest --wait` in its own process (a batch producer,
        # it lowers its own priority); its result says when it started and how long it took
        ingest = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streams.cli", "ingest", str(folder), "--wait", "--json", "--timeout", "3600",
            env=stack.client_env(), stdout=asyncio.subprocess.PIPE)
        output = asyncio.create_task(ingest.communicate())
        # urgent uploads *during* the import: from its first browsable file on
        await asyncio.wait([output, asyncio.create_task(catalog.import_running())],
                           return_when=asyncio.FIRST_COMPLETED)
        # where the machine's time goes from here (the import under way, the scanner's start-up behind it) to
        # the end: see _machine_time
        window0 = machine_seconds(), cpu_seconds(stack.proc.pid), process_cpu_seconds(ingest.pid), _rusage()
        while not output.done() and submitted < len(urgent):
            src = urgent[submitted]
            submitted += 1
            if mode == "priority":
                body = src.read_bytes()  # the client has its file in hand: reading it is not damflow's cost
                start, start_wall = time.perf_counter(), time.time()
                # a DAM back-end's upload: the raw image body (multipart works too; it costs a few ms more to
                # parse)
                async with http.post(f"{stack.http_url}/upload", params={"wait": "1", "name": src.name},
                                     data=body, headers={"Content-Type": "image/png"}) as resp:
                    body = await resp.json()
                up = body["uploads"][0]
                http_ms[up["event_id"]] = (time.perf_counter() - start) * 1000
                published[up["event_id"]] = start_wall
                if "timing" in up:
                    timing[up["event_id"]] = up["timing"]
            else:  # FIFO: the urgent file joins the batch lane, behind the import
                stored = store_original(settings, src)
                event = upload_event(stored, batch_id=FIFO_URGENT, display_name=src.name)
                event = msgspec.structs.replace(event, lane="batch")
                published[event.event_id] = time.time()
                await prod.send_and_wait(stack.topics.t1_batch, encode(event), key=event.path.encode())
            last = max(published.values())
            await asyncio.wait([output], timeout=max(0.0, interval - (time.time() - last)))  # cadence
        stdout, _ = await output
        if ingest.returncode != 0:
            raise RuntimeError(f"damflow ingest failed with {ingest.returncode}")
        result = json.loads(stdout)
        cpu = _cpu_during(stack.proc.pid, *cpu0)
        machine = _machine_time(stack.proc.pid, *window0)
    # time to browsable: for an upload, its HTTP round trip (`wait=1` answers once the asset is browsable); for
    # the FIFO baseline's files, which finish after the import, from their publish to their browsable stamp
    if http_ms:
        urgent_ms = list(http_ms.values())
        urgent_in_import = len(http_ms)  # each answered once browsable, during the import (the last about at its end)
    else:
        deadline = time.perf_counter() + 120
        while len(done := catalog.browsable_at(FIFO_URGENT)) < len(published) and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)  # polling the catalog file: it has no change notification
        urgent_ms = [(done[e] - t) * 1000 for e, t in published.items() if e in done]
        import_end = result["started_at"] + result["seconds"]
        urgent_in_import = sum(1 for e in published if e in done and done[e] <= import_end)
    rss = snapshot(stack.proc.pid)
    held = await records_held(stack.bootstrap, settings.topic_prefix)
    # where an urgent file's time goes: receiving the body (and hashing it), storing and publishing it (until the
    # broker acked), waiting to be worked on (the hand-over to the worker, its pool, the result back), the work
    # itself, and getting the result back to the client (and into the catalog)
    parts: dict[str, list[float]] = {"receive": [], "store_publish": [], "queue": [], "work": [], "deliver": []}
    detail = []  # per urgent file, in upload order: seconds since the import started, then each stage's ms
    for e, stamps in timing.items():
        wall0, ms = published[e], http_ms[e]
        stages = {"receive": (stamps["received_at"] - wall0) * 1000,
                  "store_publish": (stamps["published_at"] - stamps["received_at"]) * 1000,
                  "queue": (stamps["browsable_at"] - stamps["published_at"]) * 1000 - stamps["work_ms"],
                  "work": stamps["work_ms"], "deliver": wall0 * 1000 + ms - stamps["browsable_at"] * 1000}
        for k, v in stages.items():
            parts[k].append(v)
        detail.append({"at_s": round(wall0 - result["started_at"], 2), **{k: round(v, 1) for k, v in stages.items()}})
    p = result["progress"] or {}
    elapsed = result["seconds"]
    first = catalog.first_browsable(result["batch_id"])
    last = catalog.last_browsable(result["batch_id"])
    return {
        "mode": mode, "files": n, "seconds": elapsed, "files_per_s": n / elapsed,
        # the urgent files the same machine made browsable during the import, counted with it
        "work_files_per_s": (n + urgent_in_import) / elapsed,
        "first_asset_s": first - result["started_at"] if first else None,
        # from the last file's browsable stamp until `ingest --wait` returned (it learnt that the batch was done,
        # and closed its consumer and producer)
        "end_latency_s": result["started_at"] + elapsed - last if last else None,
        "done": p.get("done", 0), "failed": p.get("failed", 0) + p.get("dead_lettered", 0),
        "urgent_n": len(urgent_ms), "urgent_ms": urgent_ms, "rss_mb": rss, "broker_records": held,
        "uploads": len(http_ms),
        "urgent_parts": parts, "urgent_detail": detail, "cpu_s": cpu, "machine": machine,
    }


async def records_held(bootstrap: str, prefix: str) -> dict[str, int]:
    """How many records the broker holds per topic (names less ``prefix``): the embedded broker keeps every one
    in memory, so its RSS follows these, not the scanner's read-ahead."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        topics = [t for t in await consumer.topics() if t.startswith(prefix)]
        parts = [tp for t in topics for tp in await partitions_of(consumer, t)]
        ends, starts = await consumer.end_offsets(parts), await consumer.beginning_offsets(parts)
        # the embedded broker's end offset is its last record batch's first offset + 1: that batch, read,
        # says where the partition really ends (a fetch hands over whole batches)
        consumer.assign([tp for tp in parts if ends[tp] > starts[tp]])
        for tp in consumer.assignment():
            consumer.seek(tp, ends[tp] - 1)
            records = (await consumer.getmany(tp, timeout_ms=2000)).get(tp, [])
            ends[tp] = max([ends[tp]] + [r.offset + 1 for r in records])
    finally:
        await consumer.stop()
    held: dict[str, int] = {}
    for tp in parts:
        held[tp.topic[len(prefix):]] = held.get(tp.topic[len(prefix):], 0) + ends[tp] - starts[tp]
    return {t: n for t, n in sorted(held.items()) if n}


def _rusage() -> tuple[float, float]:
    """CPU seconds so far of this process (the benchmark's client) and of its reaped children (the scanner)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def _cpu_during(up_pid: int, before: dict[str, float], rusage: tuple[float, float]) -> dict[str, float]:
    """CPU seconds each role used during the import: `damflow up`'s processes, the scanner, the benchmark."""
    out = cpu_used(before, cpu_seconds(up_pid))
    own, kids = _rusage()
    out["ingest"], out["bench"] = round(kids - rusage[1], 2), round(own - rusage[0], 2)
    return out


def _machine_time(up_pid: int, machine: tuple[float, float], up_cpu: dict[str, float], ingest_cpu: float,
                  rusage: tuple[float, float]) -> dict[str, float]:
    """Shares of the machine's CPU time (all its CPUs) from the import's first browsable file to its end: the
    batch pool's work, the urgent files' work (the interactive pool), each service, idle, and what other
    processes on the machine took. The batch work's share is what the throughput can reach against the compute
    limit (a bare pool has all of it), give or take how fast each file goes."""
    idle1, total1 = machine_seconds()
    total = total1 - machine[1]
    used = cpu_used(up_cpu, cpu_seconds(up_pid))
    own, kids = _rusage()
    used["ingest"] = kids - rusage[1] - ingest_cpu  # the scanner has exited: its whole life, less its start
    used["bench"] = own - rusage[0]
    out = {role: round(100 * v / total, 1) for role, v in used.items() if role != "resource-tracker"}
    out["idle"] = round(100 * (idle1 - machine[0]) / total, 1)
    out["other"] = round(100 - sum(out.values()), 1)
    out["seconds"] = round(total / len(os.sched_getaffinity(0)), 2)
    return out


def work_floor(files: list[Path], data_dir: Path, settings: Settings) -> float:
    """p50 of one urgent file's tier-1 work alone on an otherwise idle machine (one process, one file at a time):
    the floor an urgent upload's time to browsable stands on; what is above it is damflow's cost."""
    with ProcessPoolExecutor(1) as pool:
        pool.submit(browse_file, str(files[0]), str(data_dir / "warm")).result()
        kwargs = dict(sizes=settings.thumbnail_sizes, quality=settings.thumbnail_quality, event_id="floor")
        return pct([pool.submit(browse_file, str(f), str(data_dir), **kwargs).result().work_ms for f in files], 50)


def pooled(runs: list[dict]) -> dict:
    """Several runs of the same import as one: urgent samples together, throughput the median run's."""
    if len(runs) == 1:
        return runs[0]
    by_speed = sorted(runs, key=lambda r: r["files_per_s"] / r["limit"])
    out = dict(by_speed[len(runs) // 2])
    for key in ("urgent_ms", "urgent_detail"):
        out[key] = [v for r in runs for v in r[key]]
    out["urgent_parts"] = {k: [v for r in runs for v in r["urgent_parts"][k]] for k in runs[0]["urgent_parts"]}
    out["urgent_n"] = len(out["urgent_ms"])
    out["work_floor_ms"] = pct([r["work_floor_ms"] for r in runs], 50)
    out["repeats"] = len(runs)
    return out


def summary(run: dict, limit: float, limits: list[float]) -> dict:
    u = run["urgent_ms"]
    parts = run["urgent_parts"]
    services = sum(v for k, v in run["cpu_s"].items() if k not in ("pool", "urgent-pool"))
    return {
        "mode": run["mode"], "files": run["files"], "files_per_s": round(run["files_per_s"], 2),
        "ratio_to_limit": round(run["files_per_s"] / limit, 3), "compute_limit_fps": round(limit, 2),
        # the import's files and the urgent ones worked on meanwhile: how much of the machine did tier-1 work
        "work_ratio_to_limit": round(run["work_files_per_s"] / limit, 3),
        "compute_limits_around_fps": [round(x, 2) for x in limits],
        # what the pipeline's own processes cost per file, besides the work: CPU the pool could have had
        "services_cpu_ms_per_file": round(services * 1000 / run["files"], 2),
        "first_asset_s": round(run["first_asset_s"], 3) if run["first_asset_s"] else None,
        "end_latency_s": round(run["end_latency_s"], 3) if run.get("end_latency_s") is not None else None,
        "urgent_n": run["urgent_n"],
        **{f"urgent_p{q}_ms": round(pct(u, q), 1) if u else None for q in (50, 95, 99)},
        "rss_mb": run["rss_mb"], "broker_records": run["broker_records"], "uploads": run["uploads"],
        "cpu_s": run["cpu_s"], "machine_pct": run["machine"], "failed": run["failed"],
        "repeats": run.get("repeats", 1),
        "work_floor_ms": round(run["work_floor_ms"], 1) if run.get("work_floor_ms") else None,
        "urgent_p50_over_floor_ms": round(pct(u, 50) - run["work_floor_ms"], 1)
        if u and run.get("work_floor_ms") else None,
        **{f"urgent_parts_p{q}_ms": {k: round(pct(v, q), 1) for k, v in parts.items() if v} for q in (50, 99)},
        "urgent_detail": run["urgent_detail"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--big", type=int, default=5000, help="second, larger import for memory (0: skip)")
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes (`damflow up --workers`); with several, set DAMFLOW_POOL_SIZE to the "
                         "cores over the workers")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the priority import this many times: urgent samples pooled, throughput the median "
                         "run's against the compute limit around it (this machine is noisy)")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    folder = generated_pngs(args.files)
    urgent = sorted(urgent_pngs(400).iterdir())
    rows = []
    with tempfile.TemporaryDirectory(prefix="damflow-bench-") as tmp:
        tmp = Path(tmp)
        files = sorted(str(p) for p in folder.iterdir())
        in_page_cache(files + [str(p) for p in urgent], keep=True)  # read warm, by the limit and the imports alike
        measured = 0

        def limit_now(sample: list[str] = files, *, cold: bool = False) -> float:
            """The compute limit, measured now: this machine's speed drifts by tens of percent within minutes,
            so every import is set against the mean of the measurements just before and just after it."""
            nonlocal measured
            measured += 1
            if cold:
                in_page_cache(sample, keep=False)
            return compute_limit(sample, tmp / f"limit{measured}", cores, Settings())

        runs = []
        before = limit_now()
        for i in range(args.repeat):
            floor = work_floor(urgent[-25:], tmp / f"floor{i}", Settings())
            run = asyncio.run(run_import(folder, urgent, mode="priority", interval=args.interval,
                                         data_dir=tmp / f"priority{i}", workers=args.workers))
            after = limit_now()
            runs.append({**run, "limit": (before + after) / 2, "limits": [before, after], "work_floor_ms": floor})
            before = after
        best = pooled(runs)
        rows.append(summary(best, best["limit"], best["limits"]))
        fifo = asyncio.run(run_import(folder, urgent[200:], mode="fifo", interval=args.interval,
                                      data_dir=tmp / "fifo", workers=args.workers))
        after = limit_now()
        rows.append(summary(fifo, (before + after) / 2, [before, after]))
        before = after
        if args.big:
            big = variant_pngs(args.big)
            # its inputs do not fit in the page cache: the import reads them from disk, and so does its limit,
            # measured on as many of its own files as the small import has, spread over the folder
            big_files = sorted(str(p) for p in big.iterdir())
            sample = big_files[:: max(1, len(big_files) // len(files))][: len(files)]
            before = limit_now(sample, cold=True)
            in_page_cache(big_files, keep=False)
            run = asyncio.run(run_import(big, urgent, mode="priority", interval=args.interval,
                                         data_dir=tmp / "big", workers=args.workers))
            after = limit_now(sample, cold=True)
            rows.append(summary(run, (before + after) / 2, [before, after]))
        limit = rows[0]["compute_limit_fps"]
    print(f"\npriority benchmark: {cores} cores; compute limit (bare process pool), files/s, measured just before "
          "and just after each import (the big one's on a sample of its files, read cold like its own): " + "; ".join(
              f"{r['mode']} {r['files']}: " + "/".join(f"{x:.1f}" for x in r["compute_limits_around_fps"])
              for r in rows))
    print("×limit: the import's files/s against the limit; +urgent: with the urgent files worked on meanwhile")
    print("first s: the first file browsable after `ingest` started; end s: after the last one, until `ingest --wait`"
          " returned")
    head = f"{'run':10s} {'files':>6s} {'files/s':>8s} {'×limit':>7s} {'+urgent':>7s} {'first s':>8s} " \
           f"{'end s':>6s} {'urgent n':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}"
    print(head)
    for r in rows:
        print(f"{r['mode']:10s} {r['files']:6d} {r['files_per_s']:8.1f} {r['ratio_to_limit']:7.2f} "
              f"{r['work_ratio_to_limit']:7.2f} "
              f"{r['first_asset_s'] or 0:8.3f} {r['end_latency_s'] or 0:6.3f} {r['urgent_n']:8d} "
              f"{r['urgent_p50_ms'] or 0:8.1f} "
              f"{r['urgent_p95_ms'] or 0:8.1f} {r['urgent_p99_ms'] or 0:8.1f}")
    for r in rows:
        for q in ("p50", "p99"):
            if r[f"urgent_parts_{q}_ms"]:
                print(f"urgent time {q} by stage ({r['mode']} {r['files']}): "
                      + ", ".join(f"{k} {v:.1f} ms" for k, v in r[f"urgent_parts_{q}_ms"].items()))
    for r in rows:
        if r["work_floor_ms"]:
            print(f"urgent work floor ({r['mode']} {r['files']}): one file alone on an idle machine p50 "
                  f"{r['work_floor_ms']:.1f} ms; urgent p50 is {r['urgent_p50_over_floor_ms']:.1f} ms above it")
    print("CPU seconds per process role during the import (services: all but the pools, ms per file):")
    for r in rows:
        print(f"  {r['mode']:10s} {r['files']:6d}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["cpu_s"].items()))
              + f"; services {r['services_cpu_ms_per_file']:.2f} ms/file")
    print("the machine's CPU time from the first browsable file to the end, %: pool = the import's work (what "
          "×limit can reach), urgent-pool = the urgent files' work, idle = nobody's, other = other processes")
    for r in rows:
        m = dict(r["machine_pct"])
        seconds = m.pop("seconds")
        services = sum(v for k, v in m.items() if k not in ("pool", "urgent-pool", "idle", "other"))
        print(f"  {r['mode']:10s} {r['files']:6d} ({seconds:.1f} s): " + ", ".join(
            f"{k} {m.pop(k, 0):.1f}" for k in ("pool", "urgent-pool")) + f"; services {services:.1f}: "
            + ", ".join(f"{k} {m.pop(k):.1f}" for k in sorted(m) if k not in ("idle", "other"))
            + f"; idle {m['idle']:.1f}, other {m['other']:.1f}")
    print("peak RSS (MB) per process role:")
    for r in rows:
        print(f"  {r['mode']:10s} {r['files']:6d}: "
              + ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["rss_mb"].items())))
    growth = None
    if args.big and len(rows) == 3:
        small, large = rows[0]["rss_mb"], rows[2]["rss_mb"]
        growth = {k: round(large[k] / small[k], 3) for k in small if k in large and small[k]}
        print("RSS growth big/small: " + ", ".join(f"{k} {v:.2f}×" for k, v in sorted(growth.items())))
        # the embedded broker keeps every record: its growth is the log it holds (the import's files and the
        # uploads made meanwhile, one every --interval at most, up to 400, while it runs), not read-ahead
        held = [sum(r["broker_records"].values()) for r in (rows[0], rows[2])]
        if "broker" in small and "broker" in large and held[1] > held[0]:
            print(f"broker: {held[0]} -> {held[1]} records held, those of {rows[0]['uploads']} -> "
                  f"{rows[2]['uploads']} uploads among them; "
                  f"{(large['broker'] - small['broker']) * 1024 / (held[1] - held[0]):.2f} KB of RSS per record "
                  "more. Held at the end: " + ", ".join(f"{k} {v}" for k, v in rows[2]["broker_records"].items()))
    details = {f"{r['mode']}-{r['files']}": r.pop("urgent_detail") for r in rows}
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"priority-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(
        {"rows": rows, "urgent_detail": details}, indent=1))
    print("BENCH_JSON " + json.dumps({"bench": "priority", "cores": cores, "compute_limit_fps": round(limit, 2),
                                      "runs": rows, "rss_growth": growth}))


if __name__ == "__main__":
    main()

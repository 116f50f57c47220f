"""Long-session benchmark: what each file costs as one `damflow up` on the embedded broker lives through imports.

    python bench/long_session.py [--rounds 8] [--files 500] [--lingers 0,10]

The embedded broker (Tansu, memory storage) keeps every record batch it is sent, and goes over a partition's
batches on each fetch that returns data: its CPU per file grows with the batches it holds, so the more batches
each file leaves on `assets`, `t2.batch`, `t3.background` and `progress`, the faster a long-running `damflow up`
slows down. For each worker producer linger in ``--lingers`` (``DAMFLOW_PRODUCER_LINGER_MS``: how long results
wait to share a batch), this starts one `damflow up` and imports ``--rounds`` folders of ``--files`` distinct
generated 1024x1024 PNGs into it one after the other, each to the end of tier 3 (``damflow ingest --wait --tier
3``), and reports per round the seconds it took and the CPU each process spent per file: the first round is the
fresh broker's baseline; the growth is summed up as a least-squares slope over the rounds (ms per file for
every 1000 files already held) and as the last two rounds against the first two.

Prints a table and one ``BENCH_JSON`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import in_page_cache, variant_pngs  # noqa: E402
from bench.priority import Up  # noqa: E402
from bench.rss import cpu_seconds  # noqa: E402

ROLES = ("broker", "worker", "supervisor", "pool")
BIG = 5000  # bench/priority.py's default --big


def round_folders(rounds: int, files: int) -> list[Path]:
    """``rounds`` folders of ``files`` distinct PNGs each: hard links into the generated variants (same file
    system: both live in the benchmark's cache), so nothing is copied; the variants are bench/priority.py's big
    import's (5000) when that is enough."""
    source = variant_pngs(max(rounds * files, BIG))
    names = sorted(p.name for p in source.iterdir())
    out = []
    for r in range(rounds):
        folder = source.parent / f"long-session-{files}" / f"round{r}"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names[r * files:(r + 1) * files]:
            if not (folder / name).exists():
                os.link(source / name, folder / name)
        out.append(folder)
    return out


def session(folders: list[Path], linger_ms: int, files: int) -> list[dict]:
    """One `damflow up` with this producer linger, importing every folder in turn to the end of tier 3."""
    os.environ["DAMFLOW_PRODUCER_LINGER_MS"] = str(linger_ms)  # read by `damflow up` (Up copies the environment)
    rows = []
    with tempfile.TemporaryDirectory(prefix="damflow-long-") as tmp:
        up = Up(Path(tmp))
        try:
            env = up.client_env()
            for n, folder in enumerate(folders):
                in_page_cache([str(p) for p in folder.iterdir()], keep=True)  # every round reads its files warm
                before, t0 = cpu_seconds(up.proc.pid), time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "streams.cli", "ingest", str(folder), "--wait", "--tier",
                                       "3", "--json", "--timeout", "600"], env=env, capture_output=True, text=True)
                seconds, after = time.perf_counter() - t0, cpu_seconds(up.proc.pid)
                if done.returncode != 0:
                    raise RuntimeError(f"ingest failed in round {n}: {done.stderr[-2000:]}")
                row = {"linger_ms": linger_ms, "round": n, "files_before": n * files, "seconds": round(seconds, 2)}
                row.update({f"{role}_ms_per_file": round(1000 * (after.get(role, 0) - before.get(role, 0)) / files, 2)
                            for role in ROLES})
                rows.append(row)
                print("  " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        finally:
            up.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--lingers", default="0,10", help="worker producer lingers to compare, ms")
    args = ap.parse_args()
    folders = round_folders(args.rounds, args.files)
    rows = []
    for linger in (int(x) for x in args.lingers.split(",")):
        print(f"damflow up, worker producer linger {linger} ms: {args.rounds} imports of {args.files} files")
        rows += session(folders, linger, args.files)
    print(f"\nlong session: {len(os.sched_getaffinity(0))} cores; CPU ms per file by process role, each round "
          "imported to the end of tier 3")
    print(f"{'linger ms':>9s} {'round':>5s} {'before':>7s} {'s':>6s} " + " ".join(f"{r:>10s}" for r in ROLES))
    for r in rows:
        print(f"{r['linger_ms']:9d} {r['round']:5d} {r['files_before']:7d} {r['seconds']:6.1f} "
              + " ".join(f"{r[f'{role}_ms_per_file']:10.2f}" for role in ROLES))
    growth = {}
    for linger in sorted({r["linger_ms"] for r in rows}):
        growth[linger] = broker_growth([r for r in rows if r["linger_ms"] == linger])
        print(f"linger {linger} ms: broker CPU per file {growth[linger]['mean_ms']} ms on average, growing "
              f"{growth[linger]['ms_per_1000_files_held']} ms per 1000 files already held (least squares); last two "
              f"rounds / first two: {growth[linger]['last_two_over_first_two']}x")
    print("BENCH_JSON " + json.dumps({"bench": "long_session", "rounds": rows,
                                      "broker_growth": {str(k): v for k, v in growth.items()}}))


def broker_growth(rows: list[dict]) -> dict[str, float]:
    """How the broker's CPU per file grows with the files a session already holds: the least-squares slope (one
    round is noisy on a small machine), and the last two rounds against the first two."""
    xs = [r["files_before"] / 1000 for r in rows]
    ys = [r["broker_ms_per_file"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0
    head, tail = ys[:2], ys[-2:]
    return {"mean_ms": round(my, 2), "ms_per_1000_files_held": round(slope, 2),
            "last_two_over_first_two": round(sum(tail) / max(sum(head), 0.01), 2)}


if __name__ == "__main__":
    main()

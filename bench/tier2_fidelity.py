"""Tier-2 metadata: fidelity on the shared corpus (facts right / total, per generator) and files/s/core.

Fidelity counts exactly the checks the metadata tests assert (``tests/agents/metadata/expectations.py``, built from
the ``expect`` phrases of ``shared/corpus/manifest.json``), run against the real extractor:

- generator facts (``facts_for``) against ``detect(read_containers(file))`` for every AI entry, grouped by the
  generator the manifest says wrote the file (``none``: files that must yield no generation parameters);
- container checks (``container_checks``) against ``read_containers(file)`` for every entry, grouped by the
  manifest's kind (camera, broken, ...). As in the test, a ``broken`` file that ``read_containers`` refuses with a
  typed error (SourceMissing, SourceUnreadable, UnsupportedFormat) has no checks to count ("refused"); an ``empty``
  or ``unknown`` one has one check: that it is refused with UnsupportedFormat.

Speed: ``agents.index.index_file`` (the whole tier-2 unit of work: containers + generators + the JSON document
written atomically) over every corpus file, one process, one untimed warm-up round then ``--rounds`` timed rounds.
Files that raise a typed DamflowError are processed files (they are part of the mix). Asset ids (BLAKE3, tier 1's
work) are computed before the clock.

    python bench/tier2_fidelity.py [--rounds 5] [--show-failures 20]

Corpus: ``$DAMFLOW_CORPUS`` or ``<repo>/../shared/corpus``. Needs the test extras (pytest: the checks use
``pytest.approx``). Prints tables and one JSON line (prefixed ``BENCH_JSON``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.hashing import hash_file  # noqa: E402
from agents.index import index_file  # noqa: E402
from agents.metadata.containers import read_containers  # noqa: E402
from agents.metadata.generators import detect  # noqa: E402
from agents.metadata.model import Generation  # noqa: E402
from streams.errors import DamflowError, UnsupportedFormat  # noqa: E402
from tests.agents.metadata.expectations import (  # noqa: E402
    AI_KINDS,
    ALLOWED,
    check_failure,
    container_checks,
    fact_failure,
    facts_for,
)

GENERATORS = ("comfyui", "a1111", "forge", "sdnext", "invokeai", "novelai", "fooocus", "drawthings", "civitai",
              "none")
KINDS = ("camera", "broken", "comfyui", "a1111", "invokeai", "other-ai")
TARGET_FPS = 150.0
#: other-ai entries: the manifest's first words name the tool (the rest must yield no generation parameters).
_OTHER_AI = (("NovelAI", "novelai"), ("Fooocus", "fooocus"), ("Draw Things", "drawthings"), ("Civitai", "civitai"))


def corpus_dir() -> Path:
    return Path(os.environ.get("DAMFLOW_CORPUS", REPO.parent / "shared" / "corpus"))


def expected_generator(entry: dict[str, Any], facts: list) -> str:
    """Which generator the manifest says wrote an AI entry (the group its facts count in)."""
    kind, text = entry["kind"], entry["expect"]
    if kind in ("comfyui", "invokeai"):
        return kind
    if kind == "a1111":
        if "SD.Next" in text:
            return "sdnext"
        if re.search(r"\bForge\b", text):
            return "forge"
        return "a1111"
    if [label for label, _ in facts] == ["no generation parameters"]:
        return "none"
    return next((name for phrase, name in _OTHER_AI if phrase in text), "unknown")


@dataclass
class Tally:
    files: int = 0
    files_ok: int = 0
    held: int = 0
    total: int = 0
    refused: int = 0
    gaps: int = 0
    failures: list[str] = field(default_factory=list)

    def add_file(self, results: list[tuple[str, str | None]], rel: str) -> None:
        """``results``: (check name, failure line or None) for each check of one file."""
        self.files += 1
        self.total += len(results)
        bad = [f"{rel}: {failure}" for _, failure in results if failure is not None]
        self.held += len(results) - len(bad)
        self.files_ok += not bad
        self.failures += bad

    def ratio(self) -> float | None:
        return self.held / self.total if self.total else None

    def as_json(self) -> dict[str, Any]:
        ratio = self.ratio()
        return {"files": self.files, "files_ok": self.files_ok, "held": self.held, "total": self.total,
                "ratio": round(ratio, 4) if ratio is not None else None} | (
            {"refused": self.refused} if self.refused else {}) | ({"known_gaps": self.gaps} if self.gaps else {})


def _guarded(run: Callable[..., str | None], name: str, *args: Any) -> str | None:
    """``run(*args)``; a check raising something the test would report as an error counts as failed here."""
    try:
        return run(*args)
    except Exception as exc:  # noqa: BLE001
        return f"{name}: {type(exc).__name__}: {exc} (error)"


def generator_fidelity(corpus: Path, manifest: list[dict[str, Any]]) -> dict[str, Tally]:
    tallies = {name: Tally() for name in GENERATORS}
    for entry in manifest:
        if entry["kind"] not in AI_KINDS:
            continue
        facts = facts_for(entry)
        group = tallies.setdefault(expected_generator(entry, facts), Tally())
        try:
            gen: Generation | None = detect(read_containers(corpus / entry["file"]))
        except Exception as exc:  # noqa: BLE001  (the test would error: every fact of the file fails)
            error = f"read_containers/detect raised {type(exc).__name__}: {exc}"
            group.add_file([(label, f"{label} ({error})") for label, _ in facts], entry["file"])
            continue
        group.add_file([(fact[0], _guarded(fact_failure, fact[0], fact, gen)) for fact in facts],
                       entry["file"])
    return tallies


def container_fidelity(corpus: Path, manifest: list[dict[str, Any]]) -> dict[str, Tally]:
    tallies = {kind: Tally() for kind in KINDS}
    for entry in manifest:
        group = tallies.setdefault(entry["kind"], Tally())
        path = corpus / entry["file"]
        if entry["format"] in ("empty", "unknown"):
            try:
                read_containers(path)
                failure: str | None = "refused: read_containers returned instead of raising UnsupportedFormat"
            except UnsupportedFormat:
                failure = None
            except Exception as exc:  # noqa: BLE001
                failure = f"refused: {type(exc).__name__} instead of UnsupportedFormat: {exc}"
            group.add_file([("refused", failure)], entry["file"])
            continue
        checks = container_checks(entry)
        try:
            c = read_containers(path)
        except ALLOWED as exc:
            if entry["kind"] == "broken":
                group.refused += 1
                continue
            error = f"read_containers raised {type(exc).__name__}: {exc}"
            group.add_file([(check.name, f"{check.name} ({error})") for check in checks], entry["file"])
            continue
        except Exception as exc:  # noqa: BLE001
            error = f"read_containers raised {type(exc).__name__}: {exc} (error)"
            group.add_file([(check.name, f"{check.name} ({error})") for check in checks], entry["file"])
            continue
        results = []
        for check in checks:
            failure = _guarded(check_failure, check.name, check, c)
            if failure is not None and check.xfail is not None:
                group.gaps += 1  # a known gap: not held, and listed as such
                failure = f"{failure} [known gap]"
            results.append((check.name, failure))
        group.add_file(results, entry["file"])
    return tallies


def speed(corpus: Path, manifest: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    files = [str(corpus / entry["file"]) for entry in manifest]
    ids = []
    for path in files:
        try:
            ids.append(hash_file(path)[0])
        except DamflowError:
            ids.append("0" * 64)  # unhashable (empty, missing): index_file refuses it all the same
    per_file: list[float] = []
    round_s: list[float] = []
    cpu_s = 0.0
    typed: dict[str, int] = {}
    untyped: dict[str, str] = {}
    slowest: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="damflow-bench-t2-") as data_dir:
        for r in range(rounds + 1):  # round 0 warms the page cache, imports and lazily built tables
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for path, asset_id in zip(files, ids, strict=True):
                t0 = time.perf_counter()
                try:
                    index_file(path, asset_id, data_dir)
                except DamflowError as exc:
                    if r == 0:
                        typed[type(exc).__name__] = typed.get(type(exc).__name__, 0) + 1
                except Exception as exc:  # noqa: BLE001  (a bug: counted, shown, timed like the rest)
                    untyped[path] = f"{type(exc).__name__}: {exc}"
                dt = time.perf_counter() - t0
                if r:
                    per_file.append(dt)
                    slowest[path] = max(slowest.get(path, 0.0), dt)
            if r:
                round_s.append(time.perf_counter() - wall0)
                cpu_s += time.process_time() - cpu0
    timed = len(per_file)
    ordered = sorted(per_file)
    worst = sorted(slowest.items(), key=lambda kv: kv[1], reverse=True)[:3]
    return {
        "files": len(files), "rounds": rounds,
        "fps": timed / sum(per_file),
        "round_fps_median": len(files) / statistics.median(round_s),
        "cpu_fps": timed / cpu_s if cpu_s else None,
        "mean_ms": 1000 * statistics.fmean(per_file), "median_ms": 1000 * statistics.median(per_file),
        "p95_ms": 1000 * ordered[min(timed - 1, int(0.95 * timed))], "max_ms": 1000 * ordered[-1],
        "slowest": [(Path(p).relative_to(corpus).as_posix(), 1000 * s) for p, s in worst],
        "typed_errors": typed, "untyped_errors": untyped,
    }


def _pct(t: Tally) -> str:
    ratio = t.ratio()
    return f"{100 * ratio:6.1f}%" if ratio is not None else "      –"


def _table(title: str, first: str, tallies: dict[str, Tally], *, refused: bool = False) -> None:
    print(f"\n{title}")
    print(f"{first:12s} {'files':>6s} {'all right':>10s} {'held/total':>13s} {'':>7s}"
          + (f" {'refused':>8s}" if refused else ""))
    total = Tally()
    for name, t in tallies.items():
        held = f"{t.held}/{t.total}"
        print(f"{name:12s} {t.files:6d} {t.files_ok:10d} {held:>13s} {_pct(t)}"
              + (f" {t.refused:8d}" if refused else ""))
        total.files, total.files_ok, total.held, total.total = (
            total.files + t.files, total.files_ok + t.files_ok, total.held + t.held, total.total + t.total)
        total.refused += t.refused
    held = f"{total.held}/{total.total}"
    print(f"{'all':12s} {total.files:6d} {total.files_ok:10d} {held:>13s} {_pct(total)}"
          + (f" {total.refused:8d}" if refused else ""))


def _sum(tallies: dict[str, Tally]) -> tuple[int, int]:
    return sum(t.held for t in tallies.values()), sum(t.total for t in tallies.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds over the corpus (default 5)")
    ap.add_argument("--show-failures", type=int, default=20, help="failing checks to list (default 20)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not __debug__:
        sys.exit("tier2_fidelity: the checks are assert statements; run without -O")
    corpus = corpus_dir()
    if not (corpus / "manifest.json").is_file():
        sys.exit(f"tier2_fidelity: corpus not found at {corpus} (no manifest.json); set DAMFLOW_CORPUS or place "
                 "shared/corpus beside the repository")
    manifest = json.loads((corpus / "manifest.json").read_text())
    warnings.simplefilter("ignore")  # Pillow's complaints about the corpus' deliberately broken files

    generators = generator_fidelity(corpus, manifest)
    containers = container_fidelity(corpus, manifest)
    run = speed(corpus, manifest, args.rounds)

    print(f"\ntier-2 metadata fidelity, corpus {corpus} ({len(manifest)} files)")
    _table("generator facts (detect), by the generator the manifest names", "generator", generators)
    _table("container checks (read_containers), by manifest kind", "kind", containers, refused=True)
    g_held, g_total = _sum(generators)
    c_held, c_total = _sum(containers)
    held, total = g_held + c_held, g_total + c_total
    print(f"\noverall: {held}/{total} checks hold ({100 * held / total:.1f}%): generator facts {g_held}/{g_total}, "
          f"container checks {c_held}/{c_total}")
    failures = [f for t in (*generators.values(), *containers.values()) for f in t.failures]
    if failures:
        print(f"failing checks ({len(failures)}):")
        for line in failures[: args.show_failures]:
            print(f"  {line.splitlines()[0][:200]}")
        if len(failures) > args.show_failures:
            print(f"  ... and {len(failures) - args.show_failures} more (--show-failures)")

    met = run["fps"] >= TARGET_FPS
    print(f"\ntier-2 speed: agents.index.index_file, 1 process, {run['files']} files × {run['rounds']} rounds "
          "(warm cache)")
    print(f"  files/s/core        {run['fps']:8.1f}   (target ≥ {TARGET_FPS:.0f}: {'met' if met else 'NOT met'})")
    print(f"  median round        {run['round_fps_median']:8.1f} files/s")
    if run["cpu_fps"] is not None:
        print(f"  per CPU second      {run['cpu_fps']:8.1f} files")
    print(f"  per file ms         mean {run['mean_ms']:.2f}, median {run['median_ms']:.2f}, "
          f"p95 {run['p95_ms']:.2f}, max {run['max_ms']:.2f}")
    print("  slowest             " + ", ".join(f"{p} {ms:.1f} ms" for p, ms in run["slowest"]))
    typed = ", ".join(f"{n} {k}" for k, n in sorted(run["typed_errors"].items())) or "none"
    print(f"  typed errors/round  {sum(run['typed_errors'].values())} ({typed})")
    if run["untyped_errors"]:
        print(f"  UNTYPED errors      {len(run['untyped_errors'])}:")
        for path, error in list(run["untyped_errors"].items())[:10]:
            print(f"    {Path(path).relative_to(corpus).as_posix()}: {error[:160]}")

    print("BENCH_JSON " + json.dumps({
        "bench": "tier2_fidelity", "files": len(manifest),
        "fidelity": round(held / total, 4), "held": held, "total": total,
        "generator_facts": {"held": g_held, "total": g_total, "ratio": round(g_held / g_total, 4) if g_total else None,
                            "by_generator": {k: t.as_json() for k, t in generators.items()}},
        "container_checks": {"held": c_held, "total": c_total,
                             "ratio": round(c_held / c_total, 4) if c_total else None,
                             "by_kind": {k: t.as_json() for k, t in containers.items()}},
        "rounds": run["rounds"], "files_per_s_core": round(run["fps"], 1),
        "round_fps_median": round(run["round_fps_median"], 1),
        "cpu_fps": round(run["cpu_fps"], 1) if run["cpu_fps"] is not None else None,
        "mean_ms": round(run["mean_ms"], 3), "median_ms": round(run["median_ms"], 3),
        "p95_ms": round(run["p95_ms"], 3), "target_fps": TARGET_FPS, "target_met": met,
        "typed_errors": sum(run["typed_errors"].values()), "untyped_errors": len(run["untyped_errors"]),
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()

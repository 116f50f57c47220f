"""The benchmarks that wire damflow's own internals together still run: a smoke run of each, tiny, no figures
asserted (figures are for the benchmarks to print, not for tests to time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def bench_json(*args: str, timeout: float = 150) -> dict:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_JSON ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    return json.loads(lines[0].removeprefix("BENCH_JSON "))


def test_framework_tax_runs_both_sides_through_every_event() -> None:
    # the damflow side runs the worker's own app, agent loop and per-event wrapper: a change to any of them that
    # the benchmark no longer fits fails here, not on the day somebody wants the figure
    result = bench_json("bench/framework_tax.py", "--events", "200", "--repeat", "1", "--buffers", "default",
                        "--worker-timeout", "60")
    assert [side["side"] for side in result["sides"]] == ["bare", "damflow buffer default"]
    assert all(side["median"] > 0 for side in result["sides"])

"""Peak resident memory (VmHWM) and CPU time of a process tree, read from /proc: every damflow process, the broker
included."""

from __future__ import annotations

import os
from pathlib import Path


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def tree(pid: int) -> list[int]:
    out = [pid]
    for child in children(pid):
        out += tree(child)
    return out


def describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(c.decode(errors="replace") for c in cmd if c)
    for marker, name in (("tansu", "broker"), ("streams.cli worker", "worker"), ("forkserver", "pool"),
                         ("resource_tracker", "resource-tracker")):
        if marker in text:
            return name
    return "supervisor"


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def snapshot(root: int) -> dict[str, float]:
    """Peak RSS in MB per role (the largest process of each role: e.g. the biggest pool process)."""
    out: dict[str, float] = {}
    for pid in tree(root):
        rss = peak_rss_mb(pid)
        if rss is not None:
            role = describe(pid)
            out[role] = max(out.get(role, 0.0), round(rss, 1))
    return out


def cpu_seconds(root: int) -> dict[str, float]:
    """CPU time (user + system) used so far per role, summed over the role's processes (e.g. every pool process)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        role = describe(pid)
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per role between two :func:`cpu_seconds` readings."""
    return {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()}

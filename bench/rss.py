"""Peak resident memory (VmHWM) and CPU time of a process tree, read from /proc: every damflow process, the broker
included; and the machine's idle time, to account for all of it."""

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


_SCHED_IDLE = 5  # Linux's idle scheduling class, as /proc/<pid>/stat reports a process's policy


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (the first is the state, field 3 of proc(5))."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def describe(pid: int) -> str:
    """The process's role: broker, worker, pool (the batch pool: its processes run in the idle scheduling class),
    urgent-pool (the interactive pool and the forkserver), resource-tracker, or supervisor (`damflow up`)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(c.decode(errors="replace") for c in cmd if c)
    for marker, name in (("tansu", "broker"), ("streams.cli worker", "worker"), ("forkserver", "pool"),
                         ("resource_tracker", "resource-tracker")):
        if marker in text:
            if name == "pool":
                try:
                    batch = int(_stat(pid)[38]) == _SCHED_IDLE
                except (OSError, IndexError, ValueError):
                    batch = True
                return "pool" if batch else "urgent-pool"
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
    out: dict[str, float] = {}
    for pid in tree(root):
        try:
            fields = _stat(pid)
        except OSError:
            continue
        role = describe(pid)
        out[role] = out.get(role, 0.0) + _cpu(fields)
    return out


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) one process has used so far; 0 once it is gone."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    return _cpu(fields)


def _cpu(fields: list[str]) -> float:
    """User + system CPU seconds from a process's stat fields (see :func:`_stat`)."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_seconds() -> tuple[float, float]:
    """(idle, total) CPU seconds of the whole machine so far, over all its CPUs (/proc/stat; I/O wait counts
    as idle: nobody used the CPU)."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (values[3] + values[4]) / tick, sum(values[:8]) / tick


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per role between two :func:`cpu_seconds` readings."""
    return {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()}

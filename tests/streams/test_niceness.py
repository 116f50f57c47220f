"""Priority of the service processes: lowered for every thread, never raised."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streams.niceness import lower_priority

# a process with a second thread, both parked until stdin closes; it says when the thread runs
_CHILD = ("import sys, threading; threading.Thread(target=sys.stdin.read, daemon=True).start(); "
          "print('ready', flush=True); sys.stdin.read()")

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")


def _thread_nices(pid: int) -> list[int]:
    return [os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{pid}/task")]


def _spawn() -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\n"
    assert len(os.listdir(f"/proc/{child.pid}/task")) >= 2
    return child


def test_every_thread_is_lowered_and_never_raised() -> None:
    child = _spawn()
    try:
        base = os.getpriority(os.PRIO_PROCESS, child.pid)
        assert lower_priority(base + 7, child.pid) == base + 7
        assert _thread_nices(child.pid) == [base + 7] * len(_thread_nices(child.pid))
        assert lower_priority(base + 2, child.pid) == base + 7  # asking for less changes nothing
        assert set(_thread_nices(child.pid)) == {base + 7}
        assert lower_priority(0, child.pid) is None
    finally:
        child.stdin.close()
        child.wait(10)

"""Fault injection for tests: make the isolated decoder crash, hang or fail transiently on chosen files.

Active only when ``Settings.fault_injection`` is on (it is passed down to the pool job), so production
never looks at these markers:

- a file name containing ``__crash__`` aborts the pool process (like a segfault in a decoder);
- a file name containing ``__hang__`` never returns (like a decoder stuck in a loop);
- a sidecar ``<file>.transient`` holding a number N makes the next N attempts fail with a transient error
  (the count goes down by one per attempt; the sidecar is removed at zero);
- a sidecar ``<file>.hold`` holds the work on that file until the sidecar is removed (work in progress, on
  demand).
"""

from __future__ import annotations

import os
import time

from streams.errors import SourceUnreadable

CRASH = "__crash__"
HANG = "__hang__"
TRANSIENT_SUFFIX = ".transient"
HOLD_SUFFIX = ".hold"


def inject(path: str) -> None:
    name = os.path.basename(path)
    if CRASH in name:
        os.abort()
    if HANG in name:
        while True:
            time.sleep(3600)
    while os.path.exists(path + HOLD_SUFFIX):
        time.sleep(0.02)  # a test's hand on the work: nothing to await across processes
    sidecar = path + TRANSIENT_SUFFIX
    try:
        remaining = int(open(sidecar).read().strip() or 1)  # noqa: SIM115
    except (FileNotFoundError, ValueError):
        return
    if remaining <= 1:
        os.unlink(sidecar)
    else:
        with open(sidecar, "w") as f:
            f.write(str(remaining - 1))
    raise SourceUnreadable("injected transient failure", path=path)

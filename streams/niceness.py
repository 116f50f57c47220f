"""CPU priority of damflow's own processes, so that urgent work is what the scheduler runs first.

From first to last: the interactive lane's pool processes (the caller's priority, nice 0 as a rule); the
pipeline's service processes — worker event loops, catalog sink, HTTP, the embedded broker — at
``Settings.service_nice``; the folder scanner (``damflow ingest``) at ``Settings.scan_nice``; the batch pool in
Linux's idle class (see :mod:`agents.pool`). Without the middle step
an urgent file's decode shares its core with the service processes publishing the import's results, and took
half as long again as on an idle core (measured in ``bench/priority.py``).

Only raising niceness is portable (lowering it needs privileges), so the order of events matters: a worker starts
its pools (and the forkserver that makes their replacements) first and lowers its own priority after.
"""

from __future__ import annotations

import contextlib
import os

from streams.logs import get

log = get(__name__)


def lower_priority(nice: int, pid: int = 0) -> int | None:
    """Make every thread of process ``pid`` (0: this one) at least ``nice``; never raises a priority.

    Linux keeps niceness per thread, and the processes concerned already run threads (the broker's runtime,
    the worker's pool manager), so each thread is set; threads started later inherit from their creator.
    Returns the niceness of the process's main thread afterwards (None where there is no such thing).
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return None
    target = pid or os.getpid()
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{target}/task")]
    except OSError:
        threads = [target]
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
        except OSError as exc:  # another user's process
            log.warning("renice_failed", pid=target, tid=tid, nice=nice, error=repr(exc))
            break
    with contextlib.suppress(OSError):
        return os.getpriority(os.PRIO_PROCESS, target)
    return None

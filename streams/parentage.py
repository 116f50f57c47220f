"""Child processes that die with their parent (Linux ``PR_SET_PDEATHSIG``), so nothing outlives a killed parent."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have Linux send ``sig`` to this process when its parent exits (a no-op elsewhere).

    Usable as a ``preexec_fn`` (it runs in the child between fork and exec; the setting survives the exec).
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)

"""Imported first in a worker's forkserver (see :class:`agents.pool.WorkPool`): the forkserver dies with its worker,
and every pool process it makes dies with it.

The forkserver that makes the CPU pools' processes would otherwise outlive a killed worker: every process it made
holds it open. Each process it forks is set to be killed when it goes — in the child at once, at the fork, not
later in the pool's initializer: the lane governor may freeze (SIGSTOP) a process pebble just started, and a
frozen process acts on no gentler signal, runs no more code of its own, and would never exit by itself.
Importing this module anywhere else would tie that process (and its children) to its parent the same way;
nothing else imports it.
"""

from __future__ import annotations

import os
import signal

from streams.parentage import die_with_parent

die_with_parent(signal.SIGKILL)
os.register_at_fork(after_in_child=lambda: die_with_parent(signal.SIGKILL))

"""Imported first in a worker's forkserver (see :class:`agents.pool.WorkPool`): the forkserver dies with its worker.

The forkserver that makes the CPU pools' processes would otherwise outlive a killed worker: every process it made
holds it open. Its pool processes are set to be killed when it goes, which matters for a pool the lane governor
froze (SIGSTOP): a frozen process acts on no gentler signal and would never exit by itself. Importing this
module anywhere else would tie that process to its parent the same way; nothing else imports it.
"""

from __future__ import annotations

import signal

from streams.parentage import die_with_parent

die_with_parent(signal.SIGKILL)

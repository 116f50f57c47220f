"""Imported first in a worker's forkserver (see :class:`agents.pool.WorkPool`): the forkserver dies with its worker,
and every pool process it makes dies with it.

The forkserver that makes the CPU pools' processes would otherwise outlive a killed worker: every process it made
holds it open. Each process it forks is set to be killed when it goes, at the fork itself — not later in the
pool's initializer — and the fork returns (so the new process's id reaches pebble, and the lane governor) only
once the child has done so: the governor may freeze (SIGSTOP) a process pebble just started, and a frozen process
runs no more code of its own, acts on no gentler signal, and would never exit by itself.
Importing this module anywhere else would tie that process (and its children) to its parent the same way;
nothing else imports it.
"""

from __future__ import annotations

import os
import signal

from streams.parentage import die_with_parent

die_with_parent(signal.SIGKILL)

#: The forkserver: the hooks below act in its forks alone, not in those of the processes it makes (which
#: inherit them).
_FORKSERVER = os.getpid()
_handshake: tuple[int, int, int] | None = None  # (parent pid, read end, write end) during one fork


def _before_fork() -> None:
    global _handshake
    if os.getpid() == _FORKSERVER:
        _handshake = (os.getpid(), *os.pipe())


def _in_child() -> None:
    global _handshake
    handshake, _handshake = _handshake, None
    if handshake is None:
        if os.getppid() == _FORKSERVER:  # no pipe could be made: tied all the same, and nobody waits
            die_with_parent(signal.SIGKILL)
        return  # (else forked by one of the forkserver's children: not one of its pool processes)
    parent, r, w = handshake
    try:
        os.close(r)
        die_with_parent(signal.SIGKILL)
        if os.getppid() != parent:  # the forkserver died before that took: nothing would kill this process later
            os._exit(1)
        os.write(w, b"1")
    finally:
        os.close(w)


def _in_parent() -> None:
    global _handshake
    handshake, _handshake = _handshake, None
    if handshake is None:
        return
    _parent, r, w = handshake
    os.close(w)
    try:
        os.read(r, 1)  # the child is tied to this process now (or died trying: end of file)
    finally:
        os.close(r)


os.register_at_fork(before=_before_fork, after_in_parent=_in_parent, after_in_child=_in_child)

"""One pipeline per data directory: the process that runs the catalog sink (``damflow up``, ``damflow run``,
``damflow catalog``) holds ``<data dir>/run/owner.lock`` while it runs.

The catalog is written by one sink, and ``run/broker.json`` says where *the* broker of the data directory
listens: a second ``damflow up`` on the same directory used to start a second sink on the same SQLite file (and
a second broker), and on its way out it removed the first one's broker record, so every other command then
answered "no broker". Now the second is refused with a one-line reason naming the first. The lock is an
``flock``: the kernel drops it when its holder exits, however it exits, so a killed ``damflow up`` leaves nothing
that blocks the next one. Workers (``damflow worker``) and producers share the directory freely.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from streams.errors import DataDirInUse
from streams.settings import Settings


class DataDirLock:
    """``acquire()`` or :class:`DataDirInUse`; ``release()`` (also when never acquired); or ``with`` it."""

    def __init__(self, settings: Settings) -> None:
        self.data_path = settings.data_path
        self.path = settings.data_path / "run" / "owner.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(f"another damflow (pid {holder}) runs on {self.data_path}: stop it first, or give "
                               "this one a data directory of its own (DAMFLOW_DATA_DIR)", path=str(self.path)) \
                from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # the lock goes with the descriptor
            self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

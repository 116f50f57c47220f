"""Jobs for the pool tests; a module of their own so forkserver children can import them by name."""

import os
import time


def crash() -> None:
    os.abort()


def hang() -> None:
    time.sleep(3600)


def double(x: int) -> int:
    return 2 * x


def hog() -> int:
    return len(bytearray(3 * 1024**3))


def pid() -> int:
    return os.getpid()


def corrupt(path: str) -> None:
    from streams.errors import CorruptImage

    raise CorruptImage(f"cannot decode {path}", path=path)


def double_later(x: int, delay: float) -> int:
    time.sleep(delay)
    return 2 * x


def double_later_told(x: int, delay: float, started: str) -> int:
    """:func:`double_later`, telling that it started by making the file ``started``."""
    open(started, "w").close()
    return double_later(x, delay)


class NeedsTwo(Exception):
    """Pickles, but does not unpickle (pickle calls it again with its message only)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} and {b}")


def raise_needs_two() -> None:
    raise NeedsTwo("one", "two")


def raise_holding_a_lock() -> None:
    import threading

    exc = RuntimeError("holds a lock")
    exc.lock = threading.Lock()  # type: ignore[attr-defined]
    raise exc


def return_a_lock() -> object:
    import threading

    return threading.Lock()
